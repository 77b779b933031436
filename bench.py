"""
Speed and memory of every preset, measured side by side in one run.

    python bench.py                              # CPU target: 12 layers, width 256, T = 256, fp32
    python bench.py --models=preln,espa --steps=20 --json=bench.json
    python bench.py --device=cuda --compile=True --n_embd=768 --n_head=12 --block_size=1024 \\
        --vocab_size=50304
    python bench.py --mem_scaling=True --steps=0 # memory at T and 2T: linear or quadratic in T?

Every preset is built up front. After warm-up come rounds of one training step (forward, backward,
AdamW) and one forward pass (no_grad) per preset, the order rotated each round, so machine noise
(other jobs on a shared CPU, GPU clocks) hits every preset alike; we report medians. Every preset
steps with AdamW, so that the rows compare architectures, not optimizers (Muon, the vanilla presets'
default, costs more per step: README "Training"). ratio_to_preln is the median over rounds of
preln's step time / the preset's step time in the same round: paired, so slow drifts in machine
load cancel. preln is added to the run when not asked for. On a CPU, as train.py does, denormal
floats are flushed to zero (E-SPA's bias makes many, and some CPUs compute them many times slower)
and glibc's malloc keeps freed memory (else every step pays page faults, more for some presets than
others): hardware.tune_cpu.

The reference row, torch-ref, is always in the run: preln's architecture built from torch's own
nn.TransformerEncoderLayer(norm_first=True, activation='gelu', dim_feedforward=4 n_embd,
bias=False, dropout=0) stacked n_layer deep, with token + learned position embeddings, a final
LayerNorm, a readout tied to the token embedding, cross-entropy and AdamW over the same parameter
groups: the same parameters (count and shapes) as preln, written by a well-kept library instead of
model.py.
ratio_to_ref is the median over rounds of torch-ref's step time / the preset's step time in the
same round (> 1: faster than the library); preln's is printed on its own line.

Memory (bytes handed out by the allocator, not RSS, which counts caching and libraries):
  act_mem_mb    what the forward leaves allocated for the backward: saved activations, attention
                masks, logits. The part that grows with T.
  peak_mem_mb   parameters + AdamW state + the peak that one training step allocates on top
                (activations, gradients, temporaries): what training this model alone peaks at.
  CUDA reads torch.cuda.memory_allocated / max_memory_allocated. CPU has no allocator statistics,
  so the allocations and frees the profiler records (profile_memory=True) are replayed in time
  order to find the peak: best effort, it misses buffers that intra-op worker threads allocate.
"""
import contextlib
import itertools
import json
import math
import os
import platform
import statistics
import sys
import time

import torch
import torch._dynamo
import torch.nn as nn
from torch.nn import functional as F

import model as gpt
from configurator import ConfigError, configure, did_you_mean, format_help, key_comments
from hardware import device_and_dtype, peak_flops, tune_cpu
from optim import configure_optimizers

DEFAULTS = dict(
    models='all',         # comma-separated presets, or all
    n_layer=12,
    n_embd=256,
    n_head=4,
    block_size=256,       # T, the sequence length of every batch
    batch_size=4,
    vocab_size=256,       # 50304 for a GPT-2-sized readout
    device='auto',        # auto (cuda if there is one) | cpu | cuda | cuda:N (device_and_dtype)
    dtype='auto',         # auto (bfloat16 on a GPU that has it, else float32) | float32 | bfloat16
    compile=False,        # torch.compile every model
    threads=0,            # CPU threads for the timed work; 0: torch's default
    steps=10,             # timed rounds (one training step and one forward pass per preset each)
    warmup=2,             # untimed rounds first: lazy init, AdamW state, compilation
    peak_flops=None,      # device peak FLOP/s for MFU; None: hardware.peak_flops (known GPUs only)
    mem_scaling=False,    # also measure memory at T and 2T for every preset
    json='',              # write the results here
    seed=0,               # weights and batch; the same for every preset
)
MB = 2 ** 20
REF = 'torch-ref'   # the reference row: always in the run, like preln
REF_LABEL = 'torch nn.TransformerEncoderLayer(norm_first=True)'


class BenchError(Exception):
    """A flag that cannot be used; the message says what to do."""


def parse(argv):
    """(cfg, names, device, dtype name, autocast context); names: the presets, preln first, then
    REF."""
    cfg = configure(DEFAULTS, argv, types={'peak_flops': float})
    names = (list(gpt.PRESETS) if cfg['models'] == 'all'
             else [m.strip() for m in cfg['models'].split(',') if m.strip()])
    if not names:
        raise BenchError(f"--models is empty; give presets such as --models=preln,espa, or all "
                         f"({', '.join(gpt.PRESETS)})")
    for name in names:
        if name not in gpt.PRESETS and name != REF:
            hint = did_you_mean(name, list(gpt.PRESETS) + [REF])
            raise BenchError(f"unknown preset {name!r} in --models" + (f" ({hint})" if hint else '')
                             + f"; valid presets: {', '.join(gpt.PRESETS)} (or all); {REF} is "
                             f"always in the run")
    names = [n for n in dict.fromkeys(names) if n != REF]     # drop repeats, keep the order
    if 'preln' not in names:
        names.insert(0, 'preln')                               # the baseline of every ratio
    names.append(REF)                                          # the library reference, always
    if cfg['dtype'] == 'float16':                # bench's own limit, before the shared rules
        raise BenchError("--dtype=float16 is not supported by bench.py: training in float16 needs "
                         "a loss scaler, which bench has not; use --dtype=bfloat16 or "
                         "--dtype=float32")
    try:
        device, dtype, autocast = device_and_dtype(cfg['device'], cfg['dtype'])
    except ValueError as e:
        raise BenchError(str(e)) from None
    if device == 'mps':
        raise BenchError("--device=mps: bench.py synchronises and reads memory on cpu and cuda "
                         "only; use --device=cpu or --device=cuda")
    for key in ('steps', 'warmup', 'threads'):
        if cfg[key] < 0:
            raise BenchError(f"--{key} must be >= 0 (got {cfg[key]})")
    if cfg['steps'] == 0 and not cfg['mem_scaling']:
        raise BenchError("nothing to do: --steps=0 without --mem_scaling=True")
    if cfg['peak_flops'] is not None and not cfg['peak_flops'] > 0:
        raise BenchError(f"--peak_flops must be > 0 FLOP/s (got {cfg['peak_flops']})")
    for name in names:                         # the model's own checks, before any work
        try:
            model_config(name, cfg)
        except ValueError as e:
            raise BenchError(f"{name}: {e}") from None
    return cfg, names, torch.device(device), dtype, autocast


def model_config(name, cfg, block_size=None):
    """The preset's GPTConfig; REF gets preln's (same sizes, bias=False, dropout=0)."""
    return gpt.config_for('preln' if name == REF else name, n_layer=cfg['n_layer'],
                          n_embd=cfg['n_embd'], n_head=cfg['n_head'],
                          block_size=block_size or cfg['block_size'], vocab_size=cfg['vocab_size'])


class TorchReference(nn.Module):
    """GPT-2 Pre-LN from torch's own nn.TransformerEncoderLayer: the library row next to preln.

    Same parameters as model.GPT(preln) one for one (no biases at bias=False, GELU, 4x MLP, tied
    readout, learned positions, final LayerNorm); only the names and the packing differ:
    in_proj_weight is c_attn.weight (q, k, v rows in the same order), out_proj is attn.c_proj,
    linear1/linear2 are mlp.c_fc/mlp.c_proj, norm1/norm2 are ln_1/ln_2. GPT-2 init as
    model.init_linear: N(0, 0.02), output projections N(0, 0.02 / sqrt(2 n_layer)), LayerNorm
    weights 1. nn.TransformerEncoder clones one layer n_layer times, so every layer is
    re-initialised after the cloning.

    Causal attention, the fastest correct way torch 2.13 offers: nn.MultiheadAttention refuses
    is_causal=True without a mask, and with a mask plus is_causal=True (need_weights=False, no
    padding mask, as the encoder layer calls it) it drops the mask and runs SDPA with
    is_causal=True, as preln does. With the mask alone (is_causal=None) the encoder would compare
    it with a fresh T x T mask every forward (_detect_is_causal_mask: a host sync, data-dependent
    under torch.compile). The mask is the real one from
    nn.Transformer.generate_square_subsequent_mask, cached per block_size, so any path that reads
    it (the eval-mode fast path, were it enabled) is causal too."""

    def __init__(self, config):
        super().__init__()
        self.config = config
        C, L = config.n_embd, config.n_layer
        self.wte = nn.Embedding(config.vocab_size, C)
        self.wpe = nn.Embedding(config.block_size, C)
        layer = nn.TransformerEncoderLayer(d_model=C, nhead=config.n_head, dim_feedforward=4 * C,
                                           dropout=config.dropout, activation='gelu',
                                           batch_first=True, norm_first=True, bias=config.bias)
        # enable_nested_tensor: only for padding masks, and torch warns that norm_first disables
        # it anyway
        self.encoder = nn.TransformerEncoder(layer, L, norm=nn.LayerNorm(C, bias=config.bias),
                                             enable_nested_tensor=False)
        self.lm_head = nn.Linear(C, config.vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight
        causal = nn.Transformer.generate_square_subsequent_mask(config.block_size)
        self.register_buffer('causal_mask', causal, persistent=False)
        with torch.no_grad():
            for emb in (self.wte, self.wpe):
                emb.weight.normal_(0.0, 0.02)
            for lay in self.encoder.layers:
                out_std = 0.02 / math.sqrt(2 * L)
                for w, std in ((lay.self_attn.in_proj_weight, 0.02),
                               (lay.self_attn.out_proj.weight, out_std),
                               (lay.linear1.weight, 0.02), (lay.linear2.weight, out_std)):
                    w.normal_(0.0, std)
            for n, p in self.named_parameters():   # biases (bias=True only) start at 0, as model.py
                if n.endswith('bias'):
                    p.zero_()

    def forward(self, idx, targets=None):
        T = idx.size(1)
        if T > self.config.block_size:
            raise ValueError(f"sequence of length {T} is longer than "
                             f"block_size={self.config.block_size}")
        x = self.wte(idx) + self.wpe(torch.arange(T, device=idx.device))   # (B, T, C)
        x = self.encoder(x, mask=self.causal_mask[:T, :T], is_causal=True)   # final LN included
        if targets is None:
            return self.lm_head(x[:, [-1], :]), None
        logits = self.lm_head(x)   # (B, T, vocab)
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)).float(), targets.view(-1),
                               ignore_index=-1)
        return logits, loss

    def configure_optimizers(self, weight_decay, learning_rate, betas, device_type):
        """[AdamW] over optim.configure_optimizers' groups for preln: weight matrices and embeddings
        decay, LayerNorm weights (and biases) do not; the same group order and flags."""
        params = list(self.parameters())           # the tied readout once
        groups = [dict(params=[p for p in params if p.dim() < 2], weight_decay=0.0, lr_scale=1.0,
                       lr=learning_rate),
                  dict(params=[p for p in params if p.dim() >= 2], weight_decay=weight_decay,
                       lr_scale=1.0, lr=learning_rate)]
        return [torch.optim.AdamW(groups, lr=learning_rate, betas=betas,
                                  fused=device_type == 'cuda')]

    def num_params(self):
        return sum(p.numel() for p in self.parameters())

    def flops_per_token(self, T):
        """GPT.flops_per_token's count: 6 per weight of every matmul, plus
        12 * n_layer * n_embd * T."""
        matmul = sum(p.numel() for n, p in self.named_parameters()
                     if n.startswith('encoder.layers.') and p.dim() == 2)
        matmul += self.lm_head.weight.numel()
        return 6 * matmul + 12 * self.config.n_layer * self.config.n_embd * T


@contextlib.contextmanager
def one_thread():
    """The orthogonal init's QR of small matrices, multi-threaded on a busy machine, spins for
    seconds per matrix (OpenMP threads fighting other jobs); built on one thread it takes ms."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def build(name, cfg, device, block_size=None):
    """A preset's model (compiled if asked), its AdamW, and how its attention runs here."""
    torch.manual_seed(cfg['seed'])             # every preset starts from the same randomness
    with one_thread():
        Model = TorchReference if name == REF else gpt.GPT
        raw = Model(model_config(name, cfg, block_size)).to(device)
    args = (0.1, 1e-4, (0.9, 0.95), device.type)   # weight decay, lr, betas: AdamW for every row
    opts = raw.configure_optimizers(*args) if name == REF else configure_optimizers(raw, *args)
    attn = raw.config.attn
    if name == REF:
        path = 'sdpa is_causal (nn.MultiheadAttention)'
    elif attn in ('espa', 'uspa'):  # a label only: mirrors the rule in model.Attention.forward
        impl = getattr(gpt.Attention, 'impl', 'auto')
        flex = impl == 'flex' or (impl == 'auto' and device.type == 'cuda' and cfg['compile']
                                  and getattr(gpt, 'flex_attention', None) is not None)
        path = 'flex_attention score_mod' if flex else 'sdpa + T x T bias'
    elif attn == 'shaped':
        path = 'sdpa is_causal + cumulative mean'
    else:
        path = 'sdpa is_causal'
    return dict(raw=raw, model=torch.compile(raw) if cfg['compile'] else raw, opts=opts,
                attention=path)


def sync(device):
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def quiet_stderr():
    """The CPU profiler's C++ side prints start/stop lines to fd 2; keep the table readable."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, 'w') as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


@contextlib.contextmanager
def track_memory(device):
    """Yields a dict that holds, on exit, the bytes allocated inside the block above what was
    allocated at its start: 'peak' (highest point) and 'net' (still allocated at the end)."""
    out = {}
    if device.type == 'cuda':
        sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        yield out
        sync(device)
        out.update(peak=torch.cuda.max_memory_allocated(device) - base,
                   net=torch.cuda.memory_allocated(device) - base)
        return
    from torch.profiler import ProfilerActivity, profile
    with quiet_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        yield out
    # '[memory]' events carry +bytes for an allocation, -bytes for a free (frees of blocks allocated
    # before the profiler started are left out, as they should be)
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
                    if e.name() == '[memory]')
    running = list(itertools.accumulate(n for _, n in events)) or [0]
    out.update(peak=max(0, max(running)), net=running[-1])


def train_step(run, x, y, autocast):
    with autocast:
        _, loss = run['model'](x, y)
    loss.backward()
    for opt in run['opts']:
        opt.step()
        opt.zero_grad(set_to_none=True)


def forward(run, x, y, autocast):
    with torch.no_grad(), autocast:
        run['model'](x, y)                       # with targets: the full (B, T, vocab) readout


def measure_memory(run, x, y, autocast, optimizer=True):
    """(act, peak, state) bytes of one training step; see the module docstring."""
    with track_memory(x.device) as fwd:
        with autocast:
            _, loss = run['model'](x, y)
    with track_memory(x.device) as rest:
        loss.backward()
        if optimizer:
            for opt in run['opts']:
                opt.step()
    del loss
    for opt in run['opts']:
        opt.zero_grad(set_to_none=True)
    tensors = list(run['raw'].parameters()) + [t for opt in run['opts'] for s in opt.state.values()
                                              for t in s.values() if torch.is_tensor(t)]
    state = sum(t.numel() * t.element_size() for t in tensors)
    return fwd['net'], max(fwd['peak'], fwd['net'] + rest['peak']), state


def timed(fn, device):
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t0


def paired(base, times):
    """(median, q1, q3) over rounds of base's step time / this one's in the same round."""
    ratios = [a / b for a, b in zip(base, times)]
    med = statistics.median(ratios)
    q1, _, q3 = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else (med,) * 3
    return med, q1, q3


def throughput(names, cfg, device, autocast, peak):
    B, T = cfg['batch_size'], cfg['block_size']
    runs = {name: build(name, cfg, device) for name in names}
    gen = torch.Generator().manual_seed(cfg['seed'])
    x, y = (torch.randint(cfg['vocab_size'], (B, T), generator=gen).to(device) for _ in range(2))
    times = {name: dict(train=[], fwd=[]) for name in names}
    start = time.perf_counter()
    for r in range(cfg['warmup'] + cfg['steps']):
        if r == cfg['warmup'] > 0:
            print(f"warm-up: {time.perf_counter() - start:.0f} s"
                  + (' (compilation included)' if cfg['compile'] else ''), flush=True)
        k = r % len(names)
        for name in names[k:] + names[:k]:     # rotate: nobody always runs right after another
            run = runs[name]
            dt_train = timed(lambda: train_step(run, x, y, autocast), device)
            dt_fwd = timed(lambda: forward(run, x, y, autocast), device)
            if r >= cfg['warmup']:
                times[name]['train'].append(dt_train)
                times[name]['fwd'].append(dt_fwd)
    results = {}
    for name in names:
        run, t = runs[name], times[name]
        act, peak_mem, state = measure_memory(run, x, y, autocast)
        flops = run['raw'].flops_per_token(T)                  # training: 3x the forward's
        train_ms, fwd_ms = statistics.median(t['train']), statistics.median(t['fwd'])
        q1, _, q3 = (statistics.quantiles(t['train'], n=4) if len(t['train']) > 1
                     else (train_ms,) * 3)
        to_ref = {kind: paired(times[REF][kind], t[kind]) for kind in ('train', 'fwd')}
        to_preln = {kind: paired(times['preln'][kind], t[kind])[0] for kind in ('train', 'fwd')}
        results[name] = dict(
            train_tokens_per_s=B * T / train_ms, fwd_tokens_per_s=B * T / fwd_ms,
            ratio_to_preln=1.0 if name == 'preln' else to_preln['train'],
            fwd_ratio_to_preln=1.0 if name == 'preln' else to_preln['fwd'],
            # > 1: faster than torch's own layers; _q: the quartiles of the per-round ratios
            ratio_to_ref=1.0 if name == REF else to_ref['train'][0],
            fwd_ratio_to_ref=1.0 if name == REF else to_ref['fwd'][0],
            ratio_to_ref_q=[1.0, 1.0] if name == REF else list(to_ref['train'][1:]),
            fwd_ratio_to_ref_q=[1.0, 1.0] if name == REF else list(to_ref['fwd'][1:]),
            peak_mem_mb=(state + peak_mem) / MB, act_mem_mb=act / MB, state_mem_mb=state / MB,
            mfu=flops * B * T / train_ms / peak if peak else None,
            fwd_mfu=flops / 3 * B * T / fwd_ms / peak if peak else None,
            train_ms=1000 * train_ms, fwd_ms=1000 * fwd_ms, train_spread=(q3 - q1) / train_ms,
            train_ms_all=[round(1000 * s, 3) for s in t['train']],
            fwd_ms_all=[round(1000 * s, 3) for s in t['fwd']],
            flops_per_token=flops, params=run['raw'].num_params(), attention=run['attention'])
    return results


def memory_scaling(names, cfg, device, autocast, dtype):
    """Forward+backward memory of every preset at T and 2T (fresh models of block_size T and 2T).
    Linear attention memory doubles; a T x T tensor per layer quadruples. From the two points,
    act = a T + b T^2, so b T^2 = (act(2T) - 2 act(T)) / 2 is the part quadratic in T;
    tt_per_layer says how many T x T matrices of the compute dtype per layer that is (0: linear)."""
    T, B, L = cfg['block_size'], cfg['batch_size'], cfg['n_layer']
    elem = 2 if dtype == 'bfloat16' else 4
    out = {}
    for name in names:
        point = {}
        for t in (T, 2 * T):
            run = build(name, cfg, device, block_size=t)
            gen = torch.Generator().manual_seed(cfg['seed'])
            x, y = (torch.randint(cfg['vocab_size'], (B, t), generator=gen).to(device)
                    for _ in range(2))
            measure_memory(run, x, y, autocast, optimizer=False)   # untimed: lazy state, compile
            point[t] = measure_memory(run, x, y, autocast, optimizer=False)[:2]
            del run
        (a1, p1), (a2, p2) = point[T], point[2 * T]
        quad = (a2 - 2 * a1) / 2
        out[name] = dict(T=T, act_mb_T=a1 / MB, act_mb_2T=a2 / MB, act_growth=a2 / a1,
                         peak_mb_T=p1 / MB, peak_mb_2T=p2 / MB, peak_growth=p2 / p1,
                         quadratic_mb_at_T=quad / MB, tt_per_layer=quad / (L * T * T * elem))
    return out


def machine(device):
    cpu = platform.processor()
    with contextlib.suppress(OSError):
        cpu = next((l.split(':', 1)[1].strip() for l in open('/proc/cpuinfo')
                    if l.startswith('model name')), cpu)
    usable = os.sched_getaffinity(0) if hasattr(os, 'sched_getaffinity') else None
    return dict(torch=torch.__version__, python=platform.python_version(),
                platform=platform.platform(),
                device=torch.cuda.get_device_name(device) if device.type == 'cuda' else cpu,
                cpu=cpu, cpu_count=os.cpu_count(), cpus_usable=usable and len(usable),
                torch_threads=torch.get_num_threads(), cuda=torch.version.cuda,
                load_avg=([round(v, 2) for v in os.getloadavg()] if hasattr(os, 'getloadavg')
                          else None))


def print_throughput(results, steps):
    """The throughput table, and Pre-LN against the torch reference."""
    print(f"\n{'preset':<15}{'train tok/s':>12}{'+-%':>7}{'x preln':>9}{'x ref':>7}"
          f"{'fwd tok/s':>12}{'x preln':>9}{'x ref':>7}{'peak MB':>10}{'act MB':>9}{'MFU':>7}"
          f"{'params':>12}  attention")
    for name, r in results.items():
        mfu = f"{100 * r['mfu']:.1f}%" if r['mfu'] is not None else '-'
        print(f"{name:<15}{r['train_tokens_per_s']:>12,.0f}{50 * r['train_spread']:>7.1f}"
              f"{r['ratio_to_preln']:>9.3f}{r['ratio_to_ref']:>7.3f}"
              f"{r['fwd_tokens_per_s']:>12,.0f}{r['fwd_ratio_to_preln']:>9.3f}"
              f"{r['fwd_ratio_to_ref']:>7.3f}{r['peak_mem_mb']:>10.1f}{r['act_mem_mb']:>9.1f}"
              f"{mfu:>7}{r['params']:>12,}  {r['attention']}")
    print(f"(x preln, x ref: median over rounds of the paired step-time ratio, preln's or "
          f"{REF}'s time / the row's; +-%: half the interquartile range of the training step "
          f"time; MFU needs the device peak, --peak_flops)")
    p, ref = results['preln'], results[REF]
    print(f"\npreln vs {REF_LABEL}: train {p['ratio_to_ref']:.3f} (quartiles "
          f"{p['ratio_to_ref_q'][0]:.3f}..{p['ratio_to_ref_q'][1]:.3f}), forward "
          f"{p['fwd_ratio_to_ref']:.3f} (quartiles {p['fwd_ratio_to_ref_q'][0]:.3f}.."
          f"{p['fwd_ratio_to_ref_q'][1]:.3f}); > 1: preln faster, over {steps} paired "
          f"rounds")
    same = p['params'] == ref['params']
    print(f"parameters: preln {p['params']:,}, {REF} {ref['params']:,}"
          + (" (the same)" if same else f" (differ by {ref['params'] - p['params']:+,})"))


def main(argv):
    if '-h' in argv or '--help' in argv:
        print(__doc__ + '\n' + format_help(DEFAULTS, key_comments(__file__),
                                           usage='python bench.py [--key=value ...]'))
        return 0
    try:
        cfg, names, device, dtype, autocast = parse(argv)
    except (ConfigError, BenchError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    # as train.py: denormals flushed and freed memory kept (hardware.tune_cpu), before torch work
    cpu_settings = tune_cpu() if device.type == 'cpu' else []
    if cfg['threads']:
        torch.set_num_threads(cfg['threads'])
    if device.type == 'cuda':
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    # autocast from hardware.device_and_dtype, as train.py runs it: fp32 weights, bf16 compute
    if cfg['compile']:
        # the presets share GPT.forward, so each one (and each grad mode) is a recompile of the same
        # code object; past dynamo's default limit of 8 it would silently run the rest eagerly
        for key in ('recompile_limit', 'cache_size_limit'):
            if hasattr(torch._dynamo.config, key):
                limit = max(getattr(torch._dynamo.config, key), 8 * len(names) + 8)
                setattr(torch._dynamo.config, key, limit)
    peak = cfg['peak_flops'] or peak_flops(device)
    settings = {k: cfg[k] for k in DEFAULTS if k not in ('json', 'models')}
    settings.update(models=names, device=str(device), dtype=dtype, peak_flops=peak,
                    denormals_flushed='denormals flushed' in cpu_settings,
                    freed_memory_kept='freed memory kept' in cpu_settings)
    results = {name: {} for name in names}
    B, T = cfg['batch_size'], cfg['block_size']
    print(f"bench: {', '.join(names)} | n_layer={cfg['n_layer']} n_embd={cfg['n_embd']} "
          f"n_head={cfg['n_head']} T={T} B={B} | {device} {dtype}"
          f"{' compiled' if cfg['compile'] else ''}{''.join(', ' + s for s in cpu_settings)} | "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads | {cfg['warmup']} "
          f"warm-up + {cfg['steps']} timed rounds")
    if cfg['steps']:
        for name, r in throughput(names, cfg, device, autocast, peak).items():
            results[name].update(r)
        print_throughput(results, cfg['steps'])
    if cfg['mem_scaling']:
        print(f"\nmemory of forward+backward at T={T} and 2T={2 * T} (batch {B}); "
              f"linear in T doubles, T x T per layer quadruples")
        print(f"{'preset':<15}{'act MB T':>10}{'act MB 2T':>11}{'growth':>8}{'peak MB T':>11}"
              f"{'peak MB 2T':>12}{'growth':>8}{'TxT/layer':>11}")
        for name, s in memory_scaling(names, cfg, device, autocast, dtype).items():
            results[name]['mem_scaling'] = s
            print(f"{name:<15}{s['act_mb_T']:>10.2f}{s['act_mb_2T']:>11.2f}{s['act_growth']:>8.2f}"
                  f"{s['peak_mb_T']:>11.2f}{s['peak_mb_2T']:>12.2f}{s['peak_growth']:>8.2f}"
                  f"{s['tt_per_layer']:>11.2f}")
    box = machine(device)
    print(f"\nmachine: {box['device']} | {box['cpus_usable']} of {box['cpu_count']} CPUs usable, "
          f"{box['torch_threads']} torch threads | load average {box['load_avg']} (1, 5, 15 min; "
          f"this run adds about its threads, the rest is other jobs on the CPU) | torch "
          f"{box['torch']}, python {box['python']}")
    for r in results.values():
        r.update(settings=settings, machine=box)
        r.setdefault('mfu', None)
    if cfg['json']:
        with open(cfg['json'], 'w') as f:
            json.dump(results, f, indent=1)
        print(f"\nwrote {cfg['json']}")
    return 0


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
