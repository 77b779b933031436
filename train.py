"""
Train a deep transformer without shortcuts (He et al., ICLR 2023), nanoGPT style.

    python train.py                                # espa, 24 layers, Muon, on the pydocs corpus
    python train.py --model=preln --max_iters=500  # any preset in model.PRESETS, any key below
    python train.py config/paper.py config/wikitext103.py --n_layer=72
    torchrun --standalone --nproc_per_node=8 train.py config/paper.py config/c4.py
    python train.py --init_from=resume             # continue out/ckpt.pt exactly where it stopped
    python train.py --help                         # every key and its default

out_dir gets ckpt.pt (the latest), ckpt_best.pt (best val loss), the last keep_last checkpoints as
ckpt_step0001000.pt (checkpoint.py), and log.jsonl: one JSON object per line, 'eval' records
(iter, train_loss, val_loss, lr, tokens, elapsed_s) and 'diag' records (per-layer diagnostics).

Exit status: 0 finished (or stopped by SIGINT/SIGTERM after saving), 1 a checkpoint could not be
saved, 2 bad config or input (nothing was written), 3 training diverged (nothing diverged was
saved).
"""
import dataclasses
import math
import os
import random
import signal
import sys
from types import SimpleNamespace

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel as DDP

import checkpoint
import data
import report
from checkpoint import CheckpointError, RunState
from configurator import ConfigError, command_line, configure, format_help, key_comments
from hardware import device_and_dtype, tune_cpu
from model import GPT, GPTConfig, config_for
from optim import configure_optimizers
from report import say

# -----------------------------------------------------------------------------
# config: every key can be set in a config file or as --key=value (configurator.py); the comment
# at the end of each line is what --help says about the key
DEFAULTS = dict(
    # what to train: a preset from model.PRESETS; the architecture keys below default to None,
    # which means "what the preset (or GPTConfig) says": 24 layers x 128 wide, 4 heads
    model='espa',            # preln, preln-espa, postln, vanilla, vskipinit, uspa, espa, *-skip
    # I/O
    out_dir='out',           # checkpoints and log.jsonl
    init_from='scratch',     # 'scratch' or 'resume' (continue out_dir/ckpt.pt, or resume_from)
    resume_from='',          # a checkpoint path to resume from instead of out_dir/ckpt.pt
    overwrite=False,         # allow a scratch run to replace a run already saved in out_dir
    keep_last=3,             # step checkpoints (ckpt_stepNNNNNNN.pt) kept besides ckpt.pt
    eval_interval=100,       # evaluate, log and save every N steps (and at the end)
    eval_iters=10,           # batches per split in each evaluation (a fixed set: comparable evals)
    log_interval=10,         # a progress line (loss, tokens/s, MFU) every N steps
    diag_interval=100,       # signal-propagation diagnostics in log.jsonl every N steps (0: never)
    eval_only=False,         # evaluate (the resumed model) once and exit
    sample_tokens=300,       # print a sample of this many tokens at the end (0: none)
    sample_start='Return ',  # the prompt of that sample (pydocs is full of 'Return the ...')
    wandb_log=False,         # also log the evaluations to Weights & Biases (pip install wandb)
    wandb_project='deep-transformers-without-shortcuts',  # the Weights & Biases project
    wandb_run_name=None,     # None: the out_dir's name
    # data
    dataset=data.DEFAULT_DATASET,    # `python prepare.py NAME` makes one; pydocs: on first use
    data_dir=data.DEFAULT_DATA_DIR,  # the prepared datasets: data_dir/NAME/{train,val}.bin
    batch_size=16,           # sequences per micro-batch per process
    block_size=128,          # context length
    gradient_accumulation_steps=None,  # micro-batches per step, all processes; None: 1 per process
    # optimizer: the vanilla presets train the blocks at learning_rate / n_layer (MATH.md sec. 10),
    # and their 2-D block weights with Muon (sec. 10.1); the others train everything with AdamW
    optimizer=None,          # adamw | muon (Muon for the 2-D block weights); None: as above
    muon_lr=0.03,            # Muon's peak lr (same schedule and depth rule as learning_rate)
    muon_momentum=0.95,      # Muon's momentum
    muon_adjust_lr='original',  # torch.optim.Muon's adjust_lr_fn: original | match_rms_adamw
    learning_rate=3e-3,      # AdamW's peak lr, reached after the warmup
    max_iters=800,           # optimisation steps
    weight_decay=0.1,        # on the weight matrices and embeddings only (optim.py)
    beta1=0.9,               # AdamW's first-moment decay
    beta2=0.95,              # AdamW's second-moment decay
    grad_clip=1.0,           # clip the global gradient norm (0: off)
    warmup_iters=None,       # linear warmup; None: min(100, max_iters // 10); vanilla needs it
    lr_decay_iters=None,     # the cosine decay ends here (None: max_iters); pin it to extend a run
    min_lr=None,             # lr at the end of the decay (None: learning_rate / 10)
    # divergence guard: a step whose loss is NaN/inf or above spike_factor x the running average
    # is not applied; after max_bad_steps such steps in a row the run stops
    spike_factor=2.0,        # a loss above this x the running average is a spike (inf: no check)
    max_bad_steps=10,        # stop (exit 3) after this many bad steps in a row
    # system
    device='auto',           # auto | cpu | cuda | cuda:N | mps
    dtype='auto',            # auto (a GPU's bfloat16, else float32) | float32 | bfloat16 | float16
    compile=False,           # torch.compile the model (worth it on a GPU)
    peak_flops=None,         # the device's peak FLOP/s for MFU; None: hardware.py's table of GPUs
    seed=1337,               # initial weights, dropout and the order of the training batches
)
# every GPTConfig field is a key too, default None ("the preset decides"); vocab_size: the data's
ARCH_KEYS = [f.name for f in dataclasses.fields(GPTConfig) if f.name != 'block_size']
for _k in ARCH_KEYS:
    DEFAULTS.setdefault(_k, None)
# the types of the keys that default to None
TYPES = {**{f.name: f.type for f in dataclasses.fields(GPTConfig)
            if f.type in (int, float, bool, str)},
         'lr_decay_iters': int, 'min_lr': float, 'peak_flops': float, 'warmup_iters': int,
         'gradient_accumulation_steps': int, 'wandb_run_name': str, 'optimizer': str}
# keys a resumed run takes from this command even when not given (everything else: the checkpoint)
MACHINE_KEYS = ('out_dir', 'init_from', 'resume_from', 'overwrite', 'eval_only', 'device', 'dtype',
                'compile', 'peak_flops', 'wandb_log', 'wandb_project', 'wandb_run_name')
# evaluation batches are drawn with this seed whatever --seed is, so that runs with different seeds
# (and every evaluation of one run) are scored on the same held-out tokens
EVAL_SEED = 1338

def help_text():
    comments, preset = key_comments(__file__), config_for(DEFAULTS['model'])
    comments['vocab_size'] = "None: the dataset's vocabulary (set it larger to pad)"
    comments['eta'] = (f"None: the preset's ({DEFAULTS['model']}: {preset.eta}); where the network "
                       f"cannot reach it, the largest reachable target is used and printed "
                       f"(MATH.md sec. 6)")
    for k in ARCH_KEYS:
        comments.setdefault(k, f"None: the preset's value ({DEFAULTS['model']}: "
                               f"{getattr(preset, k)!r})")
    return format_help(DEFAULTS, comments) + '\n\nSee the top of train.py and README.md.'

def check_config(cfg, world_size):
    """Raises ConfigError for anything wrong with the config, before any file is touched."""
    def need(ok, msg):
        if not ok:
            raise ConfigError(msg)
    need(cfg['init_from'] in ('scratch', 'resume'), f"init_from must be 'scratch' or 'resume' (got "
         f"{cfg['init_from']!r}): 'resume' continues out_dir/ckpt.pt.")
    lowest = dict(max_iters=0, keep_last=0, diag_interval=0, sample_tokens=0, weight_decay=0,
                  grad_clip=0, warmup_iters=0, batch_size=1, block_size=1, eval_interval=1,
                  eval_iters=1, log_interval=1, max_bad_steps=1, gradient_accumulation_steps=1)
    for k, low in lowest.items():
        need(cfg[k] is None or cfg[k] >= low,
             f"{k} must be >= {low} (got {cfg[k]})" + ' (0: off)' * (k == 'grad_clip'))
    for k in ('learning_rate', 'muon_lr'):
        need(cfg[k] > 0 and math.isfinite(cfg[k]),
             f"{k} must be > 0 and finite (got {cfg[k]}); e.g. --{k}={DEFAULTS[k]}")
    for k in ('beta1', 'beta2', 'muon_momentum'):
        need(0 <= cfg[k] < 1, f"{k} must be in [0, 1) (got {cfg[k]})")
    for k, allowed in dict(optimizer=(None, 'adamw', 'muon'),
                           muon_adjust_lr=('original', 'match_rms_adamw')).items():
        names = ', '.join(a for a in allowed if a)
        need(cfg[k] in allowed, f"{k} must be one of {names} (got {cfg[k]!r})")
    need(cfg['spike_factor'] > 1, f"spike_factor must be > 1 (got {cfg['spike_factor']}); "
         f"--spike_factor=inf turns the spike check off (NaN/inf losses are still never applied)")
    need(cfg['min_lr'] is None or 0 <= cfg['min_lr'] <= cfg['learning_rate'],
         f"min_lr must be between 0 and learning_rate={cfg['learning_rate']} (got {cfg['min_lr']})")
    need(cfg['peak_flops'] is None or cfg['peak_flops'] > 0,
         f"peak_flops must be > 0 FLOP/s (got {cfg['peak_flops']})")
    warmup, decay_end, _ = lr_schedule(cfg)
    need(warmup <= cfg['max_iters'] or cfg['eval_only'],
         f"warmup_iters={warmup} is more than max_iters={cfg['max_iters']}: the run would end "
         f"before the learning rate is up. Use a shorter warmup, e.g. "
         f"--warmup_iters={cfg['max_iters'] // 10}, or a longer run.")
    need(warmup <= decay_end, f"warmup_iters={warmup} is more than lr_decay_iters={decay_end}")
    accum = cfg['gradient_accumulation_steps']
    need(accum is None or accum % world_size == 0,
         f"gradient_accumulation_steps={accum} counts micro-batches over all {world_size} "
         f"processes, so it must be a multiple of {world_size}; e.g. --gradient_accumulation_steps="
         f"{world_size * max(1, (accum or 1) // world_size)}, or leave it unset for one "
         f"micro-batch per process.")

def lr_schedule(cfg):
    """(warmup_iters, lr_decay_iters, min_lr), with None read as: min(100, max_iters // 10) warmup
    steps, decay to the end of the run, down to learning_rate / 10. Derived here, not stored in the
    config, so that a resumed run with a new max_iters derives them anew."""
    warmup, decay_end, min_lr = cfg['warmup_iters'], cfg['lr_decay_iters'], cfg['min_lr']
    return (min(100, cfg['max_iters'] // 10) if warmup is None else warmup,
            cfg['max_iters'] if decay_end is None else decay_end,
            cfg['learning_rate'] / 10 if min_lr is None else min_lr)

def get_lr(it, cfg):
    """Linear warmup, cosine down to min_lr at lr_decay_iters, then flat."""
    warmup, decay_end, min_lr = lr_schedule(cfg)
    if it < warmup:
        return cfg['learning_rate'] * (it + 1) / (warmup + 1)
    if it >= decay_end:
        return min_lr
    ratio = (it - warmup) / max(1, decay_end - warmup)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (cfg['learning_rate'] - min_lr)

def model_args_for(cfg, given, ckpt, ckpt_path):
    """The GPTConfig fields of the run: the preset with the keys you set, or the checkpoint's (which
    must agree with what you set)."""
    overrides = {k: cfg[k] for k in ARCH_KEYS if cfg[k] is not None}
    try:
        config = config_for(cfg['model'], block_size=cfg['block_size'], **overrides)
    except (ValueError, TypeError) as e:
        raise ConfigError(str(e)) from None
    if ckpt is None:
        return dataclasses.asdict(config)
    return checkpoint.check_architecture(ckpt, ckpt_path, dataclasses.asdict(config), given,
                                         cfg['model'])

def main(argv):
    return command_line(train, argv, help_text, (CheckpointError, data.DataError))

# -----------------------------------------------------------------------------
# setup: everything before the first step, in the order that keeps a mistake cheap

def setup(argv):
    """The config and everything that can be wrong with it, before any file is touched; then DDP,
    the data, the model and its optimizers, and only then out_dir. Returns the run: a namespace of
    what the loop and its helpers work with."""
    given = set()
    cfg = configure(DEFAULTS, argv, types=TYPES, given=given)
    ddp = int(os.environ.get('RANK', -1)) != -1  # started by torchrun?
    rank, local_rank, world_size = (int(os.environ['RANK']), int(os.environ.get('LOCAL_RANK', 0)),
                                    int(os.environ['WORLD_SIZE'])) if ddp else (0, 0, 1)
    ckpt, ckpt_path, changed = None, None, {}
    if cfg['init_from'] == 'resume':  # the saved run's config, with only what you set now changed
        ckpt, ckpt_path, cfg, changed = checkpoint.load_for_resume(cfg, given, MACHINE_KEYS)
    check_config(cfg, world_size)
    model_args = model_args_for(cfg, given, ckpt, ckpt_path)
    if cfg['optimizer'] is None:  # the preset's: Muon for the vanilla ones (MATH.md sec. 10.1)
        cfg['optimizer'] = 'muon' if model_args['block_lr_rule'] == 'depth' else 'adamw'
    try:
        device, dtype, autocast = device_and_dtype(cfg['device'], cfg['dtype'])
    except ValueError as e:
        raise ConfigError(str(e)) from None
    device = f'cuda:{local_rank}' if ddp and device.startswith('cuda') else device
    # denormals flushed and freed memory kept (hardware.tune_cpu), before any torch work
    cpu_settings = tune_cpu() if device == 'cpu' else []
    meta = data.check_dataset(cfg['dataset'], cfg['data_dir'], cfg['block_size'],
                              cfg['vocab_size'] if ckpt is None else None)
    checkpoint.check_tokenizer(ckpt, ckpt_path, meta, cfg['dataset'], cfg['data_dir'])
    new_run = cfg['init_from'] == 'scratch' and not cfg['overwrite'] and not cfg['eval_only']
    checkpoint.check_out_dir(cfg['out_dir'], new_run)
    wandb_wanted = cfg['wandb_log'] and rank == 0 and not cfg['eval_only']
    wandb = report.import_wandb() if wandb_wanted else None  # a missing package: an error now

    # DDP, and the data: from here on files may be written (the default dataset on its first use)
    if ddp:
        if device.startswith('cuda'):
            torch.cuda.set_device(device)
        torch.distributed.init_process_group(backend='nccl' if 'cuda' in device else 'gloo')
    if meta is None:   # only the default dataset may be unprepared (check_dataset): prepare it once
        if local_rank == 0:
            import prepare
            print(f"preparing the default dataset '{cfg['dataset']}' in {cfg['data_dir']} "
                  f"(first run only)")
            prepare.prepare(cfg['dataset'], data_dir=cfg['data_dir'])
        if ddp:
            torch.distributed.barrier()
        meta = data.check_dataset(cfg['dataset'], cfg['data_dir'], cfg['block_size'],
                                  cfg['vocab_size'])
    tokens = {split: data.load_tokens(cfg['data_dir'], cfg['dataset'], split)
              for split in ('train', 'val')}
    accum = (cfg['gradient_accumulation_steps'] or world_size) // world_size  # per process per step

    # the model and its optimizers, new or resumed; compiled, then wrapped for DDP
    raw_model, optimizers, scaler, state = build(cfg, model_args, meta, ckpt, ckpt_path, device,
                                                 dtype, rank, world_size)
    model = torch.compile(raw_model) if cfg['compile'] else raw_model  # compile before DDP wraps it
    if ddp:
        model = DDP(model, device_ids=[local_rank] if device.startswith('cuda') else None)
    tokens_per_step = cfg['batch_size'] * cfg['block_size'] * accum * world_size
    run = SimpleNamespace(cfg=cfg, argv=argv, model=model, raw_model=raw_model,
                          optimizers=optimizers, scaler=scaler, state=state, meta=meta,
                          tokens=tokens, device=device, autocast=autocast, accum=accum, ddp=ddp,
                          rank=rank, world_size=world_size, tokens_per_step=tokens_per_step,
                          log=report.Log(cfg['out_dir'], rank),
                          last_saved=(ckpt_path, state.iter_num))  # of the last good checkpoint
    if cfg['eval_only']:  # report and leave; nothing is written
        losses = evaluate(run)
        say(f"step {state.iter_num}: train loss {losses['train']:.4f}, val loss "
            f"{losses['val']:.4f} ({cfg['eval_iters']} batches of {cfg['batch_size']} x "
            f"{cfg['block_size']} tokens per split)", rank=rank)
    elif rank == 0:  # only now, with the model built and the checkpoint loaded, out_dir changes
        checkpoint.clean_out_dir(cfg['out_dir'], cfg['init_from'] == 'scratch' and cfg['overwrite'])
        checkpoint.trim_log(run.log.path, state, resuming=ckpt_path is not None)
        report.opening(cfg, raw_model, meta, state, f'{tokens_per_step:,} tokens/step on '
                       f'{world_size} x {device} ({", ".join([dtype] + cpu_settings)})',
                       ckpt_path, changed)
        if wandb:
            run.log.start_wandb(wandb, cfg)
    return run

def build(cfg, model_args, meta, ckpt, ckpt_path, device, dtype, rank, world_size):
    """The model, its optimizers, the loss scaler and the run state: new, or as the checkpoint
    saved them (weights, optimizer moments, every process's random state)."""
    torch.manual_seed(cfg['seed'])  # the same initial weights in every process
    random.seed(cfg['seed'])
    np.random.seed(cfg['seed'])
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    if ckpt is None:
        vocab_size = cfg['vocab_size'] or meta['vocab_size']
        raw_model, state = GPT(GPTConfig(**dict(model_args, vocab_size=vocab_size))), RunState()
    else:
        raw_model, state = checkpoint.model_from(ckpt, ckpt_path), RunState.of(ckpt)
    raw_model.to(device)
    device_type = device.split(':')[0]
    try:
        optimizers = configure_optimizers(raw_model, cfg['weight_decay'], cfg['learning_rate'],
                                          (cfg['beta1'], cfg['beta2']), device_type,
                                          cfg['optimizer'], cfg['muon_lr'], cfg['muon_momentum'],
                                          cfg['muon_adjust_lr'])
    except ValueError as e:
        raise ConfigError(str(e)) from None
    scaler = torch.amp.GradScaler(device_type, enabled=dtype == 'float16')  # float16 only
    if ckpt is None:
        torch.manual_seed(cfg['seed'] + rank)  # dropout differs between processes
    else:
        checkpoint.restore(ckpt, ckpt_path, optimizers, scaler, rank, world_size)
    return raw_model, optimizers, scaler, state

# -----------------------------------------------------------------------------
# the training loop

def train(argv):
    """Set up, then train step by step up to max_iters. Returns the exit status (see the top)."""
    run = setup(argv)
    cfg, state, optimizers, scaler = run.cfg, run.state, run.optimizers, run.scaler
    progress = report.Progress(cfg, run.raw_model, run.device, state, run.tokens_per_step,
                               run.world_size, run.rank)
    signals, bad_steps, code, at_end = checkpoint.Signals(), 0, 0, False
    try:
        while not cfg['eval_only']:  # (eval_only: setup has evaluated; nothing to train)
            # the lr of this step, into every group (times its lr_scale: depth rule, Muon's rate)
            lr = get_lr(state.iter_num, cfg)
            for opt in optimizers:
                for group in opt.param_groups:
                    group['lr'] = lr * group.get('lr_scale', 1.0)
            # evaluate, log and save every eval_interval steps and at the end; the diagnostics every
            # diag_interval steps (unless the run we resumed has logged this step already)
            at_end, fresh = state.iter_num >= cfg['max_iters'], state.iter_num != state.logged_iter
            with progress.paused():
                if fresh and (state.iter_num % cfg['eval_interval'] == 0 or at_end):
                    saved = evaluate_and_save(run, lr, bad_steps)
                    code = 1 if at_end and not saved else code
                if fresh and cfg['diag_interval'] and state.iter_num % cfg['diag_interval'] == 0:
                    log_diagnostics(run)
            if at_end:
                break
            # forward and backward over this process's micro-batches; DDP averages the gradients
            # over the processes on the last one only (the flag is read by the forward)
            loss_sum = 0.0
            for micro_step in range(run.accum):
                if run.ddp:
                    run.model.require_backward_grad_sync = micro_step == run.accum - 1
                x, y = get_batch(run, 'train', state.iter_num, micro_step)
                with run.autocast:
                    loss = run.model(x, y)[1] / run.accum
                scaler.scale(loss).backward()
                loss_sum += loss.detach().float()
            # clip the global norm of the true gradients (unscale_: a no-op unless float16)
            for opt in optimizers:
                scaler.unscale_(opt)
            clip = cfg['grad_clip'] if cfg['grad_clip'] > 0 else math.inf
            grad_norm = torch.nn.utils.clip_grad_norm_(run.raw_model.parameters(), clip).item()
            # one all-reduce carries the mean loss and "was I signalled": all processes decide alike
            shared = torch.tensor([loss_sum.item() / run.world_size, float(bool(signals))])
            loss, signalled = all_sum(run, shared).tolist()
            # the divergence guard: a NaN/inf loss or gradient, or a loss above spike_factor x its
            # running average, is not applied (float16: the scaler skips inf gradients itself)
            bad = (not math.isfinite(loss) or not (math.isfinite(grad_norm) or scaler.is_enabled())
                   or (state.loss_ema is not None and loss > cfg['spike_factor'] * state.loss_ema))
            bad_steps = bad_steps + 1 if bad else 0
            if bad:
                report.skipped(cfg, state, loss, grad_norm, bad_steps, run.rank)
            else:  # the optimizer step
                for opt in optimizers:
                    scaler.step(opt)
                ema = state.loss_ema
                state.loss_ema = loss if ema is None else 0.9 * ema + 0.1 * loss
            scaler.update()
            for opt in optimizers:
                opt.zero_grad(set_to_none=True)
            state.iter_num += 1
            state.tokens += run.tokens_per_step
            if bad_steps >= cfg['max_bad_steps']:  # diverged: stop, with the last good checkpoint
                report.diverged(cfg, lr_schedule(cfg)[0], state, loss, bad_steps, run.last_saved,
                                checkpoint.resume_command(run.argv, run.world_size))
                code = 3
                break
            progress.step(loss, lr)
            # SIGINT/SIGTERM (here or in another process): save and leave
            if signalled:
                code = stop_on_signal(run, signals, bad_steps)
                break
    finally:
        signals.restore()
        run.log.close()
    if at_end and code == 0 and run.rank == 0:  # a sample, and where the files are
        report.closing(cfg, run.raw_model, run.meta, run.autocast, run.last_saved)
    if run.ddp:  # wait for rank 0's last save: a process leaving gloo while a peer works aborts it
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    return code

# -----------------------------------------------------------------------------
# what the loop calls

def get_batch(run, split, step, micro_step=0, held_out=False):
    """(x, y) on the device, stateless (data.get_batch): resume needs no sampler state. held_out:
    the fixed evaluation batches, drawn with EVAL_SEED as one process would."""
    seed, accum, rank, world_size = (EVAL_SEED, 1, 0, 1) if held_out else \
        (run.cfg['seed'], run.accum, run.rank, run.world_size)
    xy = data.get_batch(run.tokens[split], step, micro_step, run.cfg['batch_size'],
                        run.cfg['block_size'], seed, rank, world_size, accum)
    if run.device.startswith('cuda'):  # pinned memory: the copy to the GPU runs asynchronously
        return [torch.from_numpy(a).pin_memory().to(run.device, non_blocking=True) for a in xy]
    return [torch.from_numpy(a).to(run.device) for a in xy]

def all_sum(run, t):
    """The tensor t summed over the processes, on the CPU."""
    if run.world_size > 1:
        t = t.to(next(run.raw_model.parameters()).device)
        torch.distributed.all_reduce(t)
    return t.cpu()

@torch.no_grad()
def evaluate(run):
    """Mean loss on a fixed set of eval_iters batches per split (EVAL_SEED), shared out over the
    processes, with the compiled forward when there is one (not through DDP: no gradients)."""
    run.raw_model.eval()
    forward = getattr(run.model, 'module', run.model)
    out = {}
    for split in ('train', 'val'):
        total = torch.zeros(2)  # (sum of losses, number of batches)
        for k in range(run.rank, run.cfg['eval_iters'], run.world_size):
            x, y = get_batch(run, split, k, held_out=True)
            with run.autocast:
                total += torch.tensor([forward(x, y)[1].item(), 1.0])
        total = all_sum(run, total)
        out[split] = (total[0] / total[1]).item()
    run.raw_model.train()
    return out

def evaluate_and_save(run, lr, bad_steps):
    """Evaluate and log; save a healthy model, as ckpt_best.pt too when it is the best so far.
    Returns False when the save failed."""
    state, losses = run.state, evaluate(run)
    run.log(dict(kind='eval', iter=state.iter_num, train_loss=losses['train'],
                 val_loss=losses['val'], lr=lr, tokens=state.tokens,
                 elapsed_s=round(state.elapsed_s, 3)))
    say(f"step {state.iter_num}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}",
        rank=run.rank)
    state.logged_iter = state.iter_num
    if bad_steps or not math.isfinite(losses['val']):
        say(f"not saving step {state.iter_num}: the model is not healthy (val loss "
            f"{losses['val']:.4g}, {bad_steps} bad steps in a row)", err=True, rank=run.rank)
        return True
    improved = losses['val'] < state.best_val_loss
    state.best_val_loss = min(state.best_val_loss, losses['val'])
    return state.iter_num == 0 or checkpoint.save_run(run, ['ckpt_best.pt'] if improved else [])

def log_diagnostics(run):
    """Per-layer signal propagation on 8 held-out sequences, into log.jsonl (rank 0)."""
    if run.rank == 0:
        x = get_batch(run, 'val', 0, held_out=True)[0][:8]
        run.log(dict(kind='diag', iter=run.state.iter_num,
                     **run.raw_model.eval().signal_diagnostics(x)))
        run.raw_model.train()

def stop_on_signal(run, signals, bad_steps):
    """Save (unless the last steps were bad) and say how to continue. Returns the exit status."""
    name = signal.Signals(signals[0]).name if signals else 'a signal'  # or another process's
    if bad_steps:
        say(f"stopped by {name} after step {run.state.iter_num}; not saved (the last steps were "
            f"bad). Last good checkpoint: {run.last_saved[0]}", err=True, rank=run.rank)
        return 0
    ok = checkpoint.save_run(run)
    ckpt_path = os.path.join(run.cfg['out_dir'], 'ckpt.pt')
    say(f"stopped by {name} after step {run.state.iter_num}" + (f"; saved {ckpt_path}. Continue "
        f"with:\n  {checkpoint.resume_command(run.argv, run.world_size)}" if ok else ''),
        rank=run.rank)
    return 0 if ok else 1

if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
