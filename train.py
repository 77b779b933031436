"""
Train a deep transformer without shortcuts (He et al., ICLR 2023), nanoGPT style.

    python train.py                                    # espa, 24 layers, on the embedded pydocs corpus
    python train.py --model=preln --max_iters=500      # any preset in model.PRESETS, any key below
    python train.py config/paper.py config/wikitext103.py --n_layer=72
    torchrun --standalone --nproc_per_node=8 train.py config/paper.py config/c4.py
    python train.py --init_from=resume                 # continue out/ckpt.pt exactly where it stopped
    python train.py --help                             # every key and its default

What you get in out_dir: ckpt.pt (always the latest), ckpt_best.pt (best val loss), the last
keep_last checkpoints as ckpt_step0001000.pt, and log.jsonl (one JSON object per line: 'eval'
records with iter/train_loss/val_loss/lr/tokens/elapsed_s, 'diag' records with the per-layer
signal-propagation diagnostics).

Exit status: 0 finished (or stopped by SIGINT/SIGTERM after saving), 1 a checkpoint could not be
saved, 2 bad config or input (nothing was written), 3 training diverged (nothing diverged was saved).

Test hook: TRAIN_TEST_SAVE_DELAY=SECONDS makes every checkpoint save sleep between writing the
temporary file and renaming it into place, and say so on stderr, so a test can SIGKILL the process
in the middle of a save. It changes nothing else.
"""
import dataclasses
import json
import math
import os
import random
import re
import shlex
import shutil
import signal
import sys
import time
from contextlib import nullcontext

import numpy as np
import torch

import data
from configurator import ConfigError, configure, format_help
from model import GPT, GPTConfig, config_for, peak_flops

# -----------------------------------------------------------------------------
# config: every key can be set in a config file or as --key=value (see configurator.py)
DEFAULTS = dict(
    # what to train: a preset from model.PRESETS; the architecture keys below default to None,
    # which means "what the preset (or GPTConfig) says": 24 layers x 128 wide, 4 heads
    model='espa',            # preln | postln | vanilla | vskipinit | uspa | espa | *-skip
    # I/O
    out_dir='out',           # checkpoints and log.jsonl
    init_from='scratch',     # 'scratch' or 'resume' (continue out_dir/ckpt.pt, or resume_from)
    resume_from='',          # a checkpoint path to resume from instead of out_dir/ckpt.pt
    overwrite=False,         # allow a scratch run to replace a run already saved in out_dir
    keep_last=3,             # keep the last K step checkpoints (ckpt_stepNNNNNNN.pt) besides ckpt.pt
    eval_interval=100,       # evaluate, log and save every N steps (and at the end)
    eval_iters=10,           # batches per split in each evaluation (a fixed set: comparable across evals)
    log_interval=10,         # progress line every N steps when there is no progress bar
    diag_interval=100,       # signal-propagation diagnostics into log.jsonl every N steps (0: never)
    eval_only=False,         # evaluate (the resumed model) once and exit
    sample_tokens=300,       # print a sample of this many tokens at the end (0: none)
    sample_start='Return ',  # the prompt of that sample (pydocs is full of 'Return the ...')
    # data
    dataset=data.DEFAULT_DATASET,  # prepared with `python data.py NAME`; pydocs is prepared on first run
    data_dir=data.DEFAULT_DATA_DIR,
    batch_size=16,           # sequences per micro-batch per process
    block_size=128,          # context length
    gradient_accumulation_steps=1,  # micro-batches per step over all processes (divided by world size)
    # optimizer: AdamW; vanilla presets train the blocks at learning_rate / n_layer (model.py)
    learning_rate=3e-3,
    max_iters=800,           # ~9 minutes for the default model on a quiet 2-core CPU (0.65 s/step)
    weight_decay=0.1,
    beta1=0.9,
    beta2=0.95,
    grad_clip=1.0,           # clip the global gradient norm (0: off)
    warmup_iters=100,        # linear warmup; the vanilla models need it (method.md section 10)
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


# keys a resumed run takes from the command line even when not given (everything else: the checkpoint)
MACHINE_KEYS = ('out_dir', 'init_from', 'resume_from', 'overwrite', 'eval_only', 'device', 'dtype', 'compile',
                'peak_flops')


def arch_types():
    """The type of each architecture key, from GPTConfig's annotations, so --n_layer=deep is refused."""
    types = {f.name: f.type for f in dataclasses.fields(GPTConfig) if f.type in (int, float, bool, str)}
    return {**types, 'lr_decay_iters': int, 'min_lr': float, 'peak_flops': float}


def help_text():
    src = open(__file__, encoding='utf-8').read().split('DEFAULTS = dict(')[1].split('\n)\n')[0]
    comments = {m[1]: m[2] for m in re.finditer(r'^\s*(\w+)=.*?#\s*(.*)$', src, re.M)}
    preset = config_for(DEFAULTS['model'])
    comments['vocab_size'] = "None: the dataset's vocabulary (set it larger to pad)"
    for k in ARCH_KEYS:
        comments.setdefault(k, f"None: the preset's value ({DEFAULTS['model']}: {getattr(preset, k)!r})")
    return format_help(DEFAULTS, comments) + '\n\nSee the top of train.py and README.md.'


class CheckpointError(Exception):
    """A checkpoint that cannot be used: missing, unreadable, or for another model."""


# -----------------------------------------------------------------------------
# checkpoints: written once to a temporary file, fsynced, then renamed into place, so that a
# crash or a full disk at any moment leaves the previous checkpoint untouched

CKPT_KEYS = ('model', 'model_args', 'iter_num', 'config')
STEP_RE = re.compile(r'^ckpt_step(\d{7,})\.pt$')


def _fsync_dir(folder):
    """Make the renames themselves durable (not possible everywhere, e.g. Windows; then skip)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


def save_checkpoint(state, folder, names):
    """Write `state` once and publish it under every file name in `names`, the last one last.
    On any failure the temporary files are removed, nothing under `names` has changed, and the
    error propagates."""
    tmp = os.path.join(folder, f'.tmp-{os.getpid()}-{names[-1]}')
    made = [tmp]
    try:
        with open(tmp, 'wb') as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        delay = float(os.environ.get('TRAIN_TEST_SAVE_DELAY', 0) or 0)
        if delay > 0:  # test hook, see the top of this file
            print(f"[test hook] checkpoint written to {tmp}; sleeping {delay}s before renaming it",
                  file=sys.stderr, flush=True)
            time.sleep(delay)
        for name in names[:-1]:  # extra names are hard links to the same bytes (a copy where links fail)
            extra = tmp + '.' + name
            made.append(extra)
            try:
                os.link(tmp, extra)
            except OSError:
                shutil.copyfile(tmp, extra)
            os.replace(extra, os.path.join(folder, name))
        os.replace(tmp, os.path.join(folder, names[-1]))
        _fsync_dir(folder)
    except BaseException:
        for p in made:
            try:
                os.remove(p)
            except OSError:
                pass
        raise


def prune_step_checkpoints(folder, keep):
    steps = sorted((int(m[1]), n) for n in os.listdir(folder) if (m := STEP_RE.match(n)))
    for _, name in steps[:max(0, len(steps) - keep)]:
        try:
            os.remove(os.path.join(folder, name))
        except OSError:
            pass


def load_checkpoint(path, map_location='cpu', hint=''):
    """Load and sanity-check a checkpoint; CheckpointError (with what to do) if it is unusable."""
    folder = os.path.dirname(path) or '.'
    others = sorted(n for n in os.listdir(folder) if n.startswith('ckpt') and n.endswith('.pt')
                    and n != os.path.basename(path)) if os.path.isdir(folder) else []
    alt = (f" Other checkpoints in {folder}: {', '.join(others)}; resume from one with "
           f"--resume_from={os.path.join(folder, others[-1])}." if others else '')
    if not os.path.isfile(path):
        raise CheckpointError(f"no checkpoint at {path}: the file does not exist.{alt} {hint}".rstrip())
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:
        why = str(e).strip().splitlines()[0][:200] if str(e).strip() else ''
        raise CheckpointError(f"checkpoint {path} cannot be read ({type(e).__name__}: {why}): the file "
                              f"is damaged (an interrupted copy?) or not a checkpoint of this project."
                              f"{alt}") from None
    missing = [k for k in CKPT_KEYS if not isinstance(ckpt, dict) or k not in ckpt]
    if missing:
        raise CheckpointError(f"checkpoint {path} lacks {', '.join(missing)}: it was not written by this "
                              f"train.py.{alt}")
    names = {f.name for f in dataclasses.fields(GPTConfig)}
    unknown = sorted(set(ckpt['model_args']) - names)
    if unknown:
        raise CheckpointError(f"checkpoint {path} has model settings this model.py does not know "
                              f"({', '.join(unknown)}): it comes from another version of the code.")
    return ckpt


def model_from_checkpoint(ckpt, path):
    try:
        model = GPT(GPTConfig(**ckpt['model_args']))
        # '_orig_mod.' (torch.compile) and 'module.' (DDP) prefixes come from checkpoints saved from a
        # wrapped model (nanoGPT's); ours are saved from the plain module, but accept both
        state = {re.sub(r'^(_orig_mod\.|module\.)+', '', k): v for k, v in ckpt['model'].items()}
        model.load_state_dict(state)
    except Exception as e:
        raise CheckpointError(f"checkpoint {path} does not fit the model it describes "
                              f"({type(e).__name__}: {str(e)[:300]}).") from None
    return model


def rng_state():
    """Every RNG this process uses, as tensors and plain lists (torch.load(weights_only=True) safe)."""
    np_state = np.random.get_state()
    return dict(python=random.getstate(), numpy=[np_state[0], np_state[1].tolist(), *np_state[2:]],
                torch=torch.get_rng_state(),
                cuda=torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [])


def set_rng_state(s):
    v, internal, gauss = s['python']
    random.setstate((v, tuple(internal), gauss))
    np.random.set_state((s['numpy'][0], np.array(s['numpy'][1], dtype=np.uint32), *s['numpy'][2:]))
    torch.set_rng_state(s['torch'])
    if s['cuda'] and torch.cuda.is_available() and len(s['cuda']) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(s['cuda'])


# -----------------------------------------------------------------------------
# learning rate: linear warmup, cosine down to min_lr at lr_decay_iters, then flat

def get_lr(it, learning_rate, warmup_iters, lr_decay_iters, min_lr):
    if it < warmup_iters:
        return learning_rate * (it + 1) / (warmup_iters + 1)
    if it >= lr_decay_iters:
        return min_lr
    ratio = (it - warmup_iters) / max(1, lr_decay_iters - warmup_iters)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (learning_rate - min_lr)


# -----------------------------------------------------------------------------
# checks that run before anything is written; each raises ConfigError with what to do

def check_config(c, world_size):
    def need(ok, msg):
        if not ok:
            raise ConfigError(msg)
    need(c['init_from'] in ('scratch', 'resume'),
         f"init_from must be 'scratch' or 'resume' (got {c['init_from']!r}): 'resume' continues "
         f"out_dir/ckpt.pt.")
    for k in ('learning_rate',):
        need(c[k] > 0 and math.isfinite(c[k]), f"{k} must be > 0 and finite (got {c[k]}); e.g. --{k}=3e-3")
    for k in ('max_iters', 'warmup_iters', 'keep_last', 'diag_interval', 'sample_tokens'):
        need(c[k] >= 0, f"{k} must be >= 0 (got {c[k]})")
    for k in ('batch_size', 'block_size', 'gradient_accumulation_steps', 'eval_interval', 'eval_iters',
              'log_interval', 'max_bad_steps'):
        need(c[k] >= 1, f"{k} must be >= 1 (got {c[k]})")
    need(c['weight_decay'] >= 0, f"weight_decay must be >= 0 (got {c['weight_decay']})")
    need(c['grad_clip'] >= 0, f"grad_clip must be >= 0, 0 turning clipping off (got {c['grad_clip']})")
    for k in ('beta1', 'beta2'):
        need(0 <= c[k] < 1, f"{k} must be in [0, 1) (got {c[k]})")
    need(c['spike_factor'] > 1, f"spike_factor must be > 1 (got {c['spike_factor']}); --spike_factor=inf "
                                f"turns the spike check off (NaN/inf losses are still never applied)")
    need(c['min_lr'] is None or 0 <= c['min_lr'] <= c['learning_rate'],
         f"min_lr must be between 0 and learning_rate={c['learning_rate']} (got {c['min_lr']})")
    decay = c['max_iters'] if c['lr_decay_iters'] is None else c['lr_decay_iters']
    need(c['warmup_iters'] <= c['max_iters'] or c['eval_only'],
         f"warmup_iters={c['warmup_iters']} is more than max_iters={c['max_iters']}: the run would end "
         f"before the learning rate is up. Use a shorter warmup, e.g. --warmup_iters="
         f"{c['max_iters'] // 10}, or a longer run.")
    need(c['warmup_iters'] <= decay, f"warmup_iters={c['warmup_iters']} is more than lr_decay_iters={decay}")
    need(c['peak_flops'] is None or c['peak_flops'] > 0, f"peak_flops must be > 0 FLOP/s (got {c['peak_flops']})")
    need(c['dtype'] in ('auto', 'float32', 'bfloat16', 'float16'),
         f"dtype must be auto, float32, bfloat16 or float16 (got {c['dtype']!r})")
    need(c['gradient_accumulation_steps'] % world_size == 0,
         f"gradient_accumulation_steps={c['gradient_accumulation_steps']} counts micro-batches over all "
         f"{world_size} processes, so it must be a multiple of {world_size}; e.g. "
         f"--gradient_accumulation_steps={world_size * max(1, c['gradient_accumulation_steps'] // world_size)}")


def pick_device(want, local_rank, ddp):
    if want == 'auto':
        want = 'cuda' if torch.cuda.is_available() else 'cpu'
    if not re.fullmatch(r'cpu|mps|cuda(:\d+)?', want):
        raise ConfigError(f"device must be auto, cpu, cuda, cuda:N or mps (got {want!r})")
    if want.startswith('cuda'):
        if not torch.cuda.is_available():
            raise ConfigError(f"device={want} was asked for, but torch sees no CUDA GPU "
                              f"(torch {torch.__version__}); use --device=cpu or --device=auto.")
        if ddp:
            want = f'cuda:{local_rank}'
        index = int(want.split(':')[1]) if ':' in want else 0
        if index >= torch.cuda.device_count():
            raise ConfigError(f"device={want}, but there are {torch.cuda.device_count()} CUDA devices")
    if want == 'mps' and not torch.backends.mps.is_available():
        raise ConfigError("device=mps was asked for, but MPS is not available; use --device=cpu")
    return want


# -----------------------------------------------------------------------------

def main(argv):
    if '-h' in argv or '--help' in argv:
        print(help_text())
        return 0
    try:
        return train(argv)
    except (ConfigError, CheckpointError, data.DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # a second Ctrl-C: no save; every file already saved is complete
        print("aborted; the checkpoints already saved are intact", file=sys.stderr)
        return 130


def train(argv):
    # ---- config, and everything that can be wrong with it, before any file is touched ----
    given = set()
    cfg = configure(DEFAULTS, argv, types=arch_types(), given=given)
    ddp = int(os.environ.get('RANK', -1)) != -1  # started by torchrun?
    rank, local_rank, world_size = ((int(os.environ['RANK']), int(os.environ.get('LOCAL_RANK', 0)),
                                     int(os.environ['WORLD_SIZE'])) if ddp else (0, 0, 1))
    master = rank == 0

    ckpt, ckpt_path = None, None
    if cfg['init_from'] == 'resume':
        # A resumed run continues the saved run: its saved config is the default, and only what
        # you set now (e.g. a larger --max_iters) changes. nanoGPT instead silently reverts every
        # key you do not repeat to train.py's defaults.
        ckpt_path = cfg['resume_from'] or os.path.join(cfg['out_dir'], 'ckpt.pt')
        ckpt = load_checkpoint(ckpt_path, hint="To resume, point --out_dir (or --resume_from) at the run "
                               "you mean; to start a new run, use --init_from=scratch.")
        # Where the run lives and what machine runs it always come from this command, not the checkpoint.
        saved = {k: v for k, v in ckpt['config'].items() if k in DEFAULTS and k not in MACHINE_KEYS}
        changed = {k: (saved[k], cfg[k]) for k in given if k in saved and saved[k] != cfg[k]}
        cfg = {**cfg, **saved, **{k: cfg[k] for k in given}}
    check_config(cfg, world_size)

    overrides = {k: cfg[k] for k in ARCH_KEYS if cfg[k] is not None}
    try:
        model_args = dataclasses.asdict(config_for(cfg['model'], block_size=cfg['block_size'], **overrides))
    except (ValueError, TypeError) as e:
        raise ConfigError(str(e)) from None
    if ckpt is not None:
        # the model is rebuilt from the checkpoint; an architecture key you set now must agree with it
        saved_model = ckpt['config'].get('model')
        if 'model' in given and saved_model is not None and cfg['model'] != saved_model:
            raise ConfigError(f"{ckpt_path} holds a --model={saved_model} run; you asked for "
                              f"--model={cfg['model']}. Drop --model to resume it, or start a new run "
                              f"in another --out_dir.")
        diff = [f"{k}={ckpt['model_args'][k]!r} (you asked for {model_args[k]!r})"
                for k in model_args if k in given and k in ckpt['model_args']
                and k != 'vocab_size' and model_args[k] != ckpt['model_args'][k]]
        if diff:
            raise ConfigError(f"{ckpt_path} was trained with a different architecture: "
                              f"{', '.join(diff)}. A checkpoint only resumes into the model it was "
                              f"saved from: drop those settings, or start a new run in another --out_dir.")
        model_args = dict(ckpt['model_args'])
    device = pick_device(cfg['device'], local_rank, ddp)
    device_type = 'cuda' if device.startswith('cuda') else device
    dtype = cfg['dtype']
    if dtype == 'auto':
        dtype = 'bfloat16' if device_type == 'cuda' and torch.cuda.is_bf16_supported() else 'float32'
    if dtype == 'float16' and device_type != 'cuda':
        raise ConfigError("dtype=float16 needs a CUDA GPU (it trains with a loss scaler); use bfloat16 or float32")

    # the data: the default dataset is prepared on first use, any other must be prepared already
    name, data_dir = cfg['dataset'], cfg['data_dir']
    need_prepare = False
    if not os.path.exists(os.path.join(data_dir, name, 'meta.json')):
        if name != data.DEFAULT_DATASET:
            cmd = data._prepare_cmd(name, data_dir) if name in data.DATASETS else \
                f'python data.py {name} --input=PATH'
            raise ConfigError(f"dataset '{name}' is not prepared: {os.path.join(data_dir, name, 'meta.json')} "
                              f"does not exist. Prepare it first with `{cmd}` (known datasets: "
                              f"{', '.join(data.DATASETS)}), or pick another --dataset / --data_dir.")
        need_prepare = True
    else:
        meta = data.load_meta(data_dir, name)
    def check_meta(meta):
        if ckpt is not None and ckpt.get('meta') and (ckpt['meta'].get('tokenizer'), ckpt['meta'].get(
                'vocab_size')) != (meta['tokenizer'], meta['vocab_size']):
            raise ConfigError(f"{ckpt_path} was trained on {ckpt['meta'].get('tokenizer')} tokens "
                              f"(vocab {ckpt['meta'].get('vocab_size')}), but dataset '{name}' in {data_dir} "
                              f"uses {meta['tokenizer']} tokens (vocab {meta['vocab_size']}): pick the "
                              f"dataset the run was trained on (--dataset, --data_dir).")
        if ckpt is None and cfg['vocab_size'] is not None and cfg['vocab_size'] < meta['vocab_size']:
            raise ConfigError(f"vocab_size={cfg['vocab_size']} is smaller than the dataset's vocabulary "
                              f"({meta['vocab_size']} tokens); leave it unset, or make it larger to pad.")
        for split in ('train', 'val'):
            n = meta[f'{split}_tokens']
            if n < cfg['block_size'] + 1:
                raise ConfigError(f"the {split} split of {name} has {n} tokens, fewer than block_size+1="
                                  f"{cfg['block_size'] + 1}: use a smaller --block_size or more data.")
    if not need_prepare:
        check_meta(meta)

    out_dir = cfg['out_dir']
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise ConfigError(f"out_dir={out_dir} exists and is not a folder")
    existing = os.path.join(out_dir, 'ckpt.pt')
    if cfg['init_from'] == 'scratch' and os.path.exists(existing) and not cfg['overwrite'] and not cfg['eval_only']:
        raise ConfigError(f"{existing} already holds a run. Continue it with --init_from=resume, start "
                          f"over with --overwrite=True (its checkpoints get replaced as the new run "
                          f"saves), or use another --out_dir.")

    # ---- from here on files may be written (the default dataset; out_dir only further down) ----
    if ddp:
        import torch.distributed as dist
        from torch.nn.parallel import DistributedDataParallel as DDP
        if device_type == 'cuda':
            torch.cuda.set_device(device)
        dist.init_process_group(backend='nccl' if device_type == 'cuda' else 'gloo')
    if need_prepare:
        if local_rank == 0:
            print(f"preparing the default dataset '{name}' in {data_dir} (first run only)")
            data.prepare(name, data_dir=data_dir)
        if ddp:
            dist.barrier()
        meta = data.load_meta(data_dir, name)
        check_meta(meta)
    train_tokens = data.load_tokens(data_dir, name, 'train')
    val_tokens = data.load_tokens(data_dir, name, 'val')
    if ckpt is None:
        model_args['vocab_size'] = cfg['vocab_size'] or meta['vocab_size']
    torch.manual_seed(cfg['seed'])  # the same initial weights in every process
    random.seed(cfg['seed'])
    np.random.seed(cfg['seed'])
    if device_type == 'cuda':
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    ptdtype = {'float32': torch.float32, 'bfloat16': torch.bfloat16, 'float16': torch.float16}[dtype]
    autocast = nullcontext() if dtype == 'float32' else torch.autocast(device_type, dtype=ptdtype)

    # ---- model, optimizer, and the saved state on resume ----
    if ckpt is None:
        raw_model = GPT(GPTConfig(**model_args))
        iter_num, best_val_loss, tokens_seen, elapsed_prev = 0, float('inf'), 0, 0.0
        loss_ema, logged_iter = None, -1
    else:
        raw_model = model_from_checkpoint(ckpt, ckpt_path)
        iter_num, best_val_loss = int(ckpt['iter_num']), float(ckpt.get('best_val_loss', float('inf')))
        tokens_seen, elapsed_prev = int(ckpt.get('tokens', 0)), float(ckpt.get('elapsed_s', 0.0))
        loss_ema, logged_iter = ckpt.get('loss_ema'), int(ckpt.get('logged_iter', -1))
    raw_model.to(device)
    optimizer = raw_model.configure_optimizers(cfg['weight_decay'], cfg['learning_rate'],
                                               (cfg['beta1'], cfg['beta2']), device_type)
    scaler = torch.amp.GradScaler(device_type, enabled=dtype == 'float16')
    if ckpt is not None:
        try:
            optimizer.load_state_dict(ckpt['optimizer'])
        except Exception as e:
            raise CheckpointError(f"the optimizer state in {ckpt_path} does not fit this model "
                                  f"({type(e).__name__}: {str(e)[:200]})") from None
        if ckpt.get('scaler'):
            scaler.load_state_dict(ckpt['scaler'])
        states = ckpt.get('rng') or []
        if states:
            if len(states) != world_size and master:
                print(f"note: the checkpoint was saved by {len(states)} processes, this run has "
                      f"{world_size}: the random streams (dropout) will differ from the original run")
            set_rng_state(states[rank] if rank < len(states) else states[0])
        ckpt = None  # free the memory: the model and optimizer hold copies
    else:
        torch.manual_seed(cfg['seed'] + rank)  # dropout differs between processes
    # ---- only now, with the model built and the checkpoint loaded, out_dir changes ----
    if master and not cfg['eval_only']:
        os.makedirs(out_dir, exist_ok=True)
        for n in os.listdir(out_dir):
            old_run = cfg['init_from'] == 'scratch' and cfg['overwrite'] and (
                n == 'log.jsonl' or n in ('ckpt.pt', 'ckpt_best.pt') or STEP_RE.match(n))
            if (n.startswith('.tmp-') and 'ckpt' in n) or old_run:  # a killed save's leftovers, or --overwrite
                os.remove(os.path.join(out_dir, n))

    fwd_model = torch.compile(raw_model) if cfg['compile'] else raw_model  # compile before DDP wraps it
    model = DDP(fwd_model, device_ids=[local_rank] if device_type == 'cuda' else None) if ddp else fwd_model

    accum = cfg['gradient_accumulation_steps'] // world_size  # micro-batches per process per step
    B, T = cfg['batch_size'], cfg['block_size']
    tokens_per_iter = B * T * accum * world_size
    lr_decay_iters = cfg['max_iters'] if cfg['lr_decay_iters'] is None else cfg['lr_decay_iters']
    min_lr = cfg['learning_rate'] / 10 if cfg['min_lr'] is None else cfg['min_lr']
    peak = cfg['peak_flops'] or peak_flops(device)
    flops_per_iter = raw_model.flops_per_token(T) * tokens_per_iter

    def batch(tokens, step, micro_step, seed, n_accum=accum, r=rank, ws=world_size):
        x, y = data.get_batch(tokens, step, micro_step, B, T, seed=seed, rank=r, world_size=ws, grad_accum=n_accum)
        x, y = torch.from_numpy(x), torch.from_numpy(y)
        if device_type == 'cuda':
            return x.pin_memory().to(device, non_blocking=True), y.pin_memory().to(device, non_blocking=True)
        return x.to(device), y.to(device)

    def all_sum(t):
        if ddp:
            dist.all_reduce(t)
        return t

    @torch.no_grad()
    def estimate_loss():
        """Mean loss on a fixed set of eval_iters batches per split (shared out over the processes),
        so evaluations at different steps and in different runs measure the same thing."""
        raw_model.eval()
        out = {}
        for split, tokens in (('train', train_tokens), ('val', val_tokens)):
            total = torch.zeros(2, device=device)
            for k in range(rank, cfg['eval_iters'], world_size):
                x, y = batch(tokens, k, 0, cfg['seed'] + 1, n_accum=1, r=0, ws=1)
                with autocast:
                    _, loss = fwd_model(x, y)
                total += torch.stack([loss.float(), torch.ones((), device=device)])
            total = all_sum(total)
            out[split] = (total[0] / total[1]).item()
        raw_model.train()
        return out

    if cfg['eval_only']:  # report and leave; nothing is written
        losses = estimate_loss()
        if master:
            print(f"step {iter_num}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f} "
                  f"({cfg['eval_iters']} batches of {B} x {T} tokens per split)")
        if ddp:
            dist.destroy_process_group()
        return 0

    # ---- log.jsonl: a resumed run keeps the records up to its checkpoint, a new run starts afresh ----
    log_path = os.path.join(out_dir, 'log.jsonl')
    if master:
        kept = []
        if cfg['init_from'] == 'resume' and os.path.exists(log_path):
            with open(log_path, encoding='utf-8') as f:
                for line in f:
                    try:
                        rec = json.loads(line)
                    except ValueError:
                        continue  # a line cut by a crash
                    if rec.get('iter', -1) < iter_num or (rec.get('iter') == iter_num and logged_iter == iter_num):
                        kept.append(line if line.endswith('\n') else line + '\n')
        with open(log_path + '.tmp', 'w', encoding='utf-8') as f:
            f.writelines(kept)
        os.replace(log_path + '.tmp', log_path)

    def log(record):
        if master:
            with open(log_path, 'a', encoding='utf-8') as f:
                f.write(json.dumps(record) + '\n')

    # ---- signals: finish the step, save, exit cleanly; a second Ctrl-C aborts at once ----
    stop = {'signal': None}

    def on_signal(signum, frame):
        if stop['signal'] is not None:
            raise KeyboardInterrupt
        stop['signal'] = signum
    old_handlers = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}

    last_saved = {'path': ckpt_path if cfg['init_from'] == 'resume' else None, 'iter': iter_num}
    if cfg['init_from'] == 'resume' and cfg['resume_from']:
        last_saved['path'] = cfg['resume_from']

    def checkpoint(names_extra, evaluated):
        """Save the current state as ckpt.pt (+ extra names) from rank 0. Returns True on success."""
        states = [rng_state()]
        if ddp:
            states = [None] * world_size
            dist.all_gather_object(states, rng_state())
        if not master:
            return True
        state = dict(model=raw_model.state_dict(), optimizer=optimizer.state_dict(),
                     scaler=scaler.state_dict() if scaler.is_enabled() else None,
                     model_args=model_args, iter_num=iter_num, best_val_loss=best_val_loss,
                     config=cfg, meta=meta, rng=states, tokens=tokens_seen, loss_ema=loss_ema,
                     elapsed_s=elapsed_prev + time.time() - t_start,
                     logged_iter=iter_num if evaluated else -1, version=1)
        names = [f'ckpt_step{iter_num:07d}.pt'] * (cfg['keep_last'] > 0) + names_extra + ['ckpt.pt']
        try:
            save_checkpoint(state, out_dir, names)
        except Exception as e:
            prev = (f"the previous checkpoint {last_saved['path']} (step {last_saved['iter']}) is intact"
                    if last_saved['path'] else "no earlier checkpoint exists")
            say(f"error: could not save the checkpoint of step {iter_num} in {out_dir} "
                f"({type(e).__name__}: {e}); {prev}. Free disk space (or fix {out_dir}); training goes on "
                f"and the next save tries again.", err=True)
            return False
        prune_step_checkpoints(out_dir, cfg['keep_last'])
        last_saved.update(path=os.path.join(out_dir, 'ckpt.pt'), iter=iter_num)
        return True

    # ---- progress: a tqdm bar in a terminal, plain lines otherwise ----
    from tqdm import tqdm
    bar = tqdm(total=cfg['max_iters'], initial=iter_num, unit='it', dynamic_ncols=True,
               disable=None if master else True)
    bar_on = not bar.disable

    def say(msg, err=False):
        if master:
            (tqdm.write(msg, file=sys.stderr) if err else tqdm.write(msg)) if bar_on else \
                print(msg, file=sys.stderr if err else sys.stdout, flush=True)

    if master:
        n_params = sum(p.numel() for p in raw_model.parameters())
        say(f"{cfg['model']}: {n_params / 1e6:.2f}M parameters, {model_args['n_layer']} layers x "
            f"{model_args['n_embd']}, attn={model_args['attn']} skip={model_args['skip']} "
            f"norm={model_args['norm']} | {name}: {meta['tokenizer']} tokens, vocab {meta['vocab_size']} | "
            f"{tokens_per_iter:,} tokens/step on {world_size} x {device} ({dtype})"
            + (f" | resuming {last_saved['path']} at step {iter_num}" if cfg['init_from'] == 'resume' else ''))
        if cfg['init_from'] == 'resume' and changed:
            say("changed from the saved run: " + ', '.join(f"{k} {a!r} -> {b!r}" for k, (a, b) in changed.items()))

    resume_cmd = 'python train.py ' + ' '.join(
        shlex.quote(a) for a in argv if not a.startswith(('--init_from=', '--overwrite='))) + ' --init_from=resume'
    if ddp:
        resume_cmd = resume_cmd.replace('python train.py', f'torchrun --standalone --nproc_per_node={world_size} train.py')
    resume_cmd = re.sub(' +', ' ', resume_cmd)

    # ---- the loop ----
    t_start = time.time()
    t_window, iters_window = time.time(), 0
    bad_steps, exit_code, last_loss = 0, 0, float('nan')
    diag_x = batch(val_tokens, 0, 0, cfg['seed'] + 1, n_accum=1, r=0, ws=1)[0][:8]
    try:
        while True:
            lr = get_lr(iter_num, cfg['learning_rate'], cfg['warmup_iters'], lr_decay_iters, min_lr)
            already_logged = iter_num == logged_iter  # the run we resumed logged this step already
            t_eval = time.time()

            # evaluate, log and save every eval_interval steps and at the end
            if (iter_num % cfg['eval_interval'] == 0 or iter_num >= cfg['max_iters']) and not already_logged:
                losses = estimate_loss()
                elapsed = elapsed_prev + time.time() - t_start
                record = dict(kind='eval', iter=iter_num, train_loss=losses['train'], val_loss=losses['val'],
                              lr=lr, tokens=tokens_seen, elapsed_s=round(elapsed, 3))
                log(record)
                say(f"step {iter_num}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}")
                healthy = bad_steps == 0 and math.isfinite(losses['val'])
                if iter_num > 0 and healthy:
                    improved = losses['val'] < best_val_loss
                    if improved:
                        best_val_loss = losses['val']
                    if not checkpoint(['ckpt_best.pt'] if improved else [], evaluated=True) \
                            and iter_num >= cfg['max_iters']:
                        exit_code = 1
                elif not healthy:
                    say(f"not saving step {iter_num}: the model is not healthy (val loss "
                        f"{losses['val']:.4g}, {bad_steps} bad steps in a row)", err=True)
            if cfg['diag_interval'] and iter_num % cfg['diag_interval'] == 0 and not already_logged and master:
                raw_model.eval()
                with torch.no_grad():
                    diag = raw_model.signal_diagnostics(diag_x)
                raw_model.train()
                log(dict(kind='diag', iter=iter_num, **diag))
            if iter_num >= cfg['max_iters']:
                break
            t_window += time.time() - t_eval  # tokens/s and MFU count training steps only

            # one optimisation step: accum micro-batches per process, gradients averaged by DDP
            for g in optimizer.param_groups:
                g['lr'] = lr * g.get('lr_scale', 1.0)
            loss_sum = torch.zeros((), device=device)
            for micro_step in range(accum):
                if ddp:  # sync gradients only on the last micro-step; set before the forward
                    model.require_backward_grad_sync = micro_step == accum - 1
                x, y = batch(train_tokens, iter_num, micro_step, cfg['seed'])
                with autocast:
                    _, loss = model(x, y)
                    loss = loss / accum
                scaler.scale(loss).backward()
                loss_sum += loss.detach().float()
            if scaler.is_enabled():
                scaler.unscale_(optimizer)
            grad_norm = torch.nn.utils.clip_grad_norm_(raw_model.parameters(),
                                                       cfg['grad_clip'] if cfg['grad_clip'] > 0 else float('inf'))
            # one all-reduce carries the loss and "was I signalled", so every process decides alike
            stats = all_sum(torch.stack([loss_sum, torch.tensor(float(stop['signal'] is not None), device=device)]))
            last_loss = stats[0].item() / world_size
            grad_ok = math.isfinite(grad_norm.item()) or scaler.is_enabled()  # the scaler skips inf grads itself
            bad = not math.isfinite(last_loss) or not grad_ok or \
                (loss_ema is not None and last_loss > cfg['spike_factor'] * loss_ema)
            if bad:
                bad_steps += 1
                say(f"step {iter_num}: loss {last_loss:.4g} (running average "
                    f"{loss_ema if loss_ema is not None else float('nan'):.4g}), gradient norm "
                    f"{grad_norm.item():.4g}: update skipped ({bad_steps}/{cfg['max_bad_steps']})", err=True)
                if scaler.is_enabled():
                    scaler.update()
            else:
                bad_steps = 0
                scaler.step(optimizer)
                scaler.update()
                loss_ema = last_loss if loss_ema is None else 0.9 * loss_ema + 0.1 * last_loss
            optimizer.zero_grad(set_to_none=True)
            iter_num += 1
            tokens_seen += tokens_per_iter
            iters_window += 1

            if bad_steps >= cfg['max_bad_steps']:
                where = (f"the last good checkpoint is {last_saved['path']} (step {last_saved['iter']})"
                         if last_saved['path'] else "no checkpoint was saved before it")
                say(f"error: training diverged at step {iter_num - 1}: {bad_steps} steps in a row had a "
                    f"NaN/inf loss or gradient, or a loss above spike_factor={cfg['spike_factor']} x the "
                    f"running average (last loss {last_loss:.4g}). None of them was applied and nothing "
                    f"was saved from the diverged model; {where}. Try a lower learning rate (now "
                    f"{cfg['learning_rate']:g}, e.g. --learning_rate={cfg['learning_rate'] / 3:.2g}) and a "
                    f"longer warmup (now {cfg['warmup_iters']}, e.g. --warmup_iters="
                    f"{max(100, 2 * cfg['warmup_iters'])})"
                    + (f", continuing from that checkpoint: {resume_cmd} --resume_from={last_saved['path']}"
                       if last_saved['path'] else '') + '.', err=True)
                exit_code = 3
                break

            # progress: tokens/s, and MFU where the device's peak is known
            if master and (iter_num % cfg['log_interval'] == 0 or bar_on):
                dt = (time.time() - t_window) / max(1, iters_window)
                tok_s = tokens_per_iter / dt
                mfu = flops_per_iter / dt / (peak * world_size) if peak else None
                if bar_on:
                    bar.set_postfix_str(f"loss {last_loss:.4f} lr {lr:.2e} {tok_s:,.0f} tok/s"
                                        + (f" mfu {100 * mfu:.1f}%" if mfu else ''), refresh=False)
                else:
                    say(f"iter {iter_num}/{cfg['max_iters']}: loss {last_loss:.4f}, lr {lr:.2e}, "
                        f"{1000 * dt:.0f} ms/iter, {tok_s:,.0f} tok/s" + (f", mfu {100 * mfu:.1f}%" if mfu else ''))
                if iter_num % cfg['log_interval'] == 0:
                    t_window, iters_window = time.time(), 0
            bar.update(1)

            if stats[1].item() > 0:  # SIGINT/SIGTERM: the step is done; save and leave
                signame = signal.Signals(int(stop['signal'] or signal.SIGTERM)).name if stop['signal'] else 'a signal'
                if bad_steps == 0:
                    ok = checkpoint([], evaluated=False)
                    say(f"stopped by {signame} after step {iter_num}" +
                        (f"; saved {os.path.join(out_dir, 'ckpt.pt')}. Continue with:\n  {resume_cmd}"
                         if ok else ''))
                    exit_code = 0 if ok else 1
                else:
                    say(f"stopped by {signame} after step {iter_num}; not saved (the last steps were bad). "
                        f"Last good checkpoint: {last_saved['path']}", err=True)
                break
    finally:
        bar.close()
        for s, h in old_handlers.items():
            signal.signal(s, h)

    if master and exit_code == 0 and cfg['sample_tokens'] and stop['signal'] is None:
        encode, decode = data.encoder(meta)
        start = encode(cfg['sample_start']) or [0]
        raw_model.eval()
        with autocast:
            out = raw_model.generate(torch.tensor([start], device=device), cfg['sample_tokens'],
                                     temperature=0.8, top_k=50)
        print('---------- sample ----------')
        print(decode(out[0].tolist()))
        print('----------------------------')
    if master and exit_code == 0 and last_saved['path']:
        print(f"checkpoint: {last_saved['path']} (step {last_saved['iter']}); log: {log_path}. "
              f"More text: python sample.py --out_dir={out_dir}")
    if ddp:
        dist.destroy_process_group()
    return exit_code


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
