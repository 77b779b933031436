"""
Checkpoints: what a run saves, how it is written so that a crash never leaves a broken one, and
how a saved run is picked up again exactly where it stopped.

A checkpoint is a dict of tensors and plain Python (loadable with torch.load(weights_only=True)):
model (the plain module's state_dict: no '_orig_mod.' or 'module.' prefixes), optimizer (one
state_dict per optimizer), scaler, model_args (the GPTConfig), config (every train.py key),
meta (the dataset's tokenizer), rng (every process's random state), run (a RunState) and
version. Version 1 (before this file) kept the RunState's fields as loose top-level keys and one
optimizer state; load() reads both.
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

import numpy as np
import torch

from model import GPT, GPTConfig

VERSION = 2
STEP_RE = re.compile(r'^ckpt_step(\d{7,})\.pt$')


class CheckpointError(Exception):
    """A checkpoint that cannot be used: missing, unreadable, or for another model."""


@dataclasses.dataclass
class RunState:
    """The counters saved with every checkpoint: where the run is and how it has gone so far."""
    iter_num: int = 0               # optimisation steps done
    best_val_loss: float = math.inf
    tokens: int = 0                 # training tokens seen
    elapsed_s: float = 0.0          # training wall time over all sessions
    loss_ema: float = None          # running average of the training loss: the divergence guard's
    logged_iter: int = -1           # the step whose evaluation log.jsonl already holds (-1: none)

    @classmethod
    def of(cls, ckpt):
        saved = ckpt['run'] if 'run' in ckpt else {   # version 1: loose keys
            'iter_num': ckpt['iter_num'], 'best_val_loss': ckpt.get('best_val_loss', math.inf),
            'tokens': ckpt.get('tokens', 0), 'elapsed_s': ckpt.get('elapsed_s', 0.0),
            'loss_ema': ckpt.get('loss_ema'), 'logged_iter': ckpt.get('logged_iter', -1)}
        return cls(**saved)

# -----------------------------------------------------------------------------
# writing: once to a temporary file, fsynced, then renamed into place, so that a crash or a full
# disk at any moment leaves the previous checkpoint untouched

def save_run(run, extra_names=()):
    """Save train.py's run (its raw_model, optimizers, scaler, cfg, meta and state): rank 0 writes
    ckpt.pt (+ extra_names, + ckpt_stepNNNNNNN.pt while keep_last > 0) and prunes old step
    checkpoints; every process hands in its RNG state. A failed write leaves the previous files
    as they were, says so, and the run goes on (the next save tries again). Returns whether this
    save worked; run.last_saved is the (path, step) of the last good checkpoint."""
    cfg, state = run.cfg, run.state
    rngs = [rng_state()] * run.world_size
    if run.world_size > 1:
        torch.distributed.all_gather_object(rngs, rng_state())
    if run.rank:
        return True
    names = [f'ckpt_step{state.iter_num:07d}.pt'] * (cfg['keep_last'] > 0) + list(extra_names)
    try:
        save(snapshot(run, rngs), cfg['out_dir'], names + ['ckpt.pt'])
        prune(cfg['out_dir'], cfg['keep_last'])
    except Exception as e:
        path, step = run.last_saved
        prev = (f"the previous checkpoint {path} (step {step}) is intact" if path
                else "no earlier checkpoint exists")
        print(f"error: could not save the checkpoint of step {state.iter_num} in {cfg['out_dir']} "
              f"({type(e).__name__}: {e}); {prev}. Free disk space (or fix {cfg['out_dir']}); "
              f"training goes on and the next save tries again.", file=sys.stderr, flush=True)
        return False
    run.last_saved = (os.path.join(cfg['out_dir'], 'ckpt.pt'), state.iter_num)
    return True


def snapshot(run, rngs):
    """Everything a checkpoint holds, as a dict of tensors and plain Python (see the top)."""
    return dict(model=run.raw_model.state_dict(),
                optimizer=[opt.state_dict() for opt in run.optimizers],
                scaler=run.scaler.state_dict() if run.scaler.is_enabled() else None,
                model_args=dataclasses.asdict(run.raw_model.config), config=run.cfg,
                meta=run.meta, rng=rngs, run=dataclasses.asdict(run.state), version=VERSION)


def save(obj, folder, names):
    """Write `obj` once and publish it under every file name in `names`, the last one last.
    On any failure the temporary files are removed, nothing under `names` has changed, and the
    error propagates. Test hook: TRAIN_TEST_SAVE_DELAY=SECONDS sleeps between writing and renaming
    (and says so on stderr), so that a test can kill the process in the middle of a save."""
    tmp = os.path.join(folder, f'.tmp-{os.getpid()}-{names[-1]}')
    made = [tmp]
    try:
        with open(tmp, 'wb') as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        delay = float(os.environ.get('TRAIN_TEST_SAVE_DELAY', 0) or 0)
        if delay > 0:
            print(f"[test hook] checkpoint written to {tmp}; sleeping {delay}s before renaming it",
                  file=sys.stderr, flush=True)
            time.sleep(delay)
        for name in names[:-1]:  # hard links to the same bytes (a copy where links fail)
            extra = tmp + '.' + name
            made.append(extra)
            try:
                os.link(tmp, extra)
            except OSError:
                shutil.copyfile(tmp, extra)
            os.replace(extra, os.path.join(folder, name))
        os.replace(tmp, os.path.join(folder, names[-1]))
        fsync_dir(folder)
    except BaseException:
        for p in made:
            try:
                os.remove(p)
            except OSError:
                pass
        raise


def fsync_dir(folder):
    """Make the renames themselves durable (not possible everywhere, e.g. Windows; then skip)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


def prune(folder, keep):
    """Keep the last `keep` step checkpoints (ckpt_stepNNNNNNN.pt) in folder."""
    steps = sorted((int(m[1]), n) for n in os.listdir(folder) if (m := STEP_RE.match(n)))
    for _, name in steps[:max(0, len(steps) - keep)]:
        try:
            os.remove(os.path.join(folder, name))
        except OSError:
            pass


def clean_out_dir(out_dir, overwrite):
    """A killed save's temporary files go; with overwrite, so does the old run (its checkpoints
    and log)."""
    os.makedirs(out_dir, exist_ok=True)
    for n in os.listdir(out_dir):
        old_run = overwrite and (n in ('log.jsonl', 'ckpt.pt', 'ckpt_best.pt') or STEP_RE.match(n))
        if (n.startswith('.tmp-') and 'ckpt' in n) or old_run:
            os.remove(os.path.join(out_dir, n))

# -----------------------------------------------------------------------------
# reading

def load(path, map_location='cpu', hint=''):
    """Load and sanity-check a checkpoint (either version); CheckpointError says what to do."""
    folder = os.path.dirname(path) or '.'
    others = sorted(n for n in os.listdir(folder) if n.startswith('ckpt') and n.endswith('.pt')
                    and n != os.path.basename(path)) if os.path.isdir(folder) else []
    alt = (f" Other checkpoints in {folder}: {', '.join(others)}; resume from one with "
           f"--resume_from={os.path.join(folder, others[-1])}." if others else '')
    if not os.path.isfile(path):
        raise CheckpointError(f"no checkpoint at {path}: the file does not exist.{alt} "
                              f"{hint}".rstrip())
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:
        why = str(e).strip().splitlines()[0][:200] if str(e).strip() else ''
        raise CheckpointError(f"checkpoint {path} cannot be read ({type(e).__name__}: {why}): the "
                              f"file is damaged (an interrupted copy?) or not a checkpoint of this "
                              f"project.{alt}") from None
    if isinstance(ckpt, dict) and 'run' not in ckpt and 'iter_num' in ckpt:
        ckpt['run'] = dataclasses.asdict(RunState.of(ckpt))             # version 1
    missing = [k for k in ('model', 'model_args', 'run', 'config')
               if not isinstance(ckpt, dict) or k not in ckpt]
    if missing:
        raise CheckpointError(f"checkpoint {path} lacks {', '.join(missing)}: it was not written "
                              f"by this project's train.py.{alt}")
    if isinstance(ckpt.get('optimizer'), dict):
        ckpt['optimizer'] = [ckpt['optimizer']]                          # version 1: one AdamW
    ckpt['config'].setdefault('optimizer', 'adamw')  # saved before the optimizer key: AdamW
    unknown = sorted(set(ckpt['model_args']) - {f.name for f in dataclasses.fields(GPTConfig)})
    if unknown:
        raise CheckpointError(f"checkpoint {path} has model settings this model.py does not know "
                              f"({', '.join(unknown)}): it comes from another version of the code.")
    return ckpt


def model_from(ckpt, path):
    """The GPT a checkpoint describes, with its weights."""
    try:
        model = GPT(GPTConfig(**ckpt['model_args']))
        # '_orig_mod.' (torch.compile) and 'module.' (DDP) prefixes come from checkpoints saved
        # from a wrapped model (nanoGPT's); ours are saved from the plain module, but accept both
        state = {re.sub(r'^(_orig_mod\.|module\.)+', '', k): v for k, v in ckpt['model'].items()}
        model.load_state_dict(state)
    except Exception as e:
        raise CheckpointError(f"checkpoint {path} does not fit the model it describes "
                              f"({type(e).__name__}: {str(e)[:300]}).") from None
    return model


def restore(ckpt, path, optimizers, scaler, rank, world_size):
    """Optimizer, loss-scaler and random states from a checkpoint, for process `rank` of
    world_size: what makes a resumed run continue exactly as if it had never stopped."""
    saved = ckpt.get('optimizer') or []
    try:
        if len(saved) != len(optimizers):
            raise ValueError(f"{len(saved)} saved optimizer states for {len(optimizers)} "
                             f"optimizers (was the run trained with another --optimizer?)")
        for opt, opt_state in zip(optimizers, saved):
            opt.load_state_dict(opt_state)
    except Exception as e:
        raise CheckpointError(f"the optimizer state in {path} does not fit this model "
                              f"({type(e).__name__}: {str(e)[:200]})") from None
    if ckpt.get('scaler'):
        scaler.load_state_dict(ckpt['scaler'])
    rngs = ckpt.get('rng') or []
    if rngs and len(rngs) != world_size and rank == 0:
        print(f"note: the checkpoint was saved by {len(rngs)} processes, this run has "
              f"{world_size}: the random streams (dropout) will differ from the original run")
    if rngs:
        set_rng_state(rngs[rank] if rank < len(rngs) else rngs[0])

# -----------------------------------------------------------------------------
# random state: every RNG a process uses, as tensors and plain lists (weights_only-safe)

def rng_state():
    np_state = np.random.get_state()
    return dict(python=random.getstate(),
                numpy=[np_state[0], np_state[1].tolist(), *np_state[2:]],
                torch=torch.get_rng_state(),
                cuda=torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [])


def set_rng_state(s):
    version, internal, gauss = s['python']
    random.setstate((version, tuple(internal), gauss))
    np.random.set_state((s['numpy'][0], np.array(s['numpy'][1], dtype=np.uint32),
                         *s['numpy'][2:]))
    torch.set_rng_state(s['torch'])
    if s['cuda'] and torch.cuda.is_available() and len(s['cuda']) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(s['cuda'])

# -----------------------------------------------------------------------------
# resuming a saved run

def load_for_resume(cfg, given, machine_keys):
    """init_from='resume': (the checkpoint, its path, the run's config, what you changed in it)."""
    path = cfg['resume_from'] or os.path.join(cfg['out_dir'], 'ckpt.pt')
    ckpt = load(path, hint="To resume, point --out_dir (or --resume_from) at the run you mean; "
                           "to start a new run, use --init_from=scratch.")
    return (ckpt, path, *resume_config(cfg, given, ckpt, machine_keys))


def resume_config(cfg, given, ckpt, machine_keys):
    """A resumed run continues the saved run: its saved config is the default and only what you
    set now (e.g. a larger --max_iters) changes; where the run lives and what machine runs it
    always come from this command. (nanoGPT instead reverts every key you do not repeat to
    train.py's defaults.) Returns (config, {key: (saved, now)} for what you changed)."""
    saved = {k: v for k, v in ckpt['config'].items() if k in cfg and k not in machine_keys}
    changed = {k: (saved[k], cfg[k]) for k in given if k in saved and saved[k] != cfg[k]}
    return {**cfg, **saved, **{k: cfg[k] for k in given}}, changed


def check_architecture(ckpt, path, model_args, given, model_name):
    """A checkpoint only resumes into the model it was saved from: an architecture key set now
    must agree. Returns the saved model's GPTConfig fields."""
    saved_model, saved_args = ckpt['config'].get('model'), ckpt['model_args']
    if 'model' in given and saved_model is not None and model_name != saved_model:
        raise CheckpointError(f"{path} holds a --model={saved_model} run; you asked for "
                              f"--model={model_name}. Drop --model to resume it, or start a new "
                              f"run in another --out_dir.")
    diff = [f"{k}={saved_args[k]!r} (you asked for {model_args[k]!r})" for k in model_args
            if k in given and k in saved_args and k != 'vocab_size'
            and model_args[k] != saved_args[k]]
    if diff:
        raise CheckpointError(f"{path} was trained with a different architecture: "
                              f"{', '.join(diff)}. A checkpoint only resumes into the model it was "
                              f"saved from: drop those settings, or start a new run in another "
                              f"--out_dir.")
    return dict(saved_args)


def check_tokenizer(ckpt, path, meta, name, data_dir):
    """A run resumes only on data of the tokenizer it was trained with."""
    saved = (ckpt or {}).get('meta') or {}
    if meta and saved and (saved.get('tokenizer'), saved.get('vocab_size')) != \
            (meta['tokenizer'], meta['vocab_size']):
        raise CheckpointError(f"{path} was trained on {saved.get('tokenizer')} tokens (vocab "
                              f"{saved.get('vocab_size')}), but dataset '{name}' in {data_dir} "
                              f"uses {meta['tokenizer']} tokens (vocab {meta['vocab_size']}): pick "
                              f"the dataset the run was trained on (--dataset, --data_dir).")


def check_out_dir(out_dir, new_run):
    """out_dir must be a folder, and a new run must not silently replace one saved there."""
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise CheckpointError(f"out_dir={out_dir} exists and is not a folder")
    if new_run and os.path.exists(os.path.join(out_dir, 'ckpt.pt')):
        raise CheckpointError(f"{os.path.join(out_dir, 'ckpt.pt')} already holds a run. Continue "
                              f"it with --init_from=resume, start over with --overwrite=True (its "
                              f"checkpoints get replaced as the new run saves), or use another "
                              f"--out_dir.")


def trim_log(log_path, state, resuming):
    """log.jsonl of a resumed run keeps the records up to its checkpoint (a crash may have logged
    later steps that are about to be redone); a new run starts it afresh."""
    kept = []
    if resuming and os.path.exists(log_path):
        with open(log_path, encoding='utf-8') as f:
            for line in f:
                try:
                    it = json.loads(line).get('iter', -1)
                except ValueError:
                    continue  # a line cut by a crash
                if it < state.iter_num or (it == state.iter_num == state.logged_iter):
                    kept.append(line if line.endswith('\n') else line + '\n')
    with open(log_path + '.tmp', 'w', encoding='utf-8') as f:
        f.writelines(kept)
    os.replace(log_path + '.tmp', log_path)


def resume_command(argv, world_size):
    """The command that continues this run (printed when a run is stopped)."""
    args = ' '.join(shlex.quote(a) for a in argv
                    if not a.startswith(('--init_from=', '--overwrite=')))
    launcher = 'python' if world_size == 1 else \
        f'torchrun --standalone --nproc_per_node={world_size}'
    return re.sub(' +', ' ', f'{launcher} train.py {args} --init_from=resume')


class Signals(list):
    """SIGINT/SIGTERM: the training loop finishes its step, saves and leaves; a second one aborts
    at once (KeyboardInterrupt). Holds the signals received."""
    def __init__(self):
        super().__init__()
        self.old = {s: signal.signal(s, self.on_signal) for s in (signal.SIGINT, signal.SIGTERM)}

    def on_signal(self, signum, frame):
        if self:
            raise KeyboardInterrupt
        self.append(signum)

    def restore(self):
        for s, h in self.old.items():
            signal.signal(s, h)
