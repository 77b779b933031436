"""
The model that realises spa.py's math, at init and one step beyond: each layer applies the designed
matrix, the fast attention paths equal a float64 reference forward and backward, the measured
kernel of a wide model follows the prediction, special initialisations survive, optimizer groups
by role (AdamW and Muon), every preset trains at 1-4 layers, and the command line.
CPU only; `python -m pytest -q test_model.py`. Section numbers refer to MATH.md.
"""
import functools
import io
import math
import re
import subprocess
import sys

import numpy as np
import pytest
import torch

import fastpaths
import model
import optim
import spa
from model import (GPT, PRESETS, Attention, DyT, GPTConfig, config_for, measure_kernels,
                   predict_kernels, signal_plan)
from optim import configure_optimizers

# -----------------------------------------------------------------------------
# the model applies exactly the designed matrices

def _applied_matrix(attn, x):
    """Recover the T x T matrix A with attn(x) = A x W_V W_O (valid when W_Q = 0: the layer is
    linear). With T <= n_embd random rows, x W_V W_O has full row rank and A = Y pinv(M)."""
    d = x.size(-1)
    with torch.no_grad():
        W_V, W_O = attn.c_attn.weight[2 * d:], attn.c_proj.weight
        M = x[0] @ W_V.T @ W_O.T
        return (attn(x)[0] @ torch.linalg.pinv(M)).numpy()

@pytest.mark.parametrize('name,impl', [('espa', 'sdpa'), ('espa', 'flex'), ('uspa', 'sdpa'),
                                       ('uspa', 'flex'), ('vskipinit', 'sdpa'),
                                       ('shaped', 'sdpa'), ('vanilla', 'sdpa')])
def test_layer_applies_the_designed_matrix_exactly(name, impl):
    cfg = config_for(name, n_layer=6, n_embd=64, n_head=4, block_size=40)
    gpt = GPT(cfg).double()
    T = 40
    x = torch.randn(1, T, 64, dtype=torch.float64)
    designed = [spa.attention_matrix(cfg.attn, bias_consts, T)
                for bias_consts, _ in signal_plan(cfg)['layers']]
    for layer in (1, 4, 6):
        attn = gpt.h[layer - 1].attn
        attn.impl = impl
        A = _applied_matrix(attn, x)
        expected = np.eye(T) if name in ('vskipinit', 'shaped') else designed[layer - 1]
        tol = 1e-9 if impl == 'sdpa' else 1e-5
        np.testing.assert_allclose(A, expected, atol=tol)
        assert np.abs(np.triu(A, 1)).max() < tol   # causal
    if name == 'vanilla':
        np.testing.assert_allclose(designed[0], spa.uniform_causal_matrix(T))

def _reference_attention(attn, x):
    """Explicit T x T float64 computation of one attention layer, trained-like (W_Q != 0)."""
    B, T, C = x.shape
    H = attn.n_head
    qkv = attn.c_attn(x).split(C, dim=2)
    if attn.c_proj is None:   # SAS: values x, in the first layer x (alpha_V I + beta_V dW)
        W_V = torch.eye(C, dtype=x.dtype)
        if attn.value_delta is not None:
            W_V = attn.alpha_v * W_V + attn.beta_v * attn.value_delta.weight.T
        qkv = (*qkv, x @ W_V)
    q, k, v = (t.view(B, T, H, C // H).transpose(1, 2) for t in qkv)
    logits = q @ k.transpose(-1, -2) / math.sqrt(C // H)
    causal = torch.tril(torch.ones(T, T, dtype=torch.bool))
    if attn.variant in ('espa', 'uspa'):
        cfg = attn._config
        if attn.variant == 'espa':
            g = spa.espa_gammas(cfg.n_layer, cfg.gamma_L)
            A = spa.espa_matrix(g[attn._layer - 1], g[attn._layer], T)
        else:
            r = spa.uspa_rhos(cfg.n_layer, cfg.rho_L)
            A = spa.uspa_matrix(r[attn._layer - 1], r[attn._layer], T)
        logA = torch.from_numpy(np.log(np.where(A > 0, A, 1.0)))
        logits = logits + logA
        D = torch.from_numpy(A.sum(1))[:, None]
    P = torch.softmax(logits.masked_fill(~causal, -math.inf), dim=-1)
    y = P @ v
    if attn.variant in ('espa', 'uspa'):
        y = D * y
    if attn.variant == 'vskipinit':
        y = attn.alpha.view(-1, 1, 1) * v + attn.beta.view(-1, 1, 1) * y
    if attn.variant == 'shaped':   # (alpha I + beta P - gamma C) V, C_ij = 1/i for j <= i
        centre = torch.from_numpy(spa.uniform_causal_matrix(T))
        gain = lambda g: g.view(-1, 1, 1)
        y = (gain(attn.alpha) * torch.eye(T, dtype=x.dtype) + gain(attn.beta) * P
             - gain(attn.gamma) * centre) @ v
    y = y.transpose(1, 2).reshape(B, T, C)
    return y if attn.c_proj is None else attn.c_proj(y)

@pytest.mark.parametrize('name,layer', [('espa', 3), ('uspa', 3), ('vskipinit', 3), ('preln', 3),
                                        ('shaped', 3), ('sas', 1), ('sas-p', 3)])
@pytest.mark.parametrize('T', [1, 17, 64, 130])
def test_fast_path_equals_explicit_reference_forward_and_backward(name, layer, T):
    """Shaped attention without a T x T tensor, the SAS blocks' identity values and projection
    (layer 1: the trainable value matrix) included."""
    cfg = config_for(name, n_layer=6, n_embd=32, n_head=2, block_size=256)
    torch.manual_seed(T)
    attn = Attention(cfg, *signal_plan(cfg)['layers'][layer - 1], first_layer=layer == 1).double()
    attn._config, attn._layer = cfg, layer
    with torch.no_grad():   # move away from init: nonzero W_Q, gains off their init values
        for p in attn.parameters():
            p.add_(0.3 * torch.randn_like(p))
    x = torch.randn(2, T, 32, dtype=torch.float64, requires_grad=True)
    fast, ref = attn(x), _reference_attention(attn, x)
    torch.testing.assert_close(fast, ref, atol=1e-10, rtol=1e-10)
    grad_out = torch.randn_like(fast)
    params = [x] + list(attn.parameters())
    g_fast = torch.autograd.grad(fast, params, grad_out)
    g_ref = torch.autograd.grad(ref, params, grad_out)
    for a, b in zip(g_fast, g_ref):
        torch.testing.assert_close(a, b, atol=1e-9, rtol=1e-9)
    if T > 1:   # the same module at a shorter length: the cached SDPA bias must follow T
        short = x[:, :T // 2]
        torch.testing.assert_close(attn(short), _reference_attention(attn, short), atol=1e-10,
                                   rtol=1e-10)
    if name in ('espa', 'uspa'):   # FlexAttention: forward only on CPU (its backward needs a GPU)
        attn.impl = 'flex'
        with torch.no_grad():
            torch.testing.assert_close(attn(x), ref, atol=2e-5, rtol=2e-5)

# -----------------------------------------------------------------------------
# faithful signal propagation at init: the measured kernel of a wide model follows the prediction

WIDE = dict(n_layer=24, n_embd=512, n_head=8, block_size=48)

@functools.lru_cache(maxsize=None)   # several tests look at the same wide model
def _measured_vs_predicted(name, **kw):
    cfg = config_for(name, **{**WIDE, **kw})
    measured = measure_kernels(cfg, cfg.block_size, batch_size=6, seed=1)
    predicted = predict_kernels(cfg, cfg.block_size, sigma0=measured[0])
    return measured, predicted

@pytest.mark.parametrize('name', ['vskipinit', 'uspa', 'espa', 'softmax-skip', 'vskipinit-skip',
                                  'uspa-skip', 'espa-skip', 'preln', 'preln-espa', 'shaped', 'sas',
                                  'sas-p', 'prermsnorm-relu', 'preln-dyt', 'sas-p-nonorm'])
def test_kernel_of_a_wide_model_matches_the_prediction(name):
    """Tolerance: at width d the kernel maps have O(L/d) corrections (about 0.05 here; they shrink
    about 4x at width 1024). Mean correlations must agree to 0.08 at every layer, the mean q value
    to 15%."""
    measured, predicted = _measured_vs_predicted(name)
    for layer, (m, p) in enumerate(zip(measured, predicted)):
        c_m, c_p = spa.kernel_stats(m)[0], spa.kernel_stats(p)[0]
        assert abs(c_m - c_p) < 0.08, f"{name} layer {layer}: corr {c_m:.3f}, predicted {c_p:.3f}"
        q_m, q_p = np.diag(m).mean(), np.diag(p).mean()
        assert abs(q_m / q_p - 1) < 0.15, f"{name} layer {layer}: q {q_m:.3f}, predicted {q_p:.3f}"

def test_vanilla_collapses_where_espa_does_not():
    """The contrast the paper is about: plain causal attention makes every token the same."""
    vanilla, vanilla_pred = _measured_vs_predicted('vanilla')
    espa, _ = _measured_vs_predicted('espa')
    top_vanilla, top_espa = spa.kernel_stats(vanilla[-1])[0], spa.kernel_stats(espa[-1])[0]
    assert top_vanilla > 0.99 and spa.kernel_stats(vanilla_pred[-1])[0] > 0.99
    assert top_espa < 0.9
    assert top_vanilla - top_espa > 0.1

def test_q_corrected_espa_keeps_q_at_one():
    measured, predicted = _measured_vs_predicted('espa', q_correct=True)
    # by construction, from the measured sigma0
    np.testing.assert_allclose(np.diag(predicted[-1]), 1.0, atol=0.02)
    assert abs(np.diag(measured[-1]).mean() - 1) < 0.15
    plain, _ = _measured_vs_predicted('espa')
    assert np.diag(plain[-1]).max() > 1.5 * np.diag(measured[-1]).max()   # what it corrects

def test_signal_diagnostics_are_the_hidden_states_kernel_statistics():
    """The training log's per-layer numbers: mean off-diagonal token correlation of the kernel,
    RMS and largest q, computed here directly from the hidden states."""
    torch.manual_seed(0)
    gpt = GPT(config_for('vskipinit', n_layer=3, n_embd=32, block_size=16))
    idx = torch.randint(0, 256, (4, 16))
    stats = gpt.signal_diagnostics(idx)
    with torch.no_grad():
        states = gpt.hidden_states(idx)
    assert len(stats['corr']) == len(states) == 4 and stats['alpha'] == [1.0] * 3
    for layer, h in enumerate(states):
        K = torch.einsum('btc,bsc->ts', h.double(), h.double()) / (h.size(0) * h.size(-1))
        q = K.diagonal()
        C = K / (q[:, None] * q[None, :]).sqrt()
        corr = (C.sum() - C.diagonal().sum()) / (16 * 15)
        assert abs(stats['corr'][layer] - corr.item()) < 1e-5
        assert abs(stats['rms'][layer] - q.mean().sqrt().item()) < 1e-5
        assert abs(stats['q_max'][layer] - q.max().item()) < 1e-5

def test_blocks_weight_skip_and_branch_as_planned():
    """x -> skip_weight * x + branch_weight * f(x) without normalisation, with
    skip_weight^2 + branch_weight^2 = 1 and branch_weight^2 = 1 / n_layer (sec. 8); no skip:
    f(x) alone."""
    x = torch.randn(2, 8, 32)
    f = lambda t: torch.tanh(t) + 1.0
    block = GPT(config_for('espa-skip', n_layer=16, n_embd=32, block_size=8)).h[0]
    assert block.skip_weight ** 2 + block.branch_weight ** 2 == pytest.approx(1.0)
    assert block.branch_weight == pytest.approx(0.25)
    expected = block.skip_weight * x + block.branch_weight * f(x)
    torch.testing.assert_close(block.sublayer(x, f, block.ln_1), expected)
    plain = GPT(config_for('espa', n_layer=2, n_embd=32, block_size=8)).h[0]
    torch.testing.assert_close(plain.sublayer(x, f, plain.ln_1), f(x))

# -----------------------------------------------------------------------------
# special initialisations survive; optimizer groups by role

def _check_spa_init(model, cfg):
    d = cfg.n_embd
    eye = torch.eye(d, dtype=torch.float64)
    for block in model.h:
        w = block.attn.c_attn.weight.double()
        assert torch.count_nonzero(w[:d]) == 0                            # W_Q = 0
        for W in (w[d:2 * d], w[2 * d:], block.attn.c_proj.weight.double()):
            torch.testing.assert_close(W @ W.T, eye, atol=1e-5, rtol=0)   # orthogonal
        fc = block.mlp.c_fc.weight.double()
        # scaled orthogonal: 2 * orthonormal columns
        torch.testing.assert_close(fc.T @ fc, 4 * eye, atol=1e-4, rtol=0)
        proj = block.mlp.c_proj.weight.double()
        torch.testing.assert_close(proj @ proj.T, eye, atol=1e-5, rtol=0)
        if block.attn.variant == 'vskipinit':
            assert (block.attn.alpha == 1).all() and (block.attn.beta == 0).all()
        if block.attn.variant == 'shaped':
            for gain in (block.attn.alpha, block.attn.beta, block.attn.gamma):
                assert gain.shape == (cfg.n_head,) and (gain == 1).all()
    assert torch.count_nonzero(model.lm_head.weight) == 0

def _built_and_reloaded(cfg, check):
    """A model as built, and another (other seed) loaded from its state_dict, both checked."""
    torch.manual_seed(0)
    model = GPT(cfg)
    check(model, cfg)
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    torch.manual_seed(123)
    clone = GPT(cfg)
    clone.load_state_dict(torch.load(io.BytesIO(buf.getvalue()), weights_only=True))
    check(clone, cfg)
    return model, clone

@pytest.mark.parametrize('name', ['espa', 'uspa', 'vskipinit', 'vanilla', 'espa-skip', 'shaped'])
def test_special_inits_survive_construction_and_state_dict_round_trip(name):
    cfg = config_for(name, n_layer=4, n_embd=32, block_size=16, bias=True)
    model, clone = _built_and_reloaded(cfg, _check_spa_init)
    biases = [p for n, p in model.named_parameters() if n.endswith('.bias')]
    assert biases and all(torch.count_nonzero(p) == 0 for p in biases)
    idx = torch.randint(0, 256, (2, 16))
    torch.testing.assert_close(clone.hidden_states(idx)[-1], model.hidden_states(idx)[-1], atol=0,
                               rtol=0)

def test_baselines_start_from_the_gpt2_init():
    cfg = config_for('preln', n_layer=8, n_embd=128, block_size=16)
    model = GPT(cfg)
    assert abs(model.h[0].attn.c_attn.weight.std().item() - 0.02) < 0.002
    assert abs(model.h[0].mlp.c_proj.weight.std().item() - 0.02 / 4) < 0.001   # 0.02 / sqrt(2 L)
    assert model.lm_head.weight is model.wte.weight

def test_optimizer_groups_go_by_role_not_by_ndim():
    """Linear and Embedding weights decay, gains, biases and LayerNorms do not; the depth rule
    scales the lr of everything inside the blocks; the tied readout is in one group, once."""
    cfg = config_for('vskipinit', n_layer=4, n_embd=32, block_size=16, bias=True)
    model = GPT(cfg)
    opt, = configure_optimizers(model, 0.1, 1e-3, (0.9, 0.95), 'cpu')
    group_of = {id(p): g for g in opt.param_groups for p in g['params']}
    n_params = len(list(model.parameters()))
    assert sum(len(g['params']) for g in opt.param_groups) == len(group_of) == n_params
    for name, p in model.named_parameters():
        g = group_of[id(p)]
        is_gain = name.endswith(('.alpha', '.beta', '.bias')) or 'ln_' in name
        assert g['weight_decay'] == (0.0 if is_gain else 0.1), name
        assert g['lr_scale'] == (1 / 4 if name.startswith('h.') else 1.0), name
        assert p.dtype == torch.float32
    assert any(n.endswith('.alpha') for n in dict(model.named_parameters()))
    preln = GPT(config_for('preln', n_layer=4, n_embd=32, block_size=16))
    groups = configure_optimizers(preln, 0.1, 1e-3, (0.9, 0.95), 'cpu')[0].param_groups
    assert {g['lr_scale'] for g in groups} == {1.0}
    # the tied weight counted once
    assert sum(len(g['params']) for g in groups) == len(list(preln.parameters()))

# -----------------------------------------------------------------------------
# the family that followed: shaped attention, the SAS and SAS-P blocks, RMSNorm, DyT

def _rms_norm(x, weight):   # torch.nn.RMSNorm's definition, eps 1e-8 inside the square root
    return x / (x.pow(2).mean(-1, keepdim=True) + 1e-8).sqrt() * weight

@pytest.mark.parametrize('T', [1, 15, 16, 17, 130])
def test_blocked_cumsum_equals_cumsum_forward_and_backward(T):
    """Shaped attention's C V on a CPU: fastpaths.CumsumTokens, a blocked scan, is x.cumsum(1)
    and its gradient the reverse cumulative sum, at lengths on and off the block size, strided
    input too."""
    torch.manual_seed(T)
    qkv = torch.randn(2, T, 3 * 5, dtype=torch.float64, requires_grad=True)
    x = qkv.split(5, dim=2)[2]   # the values as Attention sees them: a strided view
    grad_out = torch.randn(2, T, 5, dtype=torch.float64)
    fast, ref = fastpaths.CumsumTokens.apply(x), x.cumsum(1)
    torch.testing.assert_close(fast, ref, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(torch.autograd.grad(fast, qkv, grad_out)[0],
                               torch.autograd.grad(ref, qkv, grad_out)[0], atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(fastpaths.blocked_cumsum(grad_out, reverse=True),
                               grad_out.flip(1).cumsum(1).flip(1), atol=1e-12, rtol=1e-12)

@pytest.mark.parametrize('norm', ['rmsnorm', 'dyt', 'dyt-bias'])
@pytest.mark.parametrize('shape', [(2, 1, 24), (3, 17, 24), 'strided'])
def test_norms_cpu_gradients_equal_the_definitions_in_float64(norm, shape):
    """On a CPU the RMSNorm and DyT gradients are written out (fastpaths.RMSNormGrad, DyTGrad): they
    equal autograd through the plain definitions, for x and every gain, and torch's own op."""
    torch.manual_seed(0)
    cfg = config_for('preln', n_embd=24, bias=norm == 'dyt-bias')
    layer = model.make_norm(norm.split('-')[0], cfg, 0.7).double()
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(0.3 * torch.randn_like(p))
    x = torch.randn(*((5, 24, 3) if shape == 'strided' else shape), dtype=torch.float64)
    x = (x.transpose(1, 2) if shape == 'strided' else x).requires_grad_()   # a non-contiguous view
    if norm == 'rmsnorm':
        ref, torch_own = _rms_norm(x, layer.weight), torch.nn.RMSNorm.forward(layer, x)
    else:
        ref = torch.tanh(layer.alpha * x) * layer.weight
        ref = ref if layer.bias is None else ref + layer.bias
        torch_own = ref
    fast = layer(x)
    assert type(fast.grad_fn).__name__ == ('RMSNormGradBackward' if norm == 'rmsnorm'
                                           else 'DyTGradBackward')
    grad_out = torch.randn_like(fast)
    inputs = [x] + list(layer.parameters())
    for other in (ref, torch_own):
        torch.testing.assert_close(fast, other, atol=1e-12, rtol=1e-12)
        for a, b in zip(torch.autograd.grad(fast, inputs, grad_out, retain_graph=True),
                        torch.autograd.grad(other, inputs, grad_out, retain_graph=True)):
            torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-10)

@pytest.mark.parametrize('norm', ['rmsnorm', 'dyt'])
def test_norms_leave_mixed_dtypes_to_torch(norm):
    """Under autocast a bfloat16 activation meets a float32 weight: torch's own op decides the
    precision there, so the CPU fast path steps aside."""
    layer = model.make_norm(norm, config_for('preln', n_embd=24), 0.7)
    x = torch.randn(2, 3, 24, requires_grad=True)
    assert type(layer(x).grad_fn).__name__.endswith('GradBackward')
    assert not type(layer(x.bfloat16()).grad_fn).__name__.endswith('GradBackward')

@pytest.mark.parametrize('name', ['sas', 'sas-p', 'sas-p-nonorm'])
@pytest.mark.parametrize('T', [1, 20])
def test_sas_blocks_equal_an_explicit_float64_computation(name, T):
    """sas: x' = beta_SA Attn(N1(x)), out = x' + beta_FF MLP(N2(x')); sas-p: out = beta_SA
    Attn(N1(x)) + beta_FF MLP(N1(x)); away from init, forward and backward."""
    torch.manual_seed(T)
    gpt = GPT(config_for(name, n_layer=2, n_embd=32, n_head=2, block_size=32)).double()
    with torch.no_grad():
        for p in gpt.parameters():
            p.add_(0.3 * torch.randn_like(p))
    mlp = lambda b, t: torch.relu(t @ b.mlp.c_fc.weight.T) @ b.mlp.c_proj.weight.T
    for block in gpt.h:
        x = torch.randn(2, T, 32, dtype=torch.float64, requires_grad=True)
        h = x if name == 'sas-p-nonorm' else _rms_norm(x, block.ln_1.weight)
        attended = block.beta_attn * _reference_attention(block.attn, h)
        if name == 'sas':
            ref = attended + block.beta_mlp * mlp(block, _rms_norm(attended, block.ln_2.weight))
        else:
            ref = attended + block.beta_mlp * mlp(block, h)
        fast = block(x)
        torch.testing.assert_close(fast, ref, atol=1e-10, rtol=1e-10)
        grad_out = torch.randn_like(fast)
        params = [x] + list(block.parameters())
        for a, b in zip(torch.autograd.grad(fast, params, grad_out),
                        torch.autograd.grad(ref, params, grad_out)):
            torch.testing.assert_close(a, b, atol=1e-9, rtol=1e-9)

def test_shaped_attention_at_init_is_alpha_times_the_values():
    """W_Q = 0 makes the softmax C, so beta P - gamma C = 0 whenever beta = gamma: alpha V."""
    cfg = config_for('shaped', n_layer=2, n_embd=32, n_head=2, block_size=24)
    attn = GPT(cfg).double().h[1].attn
    with torch.no_grad():
        attn.alpha.copy_(torch.tensor([0.5, 2.0]))
        attn.beta.fill_(1.7)
        attn.gamma.fill_(1.7)
    x = torch.randn(2, 24, 32, dtype=torch.float64)
    v = (x @ attn.c_attn.weight[64:].T).view(2, 24, 2, 16) * attn.alpha.view(2, 1)
    torch.testing.assert_close(attn(x), attn.c_proj(v.reshape(2, 24, 32)), atol=1e-12, rtol=0)

def test_sas_and_sas_p_are_the_same_model_at_init():
    """Attention is the identity at init, so N2(N1(x)) = N1(x) feeds both MLPs (He & Hofmann)."""
    idx = torch.randint(0, 256, (2, 16))
    logits = {}
    for name in ('sas', 'sas-p'):
        torch.manual_seed(0)
        logits[name], _ = GPT(config_for(name, n_layer=4, n_embd=32, block_size=16))(idx, idx)
    torch.testing.assert_close(logits['sas'], logits['sas-p'], atol=1e-5, rtol=1e-5)

def _check_family_init(model, cfg):
    d = cfg.n_embd
    x = torch.randn(2, 8, d, dtype=torch.float64)
    std = lambda w: w.double().std().item()
    for layer, block in enumerate(model.h):
        attn = block.attn
        if cfg.init == 'sas':   # N(0, 0.02), no 1/sqrt(2L) on the outputs, W_Q = 0
            assert torch.count_nonzero(attn.c_attn.weight[:d]) == 0
            for w in (attn.c_attn.weight[d:2 * d], block.mlp.c_fc.weight, block.mlp.c_proj.weight):
                assert abs(std(w) - 0.02) < 0.002
        if cfg.norm == 'rmsnorm':
            assert isinstance(block.ln_1, torch.nn.RMSNorm) and block.ln_1.eps == 1e-8
        if cfg.block == 'standard':
            continue
        assert attn.c_attn.weight.shape == (2 * d, d) and attn.c_proj is None
        assert (attn.value_delta is not None) == (layer == 0)
        if layer == 0:
            assert torch.count_nonzero(attn.value_delta.weight) == 0
            assert attn.alpha_v.item() == attn.beta_v.item() == 1.0
        assert block.beta_attn.item() == 1.0 and block.beta_mlp.item() == pytest.approx(0.1)
        assert not hasattr(block, 'ln_2') if cfg.block == 'sas-p' else hasattr(block, 'ln_2')
        torch.testing.assert_close(attn.double()(x), x, atol=1e-12, rtol=0)   # the identity
        attn.float()
    if cfg.norm == 'dyt':
        assert not any(isinstance(m, torch.nn.LayerNorm) for m in model.modules())
        sites = [(b.ln_1, cfg.dyt_alpha_attn) for b in model.h] + \
            [(b.ln_2, cfg.dyt_alpha_mlp) for b in model.h] + [(model.ln_f, cfg.dyt_alpha_final)]
        for dyt, alpha in sites:
            assert isinstance(dyt, DyT) and dyt.alpha.item() == pytest.approx(alpha)
            assert (dyt.weight == 1).all() and (dyt.bias is None or (dyt.bias == 0).all())
    if cfg.embed_scale:   # sqrt(d) times the embedding: q = 1 at init
        assert model.embed_scale.item() == pytest.approx(math.sqrt(d))
        assert abs(model.embed(torch.arange(16)[None]).pow(2).mean().item() - 1) < 0.15

@pytest.mark.parametrize('name', ['sas', 'sas-p', 'prermsnorm-relu', 'preln-dyt'])
def test_family_inits_survive_construction_and_state_dict_round_trip(name):
    cfg = config_for(name, n_layer=3, n_embd=64, block_size=16, bias=True)
    gpt, clone = _built_and_reloaded(cfg, _check_family_init)
    idx = torch.randint(0, 256, (2, 16))
    torch.testing.assert_close(clone(idx)[0], gpt(idx)[0], atol=0, rtol=0)

def test_sas_p_nonorm_has_layernorms_only_on_the_embedding_and_before_the_readout():
    """He & Hofmann's norm-free SAS-P: no norm in any block; the first block reads a normalised
    embedding (q = 1 per token), the readout a normalised last state."""
    gpt = GPT(config_for('sas-p-nonorm', n_layer=3, n_embd=64, block_size=16))
    norms = [n for n, m in gpt.named_modules()
             if isinstance(m, (torch.nn.LayerNorm, torch.nn.RMSNorm, DyT))]
    assert norms == ['ln_f', 'ln_e']
    x = gpt.embed(torch.randint(0, 256, (2, 16)))
    # every token at variance v / (v + eps) across channels: 0.988 for GPT-2's v = 2 * 0.02^2
    var = x.var(-1, unbiased=False)
    assert ((var > 0.97) & (var < 1.0)).all(), var

def test_preln_dyt_departures_are_overrides_away_from_the_plain_drop_in():
    """embed_scale=False and alpha_0 = 0.5 everywhere: the paper's DyT in GPT-2's Pre-LN."""
    plain = GPT(config_for('preln-dyt', n_layer=2, n_embd=64, embed_scale=False,
                           dyt_alpha_attn=0.5, dyt_alpha_mlp=0.5, dyt_alpha_final=0.5))
    assert plain.embed_scale is None and abs(plain.wte.weight.std().item() - 0.02) < 0.002
    assert {m.alpha.item() for m in plain.modules() if isinstance(m, DyT)} == {0.5}

GAINS = {'shaped': ['h.1.attn.alpha', 'h.1.attn.beta', 'h.1.attn.gamma'],
         'sas': ['h.1.attn.gamma', 'h.0.attn.alpha_v', 'h.0.attn.beta_v', 'h.1.beta_attn',
                 'h.1.beta_mlp', 'h.1.ln_1.weight'],
         'preln-dyt': ['h.1.ln_1.alpha', 'h.1.ln_2.weight', 'h.1.ln_2.bias', 'ln_f.alpha',
                       'embed_scale']}

@pytest.mark.parametrize('name', ['shaped', 'sas', 'sas-p', 'preln-dyt'])
@pytest.mark.parametrize('optimizer', ['adamw', 'muon'])
def test_family_gains_never_decay_and_matrices_do(name, optimizer):
    gpt = GPT(config_for(name, n_layer=3, n_embd=32, block_size=16, bias=True))
    opts = configure_optimizers(gpt, 0.1, 1e-3, (0.9, 0.95), 'cpu', optimizer)
    group_of = {id(p): g for o in opts for g in o.param_groups for p in g['params']}
    named = dict(gpt.named_parameters())
    assert set(GAINS[name.replace('sas-p', 'sas')]) <= set(named)
    matrices = ('c_attn.weight', 'c_proj.weight', 'c_fc.weight', 'value_delta.weight',
                'wte.weight', 'wpe.weight', 'lm_head.weight')
    for n, p in named.items():
        assert group_of[id(p)]['weight_decay'] == (0.1 if n.endswith(matrices) else 0.0), n
        assert p.dtype == torch.float32

def test_sas_parameter_count_is_the_formula():
    """Against Pre-LN: no W_V and W_O (-2 d^2 per block), three gains per head and beta_SA, beta_FF
    per block, and the first layer's dW (d^2) with alpha_V, beta_V; SAS-P has one norm per block."""
    d, L, H = 64, 6, 4
    count = lambda name: GPT(config_for(name, n_layer=L, n_embd=d, n_head=H)).num_params()
    assert count('sas') == count('preln') - L * 2 * d * d + L * (3 * H + 2) + d * d + 2
    assert count('sas-p') == count('sas') - L * d
    assert count('prermsnorm-relu') == count('preln')

# -----------------------------------------------------------------------------
# configuration, layering, command line

def test_config_errors_say_what_to_do():
    with pytest.raises(ValueError, match="unknown model 'epsa': did you mean 'espa'.*presets are"):
        config_for('epsa')
    with pytest.raises(ValueError, match="unknown model setting 'gamma_l': did you mean 'gamma_L'"):
        config_for('espa', gamma_l=0.1)
    with pytest.raises(ValueError, match='divisible by n_head=8.*Try n_head=4'):
        config_for('espa', n_embd=100, n_head=8)
    with pytest.raises(ValueError, match='eta must be in'):
        config_for('espa', eta=1.5)
    with pytest.raises(ValueError, match="attn='flash' is not one of"):
        GPTConfig(attn='flash')
    with pytest.raises(ValueError, match='n_layer must be a positive integer'):
        config_for('espa', n_layer=0)
    with pytest.raises(ValueError, match="block='sas' puts its norms before.*got norm='postln'"):
        config_for('sas', norm='postln')
    with pytest.raises(ValueError, match="block='sass' is not one of"):
        config_for('sas', block='sass')

@pytest.mark.parametrize('name', list(PRESETS))
def test_every_preset_is_the_config_it_documents(name):
    """GPTConfig(**PRESETS[name]) is what config_for(name) builds, and None overrides change
    nothing (they mean 'the preset decides')."""
    assert config_for(name) == GPTConfig(**PRESETS[name])
    assert config_for(name, n_layer=None, attn=None) == config_for(name)
    assert all(getattr(config_for(name), key) == value for key, value in PRESETS[name].items())

def test_command_line_shows_collapse_and_its_absence():
    """The kernel table: vanilla's top layer is collapsed (correlation > 0.99) predicted and
    measured, E-SPA's is not."""
    def top_row(name):
        out = subprocess.run([sys.executable, 'model.py', f'--model={name}', '--n_layer=16',
                              '--n_embd=256', '--block_size=32', '--batch_size=4', '--measure'],
                             capture_output=True, text=True, check=True)
        rows = [line.split() for line in out.stdout.splitlines()
                if line.strip()[:2].strip().isdigit()]
        assert len(rows) == 17, out.stdout
        return float(rows[-1][2]), float(rows[-1][7])   # corr predicted, corr measured
    assert min(top_row('vanilla')) > 0.99
    assert max(top_row('espa')) < 0.95

def test_command_line_help_and_mistakes():
    """--help lists the keys and exits 0; a mistake is one line that says what to do, exit 2."""
    run = lambda *args: subprocess.run([sys.executable, 'model.py', *args], capture_output=True,
                                       text=True)
    out = run('--help')
    assert out.returncode == 0 and '--measure' in out.stdout and 'gamma_L' in out.stdout
    # the header names the skip only where the block reads it: SAS blocks have their own
    header = lambda name: run(f'--model={name}', '--n_layer=2', '--block_size=8').stdout
    assert 'block=standard skip=False norm=none' in header('vanilla').splitlines()[0]
    assert 'block=sas norm=rmsnorm' in header('sas').splitlines()[0]
    for args, message in [(['--model=nope'], "unknown model 'nope'"),
                          (['--gama_L=0.1'], "did you mean 'gamma_L'"),
                          (['--measure=yes'], "'measure'.*expects a bool"),
                          (['--n_embd=100'], 'divisible by n_head')]:
        bad = run(*args)
        assert bad.returncode == 2 and re.search(message, bad.stderr), (args, bad.stderr)
        assert 'Traceback' not in bad.stderr

# -----------------------------------------------------------------------------
# the kernel prediction the model's plan is built from, against plain dense float64 products

def _dense_prediction(T, n_layer, attn, alpha, beta, norm, act, slope, gains, embed_var, gamma_L,
                      rho_L, q_correct, block, block_gains, dyt_alphas):
    """The predictor as it was before the structured version: dense T x T matrices and products,
    and each block's kernel map written out."""
    g_v, g_o, g_fc, g_out = gains
    layers = spa.attention_layers(attn, n_layer, T, gamma_L, rho_L)
    A_list = [spa.attention_matrix(attn, bias_consts, T) for bias_consts, _ in layers]
    norm_ = lambda s: s / np.sqrt(np.outer(np.diag(s), np.diag(s)))
    pre = lambda s, site: (norm_(s) if norm in ('layernorm', 'rmsnorm') else
                           spa.norm_kernel(s, 'dyt', dyt_alphas[site]) if norm == 'dyt' else s)
    mlp = lambda s: g_out * spa.activation_kernel(g_fc * s, act, slope)
    mix = lambda s, b: (alpha ** 2 * s + beta ** 2 * b if alpha else b)
    beta_attn, beta_mlp = block_gains
    sigma, kernels, D = embed_var * np.eye(T), [], []
    for A in A_list:
        if q_correct:
            P = A / A.sum(1, keepdims=True)
            q_out = np.einsum('ij,jk,ik->i', P, g_v * pre(sigma, 0), P) * g_o
            A = P / np.sqrt(q_out)[:, None]   # output q = 1
            D.append(A.sum(1))
        attended = g_v * g_o * A @ pre(sigma, 0) @ A.T
        if block == 'sas':       # x' = beta_SA Attn(N(x)), x' + beta_FF MLP(N(x'))
            sigma = beta_attn ** 2 * attended
            sigma = sigma + beta_mlp ** 2 * mlp(pre(sigma, 1))
        elif block == 'sas-p':   # beta_SA Attn(N(x)) + beta_FF MLP(N(x))
            sigma = beta_attn ** 2 * attended + beta_mlp ** 2 * mlp(pre(sigma, 0))
        else:
            sigma = mix(sigma, attended)
            sigma = mix(sigma, mlp(pre(sigma, 1)))
        kernels.append(sigma)
    return kernels, D

@pytest.mark.parametrize('name,q_correct', [('espa', True), ('uspa', True), ('espa-skip', True),
                                            ('espa', False), ('vanilla', False),
                                            ('preln-espa', True), ('preln', False),
                                            ('sas', False), ('sas-p', False),
                                            ('prermsnorm-relu', False), ('preln-dyt', False)])
def test_structured_prediction_equals_dense_products(name, q_correct):
    """Pins the O(T^2)-per-layer predictor (and the q-corrected D_l it gives the model) to the dense
    O(T^3) computation it replaced."""
    cfg = config_for(name, n_layer=10, n_embd=64, block_size=48, q_correct=q_correct,
                     beta_mlp=0.3)
    args = model.predictor_args(cfg)
    fast = predict_kernels(cfg, 48)[1:]
    dense, D_dense = _dense_prediction(48, **args)
    for a, b in zip(fast, dense):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-14)
    if q_correct:
        D_model = [d for _, d in signal_plan(cfg)['layers']]
        for a, b in zip(D_model, D_dense):
            np.testing.assert_allclose(a, b, rtol=1e-10)

def test_q_correct_refuses_beyond_its_size_limit():
    # at the limit: builds its config
    assert config_for('espa', n_layer=36, block_size=2048, q_correct=True, n_embd=32).q_correct
    limit = r'q_correct=True .* n_layer \* T\^2 <= 2\^28.*q_correct=False'
    with pytest.raises(ValueError, match=limit):
        config_for('espa', n_layer=36, block_size=4096, q_correct=True)
    assert config_for('espa', n_layer=36, block_size=4096).block_size == 4096   # no q_correct

# -----------------------------------------------------------------------------
# TAT for the network that is built (sec. 6, 8)

TAT_PRESETS = [n for n in PRESETS if PRESETS[n]['act'] == 'tat']

def test_tat_mlp_equals_its_definition_forward_and_backward():
    """c_proj(scale * leaky_relu(c_fc(x), slope)) (sec. 6), away from init, in float64; the model
    puts the scale on c_proj's weight, which must change no value and no gradient."""
    torch.manual_seed(0)
    mlp = GPT(config_for('espa', n_layer=24, n_embd=16, block_size=8, bias=True)).double().h[1].mlp
    with torch.no_grad():
        for p in mlp.parameters():
            p.add_(0.3 * torch.randn_like(p))
    assert 0 < mlp.slope < 1 and mlp.scale > 1
    x = torch.randn(2, 5, 16, dtype=torch.float64, requires_grad=True)
    h = torch.nn.functional.leaky_relu(mlp.c_fc(x), mlp.slope)
    ref = mlp.scale * h @ mlp.c_proj.weight.T + mlp.c_proj.bias
    fast = mlp(x)
    torch.testing.assert_close(fast, ref, atol=1e-12, rtol=1e-12)
    inputs, grad_out = [x] + list(mlp.parameters()), torch.randn_like(ref)
    for a, b in zip(torch.autograd.grad(fast, inputs, grad_out),
                    torch.autograd.grad(ref, inputs, grad_out)):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-10)

@pytest.mark.parametrize('name', TAT_PRESETS)
@pytest.mark.parametrize('n_layer', [1, 2, 4, 24])
def test_tat_target_is_reached_by_the_network_as_built(name, n_layer):
    """The network's MLP C-map sends correlation 0 to the eta it says it uses. Checked through the
    kernel predictor's own block structure: with identity attention (Value-SkipInit at init) and
    distinct tokens, the last kernel's off-diagonal correlation is exactly the network's C-map
    at 0."""
    cfg = config_for(name, n_layer=n_layer, n_embd=32, block_size=8)
    slope, eta = model.tat_target(cfg)
    args = {**model.predictor_args(cfg), 'attn': 'vskipinit', 'q_correct': False}
    final = spa.predict_kernels(8, **args)[-1]
    assert abs(spa.kernel_stats(final)[0] - eta) < 1e-9, (name, n_layer, eta)
    assert GPT(cfg).h[0].mlp.slope == slope == args['slope']   # built is what is predicted
    reachable = spa.tat_max_eta(n_layer, *((0.0, 1.0) if not cfg.skip else model.skip_weights(cfg)))
    assert eta == pytest.approx(min(cfg.eta, reachable), abs=1e-12)
    assert (model.tat_note(cfg) is not None) == (reachable < cfg.eta)
    if model.tat_note(cfg):
        assert f'eta={eta:.4f}' in model.tat_note(cfg) and 'slope 0' in model.tat_note(cfg)

def test_skip_presets_solve_tat_with_their_skip_weights():
    """The -skip presets used to solve the slope for a plain chain of n_layer nonlinearities; with
    beta^2 = 1/24 the network's C-map then ends near 0.03 instead of eta. Now it reaches the largest
    value it can (plain ReLU), 0.26 at depth 24."""
    cfg = config_for('espa-skip', n_layer=24)
    alpha, beta = model.skip_weights(cfg)
    chain_slope = spa.tat_slope(24, 0.5)
    assert spa.tat_c0(chain_slope, 24, alpha, beta) < 0.05                       # the old choice
    slope, eta = model.tat_target(cfg)
    assert slope == 0.0 and abs(eta - 0.2558) < 1e-3
    assert abs(spa.tat_c0(slope, 24, alpha, beta) - eta) < 1e-12
    # reachable: solved exactly
    slope, eta = model.tat_target(config_for('espa-skip', n_layer=24, eta=0.2))
    assert eta == 0.2 and 0 < slope < 1 and abs(spa.tat_c0(slope, 24, alpha, beta) - 0.2) < 1e-9

@pytest.mark.parametrize('name', list(PRESETS))
def test_every_preset_builds_and_trains_from_one_to_four_layers(name):
    for n_layer in (1, 2, 3, 4):
        torch.manual_seed(0)
        m = GPT(config_for(name, n_layer=n_layer, n_embd=16, n_head=2, block_size=16))
        opt = configure_optimizers(m, 0.0, 3e-3, (0.9, 0.95), 'cpu')
        x = torch.randint(0, 256, (4, 16))
        losses = []
        for _ in range(8):
            _, loss = m(x, x)
            loss.backward()
            for o in opt:
                o.step()
                o.zero_grad()
            losses.append(loss.item())
        assert all(math.isfinite(l) for l in losses), (name, n_layer, losses)
        assert losses[-1] < losses[0] - 0.05, (name, n_layer, losses)

@pytest.mark.parametrize('name', ['espa', 'preln', 'vskipinit-skip'])
def test_muon_groups_hold_exactly_the_block_matrices(name):
    """optimizer='muon': every 2-D weight inside the blocks goes to torch.optim.Muon, at muon_lr
    with the depth rule where it applies; embeddings, readout, gains, LayerNorms and biases stay
    with AdamW."""
    m = GPT(config_for(name, n_layer=4, n_embd=32, block_size=16, bias=True))
    adamw, muon = configure_optimizers(m, 0.1, 1e-3, (0.9, 0.95), 'cpu', 'muon', muon_lr=0.05)
    assert isinstance(adamw, torch.optim.AdamW) and isinstance(muon, torch.optim.Muon)
    in_muon = {id(p) for g in muon.param_groups for p in g['params']}
    in_adamw = {id(p) for g in adamw.param_groups for p in g['params']}
    names = {id(p): n for n, p in m.named_parameters()}
    block_matrices = {id(p) for n, p in m.named_parameters() if n.startswith('h.') and p.dim() == 2}
    assert in_muon == block_matrices and not in_muon & in_adamw
    assert in_muon | in_adamw == set(names)                       # every parameter, once
    matrices = ('c_attn.weight', 'c_proj.weight', 'c_fc.weight')
    assert all(names[i].endswith(matrices) for i in in_muon)
    depth = 1 / 4 if m.config.block_lr_rule == 'depth' else 1.0
    for g in muon.param_groups:
        assert g['lr'] == pytest.approx(0.05 * depth)
        assert g['lr'] == pytest.approx(1e-3 * g['lr_scale'])
        assert g['weight_decay'] == 0.1
    for g in adamw.param_groups:
        assert not any(names[id(p)].startswith('h.') and p.dim() == 2 for p in g['params'])

def test_muon_orthogonalises_in_float32_on_cpu_as_torch_does_in_bfloat16():
    """On a CPU, configure_optimizers makes torch.optim.Muon's Newton-Schulz run in float32
    (optim.newton_schulz_float32): the same iteration as torch's, equal within bfloat16 rounding."""
    from torch.optim import _muon
    tiny = GPT(config_for('espa', n_layer=2, n_embd=16, block_size=8))
    configure_optimizers(tiny, 0.1, 1e-3, (0.9, 0.95), 'cpu', 'muon')
    assert _muon._zeropower_via_newtonschulz is optim.newton_schulz_float32
    gen = torch.Generator().manual_seed(0)
    for shape in [(256, 64), (64, 256), (192, 64), (64, 64)]:
        g = torch.randn(*shape, generator=gen) * 1e-3
        ours = optim.newton_schulz_float32(g, (3.4445, -4.775, 2.0315), 5, 1e-7)
        theirs = _muon.library_newton_schulz(g, (3.4445, -4.775, 2.0315), 5, 1e-7)
        assert ours.dtype == torch.float32 and ours.shape == g.shape
        # bfloat16 puts them about 2% apart
        assert (ours - theirs.float()).abs().max() < 0.05 * ours.abs().max(), shape
        s = torch.linalg.svdvals(ours)   # orthogonalised: singular values near 1
        assert 0.4 < s.min() and s.max() < 1.25, (shape, s)

def test_muon_needs_a_torch_that_has_it(monkeypatch):
    monkeypatch.delattr(torch.optim, 'Muon')
    tiny = GPT(config_for('espa', n_layer=2, n_embd=16, block_size=8))
    with pytest.raises(ValueError, match=r"torch.optim.Muon, which arrived in torch 2.9.*'adamw'"):
        configure_optimizers(tiny, 0.1, 1e-3, (0.9, 0.95), 'cpu', 'muon')
