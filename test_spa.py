"""
Tests of the signal-propagation math (spa.py) and of the model that realises it (model.py).
CPU only; `python -m pytest -q test_spa.py`. Section numbers refer to MATH.md.
"""
import functools
import io
import math
import subprocess
import sys

import numpy as np
import pytest
import torch

import model
import optim
import spa
from model import GPT, PRESETS, Attention, GPTConfig, config_for, measure_kernels, predict_kernels, signal_plan
from optim import configure_optimizers

# -----------------------------------------------------------------------------
# sec. 4-5: attention matrices

@pytest.mark.parametrize('layer', [1, 2, 9, 36])
def test_espa_closed_form_equals_cholesky_and_maps_kernels(layer):
    T, g = 96, spa.espa_gammas(36, 0.005)
    A = spa.espa_matrix(g[layer - 1], g[layer], T)
    S_prev, S = spa.espa_kernel(g[layer - 1], T), spa.espa_kernel(g[layer], T)
    np.testing.assert_allclose(A, spa.cholesky_attention(S_prev, S), atol=1e-10)
    np.testing.assert_allclose(A @ S_prev @ A.T, S, atol=1e-12)
    assert (A >= 0).all() and np.allclose(np.triu(A, 1), 0)
    np.testing.assert_allclose(spa.espa_row_sums(spa.espa_bias_constants(g[layer - 1], g[layer]), T), A.sum(1), rtol=1e-12)

def test_espa_rejects_a_non_monotone_schedule():
    with pytest.raises(ValueError, match='gamma_l <= gamma_'):
        spa.espa_bias_constants(0.1, 0.2)
    with pytest.raises(ValueError, match='gamma_L must be > 0'):
        spa.espa_gammas(8, 0.0)

def test_espa_log_space_does_not_underflow_at_T_2048():
    g = spa.espa_gammas(36, 0.005)
    T = 2048
    i, j = np.arange(T)[:, None], np.arange(T)[None, :]
    log_A = spa.espa_log_bias(i, j, spa.espa_bias_constants(g[0], g[1]))
    below = j <= i
    assert np.isfinite(log_A[below]).all()
    assert log_A[below].min() < math.log(1e-300)   # far below what float64 could hold as a product
    # the log-space entries agree with the plain product formula where that one is representable
    a_new, r = math.exp(-g[1]), math.sqrt(1 - math.exp(-2 * g[1]))
    k = np.arange(1, 40)
    np.testing.assert_allclose(log_A[k, 0], np.log(a_new ** (k - 1) * a_new), rtol=1e-12)
    np.testing.assert_allclose(log_A[k, k], math.log(r), rtol=1e-12)

@pytest.mark.parametrize('layer', [1, 3, 8])
def test_uspa_factors_equal_cholesky_and_map_kernels(layer):
    T, rho = 80, spa.uspa_rhos(8, 0.95)
    A = spa.uspa_matrix(rho[layer - 1], rho[layer], T)
    factors = spa.uspa_factors(rho[layer - 1], rho[layer], T)
    np.testing.assert_allclose(spa.attention_matrix('uspa', factors, T), A, atol=1e-12)
    np.testing.assert_allclose(spa.uspa_row_sums(factors), A.sum(1), rtol=1e-12)
    np.testing.assert_allclose(A @ spa.uspa_kernel(rho[layer - 1], T) @ A.T, spa.uspa_kernel(rho[layer], T), atol=1e-12)
    assert (A >= -1e-15).all() and np.allclose(np.triu(A, 1), 0)

def test_uspa_has_negative_entries_when_rho_decreases():
    assert spa.uspa_matrix(0.6, 0.3, 16).min() < -1e-3

def test_reference_numbers_of_math_md_sec_5_and_6():
    g = spa.espa_gammas(36, 0.005)
    assert g[0] == math.inf
    np.testing.assert_allclose(g[1:4], [1.0593, 0.7437, 0.5713], atol=1e-4)
    assert abs(g[-1] - 0.005) < 1e-12
    for layer in (1, 18, 36):
        assert abs(spa.espa_matrix(g[layer - 1], g[layer], 8)[3, 3] - 0.938) < 5e-4
    assert abs(spa.kernel_stats(spa.espa_kernel(g[-1], 512))[0] - 0.4987) < 1e-4
    for n, s in [(18, 0.1461), (36, 0.3511), (72, 0.5084)]:
        assert abs(spa.tat_slope(n, 0.9) - s) < 1e-4
    np.testing.assert_allclose(spa.uspa_rhos(4, 0.5)[[0, -1]], [0.0, 0.5])

def test_tat_slope_solves_the_chain_and_explains_infeasible_eta():
    s = spa.tat_slope(24, 0.7)
    assert abs(spa.tat_c0(s, 24) - 0.7) < 1e-9
    with pytest.raises(ValueError, match=r'cannot reach eta = 0.9 in 12 blocks.*Use eta <= 0.897'):
        spa.tat_slope(12, 0.9)
    with pytest.raises(ValueError, match='eta must be in'):
        spa.tat_slope(24, 1.5)

# -----------------------------------------------------------------------------
# sec. 6: C-maps

def test_cmap_identities():
    c = np.linspace(-1, 1, 41)
    np.testing.assert_allclose(spa.leaky_relu_cmap(1.0, 0.3), 1.0)
    np.testing.assert_allclose(spa.leaky_relu_cmap(c, 1.0), c, atol=1e-15)
    np.testing.assert_allclose(spa.leaky_relu_cmap(0.0, 0.0), 1 / math.pi)
    assert (np.diff(spa.leaky_relu_cmap(c, 0.2)) > 0).all()

@pytest.mark.parametrize('act,slope', [('tat', 0.0), ('tat', 0.35), ('tat', 0.8), ('relu', 0.0), ('gelu', 0.0)])
def test_activation_kernel_matches_monte_carlo(act, slope):
    """E[phi(u) phi(v)] for correlated Gaussians with unequal variances, sampled vs predicted."""
    rng = np.random.default_rng(0)
    q = np.array([0.5, 2.0, 1.0])
    for c in (-0.6, 0.0, 0.5, 0.95):
        sigma = np.array([[q[0], c * math.sqrt(q[0] * q[1])], [c * math.sqrt(q[0] * q[1]), q[1]]])
        u = rng.multivariate_normal(np.zeros(2), sigma, size=400_000)
        if act == 'tat':
            f = spa.tat_scale(slope) * np.where(u > 0, u, slope * u)
        elif act == 'relu':
            f = np.maximum(u, 0)
        else:
            f = torch.nn.functional.gelu(torch.from_numpy(u)).numpy()
        sampled = f.T @ f / len(u)
        np.testing.assert_allclose(spa.activation_kernel(sigma, act, slope), sampled, atol=0.015)

# -----------------------------------------------------------------------------
# the model applies exactly the designed matrices

def _applied_matrix(attn, x):
    """Recover the T x T matrix A with attn(x) = A x W_V W_O (valid when W_Q = 0: the layer is linear).
    With T <= n_embd random rows, x W_V W_O has full row rank and A = Y pinv(M)."""
    d = x.size(-1)
    with torch.no_grad():
        W_V, W_O = attn.c_attn.weight[2 * d:], attn.c_proj.weight
        M = x[0] @ W_V.T @ W_O.T
        return (attn(x)[0] @ torch.linalg.pinv(M)).numpy()

@pytest.mark.parametrize('name,impl', [('espa', 'sdpa'), ('espa', 'flex'), ('uspa', 'sdpa'), ('uspa', 'flex'),
                                       ('vskipinit', 'sdpa'), ('vanilla', 'sdpa')])
def test_layer_applies_the_designed_matrix_exactly(name, impl):
    cfg = config_for(name, n_layer=6, n_embd=64, n_head=4, block_size=40)
    gpt = GPT(cfg).double()
    T = 40
    x = torch.randn(1, T, 64, dtype=torch.float64)
    designed = [spa.attention_matrix(cfg.attn, params, T) for params, _ in signal_plan(cfg)['layers']]
    for layer in (1, 4, 6):
        attn = gpt.h[layer - 1].attn
        attn.impl = impl
        A = _applied_matrix(attn, x)
        expected = np.eye(T) if name == 'vskipinit' else designed[layer - 1]
        tol = 1e-9 if impl == 'sdpa' else 1e-5
        np.testing.assert_allclose(A, expected, atol=tol)
        assert np.abs(np.triu(A, 1)).max() < tol   # causal
    if name == 'vanilla':
        np.testing.assert_allclose(designed[0], spa.uniform_causal_matrix(T))

def _reference_attention(attn, x):
    """Explicit T x T float64 computation of one attention layer, trained-like (W_Q != 0)."""
    B, T, C = x.shape
    H = attn.n_head
    q, k, v = (t.view(B, T, H, C // H).transpose(1, 2) for t in attn.c_attn(x).split(C, dim=2))
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
    return attn.c_proj(y.transpose(1, 2).reshape(B, T, C))

@pytest.mark.parametrize('name', ['espa', 'uspa', 'vskipinit', 'preln'])
@pytest.mark.parametrize('T', [1, 17, 64, 130])
def test_fast_path_equals_explicit_reference_forward_and_backward(name, T):
    layer = 3
    cfg = config_for(name, n_layer=6, n_embd=32, n_head=2, block_size=256)
    torch.manual_seed(T)
    attn = Attention(cfg, *signal_plan(cfg)['layers'][layer - 1]).double()
    attn._config, attn._layer = cfg, layer
    with torch.no_grad():   # move away from init: nonzero W_Q, gains off their init values
        attn.c_attn.weight.add_(0.3 * torch.randn_like(attn.c_attn.weight))
        if name == 'vskipinit':
            attn.alpha.copy_(torch.tensor([0.7, 1.2]))
            attn.beta.copy_(torch.tensor([0.5, -0.3]))
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
        torch.testing.assert_close(attn(short), _reference_attention(attn, short), atol=1e-10, rtol=1e-10)
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

@pytest.mark.parametrize('name', ['vskipinit', 'uspa', 'espa', 'softmax-skip', 'vskipinit-skip', 'uspa-skip',
                                  'espa-skip', 'preln', 'preln-espa'])
def test_kernel_of_a_wide_model_matches_the_prediction(name):
    """Tolerance: at width d the kernel maps have O(L/d) corrections (about 0.05 here; they shrink
    about 4x at width 1024). Mean correlations must agree to 0.08 at every layer, the mean q value to 15%."""
    measured, predicted = _measured_vs_predicted(name)
    for layer, (m, p) in enumerate(zip(measured, predicted)):
        c_m, c_p = spa.kernel_stats(m)[0], spa.kernel_stats(p)[0]
        assert abs(c_m - c_p) < 0.08, f"{name} layer {layer}: corr measured {c_m:.3f} predicted {c_p:.3f}"
        q_m, q_p = np.diag(m).mean(), np.diag(p).mean()
        assert abs(q_m / q_p - 1) < 0.15, f"{name} layer {layer}: mean q measured {q_m:.3f} predicted {q_p:.3f}"

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
    np.testing.assert_allclose(np.diag(predicted[-1]), 1.0, atol=0.02)   # by construction, from the measured sigma0
    assert abs(np.diag(measured[-1]).mean() - 1) < 0.15
    plain, _ = _measured_vs_predicted('espa')
    assert np.diag(plain[-1]).max() > 1.5 * np.diag(measured[-1]).max()   # what it corrects

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
        torch.testing.assert_close(fc.T @ fc, 4 * eye, atol=1e-4, rtol=0)   # scaled orthogonal, 2 * orthonormal columns
        proj = block.mlp.c_proj.weight.double()
        torch.testing.assert_close(proj @ proj.T, eye, atol=1e-5, rtol=0)
        if block.attn.variant == 'vskipinit':
            assert (block.attn.alpha == 1).all() and (block.attn.beta == 0).all()
    assert torch.count_nonzero(model.lm_head.weight) == 0

@pytest.mark.parametrize('name', ['espa', 'uspa', 'vskipinit', 'vanilla', 'espa-skip'])
def test_special_inits_survive_construction_and_state_dict_round_trip(name):
    cfg = config_for(name, n_layer=4, n_embd=32, block_size=16, bias=True)
    torch.manual_seed(0)
    model = GPT(cfg)
    _check_spa_init(model, cfg)
    assert all(torch.count_nonzero(p) == 0 for n, p in model.named_parameters() if n.endswith('.bias'))
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    torch.manual_seed(123)
    clone = GPT(cfg)
    clone.load_state_dict(torch.load(io.BytesIO(buf.getvalue()), weights_only=True))
    _check_spa_init(clone, cfg)
    idx = torch.randint(0, 256, (2, 16))
    torch.testing.assert_close(clone.hidden_states(idx)[-1], model.hidden_states(idx)[-1], atol=0, rtol=0)

def test_gpt2_init_for_the_baselines():
    cfg = config_for('preln', n_layer=8, n_embd=128, block_size=16)
    model = GPT(cfg)
    assert abs(model.h[0].attn.c_attn.weight.std().item() - 0.02) < 0.002
    assert abs(model.h[0].mlp.c_proj.weight.std().item() - 0.02 / 4) < 0.001   # 0.02 / sqrt(2 L)
    assert model.lm_head.weight is model.wte.weight

def test_optimizer_groups_by_role():
    cfg = config_for('vskipinit', n_layer=4, n_embd=32, block_size=16, bias=True)
    model = GPT(cfg)
    opt, = configure_optimizers(model, 0.1, 1e-3, (0.9, 0.95), 'cpu')
    group_of = {id(p): g for g in opt.param_groups for p in g['params']}
    assert sum(len(g['params']) for g in opt.param_groups) == len(group_of) == len(list(model.parameters()))
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
    assert sum(len(g['params']) for g in groups) == len(list(preln.parameters()))  # tied weight counted once

# -----------------------------------------------------------------------------
# configuration, layering, command line

def test_config_errors_say_what_to_do():
    with pytest.raises(ValueError, match="did you mean 'espa'"):
        config_for('epsa')
    with pytest.raises(ValueError, match="did you mean 'gamma_L'"):
        config_for('espa', gamma_l=0.1)
    with pytest.raises(ValueError, match='divisible by n_head'):
        config_for('espa', n_embd=100, n_head=8)
    with pytest.raises(ValueError, match='eta must be in'):
        config_for('espa', eta=1.5)
    with pytest.raises(ValueError, match="attn='flash'"):
        GPTConfig(attn='flash')
    for name in PRESETS:   # every preset builds as documented: GPTConfig(**PRESETS[name])
        GPTConfig(**PRESETS[name])

def test_spa_does_not_import_the_model():
    out = subprocess.run([sys.executable, '-c', 'import sys, spa; print("model" in sys.modules, "torch" in sys.modules)'],
                         capture_output=True, text=True, check=True)
    assert out.stdout.split() == ['False', 'False']

def test_command_line_shows_collapse_and_its_absence():
    def top_row(name):
        out = subprocess.run([sys.executable, 'model.py', f'--model={name}', '--n_layer=16', '--n_embd=256',
                              '--block_size=32', '--batch_size=4', '--measure'], capture_output=True, text=True, check=True)
        rows = [line.split() for line in out.stdout.splitlines() if line.strip()[:2].strip().isdigit()]
        assert len(rows) == 17, out.stdout
        return float(rows[-1][2]), float(rows[-1][7])   # corr predicted, corr measured
    assert min(top_row('vanilla')) > 0.99
    assert max(top_row('espa')) < 0.95
    bad = subprocess.run([sys.executable, 'model.py', '--model=nope'], capture_output=True, text=True)
    assert bad.returncode == 2 and 'unknown model' in bad.stderr

# -----------------------------------------------------------------------------
# the structured (O(T^2)) kernel propagation against plain dense float64 products

@pytest.mark.parametrize('attn', ['espa', 'uspa', 'softmax', 'vskipinit'])
def test_attend_equals_the_dense_matrix(attn):
    T = 70
    params, _ = spa.attention_layers(attn, 8, T, gamma_L=0.05, rho_L=0.6)[2]
    if attn == 'espa':
        g = spa.espa_gammas(8, 0.05)
        dense = spa.espa_matrix(g[2], g[3], T)
    elif attn == 'uspa':
        r = spa.uspa_rhos(8, 0.6)
        dense = spa.uspa_matrix(r[2], r[3], T)            # Cholesky
    else:
        dense = spa.uniform_causal_matrix(T) if attn == 'softmax' else np.eye(T)
    X = np.random.default_rng(0).standard_normal((T, 9))
    np.testing.assert_allclose(spa.attend(attn, params, X), dense @ X, atol=1e-11)
    np.testing.assert_allclose(spa.attention_matrix(attn, params, T), dense, atol=1e-12)

def _dense_prediction(T, n_layer, attn, alpha, beta, norm, act, slope, gains, embed_var, gamma_L, rho_L, q_correct):
    """The predictor as main had it before the structured version: dense T x T matrices and products."""
    g_v, g_o, g_fc, g_out = gains
    A_list = [spa.attention_matrix(attn, p, T) for p, _ in spa.attention_layers(attn, n_layer, T, gamma_L, rho_L)]
    norm_ = lambda s: s / np.sqrt(np.outer(np.diag(s), np.diag(s)))
    pre = norm_ if norm == 'layernorm' else (lambda s: s)
    mix = lambda s, b: (alpha ** 2 * s + beta ** 2 * b if alpha else b)
    sigma, kernels, D = embed_var * np.eye(T), [], []
    for A in A_list:
        if q_correct:
            P = A / A.sum(1, keepdims=True)
            A = P / np.sqrt(np.einsum('ij,jk,ik->i', P, g_v * pre(sigma), P) * g_o)[:, None]   # output q = 1
            D.append(A.sum(1))
        sigma = mix(sigma, g_v * g_o * A @ pre(sigma) @ A.T)
        sigma = mix(sigma, g_out * spa.activation_kernel(g_fc * pre(sigma), act, slope))
        kernels.append(sigma)
    return kernels, D

@pytest.mark.parametrize('name,q_correct', [('espa', True), ('uspa', True), ('espa-skip', True), ('espa', False),
                                            ('vanilla', False), ('preln-espa', True), ('preln', False)])
def test_structured_prediction_equals_dense_products(name, q_correct):
    """Pins the O(T^2)-per-layer predictor (and the q-corrected D_l it gives the model) to the dense
    O(T^3) computation it replaced."""
    cfg = config_for(name, n_layer=10, n_embd=64, block_size=48, q_correct=q_correct)
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
    config_for('espa', n_layer=36, block_size=2048, q_correct=True, n_embd=32)   # at the limit: builds its config
    with pytest.raises(ValueError, match=r'q_correct=True .* n_layer \* T\^2 <= 2\^28.*q_correct=False'):
        config_for('espa', n_layer=36, block_size=4096, q_correct=True)
    config_for('espa', n_layer=36, block_size=4096)                               # no q-correction: no limit

# -----------------------------------------------------------------------------
# TAT for the network that is built (sec. 6, 8)

TAT_PRESETS = [n for n in PRESETS if PRESETS[n]['act'] == 'tat']

@pytest.mark.parametrize('name', TAT_PRESETS)
@pytest.mark.parametrize('n_layer', [1, 2, 4, 24])
def test_tat_target_is_reached_by_the_network_as_built(name, n_layer):
    """The network's MLP C-map sends correlation 0 to the eta it says it uses. Checked through the kernel
    predictor's own block structure: with identity attention (Value-SkipInit at init) and distinct tokens,
    the last kernel's off-diagonal correlation is exactly the network's C-map at 0."""
    cfg = config_for(name, n_layer=n_layer, n_embd=32, block_size=8)
    slope, eta = model.tat_target(cfg)
    args = {**model.predictor_args(cfg), 'attn': 'vskipinit', 'q_correct': False}
    final = spa.predict_kernels(8, **args)[-1]
    assert abs(spa.kernel_stats(final)[0] - eta) < 1e-9, (name, n_layer, eta)
    assert GPT(cfg).h[0].mlp.slope == slope == args['slope']        # what is built is what is predicted
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
    slope, eta = model.tat_target(config_for('espa-skip', n_layer=24, eta=0.2))  # reachable: solved exactly
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
        assert all(math.isfinite(l) for l in losses) and losses[-1] < losses[0] - 0.05, (name, n_layer, losses)

@pytest.mark.parametrize('name', ['espa', 'preln', 'vskipinit-skip'])
def test_muon_groups_hold_exactly_the_block_matrices(name):
    """optimizer='muon': every 2-D weight inside the blocks goes to torch.optim.Muon, at muon_lr with the
    depth rule where it applies; embeddings, readout, gains, LayerNorms and biases stay with AdamW."""
    m = GPT(config_for(name, n_layer=4, n_embd=32, block_size=16, bias=True))
    adamw, muon = configure_optimizers(m, 0.1, 1e-3, (0.9, 0.95), 'cpu', 'muon', muon_lr=0.05)
    assert isinstance(adamw, torch.optim.AdamW) and isinstance(muon, torch.optim.Muon)
    in_muon = {id(p) for g in muon.param_groups for p in g['params']}
    in_adamw = {id(p) for g in adamw.param_groups for p in g['params']}
    names = {id(p): n for n, p in m.named_parameters()}
    block_matrices = {id(p) for n, p in m.named_parameters() if n.startswith('h.') and p.dim() == 2}
    assert in_muon == block_matrices and not in_muon & in_adamw
    assert in_muon | in_adamw == set(names)                       # every parameter, once
    assert all(names[i].endswith(('c_attn.weight', 'c_proj.weight', 'c_fc.weight')) for i in in_muon)
    depth = 1 / 4 if m.config.block_lr_rule == 'depth' else 1.0
    for g in muon.param_groups:
        assert g['lr'] == pytest.approx(0.05 * depth) and g['lr'] == pytest.approx(1e-3 * g['lr_scale'])
        assert g['weight_decay'] == 0.1
    for g in adamw.param_groups:
        assert not any(names[id(p)].startswith('h.') and p.dim() == 2 for p in g['params'])

def test_muon_orthogonalises_in_float32_on_cpu_as_torch_does_in_bfloat16():
    """On a CPU, configure_optimizers makes torch.optim.Muon's Newton-Schulz run in float32
    (optim.newton_schulz_float32): the same iteration as torch's, equal within bfloat16 rounding."""
    from torch.optim import _muon
    configure_optimizers(GPT(config_for('espa', n_layer=2, n_embd=16, block_size=8)), 0.1, 1e-3, (0.9, 0.95), 'cpu', 'muon')
    assert _muon._zeropower_via_newtonschulz is optim.newton_schulz_float32
    gen = torch.Generator().manual_seed(0)
    for shape in [(256, 64), (64, 256), (192, 64), (64, 64)]:
        g = torch.randn(*shape, generator=gen) * 1e-3
        ours = optim.newton_schulz_float32(g, (3.4445, -4.775, 2.0315), 5, 1e-7)
        theirs = _muon.library_newton_schulz(g, (3.4445, -4.775, 2.0315), 5, 1e-7)
        assert ours.dtype == torch.float32 and ours.shape == g.shape
        assert (ours - theirs.float()).abs().max() < 0.05 * ours.abs().max(), shape      # bf16: ~2% apart
        s = torch.linalg.svdvals(ours)                           # orthogonalised: singular values near 1
        assert 0.4 < s.min() and s.max() < 1.25, (shape, s)

def test_muon_needs_a_torch_that_has_it(monkeypatch):
    monkeypatch.delattr(torch.optim, 'Muon')
    with pytest.raises(ValueError, match=r"torch.optim.Muon, which arrived in torch 2.9.*optimizer='adamw'"):
        configure_optimizers(GPT(config_for('espa', n_layer=2, n_embd=16, block_size=8)), 0.1, 1e-3, (0.9, 0.95), 'cpu', 'muon')
