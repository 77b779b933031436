"""
One GPT for the whole grid of "Deep Transformers without Shortcuts" (He et al., ICLR 2023):
standard or signal-preserving attention, with or without skips, with or without normalisation.

    config = config_for('espa', n_layer=36)   # or GPTConfig(**PRESETS['espa'], n_layer=36)
    model = GPT(config)
    logits, loss = model(idx, targets)

The math (schedules, attention matrices, TAT slopes, kernel prediction) lives in spa.py; this file
only turns it into modules. Special initialisations are applied where each module is built and no
generic re-init pass runs afterwards, so nothing overwrites them (the nanoGPT pitfall).
"""
import difflib
import math
from dataclasses import dataclass, fields

import torch
import torch.nn as nn
from torch.nn import functional as F

import spa

try:  # FlexAttention computes the E-SPA / U-SPA bias inside the kernel (no T x T tensor)
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention
except ImportError:
    flex_attention = None

CHOICES = dict(attn=('softmax', 'vskipinit', 'uspa', 'espa'), norm=('layernorm', 'postln', 'none'),
               act=('gelu', 'relu', 'tat'), pos=('learned', 'none'), init=('gpt2', 'spa'),
               block_lr_rule=('global', 'depth'))

@dataclass
class GPTConfig:
    block_size: int = 256
    vocab_size: int = 256
    n_layer: int = 24
    n_head: int = 4
    n_embd: int = 128
    dropout: float = 0.0
    bias: bool = False          # biases in Linear and LayerNorm (zero at init either way)
    attn: str = 'softmax'       # 'softmax' | 'vskipinit' (sec. 2) | 'uspa' (sec. 4) | 'espa' (sec. 5)
    skip: bool = True           # residual connections; weighted (alpha, beta) when norm == 'none'
    norm: str = 'layernorm'     # 'layernorm' (pre-LN) | 'postln' | 'none'
    act: str = 'gelu'           # 'gelu' | 'relu' | 'tat' (leaky ReLU with the TAT slope, sec. 6)
    pos: str = 'learned'        # 'learned' position embeddings | 'none' (position enters via the SPA bias)
    init: str = 'gpt2'          # 'gpt2': N(0, 0.02) | 'spa': W_Q = 0, orthogonal W_K, W_V, W_O, scaled-orthogonal MLP
    gamma_L: float = 0.05       # E-SPA: decay rate of the last layer's kernel exp(-gamma_L |i - j|)
    rho_L: float = 0.3          # U-SPA: token correlation of the last layer's kernel
    eta: float = 0.5            # TAT: C-map of the MLP chain sends correlation 0 to eta
    skip_beta: float = None     # weighted skips without norm: beta; None -> beta^2 = 1 / n_layer (sec. 8)
    q_correct: bool = False     # E-SPA/U-SPA: pick D_l so the predicted q values stay 1 (sec. 7, ours)
    tie_weights: bool = True    # readout shares the token embedding (GPT-2)
    final_norm: bool = True     # LayerNorm before the readout
    block_lr_rule: str = 'global'  # 'depth': parameters inside blocks train at lr / n_layer (sec. 10)

    def __post_init__(self):
        for key, allowed in CHOICES.items():
            if getattr(self, key) not in allowed:
                raise ValueError(f"{key}={getattr(self, key)!r} is not one of {allowed}")
        for key in ('block_size', 'vocab_size', 'n_layer', 'n_head', 'n_embd'):
            if not (isinstance(getattr(self, key), int) and getattr(self, key) > 0):
                raise ValueError(f"{key} must be a positive integer (got {getattr(self, key)!r})")
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd={self.n_embd} must be divisible by n_head={self.n_head}: every head gets "
                             f"n_embd // n_head channels. Try n_head={math.gcd(self.n_embd, self.n_head)}.")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1) (got {self.dropout})")
        if self.skip_beta is not None and not 0.0 < self.skip_beta <= 1.0:
            raise ValueError(f"skip_beta must be in (0, 1] (got {self.skip_beta}); None picks beta^2 = 1/n_layer")
        if self.attn == 'espa':
            spa.espa_gammas(self.n_layer, self.gamma_L)   # raise the spa.py messages early
        if self.attn == 'uspa':
            spa.uspa_rhos(self.n_layer, self.rho_L)
        spa.mlp_slope(self)

# The paper's variants. Every vanilla model (no skips, no normalisation) shares one recipe and
# differs only in its attention: that makes 'vanilla' a fair rank-collapse control (sec. 10).
_VANILLA = dict(skip=False, norm='none', act='tat', init='spa', tie_weights=False, final_norm=False,
                block_lr_rule='depth')
_NO_NORM_SKIP = dict(_VANILLA, skip=True, block_lr_rule='global')
PRESETS = {
    'preln': dict(attn='softmax', skip=True, norm='layernorm', act='gelu', init='gpt2', pos='learned',
                  tie_weights=True, final_norm=True, block_lr_rule='global'),
    'postln': dict(attn='softmax', skip=True, norm='postln', act='gelu', init='gpt2', pos='learned',
                   tie_weights=True, final_norm=False, block_lr_rule='global'),
    'vanilla': dict(_VANILLA, attn='softmax', pos='learned'),
    'vskipinit': dict(_VANILLA, attn='vskipinit', pos='learned'),
    'uspa': dict(_VANILLA, attn='uspa', pos='learned'),
    'espa': dict(_VANILLA, attn='espa', pos='none'),
    'vskipinit-skip': dict(_NO_NORM_SKIP, attn='vskipinit', pos='learned'),
    'uspa-skip': dict(_NO_NORM_SKIP, attn='uspa', pos='learned'),
    'espa-skip': dict(_NO_NORM_SKIP, attn='espa', pos='none'),
}

def config_for(model='espa', **overrides):
    """GPTConfig of a preset, with the overrides that are not None on top."""
    if model not in PRESETS:
        close = difflib.get_close_matches(str(model), PRESETS, n=3) or list(PRESETS)
        raise ValueError(f"unknown model {model!r}; did you mean {', '.join(close)}? (presets: {', '.join(PRESETS)})")
    names = {f.name for f in fields(GPTConfig)}
    for key in overrides:
        if key not in names:
            close = difflib.get_close_matches(key, names, n=3)
            raise ValueError(f"unknown model setting {key!r}" + (f"; did you mean {', '.join(close)}?" if close else ""))
    return GPTConfig(**{**PRESETS[model], **{k: v for k, v in overrides.items() if v is not None}})

# -----------------------------------------------------------------------------
# initialisation, in one place, applied by each module as it is built

def init_linear(linear, config, role):
    """role: 'qkv' | 'attn_out' | 'fc' | 'mlp_out'. GPT-2: N(0, 0.02), output projections 0.02/sqrt(2L).
    SPA: W_Q = 0 (the logits are then the bias alone, so attention is exactly the designed A_l),
    orthogonal W_K and W_V and W_O, and scaled-orthogonal MLP weights max(sqrt(fan_out/fan_in), 1) (sec. 6)."""
    w = linear.weight
    with torch.no_grad():
        if linear.bias is not None:
            linear.bias.zero_()
        if config.init == 'gpt2':
            std = 0.02 / math.sqrt(2 * config.n_layer) if role in ('attn_out', 'mlp_out') else 0.02
            w.normal_(0.0, std)
        elif role == 'qkv':
            d = config.n_embd
            w[:d].zero_()
            nn.init.orthogonal_(w[d:2 * d])
            nn.init.orthogonal_(w[2 * d:])
        else:
            nn.init.orthogonal_(w)
            w.mul_(max(math.sqrt(w.shape[0] / w.shape[1]), 1.0))

# -----------------------------------------------------------------------------
# attention: one module, a switch on the variant

_block_masks = {}

def _causal(b, h, q_idx, kv_idx):
    return kv_idx <= q_idx

def _causal_block_mask(T, device):
    if torch.compiler.is_compiling():   # traced into the graph (a cache would be a side effect there)
        return create_block_mask(_causal, None, None, T, T, device=device)
    key = (T, str(device))
    if key not in _block_masks:
        _block_masks[key] = create_block_mask(_causal, None, None, T, T, device=device)
    return _block_masks[key]

class Attention(nn.Module):
    impl = 'auto'  # 'auto': FlexAttention in a compiled model on GPU, else SDPA + float bias; 'flex' | 'sdpa' to force

    def __init__(self, config, layer, rescale=None):
        super().__init__()
        self.n_head, self.variant, self.dropout = config.n_head, config.attn, config.dropout
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        init_linear(self.c_attn, config, 'qkv')
        init_linear(self.c_proj, config, 'attn_out')
        if self.variant == 'vskipinit':
            # Attn = (alpha I + beta A) V, per head; alpha = 1, beta = 0: an orthogonal map at init (sec. 2)
            self.alpha = nn.Parameter(torch.ones(config.n_head))
            self.beta = nn.Parameter(torch.zeros(config.n_head))
        if self.variant in ('espa', 'uspa'):
            # float64 buffers derived from the config, so not saved: the U-SPA vectors cancel badly in
            # float32. rescale is D_l, the location-dependent rescaling of the softmax output (sec. 3).
            T, L = config.block_size, config.n_layer
            if rescale is None:
                rescale = spa.attention_rescalings(config, T)[layer - 1]
            if self.variant == 'espa':
                gammas = spa.espa_gammas(L, config.gamma_L)
                self.espa_consts = spa.espa_bias_constants(gammas[layer - 1], gammas[layer])
            else:
                rhos = spa.uspa_rhos(L, config.rho_L)
                for name, vec in zip(('uspa_diag', 'uspa_u', 'uspa_v'), spa.uspa_factors(rhos[layer - 1], rhos[layer], T)):
                    self.register_buffer(name, torch.tensor(vec, dtype=torch.float64), persistent=False)
            self.register_buffer('rescale', torch.tensor(rescale, dtype=torch.float64), persistent=False)

    def log_bias(self, i, j):
        """log A_l(i, j) on and below the diagonal, from the same spa.py formula as the reference."""
        if self.variant == 'espa':
            return spa.espa_log_bias(i, j, self.espa_consts, torch.where)
        return spa.uspa_log_bias(i.long(), j.long(), self.uspa_diag, self.uspa_u, self.uspa_v, torch.where, torch.log)

    def score_mod(self, score, b, h, q_idx, kv_idx):
        return score + self.log_bias(q_idx, kv_idx).to(score.dtype)

    def shaped_attention(self, q, k, v):
        """softmax(Q K^T / sqrt(d) + log A_l) V: at W_Q = 0 this is exactly P_l = A_l / D_l."""
        T = q.size(-2)
        # FlexAttention only pays off compiled (eager, it materialises the scores); a compiled model on a GPU
        # gets it, everything else SDPA with the bias as a float mask (sdpa_bias)
        use_flex = self.impl == 'flex' or (self.impl == 'auto' and q.is_cuda and flex_attention is not None
                                           and torch.compiler.is_compiling())
        if use_flex:
            return flex_attention(q, k, v, score_mod=self.score_mod, block_mask=_causal_block_mask(T, q.device))
        return F.scaled_dot_product_attention(q, k, v, attn_mask=self.sdpa_bias(T, q.device, q.dtype))

    def sdpa_bias(self, T, device, dtype):
        """log A_l as SDPA's float mask (-inf above the diagonal), built in float64 and cast. It depends
        only on (T, device, dtype), so eager mode builds it once per layer and keeps it (training keeps it
        for the backward anyway): at T = 1024 that saves 13-36 ms per layer per forward on CPU.
        Compiled, it stays in the graph (a cache would be a side effect) and inductor fuses it."""
        key = (T, str(device), dtype)
        if not torch.compiler.is_compiling() and getattr(self, '_sdpa_bias_key', None) == key:
            return self._sdpa_bias
        pos = torch.arange(T, device=device, dtype=torch.float64)
        i, j = pos[:, None], pos[None, :]
        bias = torch.where(j <= i, self.log_bias(i, j), -math.inf).to(dtype)
        if not torch.compiler.is_compiling():
            self._sdpa_bias, self._sdpa_bias_key = bias, key
        return bias

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in self.c_attn(x).split(C, dim=2))
        p = self.dropout if self.training else 0.0
        if self.variant in ('espa', 'uspa'):
            y = self.shaped_attention(q, k, v) * self.rescale[:T, None].to(q.dtype)
        else:
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=True)
            if self.variant == 'vskipinit':
                y = self.alpha.view(-1, 1, 1).to(v.dtype) * v + self.beta.view(-1, 1, 1).to(v.dtype) * y
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return F.dropout(self.c_proj(y), p, self.training)

class MLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.act, self.dropout = config.act, config.dropout
        self.slope = spa.mlp_slope(config)
        self.scale = spa.tat_scale(self.slope)
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        init_linear(self.c_fc, config, 'fc')
        init_linear(self.c_proj, config, 'mlp_out')

    def forward(self, x):
        h = self.c_fc(x)
        if self.act == 'tat':  # q-preserving leaky ReLU (sec. 6)
            # compiled on CPU, inductor saves leaky_relu's mask through a kernel ~14x slower than GELU's
            # (every TAT preset's compiled step lost 12-15%); max(h, s h) is the same function for
            # 0 <= s <= 1 and saves no mask. Eager, leaky_relu is the fast one (bench.py).
            h = torch.maximum(h, self.slope * h) if torch.compiler.is_compiling() else F.leaky_relu(h, self.slope)
            h = self.scale * h
        else:
            h = F.gelu(h) if self.act == 'gelu' else F.relu(h)
        return F.dropout(self.c_proj(h), self.dropout, self.training)

class Block(nn.Module):
    def __init__(self, config, layer, rescale=None):
        super().__init__()
        self.norm = config.norm
        self.alpha, self.beta = spa.skip_weights(config)   # (0, 1): no skip
        make_norm = (lambda: nn.LayerNorm(config.n_embd, bias=config.bias)) if config.norm != 'none' else nn.Identity
        self.ln_1, self.ln_2 = make_norm(), make_norm()
        self.attn = Attention(config, layer, rescale)
        self.mlp = MLP(config)

    def sublayer(self, x, f, ln):
        h = f(ln(x)) if self.norm == 'layernorm' else f(x)
        out = self.alpha * x + self.beta * h if self.alpha else h
        return ln(out) if self.norm == 'postln' else out

    def forward(self, x):
        return self.sublayer(self.sublayer(x, self.attn, self.ln_1), self.mlp, self.ln_2)

# -----------------------------------------------------------------------------

class GPT(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.wpe = nn.Embedding(config.block_size, config.n_embd) if config.pos == 'learned' else None
        # D_l for every layer at once: the q-corrected ones need one kernel propagation through the model
        shaped = config.attn in ('espa', 'uspa')
        rescalings = spa.attention_rescalings(config, config.block_size) if shaped else [None] * config.n_layer
        self.h = nn.ModuleList([Block(config, l + 1, rescalings[l]) for l in range(config.n_layer)])
        self.ln_f = nn.LayerNorm(config.n_embd, bias=config.bias) if config.final_norm else nn.Identity()
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        with torch.no_grad():
            # SPA init: q = 1 after the embedding (token and position halves), so the kernel starts at I
            std = 0.02 if config.init == 'gpt2' else math.sqrt(0.5 if self.wpe is not None else 1.0)
            for emb in (self.wte, self.wpe):
                if emb is not None:
                    emb.weight.normal_(0.0, std)
            if config.tie_weights:
                self.lm_head.weight = self.wte.weight
            elif config.init == 'spa':
                self.lm_head.weight.zero_()   # uniform predictions at init; the body starts learning at step 2
            else:
                self.lm_head.weight.normal_(0.0, 0.02)

    def hidden_states(self, idx):
        """The embedding output and every block's output: n_layer + 1 tensors (B, T, n_embd)."""
        T = idx.size(1)
        if T > self.config.block_size:
            raise ValueError(f"sequence of length {T} is longer than block_size={self.config.block_size}")
        x = self.wte(idx)
        if self.wpe is not None:
            x = x + self.wpe(torch.arange(T, device=idx.device))
        states = [F.dropout(x, self.config.dropout, self.training)]
        for block in self.h:
            states.append(block(states[-1]))
        return states

    def forward(self, idx, targets=None):
        x = self.ln_f(self.hidden_states(idx)[-1])
        if targets is None:
            return self.lm_head(x[:, [-1], :]), None   # generation only needs the last position
        logits = self.lm_head(x)
        return logits, F.cross_entropy(logits.view(-1, logits.size(-1)).float(), targets.view(-1), ignore_index=-1)

    def configure_optimizers(self, weight_decay, learning_rate, betas, device_type):
        """AdamW with groups by role, not by ndim: Linear and Embedding weights decay; biases,
        LayerNorm weights and attention gains never do. With block_lr_rule='depth', everything
        inside the blocks trains at lr / n_layer: with 2L weight matrices in series, each moving
        its own share keeps the end-to-end change bounded (sec. 10). Each group carries 'lr_scale'."""
        block_scale = 1.0 / self.config.n_layer if self.config.block_lr_rule == 'depth' else 1.0
        groups, seen = {}, set()
        for mname, module in self.named_modules():
            for pname, p in module.named_parameters(recurse=False):
                if id(p) in seen or not p.requires_grad:
                    continue
                seen.add(id(p))
                decay = isinstance(module, (nn.Linear, nn.Embedding)) and pname == 'weight'
                scale = block_scale if mname.startswith('h.') else 1.0
                groups.setdefault((decay, scale), []).append(p)
        param_groups = [dict(params=ps, weight_decay=weight_decay if decay else 0.0, lr_scale=scale,
                             lr=learning_rate * scale) for (decay, scale), ps in sorted(groups.items())]
        return torch.optim.AdamW(param_groups, lr=learning_rate, betas=betas, fused=device_type == 'cuda')

    def num_params(self):
        return sum(p.numel() for p in self.parameters())

    def flops_per_token(self, T):
        """Training FLOPs per token (forward + backward = 3x forward): 6 per weight of every matmul
        (embedding lookups are free), plus attention's Q K^T and A V, 12 * n_layer * n_embd * T (PaLM)."""
        matmul = sum(p.numel() for n, p in self.named_parameters() if n.startswith('h.') and p.dim() == 2)
        matmul += self.lm_head.weight.numel()
        return 6 * matmul + 12 * self.config.n_layer * self.config.n_embd * T

    @torch.no_grad()
    def signal_diagnostics(self, idx):
        """Per-layer signal-propagation health, as plain floats for the training log: mean token
        correlation (-> 1 is rank collapse), activation RMS and largest q value (early warning of
        blow-up, sec. 10), and the Value-SkipInit gains."""
        stats = dict(corr=[], rms=[], q_max=[])
        for h in self.hidden_states(idx):
            K = token_kernel(h)
            q = torch.diagonal(K)
            stats['corr'].append(round(mean_correlation(K), 5))
            stats['rms'].append(round(q.mean().sqrt().item(), 5))
            stats['q_max'].append(round(q.max().item(), 5))
        for l, block in enumerate(self.h, 1):
            if block.attn.variant == 'vskipinit':
                stats.setdefault('alpha', []).append(round(block.attn.alpha.mean().item(), 5))
                stats.setdefault('beta', []).append(round(block.attn.beta.mean().item(), 5))
        return stats

    @torch.no_grad()
    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None):
        for _ in range(max_new_tokens):
            logits, _ = self(idx[:, -self.config.block_size:])
            logits = logits[:, -1, :] / temperature
            if top_k is not None:
                v, _ = torch.topk(logits, min(top_k, logits.size(-1)))
                logits[logits < v[:, [-1]]] = -float('inf')
            idx = torch.cat((idx, torch.multinomial(F.softmax(logits, dim=-1), num_samples=1)), dim=1)
        return idx

# -----------------------------------------------------------------------------
# measuring the kernel (sec. 1) and the device's peak for MFU

def token_kernel(h):
    """Sigma = X X^T / d per sequence, averaged over the batch: (T, T), float64."""
    h = h.double()
    return (h @ h.transpose(-1, -2)).mean(0) / h.size(-1)

def mean_correlation(K):
    q = torch.diagonal(K).clamp_min(1e-300).sqrt()
    C = K / (q[:, None] * q[None, :])
    T = C.size(0)
    return ((C.sum() - C.diagonal().sum()) / max(T * (T - 1), 1)).item()

@torch.no_grad()
def measure_kernels(config, T, batch_size=8, seed=0):
    """Kernels of a freshly initialised model (float64) on random sequences of distinct tokens, so that
    the embedding kernel is I as spa.predict_kernels assumes: n_layer + 1 numpy arrays."""
    if config.vocab_size < T:
        raise ValueError(f"measuring needs vocab_size >= T distinct tokens (got {config.vocab_size} < {T})")
    torch.manual_seed(seed)
    model = GPT(config).double().eval()
    idx = torch.stack([torch.randperm(config.vocab_size)[:T] for _ in range(batch_size)])
    return [token_kernel(h).numpy() for h in model.hidden_states(idx)]

PEAK_BF16_FLOPS = {  # dense tensor-core peaks (no sparsity); the first name found in the device name wins
    'H200': 989e12, 'H100': 989e12, 'GH200': 989e12, 'B200': 2250e12, 'A100': 312e12, 'A800': 312e12,
    'L40S': 362e12, 'L40': 181e12, 'A6000': 155e12, 'L4': 121e12, 'A10': 125e12, '4090': 165e12,
    '3090': 71e12, 'V100': 125e12, 'T4': 65e12,
}

def peak_flops(device):
    """bf16 dense peak of a CUDA device from PEAK_BF16_FLOPS, or None (CPU, unknown GPU)."""
    if torch.device(device).type != 'cuda' or not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16_FLOPS.items() if k in name), None)
