"""
Train a deep transformer without shortcuts (He et al., ICLR 2023), nanoGPT style.

    python train.py                                    # espa, 24 layers, Muon, on the embedded pydocs corpus
    python train.py --model=preln --max_iters=500      # any preset in model.PRESETS, any key below
    python train.py config/paper.py config/wikitext103.py --n_layer=72
    torchrun --standalone --nproc_per_node=8 train.py config/paper.py config/c4.py
    python train.py --init_from=resume                 # continue out/ckpt.pt exactly where it stopped
    python train.py --help                             # every key and its default

out_dir gets ckpt.pt (the latest), ckpt_best.pt (best val loss), the last keep_last checkpoints as
ckpt_step0001000.pt (checkpoint.py), and log.jsonl: one JSON object per line, 'eval' records
(iter, train_loss, val_loss, lr, tokens, elapsed_s) and 'diag' records (per-layer diagnostics).

Exit status: 0 finished (or stopped by SIGINT/SIGTERM after saving), 1 a checkpoint could not be
saved, 2 bad config or input (nothing was written), 3 training diverged (nothing diverged was saved).
"""
import dataclasses
import math
import os
import random
import signal
import sys

import numpy as np
import torch

import checkpoint
import data
import report
from checkpoint import CheckpointError, RunState
from configurator import ConfigError, command_line, configure, format_help, key_comments
from hardware import device_and_dtype, peak_flops
from model import GPT, GPTConfig, config_for
from optim import configure_optimizers
from report import say

# -----------------------------------------------------------------------------
# config: every key can be set in a config file or as --key=value (see configurator.py)
DEFAULTS = dict(
    # what to train: a preset from model.PRESETS; the architecture keys below default to None,
    # which means "what the preset (or GPTConfig) says": 24 layers x 128 wide, 4 heads
    model='espa',            # preln | preln-espa | postln | vanilla | vskipinit | uspa | espa | *-skip
    # I/O
    out_dir='out',           # checkpoints and log.jsonl
    init_from='scratch',     # 'scratch' or 'resume' (continue out_dir/ckpt.pt, or resume_from)
    resume_from='',          # a checkpoint path to resume from instead of out_dir/ckpt.pt
    overwrite=False,         # allow a scratch run to replace a run already saved in out_dir
    keep_last=3,             # keep the last K step checkpoints (ckpt_stepNNNNNNN.pt) besides ckpt.pt
    eval_interval=100,       # evaluate, log and save every N steps (and at the end)
    eval_iters=10,           # batches per split in each evaluation (a fixed set: comparable across evals)
    log_interval=10,         # a progress line (loss, tokens/s, MFU) every N steps
    diag_interval=100,       # signal-propagation diagnostics into log.jsonl every N steps (0: never)
    eval_only=False,         # evaluate (the resumed model) once and exit
    sample_tokens=300,       # print a sample of this many tokens at the end (0: none)
    sample_start='Return ',  # the prompt of that sample (pydocs is full of 'Return the ...')
    wandb_log=False,         # also log the evaluations to Weights & Biases (pip install wandb)
    wandb_project='deep-transformers-without-shortcuts',
    wandb_run_name=None,     # None: the out_dir's name
    # data
    dataset=data.DEFAULT_DATASET,  # prepared with `python prepare.py NAME`; pydocs is prepared on first run
    data_dir=data.DEFAULT_DATA_DIR,
    batch_size=16,           # sequences per micro-batch per process
    block_size=128,          # context length
    gradient_accumulation_steps=None,  # micro-batches per step over all processes; None: one per process
    # optimizer: the vanilla presets train the blocks at learning_rate / n_layer (MATH.md sec. 10), and
    # their 2-D block weights with Muon (sec. 10.1); the others train everything with AdamW
    optimizer=None,          # adamw | muon (torch.optim.Muon for the 2-D block weights); None: the preset's, as above
    muon_lr=0.03,            # Muon's peak lr (same schedule and depth rule as learning_rate); swept for the default run (README)
    muon_momentum=0.95,
    muon_adjust_lr='original',  # torch.optim.Muon's adjust_lr_fn: original | match_rms_adamw
    learning_rate=3e-3,
    max_iters=800,           # ~9 minutes for the default model on a quiet 2-core CPU (0.67 s/step)
    weight_decay=0.1,
    beta1=0.9,
    beta2=0.95,
    grad_clip=1.0,           # clip the global gradient norm (0: off)
    warmup_iters=None,       # linear warmup; None: min(100, max_iters // 10). Vanilla models need it (MATH.md sec. 10)
    lr_decay_iters=None,     # cosine decay ends here (None: max_iters); pin it to extend a run exactly
    min_lr=None,             # lr at the end of the decay (None: learning_rate / 10)
    # divergence guard: a step whose loss is NaN/inf or above spike_factor x the running average
    # is not applied; after max_bad_steps such steps in a row the run stops
    spike_factor=2.0,
    max_bad_steps=10,
    # system
    device='auto',           # auto | cpu | cuda | cuda:N | mps
    dtype='auto',            # auto (bfloat16 on a GPU that has it, else float32) | float32 | bfloat16 | float16
    compile=False,           # torch.compile the model (worth it on a GPU)
    peak_flops=None,         # the device's peak FLOP/s for MFU; None: look the GPU up in model.py's table
    seed=1337,
)
# every GPTConfig field is a key too, default None ("the preset decides"); vocab_size comes from the data
ARCH_KEYS = [f.name for f in dataclasses.fields(GPTConfig) if f.name not in ('block_size',)]
for _k in ARCH_KEYS:
    DEFAULTS.setdefault(_k, None)
TYPES = {**{f.name: f.type for f in dataclasses.fields(GPTConfig) if f.type in (int, float, bool, str)},
         'lr_decay_iters': int, 'min_lr': float, 'peak_flops': float, 'warmup_iters': int,
         'gradient_accumulation_steps': int, 'wandb_run_name': str, 'optimizer': str}   # of the keys defaulting to None
# keys a resumed run takes from this command even when not given (everything else: the checkpoint)
MACHINE_KEYS = ('out_dir', 'init_from', 'resume_from', 'overwrite', 'eval_only', 'device', 'dtype', 'compile',
                'peak_flops', 'wandb_log', 'wandb_project', 'wandb_run_name')
# evaluation batches are drawn with this seed whatever --seed is, so that runs with different seeds
# (and every evaluation of one run) are scored on the same held-out tokens
EVAL_SEED = 1338


def help_text():
    comments, preset = key_comments(__file__), config_for(DEFAULTS['model'])
    comments['vocab_size'] = "None: the dataset's vocabulary (set it larger to pad)"
    comments['eta'] = (f"None: the preset's ({DEFAULTS['model']}: {preset.eta}); where the network cannot reach it, "
                       f"the largest reachable target is used and printed (MATH.md sec. 6)")
    for k in ARCH_KEYS:
        comments.setdefault(k, f"None: the preset's value ({DEFAULTS['model']}: {getattr(preset, k)!r})")
    return format_help(DEFAULTS, comments) + '\n\nSee the top of train.py and README.md.'

def check_config(c, world_size):
    """Raises ConfigError for anything wrong with the config, before any file is touched."""
    def need(ok, msg):
        if not ok:
            raise ConfigError(msg)
    need(c['init_from'] in ('scratch', 'resume'), f"init_from must be 'scratch' or 'resume' (got {c['init_from']!r}): "
                                                  f"'resume' continues out_dir/ckpt.pt.")
    for k, lowest in dict(max_iters=0, keep_last=0, diag_interval=0, sample_tokens=0, weight_decay=0, grad_clip=0,
                          warmup_iters=0, batch_size=1, block_size=1, eval_interval=1, eval_iters=1, log_interval=1,
                          max_bad_steps=1, gradient_accumulation_steps=1).items():
        need(c[k] is None or c[k] >= lowest, f"{k} must be >= {lowest} (got {c[k]})" + ' (0: off)' * (k == 'grad_clip'))
    for k in ('learning_rate', 'muon_lr'):
        need(c[k] > 0 and math.isfinite(c[k]), f"{k} must be > 0 and finite (got {c[k]}); e.g. --{k}={DEFAULTS[k]}")
    for k in ('beta1', 'beta2', 'muon_momentum'):
        need(0 <= c[k] < 1, f"{k} must be in [0, 1) (got {c[k]})")
    for k, allowed in dict(optimizer=('adamw', 'muon'), muon_adjust_lr=('original', 'match_rms_adamw')).items():
        need(c[k] in allowed or (k == 'optimizer' and c[k] is None), f"{k} must be one of {', '.join(allowed)} (got {c[k]!r})")
    need(c['spike_factor'] > 1, f"spike_factor must be > 1 (got {c['spike_factor']}); --spike_factor=inf turns the "
                                f"spike check off (NaN/inf losses are still never applied)")
    need(c['min_lr'] is None or 0 <= c['min_lr'] <= c['learning_rate'],
         f"min_lr must be between 0 and learning_rate={c['learning_rate']} (got {c['min_lr']})")
    need(c['peak_flops'] is None or c['peak_flops'] > 0, f"peak_flops must be > 0 FLOP/s (got {c['peak_flops']})")
    warmup, decay_end, _ = lr_schedule(c)
    need(warmup <= c['max_iters'] or c['eval_only'],
         f"warmup_iters={warmup} is more than max_iters={c['max_iters']}: the run would end before the learning rate "
         f"is up. Use a shorter warmup, e.g. --warmup_iters={c['max_iters'] // 10}, or a longer run.")
    need(warmup <= decay_end, f"warmup_iters={warmup} is more than lr_decay_iters={decay_end}")
    accum = c['gradient_accumulation_steps']
    need(accum is None or accum % world_size == 0,
         f"gradient_accumulation_steps={accum} counts micro-batches over all {world_size} processes, so it must be a "
         f"multiple of {world_size}; e.g. --gradient_accumulation_steps={world_size * max(1, (accum or 1) // world_size)}, "
         f"or leave it unset for one micro-batch per process.")

def lr_schedule(c):
    """(warmup_iters, lr_decay_iters, min_lr), with None read as: min(100, max_iters // 10) warmup
    steps, decay to the end of the run, down to learning_rate / 10. Derived here, not stored in the
    config, so that a resumed run with a new max_iters derives them anew."""
    return (min(100, c['max_iters'] // 10) if c['warmup_iters'] is None else c['warmup_iters'],
            c['max_iters'] if c['lr_decay_iters'] is None else c['lr_decay_iters'],
            c['learning_rate'] / 10 if c['min_lr'] is None else c['min_lr'])

def get_lr(it, c):
    """Linear warmup, cosine down to min_lr at lr_decay_iters, then flat."""
    warmup, decay_end, min_lr = lr_schedule(c)
    if it < warmup:
        return c['learning_rate'] * (it + 1) / (warmup + 1)
    if it >= decay_end:
        return min_lr
    ratio = (it - warmup) / max(1, decay_end - warmup)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (c['learning_rate'] - min_lr)

def model_args_for(cfg, given, ckpt, ckpt_path):
    """The GPTConfig fields of the run: the preset with the keys you set, or the checkpoint's (which must agree)."""
    overrides = {k: cfg[k] for k in ARCH_KEYS if cfg[k] is not None}
    try:
        args = dataclasses.asdict(config_for(cfg['model'], block_size=cfg['block_size'], **overrides))
    except (ValueError, TypeError) as e:
        raise ConfigError(str(e)) from None
    return args if ckpt is None else checkpoint.check_architecture(ckpt, ckpt_path, args, given, cfg['model'])

def build(cfg, model_args, meta, ckpt, ckpt_path, device, dtype, rank, world_size):
    """The model, its optimizers, the loss scaler and the run state: new, or as the checkpoint saved them."""
    torch.manual_seed(cfg['seed'])  # the same initial weights in every process
    random.seed(cfg['seed'])
    np.random.seed(cfg['seed'])
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    if ckpt is None:
        raw_model, state = GPT(GPTConfig(**dict(model_args, vocab_size=cfg['vocab_size'] or meta['vocab_size']))), RunState()
    else:
        raw_model, state = checkpoint.model_from(ckpt, ckpt_path), RunState.of(ckpt)
    raw_model.to(device)
    try:
        optimizers = configure_optimizers(raw_model, cfg['weight_decay'], cfg['learning_rate'],
                                          (cfg['beta1'], cfg['beta2']), device.split(':')[0],
                                          cfg['optimizer'], cfg['muon_lr'], cfg['muon_momentum'],
                                          cfg['muon_adjust_lr'])
    except ValueError as e:
        raise ConfigError(str(e)) from None
    scaler = torch.amp.GradScaler(device.split(':')[0], enabled=dtype == 'float16')
    if ckpt is None:
        torch.manual_seed(cfg['seed'] + rank)  # dropout differs between processes
    else:
        checkpoint.restore(ckpt, ckpt_path, optimizers, scaler, rank, world_size)
    return raw_model, optimizers, scaler, state

def main(argv):
    return command_line(train, argv, help_text, (CheckpointError, data.DataError))

# -----------------------------------------------------------------------------

def train(argv):
    # ---- the config, and everything that can be wrong with it, before any file is touched ----
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
    cfg['optimizer'] = cfg['optimizer'] or ('muon' if model_args['block_lr_rule'] == 'depth' else 'adamw')  # sec. 10.1
    try:
        device, dtype, autocast = device_and_dtype(cfg['device'], cfg['dtype'])
    except ValueError as e:
        raise ConfigError(str(e)) from None
    meta = data.check_dataset(cfg['dataset'], cfg['data_dir'], cfg['block_size'], cfg['vocab_size'] if ckpt is None else None)
    device = f'cuda:{local_rank}' if ddp and device.startswith('cuda') else device
    checkpoint.check_tokenizer(ckpt, ckpt_path, meta, cfg['dataset'], cfg['data_dir'])
    checkpoint.check_out_dir(cfg['out_dir'], cfg['init_from'] == 'scratch' and not cfg['overwrite'] and not cfg['eval_only'])
    wandb = report.import_wandb() if cfg['wandb_log'] and rank == 0 and not cfg['eval_only'] else None

    # ---- the data (from here on files may be written: the default dataset on its first use) ----
    if ddp:
        if device.startswith('cuda'):
            torch.cuda.set_device(device)
        torch.distributed.init_process_group(backend='nccl' if device.startswith('cuda') else 'gloo')
    if meta is None:   # only the default dataset may be unprepared (check_dataset): prepare it once
        if local_rank == 0:
            import prepare
            print(f"preparing the default dataset '{cfg['dataset']}' in {cfg['data_dir']} (first run only)")
            prepare.prepare(cfg['dataset'], data_dir=cfg['data_dir'])
        if ddp:
            torch.distributed.barrier()
        meta = data.check_dataset(cfg['dataset'], cfg['data_dir'], cfg['block_size'], cfg['vocab_size'])
    accum = (cfg['gradient_accumulation_steps'] or world_size) // world_size   # micro-batches per process per step
    tokens = {split: data.load_tokens(cfg['data_dir'], cfg['dataset'], split) for split in ('train', 'val')}

    # ---- the model and its optimizers: new, or as saved ----
    raw_model, optimizers, scaler, state = build(cfg, model_args, meta, ckpt, ckpt_path, device, dtype, rank, world_size)
    ckpt = None  # free the memory: the model and optimizers hold copies
    model = torch.compile(raw_model) if cfg['compile'] else raw_model  # compile before DDP wraps it
    if ddp:
        model = torch.nn.parallel.DistributedDataParallel(model, device_ids=[local_rank] if device.startswith('cuda') else None)
    run = Run(cfg, argv, model, raw_model, optimizers, scaler, state, meta, tokens, device, autocast, accum, rank, world_size,
              (ckpt_path, state.iter_num), report.Log(cfg['out_dir'], rank))
    if cfg['eval_only']:  # report and leave; nothing is written
        losses = evaluate(run)
        say(f"step {state.iter_num}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f} ({cfg['eval_iters']} "
            f"batches of {cfg['batch_size']} x {cfg['block_size']} tokens per split)", rank=rank)
    elif rank == 0:  # only now, with the model built and the checkpoint loaded, out_dir changes
        checkpoint.clean_out_dir(cfg['out_dir'], cfg['init_from'] == 'scratch' and cfg['overwrite'])
        checkpoint.trim_log(run.log.path, state, resuming=ckpt_path is not None)
        report.opening(cfg, raw_model, meta, state, f'{run.tokens_per_step:,} tokens/step on {world_size} x {device} '
                                                     f'({dtype})', ckpt_path, changed)
        if wandb:
            run.log.start_wandb(wandb, cfg)
    peak = peak_flops(device) if cfg['peak_flops'] is None else cfg['peak_flops']
    code = 0 if cfg['eval_only'] else fit(run, report.Progress(cfg, run.tokens_per_step, raw_model.flops_per_token(
        cfg['block_size']), peak, state, world_size, rank))
    if ddp:  # wait for rank 0's last save: a process that tears gloo down while a peer still works aborts
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    return code

def fit(run, progress):
    """The training loop: evaluate and save, one optimisation step, report; until max_iters."""
    cfg, state = run.cfg, run.state
    signals, bad_steps, code = checkpoint.Signals(), 0, 0
    try:
        while True:
            lr = get_lr(state.iter_num, cfg)
            # evaluate, log and save every eval_interval steps and at the end; the signal diagnostics every
            # diag_interval steps (unless the run we resumed has logged this step already)
            fresh = state.iter_num != state.logged_iter
            with progress.paused():
                if fresh and (state.iter_num % cfg['eval_interval'] == 0 or state.iter_num >= cfg['max_iters']):
                    saved = evaluate_and_save(run, lr, bad_steps)
                    code = 1 if not saved and state.iter_num >= cfg['max_iters'] else code
                if fresh and cfg['diag_interval'] and state.iter_num % cfg['diag_interval'] == 0 and run.rank == 0:
                    x = run.get_batch('val', 0, held_out=True)[0][:8]
                    run.log(dict(kind='diag', iter=state.iter_num, **run.raw_model.eval().signal_diagnostics(x)))
                    run.raw_model.train()
            if state.iter_num >= cfg['max_iters']:
                break
            # one optimisation step: accum micro-batches per process, gradients averaged by DDP
            loss, grad_norm = micro_steps(run, lr)
            # one all-reduce carries the loss and "was I signalled", so that every process decides alike
            loss, signalled = run.all_sum(torch.tensor([loss / run.world_size, float(bool(signals))])).tolist()
            # the optimizer step, behind the divergence guard; max_bad_steps bad steps in a row end the run
            bad_steps = update(run, loss, grad_norm, bad_steps)
            if bad_steps >= cfg['max_bad_steps']:
                report.diverged(cfg, lr_schedule(cfg)[0], state, loss, bad_steps, run.last_saved,
                                checkpoint.resume_command(run.argv, run.world_size))
                return 3
            progress.step(loss, lr)
            if signalled:
                return stop_on_signal(run, signals, bad_steps)
    finally:
        signals.restore()
        run.log.close()
    if run.rank == 0 and code == 0:
        report.closing(cfg, run.raw_model, run.meta, run.autocast, run.last_saved)
    return code

# -----------------------------------------------------------------------------
# what the loop calls

@dataclasses.dataclass
class Run:
    """What the loop works with: the config, the model as trained (compiled and/or DDP-wrapped) and the
    plain module that is saved and evaluated, its optimizers, the run state, and this process's place."""
    cfg: dict
    argv: list
    model: torch.nn.Module
    raw_model: GPT
    optimizers: list
    scaler: torch.amp.GradScaler
    state: RunState
    meta: dict
    tokens: dict                    # split -> the token memmap (data.load_tokens)
    device: str
    autocast: object
    accum: int                      # micro-batches per process per step
    rank: int
    world_size: int
    last_saved: tuple               # (path, step) of the last good checkpoint
    log: report.Log

    @property
    def tokens_per_step(self):
        return self.cfg['batch_size'] * self.cfg['block_size'] * self.accum * self.world_size

    def get_batch(self, split, step, micro_step=0, held_out=False):
        """(x, y) on the device, stateless (data.get_batch): resume needs no sampler state. held_out: the
        fixed evaluation batches, drawn with EVAL_SEED as one process would."""
        seed, accum, rank, world_size = (EVAL_SEED, 1, 0, 1) if held_out else \
            (self.cfg['seed'], self.accum, self.rank, self.world_size)
        xy = data.get_batch(self.tokens[split], step, micro_step, self.cfg['batch_size'], self.cfg['block_size'],
                            seed, rank, world_size, accum)
        cuda = self.device.startswith('cuda')
        return [(torch.from_numpy(a).pin_memory() if cuda else torch.from_numpy(a)).to(self.device, non_blocking=cuda)
                for a in xy]

    def all_sum(self, t):
        if self.world_size > 1:
            t = t.to(next(self.raw_model.parameters()).device)
            torch.distributed.all_reduce(t)
        return t.cpu()

@torch.no_grad()
def evaluate(run):
    """Mean loss on a fixed set of eval_iters batches per split (EVAL_SEED), shared out over the processes,
    with the compiled forward when there is one (not through DDP: no gradients to sync)."""
    run.raw_model.eval()
    forward = getattr(run.model, 'module', run.model)
    out = {}
    for split in ('train', 'val'):
        total = torch.zeros(2)
        for k in range(run.rank, run.cfg['eval_iters'], run.world_size):
            x, y = run.get_batch(split, k, held_out=True)
            with run.autocast:
                total += torch.tensor([forward(x, y)[1].item(), 1.0])
        total = run.all_sum(total)
        out[split] = (total[0] / total[1]).item()
    run.raw_model.train()
    return out

def evaluate_and_save(run, lr, bad_steps):
    """Evaluate and log; save a healthy model, as ckpt_best.pt too when it is the best so far.
    Returns False when the save failed."""
    state, losses = run.state, evaluate(run)
    run.log(dict(kind='eval', iter=state.iter_num, train_loss=losses['train'], val_loss=losses['val'], lr=lr,
                 tokens=state.tokens, elapsed_s=round(state.elapsed_s, 3)))
    say(f"step {state.iter_num}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}", rank=run.rank)
    state.logged_iter = state.iter_num
    if bad_steps or not math.isfinite(losses['val']):
        say(f"not saving step {state.iter_num}: the model is not healthy (val loss {losses['val']:.4g}, "
            f"{bad_steps} bad steps in a row)", err=True, rank=run.rank)
        return True
    improved, state.best_val_loss = losses['val'] < state.best_val_loss, min(state.best_val_loss, losses['val'])
    return state.iter_num == 0 or save(run, ['ckpt_best.pt'] if improved else [])

def save(run, extra_names=()):
    run.last_saved, ok = checkpoint.save_run(run.raw_model, run.optimizers, run.scaler, run.cfg, run.meta, run.state,
                                             run.last_saved, extra_names, run.rank, run.world_size)
    return ok

def micro_steps(run, lr):
    """One step's forward and backward passes over this process's micro-batches, then the gradients
    unscaled and clipped. Returns (summed loss, gradient norm)."""
    for opt in run.optimizers:
        for g in opt.param_groups:
            g['lr'] = lr * g.get('lr_scale', 1.0)
    loss_sum = 0.0
    for micro_step in range(run.accum):
        if run.world_size > 1:  # sync gradients only on the last micro-step; set before the forward
            run.model.require_backward_grad_sync = micro_step == run.accum - 1
        x, y = run.get_batch('train', run.state.iter_num, micro_step)
        with run.autocast:
            loss = run.model(x, y)[1] / run.accum
        run.scaler.scale(loss).backward()
        loss_sum += loss.detach().float()
    for opt in run.optimizers:
        run.scaler.unscale_(opt)   # a no-op unless float16
    clip = run.cfg['grad_clip'] if run.cfg['grad_clip'] > 0 else math.inf
    return loss_sum.item(), torch.nn.utils.clip_grad_norm_(run.raw_model.parameters(), clip).item()

def update(run, loss, grad_norm, bad_steps):
    """The optimizer step, unless the divergence guard stops it: a NaN/inf loss or gradient, or a loss
    above spike_factor x the running average, is not applied and says so. The step counters move on.
    Returns the number of bad steps in a row."""
    state = run.state
    bad = not math.isfinite(loss) or not (math.isfinite(grad_norm) or run.scaler.is_enabled()) or \
        (state.loss_ema is not None and loss > run.cfg['spike_factor'] * state.loss_ema)
    if bad:
        say(f"step {state.iter_num}: loss {loss:.4g} (running average {state.loss_ema or math.nan:.4g}), gradient "
            f"norm {grad_norm:.4g}: update skipped ({bad_steps + 1}/{run.cfg['max_bad_steps']})", err=True, rank=run.rank)
    else:
        for opt in run.optimizers:
            run.scaler.step(opt)
        state.loss_ema = loss if state.loss_ema is None else 0.9 * state.loss_ema + 0.1 * loss
    run.scaler.update()
    for opt in run.optimizers:
        opt.zero_grad(set_to_none=True)
    state.iter_num += 1
    state.tokens += run.tokens_per_step
    return bad_steps + 1 if bad else 0

def stop_on_signal(run, signals, bad_steps):
    name = signal.Signals(signals[0]).name if signals else 'a signal'   # (or another process was signalled)
    if bad_steps:
        say(f"stopped by {name} after step {run.state.iter_num}; not saved (the last steps were bad). "
            f"Last good checkpoint: {run.last_saved[0]}", err=True, rank=run.rank)
        return 0
    ok = save(run)
    say(f"stopped by {name} after step {run.state.iter_num}" + (f"; saved {os.path.join(run.cfg['out_dir'], 'ckpt.pt')}. "
        f"Continue with:\n  {checkpoint.resume_command(run.argv, run.world_size)}" if ok else ''), rank=run.rank)
    return 0 if ok else 1

if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
