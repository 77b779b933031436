"""
One GPT for the whole grid of "Deep Transformers without Shortcuts" (He et al., ICLR 2023):
standard or signal-preserving attention, with or without skips, with or without normalisation.

    config = config_for('espa', n_layer=36)   # or GPTConfig(**PRESETS['espa'], n_layer=36)
    model = GPT(config)
    logits, loss = model(idx, targets)

    python model.py --model=vanilla --measure  # the kernel layer by layer: predicted, and measured at init

The math lives in spa.py. The model asks it once for a plan in plain numbers (signal_plan: every
layer's bias constants and rescaling, the skip weights, the TAT slope) and hands each module its
share. Special initialisations are applied where each module is built and no generic re-init pass
runs afterwards, so nothing overwrites them (the nanoGPT pitfall). Section numbers: MATH.md.
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
Q_CORRECT_MAX_WORK = 2 ** 28   # n_layer * T^2 of the kernel prediction behind q_correct: about 12 s on 2 CPU cores

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
    eta: float = 0.5            # TAT: the network's MLP C-map sends 0 to eta (or as close as it can, sec. 6)
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
        if self.act == 'tat' and not 0.0 < self.eta < 1.0:
            raise ValueError(f"eta must be in (0, 1) (got {self.eta}): the correlation TAT lets the MLPs reach from 0")
        work = self.n_layer * self.block_size ** 2
        if self.q_correct and self.attn in spa.SHAPED and work > Q_CORRECT_MAX_WORK:
            raise ValueError(f"q_correct=True predicts the T x T kernel through every layer when the model is built "
                             f"(time ~ n_layer * T^2; about 6 s at n_layer=36, T=2048 on 2 CPU cores). n_layer="
                             f"{self.n_layer} x block_size={self.block_size}^2 is {work / Q_CORRECT_MAX_WORK:.1f}x "
                             f"the limit of n_layer * T^2 <= 2^28. Use q_correct=False (every preset's default), "
                             f"or a smaller block_size or n_layer.")

# The paper's variants and two controls. Every vanilla model (no skips, no normalisation) shares one
# recipe and differs only in its attention: that makes 'vanilla' a fair rank-collapse control (sec. 10).
_PRELN = dict(attn='softmax', skip=True, norm='layernorm', act='gelu', init='gpt2', pos='learned',
              tie_weights=True, final_norm=True, block_lr_rule='global')
_VANILLA = dict(skip=False, norm='none', act='tat', init='spa', tie_weights=False, final_norm=False,
                block_lr_rule='depth')
_NO_NORM_SKIP = dict(_VANILLA, skip=True, block_lr_rule='global')
PRESETS = {
    'preln': _PRELN,
    'preln-espa': dict(_PRELN, attn='espa', pos='none'),     # control: E-SPA's locality prior in a standard block
    'postln': dict(_PRELN, norm='postln', final_norm=False),
    'vanilla': dict(_VANILLA, attn='softmax', pos='learned'),
    'vskipinit': dict(_VANILLA, attn='vskipinit', pos='learned'),
    'uspa': dict(_VANILLA, attn='uspa', pos='learned'),
    'espa': dict(_VANILLA, attn='espa', pos='none'),
    'softmax-skip': dict(_NO_NORM_SKIP, attn='softmax', pos='learned'),  # control: skips, no norm, plain attention
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
# what the modules take from spa.py: one plan per model, in plain numbers

def skip_weights(config):
    return spa.skip_weights(config.skip, config.norm, config.n_layer, config.skip_beta)

def tat_target(config):
    """(slope, eta reached) of the TAT activation, solved for the network as built: each block maps
    c -> w^2 c + (1 - w^2) C(c) with w^2 = alpha^2 / (alpha^2 + beta^2) its skip's share (0 without
    skips). Where eta is out of reach (few blocks, or weighted skips that keep the network nearly
    linear) the closest reachable target is used: plain ReLU's, slope 0 (ours, sec. 6)."""
    if config.act != 'tat':
        return 0.0, None
    alpha, beta = skip_weights(config)
    w2 = alpha * alpha / (alpha * alpha + beta * beta)
    a, b = math.sqrt(w2), math.sqrt(1.0 - w2)
    eta = min(config.eta, spa.tat_max_eta(config.n_layer, a, b))
    return spa.tat_slope(config.n_layer, eta, a, b), eta

def tat_note(config):
    """One line for the user when the TAT target asked for is not the one built, else None."""
    slope, eta = tat_target(config)
    if eta is None or eta >= config.eta:
        return None
    where = 'without skips' if not config.skip else f'with skip weights {skip_weights(config)[0]:.3f}/{skip_weights(config)[1]:.3f}'
    return (f"TAT: eta={config.eta} is out of reach for {config.n_layer} blocks {where}; using the largest "
            f"reachable target eta={eta:.4f} (plain ReLU, slope 0)")

def predictor_args(config):
    """The model at init as spa.propagate_kernels sees it, in plain numbers: skip weights, TAT slope,
    and how much each initialised linear map scales a kernel (1 for orthogonal weights; std^2 * fan_in
    for GPT-2's N(0, 0.02), output projections 0.02 / sqrt(2L))."""
    alpha, beta = skip_weights(config)
    d, L = config.n_embd, config.n_layer
    if config.init == 'gpt2':
        gains = (0.02 ** 2 * d, 0.02 ** 2 / (2 * L) * d, 0.02 ** 2 * d, 0.02 ** 2 / (2 * L) * 4 * d)
        embed_var = 0.02 ** 2 * (2 if config.pos == 'learned' else 1)   # token (+ position) embeddings
    else:
        gains, embed_var = (1.0, 1.0, 1.0, 1.0), 1.0                   # q = 1 after the embedding
    return dict(n_layer=L, attn=config.attn, alpha=alpha, beta=beta, norm=config.norm, act=config.act,
                slope=tat_target(config)[0], gains=gains, embed_var=embed_var, gamma_L=config.gamma_L,
                rho_L=config.rho_L, q_correct=config.q_correct)

def signal_plan(config):
    """Everything the blocks need from spa.py, computed once: skip weights, the TAT slope, and per layer
    the numbers of its attention bias and the rescaling D_l (q-corrected from the predicted kernel
    when asked, sec. 7)."""
    alpha, beta = skip_weights(config)
    layers = spa.attention_layers(config.attn, config.n_layer, config.block_size, config.gamma_L, config.rho_L)
    if config.q_correct and config.attn in spa.SHAPED:
        args = predictor_args(config)
        D = spa.q_corrected_rescalings(config.block_size, **{k: v for k, v in args.items() if k != 'q_correct'})
        layers = [(params, d) for (params, _), d in zip(layers, D)]
    return dict(alpha=alpha, beta=beta, slope=tat_target(config)[0], layers=layers)

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

    def __init__(self, config, params=None, rescale=None):
        """params, rescale: this layer's numbers from spa.attention_layers (E-SPA/U-SPA only)."""
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
        if self.variant == 'espa':
            self.espa_consts = tuple(params)   # four floats: log A_l is analytic in (i, j)
        if self.variant == 'uspa':
            # float64 buffers derived from the config, so not saved: the U-SPA vectors cancel badly in float32
            for name, vec in zip(('uspa_diag', 'uspa_u', 'uspa_v'), params):
                self.register_buffer(name, torch.tensor(vec, dtype=torch.float64), persistent=False)
        if self.variant in spa.SHAPED:   # D_l, the location-dependent rescaling of the softmax output (sec. 3)
            self.register_buffer('rescale', torch.tensor(rescale, dtype=torch.float64), persistent=False)

    def log_bias(self, i, j):
        """log A_l(i, j) on and below the diagonal, from the same spa.py formula as the reference."""
        if self.variant == 'espa':
            return spa.espa_log_bias(i, j, self.espa_consts, torch.where)
        return spa.uspa_log_bias(i.long(), j.long(), (self.uspa_diag, self.uspa_u, self.uspa_v), torch.where, torch.log)

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
        if self.variant in spa.SHAPED:
            y = self.shaped_attention(q, k, v) * self.rescale[:T, None].to(q.dtype)
        else:
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=True)
            if self.variant == 'vskipinit':
                y = self.alpha.view(-1, 1, 1).to(v.dtype) * v + self.beta.view(-1, 1, 1).to(v.dtype) * y
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return F.dropout(self.c_proj(y), p, self.training)

class MLP(nn.Module):
    def __init__(self, config, slope=0.0):
        super().__init__()
        self.act, self.dropout = config.act, config.dropout
        self.slope, self.scale = slope, spa.tat_scale(slope)
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
    def __init__(self, config, plan, layer):
        """plan: signal_plan(config); layer: 0-based index into its per-layer numbers."""
        super().__init__()
        self.norm, self.alpha, self.beta = config.norm, plan['alpha'], plan['beta']   # (0, 1): no skip
        make_norm = (lambda: nn.LayerNorm(config.n_embd, bias=config.bias)) if config.norm != 'none' else nn.Identity
        self.ln_1, self.ln_2 = make_norm(), make_norm()
        self.attn = Attention(config, *plan['layers'][layer])
        self.mlp = MLP(config, plan['slope'])

    def sublayer(self, x, f, ln):
        if not self.alpha:                 # no skip
            return ln(f(x)) if self.norm == 'postln' else f(ln(x))
        if self.norm == 'layernorm':       # Pre-LN: the plain residual, no weights to multiply by
            return x + f(ln(x))
        if self.norm == 'postln':
            return ln(x + f(x))
        return self.alpha * x + self.beta * f(x)   # weighted skips without norm (sec. 8)

    def forward(self, x):
        return self.sublayer(self.sublayer(x, self.attn, self.ln_1), self.mlp, self.ln_2)

# -----------------------------------------------------------------------------

class GPT(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.wpe = nn.Embedding(config.block_size, config.n_embd) if config.pos == 'learned' else None
        plan = signal_plan(config)
        self.h = nn.ModuleList([Block(config, plan, l) for l in range(config.n_layer)])
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

    def embed(self, idx):
        T = idx.size(1)
        if T > self.config.block_size:
            raise ValueError(f"sequence of length {T} is longer than block_size={self.config.block_size}")
        x = self.wte(idx)
        if self.wpe is not None:
            x = x + self.wpe(torch.arange(T, device=idx.device))
        return F.dropout(x, self.config.dropout, self.training)

    def hidden_states(self, idx):
        """The embedding output and every block's output: n_layer + 1 tensors (B, T, n_embd)."""
        states = [self.embed(idx)]
        for block in self.h:
            states.append(block(states[-1]))
        return states

    def forward(self, idx, targets=None):
        x = self.embed(idx)
        for block in self.h:
            x = block(x)
        x = self.ln_f(x)
        if targets is None:
            return self.lm_head(x[:, [-1], :]), None   # generation only needs the last position
        logits = self.lm_head(x)
        return logits, F.cross_entropy(logits.view(-1, logits.size(-1)).float(), targets.view(-1), ignore_index=-1)

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
        for block in self.h:
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
# measuring the kernel (sec. 1), next to spa.py's prediction

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

def predict_kernels(config, T, sigma0=None):
    """spa.predict_kernels for this model at init: n_layer + 1 T x T arrays."""
    return spa.predict_kernels(T, sigma0=sigma0, **predictor_args(config))

# -----------------------------------------------------------------------------
# command line: the predicted kernel layer by layer, and with --measure a real model next to it

def kernel_table(argv):
    """python model.py --model=espa --n_layer=36 --block_size=256 [--measure] [any GPTConfig field]"""
    import ast
    args = dict(model='espa', n_layer=None, n_embd=512, n_head=8, block_size=128, batch_size=8, measure=False, seed=0)
    overrides = {}
    for arg in argv:
        key, _, val = arg.lstrip('-').partition('=')
        try:
            val = True if val == '' else ast.literal_eval(val)
        except (ValueError, SyntaxError):
            pass   # a plain string, e.g. --model=espa
        (args if key in args else overrides)[key] = val
    config = config_for(args['model'], n_layer=args['n_layer'], n_embd=args['n_embd'], n_head=args['n_head'],
                        block_size=args['block_size'], **overrides)
    T = config.block_size
    predicted = predict_kernels(config, T)
    measured = measure_kernels(config, T, args['batch_size'], args['seed']) if args['measure'] else None
    print(f"{args['model']}: attn={config.attn} skip={config.skip} norm={config.norm} act={config.act} "
          f"n_layer={config.n_layer} T={T}" + (f", measured at width {config.n_embd}, batch {args['batch_size']}" if measured else ""))
    if tat_note(config):
        print(tat_note(config))
    head = f"{'layer':>5} | {'corr (pred)':>11} {'q range (pred)':>18}"
    print(head + (f" | {'corr (meas)':>11} {'q range (meas)':>18}" if measured else ""))
    for l, sigma in enumerate(predicted):
        c, qmin, qmax = spa.kernel_stats(sigma)
        line = f"{l:>5} | {c:11.4f} {qmin:8.3f} .. {qmax:7.3f}"
        if measured:
            c, qmin, qmax = spa.kernel_stats(measured[l])
            line += f" | {c:11.4f} {qmin:8.3f} .. {qmax:7.3f}"
        print(line)

if __name__ == '__main__':
    import sys
    if '-h' in sys.argv or '--help' in sys.argv:
        print(kernel_table.__doc__ + '\n  --measure: also measure a fresh model (width n_embd, default 512; batch_size 8; seed 0)')
        sys.exit(0)
    try:
        kernel_table(sys.argv[1:])
    except (ValueError, TypeError) as e:
        print(f"model.py: {e}", file=sys.stderr)
        sys.exit(2)
