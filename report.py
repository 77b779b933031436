"""
What a training run reports, and where: a progress line every log_interval steps (loss, ms/step,
tokens/s, MFU), out_dir/log.jsonl (one JSON object per evaluation and per diagnostics record), the
same evaluations in Weights & Biases when asked for (wandb_log), an opening line that says what
runs where, and at the end a sample of text and where the files are. Only rank 0 says anything.
"""
import contextlib
import json
import math
import os
import sys
import time

import torch

import data
from configurator import ConfigError
from hardware import peak_flops
from model import tat_note


def say(msg, err=False, rank=0):
    if rank == 0:
        print(msg, file=sys.stderr if err else sys.stdout, flush=True)


def import_wandb():
    """wandb only when asked for, and imported before anything is written: a missing package
    costs nothing."""
    try:
        import wandb
        return wandb
    except ImportError:
        raise ConfigError("wandb_log=True needs the wandb package: pip install wandb (or drop "
                          "--wandb_log)") from None


class Log:
    """out_dir/log.jsonl: 'eval' records (iter, train_loss, val_loss, lr, tokens, elapsed_s) and
    'diag' records (per-layer signal diagnostics); evaluations also go to a wandb run when one is
    started."""
    def __init__(self, out_dir, rank=0):
        self.path, self.rank, self.wandb = os.path.join(out_dir, 'log.jsonl'), rank, None

    def start_wandb(self, wandb, cfg):
        name = cfg['wandb_run_name'] or os.path.basename(os.path.abspath(cfg['out_dir']))
        self.wandb = wandb.init(project=cfg['wandb_project'], config=cfg, dir=cfg['out_dir'],
                                name=name)

    def __call__(self, record):
        if self.rank == 0:
            with open(self.path, 'a', encoding='utf-8') as f:
                f.write(json.dumps(record) + '\n')
            if self.wandb and record['kind'] == 'eval':
                self.wandb.log({'train/loss': record['train_loss'], 'val/loss': record['val_loss'],
                                'lr': record['lr'], 'tokens': record['tokens']},
                               step=record['iter'])

    def close(self):
        if self.wandb:
            self.wandb.finish()


class Progress:
    """The progress line. Time spent evaluating and saving (paused) is left out of ms/step,
    tokens/s and MFU; the run's wall time, pauses included, is kept in state.elapsed_s. MFU: the
    model's FLOPs per step against the peak of all devices (cfg['peak_flops'], or the device's
    bf16 peak from hardware.py; no MFU when neither is known)."""
    def __init__(self, cfg, model, device, state, tokens_per_step, world_size=1, rank=0):
        self.cfg, self.state, self.rank, self.tokens = cfg, state, rank, tokens_per_step
        peak = peak_flops(device) if cfg['peak_flops'] is None else cfg['peak_flops']
        flops_per_step = model.flops_per_token(cfg['block_size']) * tokens_per_step
        self.flops = flops_per_step / (peak * world_size) if peak else None  # s at 100% MFU
        self.t, self.n, self.t_run = time.time(), 0, time.time() - state.elapsed_s

    @contextlib.contextmanager
    def paused(self):
        t = time.time()
        self.state.elapsed_s = t - self.t_run
        yield
        self.t += time.time() - t

    def step(self, loss, lr):
        it, self.n = self.state.iter_num, self.n + 1
        if it % self.cfg['log_interval'] == 0:
            dt = (time.time() - self.t) / self.n
            mfu = f", mfu {100 * self.flops / dt:.1f}%" if self.flops else ''
            say(f"iter {it}/{self.cfg['max_iters']}: loss {loss:.4f}, lr {lr:.2e}, "
                f"{1000 * dt:.0f} ms/iter, {self.tokens / dt:,.0f} tok/s{mfu}", rank=self.rank)
            self.t, self.n = time.time(), 0


def opening(cfg, model, meta, state, where, resumed_from, changed):
    """What runs where; the TAT target actually built when it differs; what changed on resume."""
    a, note = model.config, tat_note(model.config)
    optim = (f"Muon lr {cfg['muon_lr']:g} + " * (cfg['optimizer'] == 'muon')
             + f"AdamW lr {cfg['learning_rate']:g}"
             + f", blocks at lr / {a.n_layer}" * (a.block_lr_rule == 'depth'))
    resuming = f" | resuming {resumed_from} at step {state.iter_num}" if resumed_from else ''
    say(f"{cfg['model']}: {model.num_params() / 1e6:.2f}M parameters, {a.n_layer} layers x "
        f"{a.n_embd}, attn={a.attn} skip={a.skip} norm={a.norm} | {optim} | {cfg['dataset']}: "
        f"{meta['tokenizer']} tokens, vocab {meta['vocab_size']} | {where}{resuming}")
    if note:
        say(note)
    if changed:
        say("changed from the saved run: " + ', '.join(f"{k} {old!r} -> {new!r}"
                                                       for k, (old, new) in changed.items()))


def skipped(cfg, state, loss, grad_norm, bad_steps, rank=0):
    """A step the divergence guard did not apply."""
    say(f"step {state.iter_num}: loss {loss:.4g} (running average "
        f"{state.loss_ema or math.nan:.4g}), gradient norm {grad_norm:.4g}: update skipped "
        f"({bad_steps}/{cfg['max_bad_steps']})", err=True, rank=rank)


def diverged(cfg, warmup, state, loss, bad_steps, last_saved, resume_cmd):
    path, step = last_saved
    where = (f"the last good checkpoint is {path} (step {step})" if path
             else "no checkpoint was saved before it")
    say(f"error: training diverged at step {state.iter_num - 1}: {bad_steps} steps in a row had a "
        f"NaN/inf loss or gradient, or a loss above spike_factor={cfg['spike_factor']} x the "
        f"running average (last loss {loss:.4g}). None of them was applied and nothing was saved "
        f"from the diverged model; {where}. Try a lower learning rate (now "
        f"{cfg['learning_rate']:g}, e.g. --learning_rate={cfg['learning_rate'] / 3:.2g}) and a "
        f"longer warmup (now {warmup}, e.g. --warmup_iters={max(100, 2 * warmup)})"
        + (f", continuing from that checkpoint: {resume_cmd} --resume_from={path}" if path else '')
        + '.', err=True)


@torch.no_grad()
def closing(cfg, model, meta, autocast, last_saved):
    """A sample of the trained model, and where its files are."""
    if cfg['sample_tokens']:
        encode, decode = data.encoder(meta)
        start = torch.tensor([encode(cfg['sample_start']) or [0]],
                             device=next(model.parameters()).device)
        with autocast:
            out = model.eval().generate(start, cfg['sample_tokens'], temperature=0.8, top_k=50)
        print(f"---------- sample ----------\n{decode(out[0].tolist())}\n"
              f"----------------------------")
    if last_saved[0]:
        print(f"checkpoint: {last_saved[0]} (step {last_saved[1]}); log: "
              f"{os.path.join(cfg['out_dir'], 'log.jsonl')}. More text: python sample.py "
              f"--out_dir={cfg['out_dir']}")
