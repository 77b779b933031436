"""
spa.py against closed forms and references: the designed attention matrices against their Cholesky
construction, C-maps against Monte Carlo, the structured products against dense ones, and the
numbers MATH.md quotes. CPU only; `python -m pytest -q test_spa.py`. Section numbers: MATH.md.
"""
import math

import numpy as np
import pytest
import torch

import spa

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
    consts = spa.espa_bias_constants(g[layer - 1], g[layer])
    np.testing.assert_allclose(spa.espa_row_sums(consts, T), A.sum(1), rtol=1e-12)

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
    S_prev, S = spa.uspa_kernel(rho[layer - 1], T), spa.uspa_kernel(rho[layer], T)
    np.testing.assert_allclose(A @ S_prev @ A.T, S, atol=1e-12)
    assert (A >= -1e-15).all() and np.allclose(np.triu(A, 1), 0)

def test_uspa_has_negative_entries_when_rho_decreases():
    assert spa.uspa_matrix(0.6, 0.3, 16).min() < -1e-3

def test_the_numbers_math_md_quotes_in_sec_5_and_6():
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

def test_cmap_is_one_at_one_the_identity_when_linear_and_increasing():
    c = np.linspace(-1, 1, 41)
    np.testing.assert_allclose(spa.leaky_relu_cmap(1.0, 0.3), 1.0)
    np.testing.assert_allclose(spa.leaky_relu_cmap(c, 1.0), c, atol=1e-15)
    np.testing.assert_allclose(spa.leaky_relu_cmap(0.0, 0.0), 1 / math.pi)
    assert (np.diff(spa.leaky_relu_cmap(c, 0.2)) > 0).all()

@pytest.mark.parametrize('act,slope', [('tat', 0.0), ('tat', 0.35), ('tat', 0.8), ('relu', 0.0),
                                       ('gelu', 0.0)])
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

@pytest.mark.parametrize('alpha', [0.2, 0.8, 3.0])
def test_dyt_kernel_matches_monte_carlo(alpha):
    """DyT at init, tanh(alpha u) elementwise: E[tanh(alpha u) tanh(alpha v)] sampled vs the
    quadrature, from the linear regime (alpha^2 q small) to saturation."""
    rng = np.random.default_rng(1)
    q = np.array([0.5, 2.0])
    for c in (-0.6, 0.0, 0.5, 0.95):
        sigma = np.array([[q[0], c * math.sqrt(q[0] * q[1])], [c * math.sqrt(q[0] * q[1]), q[1]]])
        f = np.tanh(alpha * rng.multivariate_normal(np.zeros(2), sigma, size=400_000))
        np.testing.assert_allclose(spa.norm_kernel(sigma, 'dyt', alpha), f.T @ f / len(f),
                                   atol=0.006)
    # LayerNorm and RMSNorm: each token divided by its RMS, the same map at infinite width
    np.testing.assert_allclose(spa.norm_kernel(sigma, 'rmsnorm'), [[1, c], [c, 1]], atol=1e-15)
    assert spa.norm_kernel(sigma, 'postln') is sigma

# -----------------------------------------------------------------------------
# sec. 7: the structured (O(T^2)) products against plain dense float64 matrices

@pytest.mark.parametrize('attn', ['espa', 'uspa', 'softmax', 'vskipinit', 'shaped'])
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
        dense = spa.uniform_causal_matrix(T) if attn == 'softmax' else np.eye(T)   # at init
    X = np.random.default_rng(0).standard_normal((T, 9))
    np.testing.assert_allclose(spa.attend(attn, params, X), dense @ X, atol=1e-11)
    np.testing.assert_allclose(spa.attention_matrix(attn, params, T), dense, atol=1e-12)
