"""
One GPT for the whole grid of "Deep Transformers without Shortcuts" (He et al., ICLR 2023):
standard or signal-preserving attention, with or without skips, with or without normalisation;
and for the family that followed: shaped attention (Noci et al., 2023), He & Hofmann's simplified
SAS and SAS-P blocks (ICLR 2024) and DyT in place of LayerNorm (Zhu et al., 2025).

    config = config_for('espa', n_layer=36)   # or GPTConfig(**PRESETS['espa'], n_layer=36)
    model = GPT(config)
    logits, loss = model(idx, targets)

    python model.py --model=vanilla --measure  # the kernel layer by layer: predicted and measured

Top to bottom: the config and its presets; the modules; the plan they are built from (the math
lives in spa.py: signal_plan asks it once for every layer's bias constants and rescaling D_l, the
skip weights and the TAT slope); measuring the kernel; the command line. Special initialisations
are applied where each module is built and no re-init pass runs afterwards to overwrite them (the
nanoGPT pitfall). Section numbers: MATH.md.
"""
import math
import sys
from dataclasses import dataclass, fields

import numpy as np
import torch
import torch.nn as nn
from torch.nn import functional as F

import spa
from fastpaths import CumsumTokens, DyTGrad, RMSNormGrad, eager_cpu
from configurator import command_line, configure, did_you_mean, format_help, key_comments

try:  # FlexAttention computes the E-SPA / U-SPA bias inside the kernel (no T x T tensor)
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention
except ImportError:
    flex_attention = None

CHOICES = dict(attn=('softmax', 'vskipinit', 'uspa', 'espa', 'shaped'),
               block=('standard', 'sas', 'sas-p'),
               norm=('layernorm', 'postln', 'rmsnorm', 'dyt', 'none'),
               act=('gelu', 'relu', 'tat'), pos=('learned', 'none'), init=('gpt2', 'spa', 'sas'),
               block_lr_rule=('global', 'depth'))
Q_CORRECT_MAX_WORK = 2 ** 28   # n_layer * T^2: q_correct predicts the T x T kernel at every layer

@dataclass
class GPTConfig:
    block_size: int = 256
    vocab_size: int = 256
    n_layer: int = 24
    n_head: int = 4
    n_embd: int = 128
    dropout: float = 0.0
    bias: bool = False          # biases in Linear, LayerNorm and DyT (zero at init either way)
    attn: str = 'softmax'       # 'softmax' | 'vskipinit' | 'uspa' | 'espa' | 'shaped' (Attention)
    block: str = 'standard'     # 'standard' | 'sas' | 'sas-p': He & Hofmann's (Block, sec. 17)
    skip: bool = True           # standard blocks' residuals; weighted when norm == 'none' (sec. 8)
    norm: str = 'layernorm'     # 'layernorm' (pre-LN) | 'postln' | 'rmsnorm', 'dyt' (pre) | 'none'
    act: str = 'gelu'           # 'gelu' | 'relu' | 'tat' (leaky ReLU with the TAT slope, sec. 6)
    pos: str = 'learned'        # 'learned' embeddings | 'none' (position enters via the SPA bias)
    init: str = 'gpt2'          # 'gpt2' N(0, 0.02) | 'spa' W_Q = 0, orthogonal (sec. 11) | 'sas'
    gamma_L: float = 0.05       # E-SPA: decay rate of the last layer's kernel exp(-gamma_L |i - j|)
    rho_L: float = 0.3          # U-SPA: token correlation of the last layer's kernel
    eta: float = 0.5            # TAT: the network's MLP C-map sends 0 to eta, or close (sec. 6)
    skip_beta: float = None     # weighted skips' branch weight; None: 1 / sqrt(n_layer) (sec. 8)
    q_correct: bool = False     # E-SPA/U-SPA: pick D_l so predicted q values stay 1 (sec. 7, ours)
    tie_weights: bool = True    # readout shares the token embedding (GPT-2)
    final_norm: bool = True     # a norm before the readout: LayerNorm, or the blocks' RMSNorm/DyT
    block_lr_rule: str = 'global'  # 'depth': the blocks' parameters train at lr / n_layer (sec. 10)
    beta_mlp: float = 0.1       # SAS blocks: init of the trainable MLP gain (the paper's, sec. 17)
    dyt_alpha_attn: float = 0.5  # DyT's alpha_0 before attention (0.5: the paper's; sec. 15)
    dyt_alpha_mlp: float = 0.5   # ... before the MLP
    dyt_alpha_final: float = 0.5  # ... before the readout
    embed_scale: bool = False   # a learnable scalar on the embedding, init sqrt(n_embd) (DyT's LLM)
    embed_norm: bool = False    # a LayerNorm on the embedding (He & Hofmann's norm-free SAS-P)

    def __post_init__(self):
        def need(ok, message):
            if not ok:
                raise ValueError(message)
        for key, allowed in CHOICES.items():
            value = getattr(self, key)
            need(value in allowed, f"{key}={value!r} is not one of {allowed}")
        for key in ('block_size', 'vocab_size', 'n_layer', 'n_head', 'n_embd'):
            value = getattr(self, key)
            need(isinstance(value, int) and value > 0,
                 f"{key} must be a positive integer (got {value!r})")
        need(self.n_embd % self.n_head == 0,
             f"n_embd={self.n_embd} must be divisible by n_head={self.n_head}: every head gets "
             f"n_embd // n_head channels. Try n_head={math.gcd(self.n_embd, self.n_head)}.")
        need(0.0 <= self.dropout < 1.0, f"dropout must be in [0, 1) (got {self.dropout})")
        need(self.block == 'standard' or self.norm != 'postln',
             f"block={self.block!r} puts its norms before the branches: use norm='rmsnorm', "
             f"'layernorm', 'dyt' or 'none' (got norm='postln')")
        need(self.skip_beta is None or 0.0 < self.skip_beta <= 1.0,
             f"skip_beta must be in (0, 1] (got {self.skip_beta}); None picks beta^2 = 1/n_layer")
        if self.attn == 'espa':
            spa.espa_gammas(self.n_layer, self.gamma_L)   # raise the spa.py messages early
        if self.attn == 'uspa':
            spa.uspa_rhos(self.n_layer, self.rho_L)
        need(self.act != 'tat' or 0.0 < self.eta < 1.0,
             f"eta must be in (0, 1) (got {self.eta}): the correlation TAT lets the MLPs reach "
             f"from 0")
        work = self.n_layer * self.block_size ** 2
        need(not (self.q_correct and self.attn in spa.BIASED and work > Q_CORRECT_MAX_WORK),
             f"q_correct=True predicts the T x T kernel through every layer when the model is "
             f"built (time ~ n_layer * T^2; about 6 s at n_layer=36, T=2048 on 2 CPU cores). "
             f"n_layer={self.n_layer} x block_size={self.block_size}^2 is "
             f"{work / Q_CORRECT_MAX_WORK:.1f}x the limit of n_layer * T^2 <= 2^28. Use "
             f"q_correct=False (every preset's default), or a smaller block_size or n_layer.")

# The paper's variants and two controls. Every vanilla model (no skips, no normalisation) shares
# one recipe and differs only in its attention: 'vanilla' is a fair rank-collapse control (sec. 10).
_PRELN = dict(attn='softmax', skip=True, norm='layernorm', act='gelu', init='gpt2', pos='learned',
              tie_weights=True, final_norm=True, block_lr_rule='global')
_VANILLA = dict(skip=False, norm='none', act='tat', init='spa', tie_weights=False, final_norm=False,
                block_lr_rule='depth')
_NO_NORM_SKIP = dict(_VANILLA, skip=True, block_lr_rule='global')
PRESETS = {
    'preln': _PRELN,
    'preln-espa': dict(_PRELN, attn='espa', pos='none'),   # control: E-SPA's bias, standard block
    'postln': dict(_PRELN, norm='postln', final_norm=False),
    'vanilla': dict(_VANILLA, attn='softmax', pos='learned'),
    'vskipinit': dict(_VANILLA, attn='vskipinit', pos='learned'),
    'uspa': dict(_VANILLA, attn='uspa', pos='learned'),
    'espa': dict(_VANILLA, attn='espa', pos='none'),
    'softmax-skip': dict(_NO_NORM_SKIP, attn='softmax', pos='learned'),   # control: plain attention
    'vskipinit-skip': dict(_NO_NORM_SKIP, attn='vskipinit', pos='learned'),
    'uspa-skip': dict(_NO_NORM_SKIP, attn='uspa', pos='learned'),
    'espa-skip': dict(_NO_NORM_SKIP, attn='espa', pos='none'),
    # the family that followed (secs. 13-17). 'shaped' is 'vskipinit' with shaped attention: the
    # same matrix I at init, other training dynamics. SAS and SAS-P as He & Hofmann's code runs
    # them: RMSNorm, ReLU, learned positions (the paper says sinusoidal), init 'sas', one lr for
    # every block.
    'shaped': dict(_VANILLA, attn='shaped', pos='learned'),
    'sas': dict(_PRELN, block='sas', attn='shaped', norm='rmsnorm', act='relu', init='sas'),
    'sas-p': dict(_PRELN, block='sas-p', attn='shaped', norm='rmsnorm', act='relu', init='sas'),
    # control: SAS's norm, activation and init in Pre-LN blocks (He & Hofmann's baseline)
    'prermsnorm-relu': dict(_PRELN, norm='rmsnorm', act='relu', init='sas'),
    # every LayerNorm a DyT with the LLM recipe's per-site alpha_0 and sqrt(d) embedding scale;
    # ours: the scaled embedding starts at q = 1 (embedding_variance), and alpha_0 = (1, 1, 0.5) for
    # (attention, MLP, final), the best of short runs at the study's size (sec. 15;
    # LLaMA-7B's 0.8/0.2/0.2 stays at the unigram loss here). The paper's plain drop-in:
    # embed_scale=False and every dyt_alpha 0.5 (it too stays at the unigram loss here).
    # He & Hofmann's norm-free SAS-P as their code runs it: no norm in the blocks, a LayerNorm on
    # the first block's input (the embedding) and one before the readout
    'sas-p-nonorm': dict(_PRELN, block='sas-p', attn='shaped', norm='none', act='relu', init='sas',
                         embed_norm=True),
    'preln-dyt': dict(_PRELN, norm='dyt', embed_scale=True, dyt_alpha_attn=1.0, dyt_alpha_mlp=1.0,
                      dyt_alpha_final=0.5),
}

def config_for(model='espa', **overrides):
    """GPTConfig of a preset, with the overrides that are not None on top."""
    if model not in PRESETS:
        hint = did_you_mean(str(model), PRESETS) or 'no preset looks like it.'
        raise ValueError(f"unknown model {model!r}: {hint} The presets are {', '.join(PRESETS)}.")
    settings = [f.name for f in fields(GPTConfig)]
    for key in overrides:
        if key not in settings:
            hint = did_you_mean(key, settings) or 'no setting looks like it.'
            raise ValueError(f"unknown model setting {key!r}: {hint} "
                             f"The settings are GPTConfig's fields: {', '.join(settings)}.")
    return GPTConfig(**{**PRESETS[model], **{k: v for k, v in overrides.items() if v is not None}})

# -----------------------------------------------------------------------------
# the modules

class Attention(nn.Module):
    """Causal self-attention, the five variants in one forward pass:
      softmax    softmax(Q K^T / sqrt(hs)) V                          (GPT-2)
      vskipinit  (alpha I + beta softmax(Q K^T / sqrt(hs))) V, per head; alpha = 1, beta = 0 at init
      shaped     (alpha I + beta softmax(Q K^T / sqrt(hs)) - gamma C) V, per head, C the causal
                 uniform matrix C_ij = 1/i (j <= i); alpha = beta = gamma = 1 at init (He &
                 Hofmann's); with W_Q = 0 the softmax is C and the layer is exactly I (sec. 13)
      uspa/espa  D_l softmax(Q K^T / sqrt(hs) + log A_l) V; at init W_Q = 0, the logits are the
                 bias alone and the layer applies exactly the designed A_l (sec. 3)
    In the SAS blocks the values and the output projection are the identity, no parameters (head
    h's value is the h-th block of channels of x), except the first layer's values
    alpha_V x + beta_V x dW (dW = 0, alpha_V = beta_V = 1 at init; the paper's, sec. 17)."""
    impl = 'auto'   # 'auto': FlexAttention in a compiled model on a GPU, else SDPA; 'flex' | 'sdpa'

    def __init__(self, config, bias_consts=None, rescale=None, first_layer=False):
        """bias_consts, rescale: this layer's numbers from signal_plan (E-SPA/U-SPA only)."""
        super().__init__()
        self.n_head, self.variant, self.dropout = config.n_head, config.attn, config.dropout
        d, learned_values = config.n_embd, config.block == 'standard'
        self.c_attn = nn.Linear(d, (3 if learned_values else 2) * d, bias=config.bias)
        self.c_proj = nn.Linear(d, d, bias=config.bias) if learned_values else None
        init_linear(self.c_attn, config, 'qkv')
        if learned_values:
            init_linear(self.c_proj, config, 'attn_out')
        self.value_delta = None   # dW, a matrix like any other (weight decay, Muon)
        if not learned_values and first_layer:
            self.value_delta = nn.Linear(d, d, bias=False)
            nn.init.zeros_(self.value_delta.weight)
            self.alpha_v, self.beta_v = nn.Parameter(torch.ones(())), nn.Parameter(torch.ones(()))
        if self.variant == 'vskipinit':   # at init the identity: an orthogonal map (sec. 2)
            self.alpha = nn.Parameter(torch.ones(config.n_head))
            self.beta = nn.Parameter(torch.zeros(config.n_head))
        if self.variant == 'shaped':      # all ones: beta P - gamma C = 0 while W_Q = 0
            self.alpha, self.beta, self.gamma = (nn.Parameter(torch.ones(config.n_head))
                                                 for _ in range(3))
        if self.variant == 'espa':        # four floats: log A_l is analytic in (i, j) (sec. 5)
            self.bias_consts = tuple(bias_consts)
        # U-SPA's three length-T vectors and D_l = rowsum(A_l) come from the config, so they are
        # not saved; float64, as u_j + v_i cancels badly in float32 (sec. 4)
        f64 = lambda vectors: torch.tensor(np.array(vectors), dtype=torch.float64)
        if self.variant == 'uspa':
            self.register_buffer('bias_consts', f64(bias_consts), persistent=False)   # (3, T)
        if self.variant in spa.BIASED:
            self.register_buffer('rescale', f64(rescale), persistent=False)   # (T,)

    def forward(self, x):
        B, T, C = x.shape   # batch, sequence length, n_embd
        qkv = self.c_attn(x).split(C, dim=2)
        if self.c_proj is None:   # SAS: the values are x itself
            v = x if self.value_delta is None else \
                self.alpha_v * x + self.beta_v * self.value_delta(x)
            qkv = (*qkv, v)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
                   for t in qkv)   # (B, nh, T, hs)
        dropout = self.dropout if self.training else 0.0
        if self.variant in ('softmax', 'vskipinit', 'shaped'):
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=True)
            y = y.transpose(1, 2)   # (B, T, nh, hs)
            if self.variant != 'softmax':   # alpha V (- gamma C V) + beta P V, per head. The first
                # two on the values' own (B, T, C) layout: contiguous passes, and the sum's layout
                # is the output's, so the heads need no copy to sit side by side
                vc = qkv[2]   # (B, T, C)
                per_channel = lambda g: g.repeat_interleave(C // self.n_head).to(vc.dtype)  # (C,)
                z = vc * per_channel(self.alpha)
                if self.variant == 'shaped':   # C V, sec. 13: row i is the mean of v_1..v_i, a
                    # cumulative sum (at least float32: in bfloat16 it drifts over long sequences)
                    acc = torch.promote_types(vc.dtype, torch.float32)
                    n = torch.arange(1, T + 1, device=vc.device, dtype=acc).view(T, 1)
                    scale = (per_channel(self.gamma).to(acc) / n).to(vc.dtype)   # gamma / i, (T, C)
                    v_acc = vc.to(acc)
                    sums = CumsumTokens.apply(v_acc) if eager_cpu(v_acc) else v_acc.cumsum(1)
                    z = torch.addcmul(z, sums.to(vc.dtype), scale, value=-1)
                beta = self.beta.view(-1, 1).to(vc.dtype)   # (nh, 1)
                y = torch.addcmul(z.view(B, T, self.n_head, C // self.n_head), y, beta)
        else:
            # FlexAttention pays off only compiled (eager, it materialises the scores): a compiled
            # model on a GPU gets it, everything else SDPA with log A_l as a float mask
            flex = self.impl == 'flex' or (self.impl == 'auto' and q.is_cuda and flex_attention
                                           is not None and torch.compiler.is_compiling())
            if flex:   # the bias is added per score inside the kernel: no (T, T) tensor
                score_mod = lambda score, b, h, i, j: score + self.bias(i, j).to(score.dtype)
                y = flex_attention(q, k, v, score_mod=score_mod, block_mask=self.mask(T, q, flex))
            else:
                y = F.scaled_dot_product_attention(q, k, v, attn_mask=self.mask(T, q, flex))
            # softmax rows sum to 1 and A_l's to D_l: P_l = A_l / D_l, so A_l = D_l P_l
            y = (y * self.rescale[:T, None].to(q.dtype)).transpose(1, 2)   # (B, T, nh, hs)
        y = y.reshape(B, T, C)   # the heads side by side (a copy where the layout needs one)
        return F.dropout(y if self.c_proj is None else self.c_proj(y), dropout, self.training)

    def bias(self, i, j):
        """log A_l(i, j) for j <= i from this layer's bias constants, by the spa.py formula the
        float64 reference uses. i, j: position tensors that broadcast (float64 or indices)."""
        if self.variant == 'espa':
            return spa.espa_log_bias(i, j, self.bias_consts, torch.where)
        return spa.uspa_log_bias(i.long(), j.long(), self.bias_consts, torch.where, torch.log)

    def mask(self, T, q, flex):
        """FlexAttention's causal block mask, or SDPA's float mask: the bias below the diagonal,
        -inf above, built in float64 and cast. Eager mode builds it once per (T, device, dtype)
        and keeps it (training keeps it for the backward anyway); compiled, it stays in the graph
        (a cache would be a side effect there) and inductor fuses it."""
        key = (T, str(q.device), q.dtype, flex)
        if not torch.compiler.is_compiling() and getattr(self, '_mask_key', None) == key:
            return self._mask
        if flex:
            mask = create_block_mask(lambda b, h, i, j: j <= i, None, None, T, T, device=q.device)
        else:
            i = torch.arange(T, device=q.device, dtype=torch.float64).view(T, 1)
            mask = torch.where(i.T <= i, self.bias(i, i.T), -math.inf).to(q.dtype)   # (T, T)
        if not torch.compiler.is_compiling():
            self._mask, self._mask_key = mask, key
        return mask

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
        h = self.c_fc(x)   # (B, T, 4 C)
        if self.act == 'tat':   # the leaky ReLU scaled to keep q: E[phi(u)^2] = E[u^2] (sec. 6)
            # compiled, inductor saves leaky_relu's mask through a slow CPU kernel; max(h, s h) is
            # the same function for 0 <= s <= 1 and saves none. Eager, leaky_relu is the faster.
            h = torch.maximum(h, self.slope * h) if torch.compiler.is_compiling() else \
                F.leaky_relu(h, self.slope)
            # the scale goes onto c_proj's weight (4 C^2 numbers; h has B T 4 C): W (s h) = (s W) h
            out = F.linear(h, self.scale * self.c_proj.weight, self.c_proj.bias)
        else:
            out = self.c_proj(F.gelu(h) if self.act == 'gelu' else F.relu(h))
        return F.dropout(out, self.dropout, self.training)

class RMSNorm(nn.RMSNorm):
    """torch's RMSNorm, scale only; on a CPU its gradient written out (fastpaths.RMSNormGrad)."""
    def forward(self, x):
        if eager_cpu(x) and x.dtype == self.weight.dtype:   # mixed dtypes (autocast): torch's
            return RMSNormGrad.apply(x, self.weight, self.eps)
        return super().forward(x)

class DyT(nn.Module):
    """Dynamic tanh (Zhu et al., 2025; sec. 15), a LayerNorm's replacement without statistics:
    weight * tanh(alpha x) + bias, alpha one learnable scalar, weight ones and bias zeros at init
    (a bias where config.bias gives the LayerNorm one: ours, the paper's DyT always has one)."""

    def __init__(self, n_embd, alpha, bias):
        super().__init__()
        self.alpha = nn.Parameter(torch.tensor(float(alpha)))
        self.weight = nn.Parameter(torch.ones(n_embd))
        self.bias = nn.Parameter(torch.zeros(n_embd)) if bias else None

    def forward(self, x):
        if eager_cpu(x) and x.dtype == self.weight.dtype:
            return DyTGrad.apply(x, self.alpha, self.weight, self.bias)
        y = torch.tanh(self.alpha * x) * self.weight
        return y if self.bias is None else y + self.bias

def make_norm(norm, config, dyt_alpha):
    """The normalisation layer called norm; dyt_alpha: DyT's alpha_0 at this site. RMSNorm is
    torch's, scale only, eps 1e-8 inside the square root (the paper's; the code adds 1e-5 to the
    RMS outside it; sec. 14)."""
    if norm in ('layernorm', 'postln'):
        return nn.LayerNorm(config.n_embd, bias=config.bias)
    if norm == 'rmsnorm':
        return RMSNorm(config.n_embd, eps=1e-8)
    return DyT(config.n_embd, dyt_alpha, config.bias) if norm == 'dyt' else nn.Identity()

class Block(nn.Module):
    """block='standard': attention, then the MLP, each as x -> skip_weight * x + branch_weight *
    f(x), with the norm where config.norm puts it. He & Hofmann's blocks (sec. 17; the parallel
    one's kernel: sec. 16), with trainable gains beta_SA (init 1) and beta_FF (config.beta_mlp):
      sas    x' = beta_SA Attn(N1(x)), out = x' + beta_FF MLP(N2(x'))   no attention skip; the
             MLP skip is 1, fixed (the paper's; their code trains it)
      sas-p  out = beta_SA Attn(N1(x)) + beta_FF MLP(N1(x))            no skip, one norm"""

    def __init__(self, config, plan, layer):
        """plan: signal_plan(config); layer: 0-based index into its per-layer numbers."""
        super().__init__()
        self.norm, self.kind = config.norm, config.block
        self.skip_weight, self.branch_weight = plan['skip_weight'], plan['branch_weight']
        self.ln_1 = make_norm(config.norm, config, config.dyt_alpha_attn)
        if config.block != 'sas-p':
            self.ln_2 = make_norm(config.norm, config, config.dyt_alpha_mlp)
        self.attn = Attention(config, *plan['layers'][layer], first_layer=layer == 0)
        self.mlp = MLP(config, plan['slope'])
        if config.block != 'standard':
            self.beta_attn = nn.Parameter(torch.ones(()))
            self.beta_mlp = nn.Parameter(torch.tensor(float(config.beta_mlp)))

    def sublayer(self, x, f, ln):
        if not self.skip_weight:           # no skip: weights (0, 1)
            return ln(f(x)) if self.norm == 'postln' else f(ln(x))
        if self.norm == 'postln':
            return ln(x + f(x))
        if self.norm == 'none':   # skip_weight^2 + branch_weight^2 = 1 keeps q (sec. 8)
            return self.skip_weight * x + self.branch_weight * f(x)
        return x + f(ln(x))       # pre-norm: the plain residual, weights (1, 1)

    def forward(self, x):
        if self.kind == 'sas':
            x = self.beta_attn * self.attn(self.ln_1(x))
            return x + self.beta_mlp * self.mlp(self.ln_2(x))
        if self.kind == 'sas-p':
            h = self.ln_1(x)
            return self.beta_attn * self.attn(h) + self.beta_mlp * self.mlp(h)
        return self.sublayer(self.sublayer(x, self.attn, self.ln_1), self.mlp, self.ln_2)

class GPT(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        learned_pos = config.pos == 'learned'
        self.wpe = nn.Embedding(config.block_size, config.n_embd) if learned_pos else None
        plan = signal_plan(config)
        self.h = nn.ModuleList([Block(config, plan, l) for l in range(config.n_layer)])
        # the final norm is a LayerNorm unless the blocks use RMSNorm or DyT
        final = config.norm if config.norm in ('rmsnorm', 'dyt') else 'layernorm'
        self.ln_f = (make_norm(final, config, config.dyt_alpha_final) if config.final_norm
                     else nn.Identity())
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.embed_scale = (nn.Parameter(torch.tensor(math.sqrt(config.n_embd)))
                            if config.embed_scale else None)
        self.ln_e = make_norm('layernorm', config, None) if config.embed_norm else None
        with torch.no_grad():
            std = math.sqrt(embedding_variance(config))
            for emb in (self.wte, self.wpe):
                if emb is not None:
                    emb.weight.normal_(0.0, std)
            if config.tie_weights:
                self.lm_head.weight = self.wte.weight
            elif config.init == 'spa':
                self.lm_head.weight.zero_()   # uniform predictions; the body learns from step 2
            else:
                self.lm_head.weight.normal_(0.0, 0.02)

    def embed(self, idx):
        T = idx.size(1)
        if T > self.config.block_size:
            raise ValueError(f"sequence of length {T} is longer than "
                             f"block_size={self.config.block_size}")
        x = self.wte(idx)   # (B, T, C)
        if self.wpe is not None:
            x = x + self.wpe(torch.arange(T, device=idx.device))
        if self.embed_scale is not None:
            x = self.embed_scale * x
        if self.ln_e is not None:
            x = self.ln_e(x)
        return F.dropout(x, self.config.dropout, self.training)

    def forward(self, idx, targets=None):
        x = self.embed(idx)
        for block in self.h:
            x = block(x)
        x = self.ln_f(x)
        if targets is None:
            return self.lm_head(x[:, [-1], :]), None   # generation only needs the last position
        logits = self.lm_head(x)   # (B, T, vocab_size)
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)).float(), targets.view(-1),
                               ignore_index=-1)
        return logits, loss

    def hidden_states(self, idx):
        """The embedding output and every block's output: n_layer + 1 tensors (B, T, C)."""
        states = [self.embed(idx)]
        for block in self.h:
            states.append(block(states[-1]))
        return states

    def num_params(self):
        return sum(p.numel() for p in self.parameters())

    def flops_per_token(self, T):
        """Training FLOPs per token (forward + backward = 3x forward): 6 per weight of every matmul
        (embedding lookups are free), plus attention's Q K^T and A V, 12 * n_layer * n_embd * T
        (PaLM)."""
        matmul = self.lm_head.weight.numel() + sum(
            p.numel() for n, p in self.named_parameters() if n.startswith('h.') and p.dim() == 2)
        return 6 * matmul + 12 * self.config.n_layer * self.config.n_embd * T

    @torch.no_grad()
    def signal_diagnostics(self, idx):
        """Per-layer signal-propagation health, as plain floats for the training log: mean token
        correlation (-> 1 is rank collapse), activation RMS and largest q value (early warning of
        blow-up, sec. 10), and the Value-SkipInit and shaped-attention gains."""
        stats = dict(corr=[], rms=[], q_max=[])
        for h in self.hidden_states(idx):
            kernel = token_kernel(h).cpu().numpy()
            corr, _, q_max = spa.kernel_stats(kernel)
            stats['corr'].append(round(corr, 5))
            stats['rms'].append(round(math.sqrt(kernel.diagonal().mean()), 5))
            stats['q_max'].append(round(q_max, 5))
        for block in self.h:
            for gain in ('alpha', 'beta', 'gamma'):   # Value-SkipInit's and shaped attention's
                if hasattr(block.attn, gain):
                    value = getattr(block.attn, gain).mean().item()
                    stats.setdefault(gain, []).append(round(value, 5))
        return stats

    @torch.no_grad()
    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None):
        for _ in range(max_new_tokens):
            logits, _ = self(idx[:, -self.config.block_size:])
            logits = logits[:, -1, :] / temperature
            if top_k is not None:
                v, _ = torch.topk(logits, min(top_k, logits.size(-1)))
                logits[logits < v[:, [-1]]] = -float('inf')
            next_idx = torch.multinomial(F.softmax(logits, dim=-1), num_samples=1)   # (B, 1)
            idx = torch.cat((idx, next_idx), dim=1)
        return idx

# -----------------------------------------------------------------------------
# what the modules are built from: one plan per model, in plain numbers from spa.py

def signal_plan(config):
    """Everything the blocks take from spa.py, computed once: the skip weights, the TAT slope, and
    per layer the bias constants of log A_l and the rescaling D_l (q-corrected from the predicted
    kernel when asked, sec. 7); (None, None) for the 'softmax' and 'vskipinit' layers."""
    skip_weight, branch_weight = skip_weights(config)
    layers = spa.attention_layers(config.attn, config.n_layer, config.block_size, config.gamma_L,
                                  config.rho_L)
    if config.q_correct and config.attn in spa.BIASED:
        args = predictor_args(config)
        del args['q_correct']
        rescales = spa.q_corrected_rescalings(config.block_size, **args)
        layers = [(bias_consts, D) for (bias_consts, _), D in zip(layers, rescales)]
    return dict(skip_weight=skip_weight, branch_weight=branch_weight, slope=tat_target(config)[0],
                layers=layers)

def skip_weights(config):
    """(skip_weight, branch_weight) of x -> skip_weight * x + branch_weight * f(x) (sec. 8)."""
    return spa.skip_weights(config.skip, config.norm, config.n_layer, config.skip_beta)

def tat_target(config):
    """(slope, eta reached) of the TAT activation, solved for the network as built: each block maps
    c -> w^2 c + (1 - w^2) C(c) with w^2 = skip^2 / (skip^2 + branch^2) its skip's share (0
    without skips). Where eta is out of reach (few blocks, or weighted skips that keep the network
    nearly linear) the closest reachable target is used: plain ReLU's, slope 0 (ours, sec. 6)."""
    if config.act != 'tat':
        return 0.0, None
    skip, branch = skip_weights(config)
    w2 = skip * skip / (skip * skip + branch * branch)
    a, b = math.sqrt(w2), math.sqrt(1.0 - w2)
    eta = min(config.eta, spa.tat_max_eta(config.n_layer, a, b))
    return spa.tat_slope(config.n_layer, eta, a, b), eta

def tat_note(config):
    """One line for the user when the TAT target asked for is not the one built, else None."""
    slope, eta = tat_target(config)
    if eta is None or eta >= config.eta:
        return None
    skip, branch = skip_weights(config)
    where = f'with skip weights {skip:.3f}/{branch:.3f}' if config.skip else 'without skips'
    return (f"TAT: eta={config.eta} is out of reach for {config.n_layer} blocks {where}; using the "
            f"largest reachable target eta={eta:.4f} (plain ReLU, slope 0)")

def predictor_args(config):
    """The model at init as spa.propagate_kernels sees it, in plain numbers: skip weights, TAT
    slope, and how much each initialised linear map scales a kernel: 1 for orthogonal weights and
    the SAS blocks' identity values and projection; std^2 * fan_in for N(0, 0.02), GPT-2's output
    projections 0.02 / sqrt(2L)."""
    skip, branch = skip_weights(config)
    d, L = config.n_embd, config.n_layer
    if config.init == 'gpt2':
        gains = (0.02 ** 2 * d, 0.02 ** 2 / (2 * L) * d, 0.02 ** 2 * d, 0.02 ** 2 / (2 * L) * 4 * d)
    elif config.init == 'sas':
        gains = (0.02 ** 2 * d, 0.02 ** 2 * d, 0.02 ** 2 * d, 0.02 ** 2 * 4 * d)
    else:
        gains = (1.0, 1.0, 1.0, 1.0)
    if config.block != 'standard':
        gains = (1.0, 1.0) + gains[2:]
    parts = 2 if config.pos == 'learned' else 1   # token (+ position)
    embed_var = parts * embedding_variance(config) * (d if config.embed_scale else 1)
    embed_var = 1.0 if config.embed_norm else embed_var   # distinct tokens: q = 1 after the norm
    return dict(n_layer=L, attn=config.attn, alpha=skip, beta=branch, norm=config.norm,
                act=config.act, slope=tat_target(config)[0], gains=gains, embed_var=embed_var,
                gamma_L=config.gamma_L, rho_L=config.rho_L, q_correct=config.q_correct,
                block=config.block, block_gains=(1.0, config.beta_mlp),
                dyt_alphas=(config.dyt_alpha_attn, config.dyt_alpha_mlp))

def embedding_variance(config):
    """Of each embedding table's entries. GPT-2 and SAS: N(0, 0.02). SPA: q = 1 after the
    embedding (token and position halves), the kernel I. With embed_scale, q = 1 after the scale
    (ours: at 0.02, DyT would see q = 8e-4 d and barely move off its linear part; sec. 15)."""
    parts = 2 if config.pos == 'learned' else 1
    if config.embed_scale:
        return 1.0 / (parts * config.n_embd)
    return 0.02 ** 2 if config.init in ('gpt2', 'sas') else 1.0 / parts

def init_linear(linear, config, role):
    """role: 'qkv' | 'attn_out' | 'fc' | 'mlp_out'. GPT-2: N(0, 0.02), output projections
    0.02/sqrt(2L). SAS: N(0, 0.02) without the 1/sqrt(2L) (their code's) and W_Q = 0 (sec. 17).
    SPA: W_Q = 0 (the logits are then the bias alone, so attention is exactly the designed A_l),
    orthogonal W_K, W_V and W_O, and scaled-orthogonal MLP weights max(sqrt(fan_out/fan_in), 1)
    (sec. 6, 11). In the SAS blocks, 'qkv' is W_Q and W_K only."""
    w, d = linear.weight, config.n_embd
    with torch.no_grad():
        if linear.bias is not None:
            linear.bias.zero_()
        if config.init in ('gpt2', 'sas'):
            scaled = config.init == 'gpt2' and role in ('attn_out', 'mlp_out')
            w.normal_(0.0, 0.02 / math.sqrt(2 * config.n_layer) if scaled else 0.02)
            if config.init == 'sas' and role == 'qkv':
                w[:d].zero_()
        elif role == 'qkv':
            w[:d].zero_()
            nn.init.orthogonal_(w[d:2 * d])
            if len(w) > 2 * d:
                nn.init.orthogonal_(w[2 * d:])
        else:
            nn.init.orthogonal_(w)
            w.mul_(max(math.sqrt(w.shape[0] / w.shape[1]), 1.0))

# -----------------------------------------------------------------------------
# measuring the kernel (sec. 1), next to spa.py's prediction

def token_kernel(h):
    """Sigma = X X^T / d per sequence, averaged over the batch: (T, T), float64."""
    h = h.double()   # (B, T, C)
    return (h @ h.transpose(-1, -2)).mean(0) / h.size(-1)

@torch.no_grad()
def measure_kernels(config, T, batch_size=8, seed=0):
    """Kernels of a freshly initialised model (float64) on random sequences of distinct tokens, so
    that the embedding kernel is I as spa.predict_kernels assumes: n_layer + 1 numpy arrays."""
    if config.vocab_size < T:
        raise ValueError(f"measuring needs vocab_size >= T distinct tokens "
                         f"(got {config.vocab_size} < {T})")
    torch.manual_seed(seed)
    model = GPT(config).double().eval()
    idx = torch.stack([torch.randperm(config.vocab_size)[:T] for _ in range(batch_size)])
    return [token_kernel(h).numpy() for h in model.hidden_states(idx)]

def predict_kernels(config, T, sigma0=None):
    """spa.predict_kernels for this model at init: n_layer + 1 T x T arrays."""
    return spa.predict_kernels(T, sigma0=sigma0, **predictor_args(config))

# -----------------------------------------------------------------------------
# command line: the predicted kernel layer by layer, and with --measure a real model next to it

DEFAULTS = dict(
    model='espa',      # a preset of PRESETS
    n_layer=None,      # None: the preset's
    n_embd=512,        # the width of the measured model
    n_head=8,
    block_size=128,    # T
    batch_size=8,      # sequences the measured kernel averages over
    measure=False,     # also measure a freshly initialised model (a bare --measure says True)
    seed=0,            # of the measured model's init and tokens
)

def kernel_table(argv):
    """Print the predicted kernel's mean correlation and q range layer by layer (and the measured
    ones next to them with --measure). Any GPTConfig field is a key too (--attn=uspa)."""
    settings = {f.name: f.type for f in fields(GPTConfig)}
    argv = ['--measure=True' if arg == '--measure' else arg for arg in argv]
    cfg = configure({**dict.fromkeys(settings), **DEFAULTS}, argv, types=settings)
    config = config_for(cfg['model'], **{key: cfg[key] for key in settings})
    T, B = config.block_size, cfg['batch_size']
    predicted = predict_kernels(config, T)
    measured = measure_kernels(config, T, B, cfg['seed']) if cfg['measure'] else None
    skip = f" skip={config.skip}" if config.block == 'standard' else ''   # SAS: the block's own
    print(f"{cfg['model']}: attn={config.attn} block={config.block}{skip} norm={config.norm} "
          f"act={config.act} n_layer={config.n_layer} T={T}"
          + (f", measured at width {config.n_embd}, batch {B}" if measured else ""))
    if tat_note(config):
        print(tat_note(config))
    head = f"{'layer':>5} | {'corr (pred)':>11} {'q range (pred)':>18}"
    print(head + (f" | {'corr (meas)':>11} {'q range (meas)':>18}" if measured else ""))
    for l, sigma in enumerate(predicted):
        kernels = [sigma, measured[l]] if measured else [sigma]
        print(f"{l:>5} | " + " | ".join("{:11.4f} {:8.3f} .. {:7.3f}".format(*spa.kernel_stats(k))
                                        for k in kernels))
    return 0

if __name__ == '__main__':
    usage = 'python model.py [--key=value ...]   (the kernel table; keys: GPTConfig fields too)'
    help_text = (format_help(DEFAULTS, key_comments(__file__), usage) + '\n  and any GPTConfig '
                 'field: ' + ', '.join(f.name for f in fields(GPTConfig)))
    sys.exit(command_line(kernel_table, sys.argv[1:], help_text, (ValueError, TypeError)))
