"""
The signal-propagation math of "Deep Transformers without Shortcuts" (He et al., ICLR 2023), and of
its successors' blocks: shaped attention, He & Hofmann's SAS and SAS-P blocks, RMSNorm and DyT.

Pure functions over numbers and float64 numpy arrays: kernels, the attention matrices that carry
one kernel to the next (Value-SkipInit, U-SPA, E-SPA), the TAT leaky-ReLU C-map and slope, and a
predictor that pushes the infinite-width kernel through a whole model. Every function takes plain
numbers (n_layer, T, gamma_L, eta, ...), never a model config, and this file imports nothing of the
project: model.py asks it for numbers and turns them into modules.

Section numbers (sec. N) refer to MATH.md, the derivations this file implements.
Positions are 0-indexed in code (MATH.md writes them 1-indexed).
"""
import math

import numpy as np

BIASED = ('espa', 'uspa')   # attention realised as softmax(logits + log A_l) times D_l (sec. 3)

# -----------------------------------------------------------------------------
# sec. 1: kernels and rank collapse

def kernel_stats(sigma):
    """(mean off-diagonal correlation, min q, max q) of a T x T kernel: the two numbers that
    show rank collapse (correlation -> 1) and exploding norms (q growing along the sequence)."""
    q = np.diag(sigma)
    corr = sigma / np.sqrt(np.outer(q, q))
    T = len(q)
    mean_corr = (corr.sum() - np.trace(corr)) / (T * (T - 1)) if T > 1 else 1.0
    return float(mean_corr), float(q.min()), float(q.max())

def uniform_causal_matrix(T):
    """Causal softmax attention with all logits equal (W_Q = 0): A_ij = 1/(i+1) for j <= i.
    Its powers tend to 1 e_1^T: every token becomes the first one (sec. 1)."""
    return np.tril(np.ones((T, T))) / np.arange(1, T + 1)[:, None]

def cholesky_attention(sigma_prev, sigma):
    """The general SPA recipe (sec. 3): A = L_l L_{l-1}^{-1} maps sigma_prev to sigma exactly,
    and is lower triangular, so it respects the causal mask. O(T^3): the reference only."""
    L_prev, L = np.linalg.cholesky(sigma_prev), np.linalg.cholesky(sigma)
    return np.linalg.solve(L_prev.T, L.T).T  # L @ inv(L_prev) without forming the inverse

# -----------------------------------------------------------------------------
# sec. 4: U-SPA, uniform kernels Sigma_l = (1 - rho_l) I + rho_l 1 1^T

def uspa_rhos(n_layer, rho_L):
    """rho_0 = 0 (the input, Sigma_0 = I), ..., rho_L on the schedule
    1 - rho_l = (1 - rho_L)^(l/L) (ours)."""
    if not 0.0 <= rho_L < 1.0:
        raise ValueError(f"rho_L must be in [0, 1) (got {rho_L}): it is the token correlation the "
                         f"last layer is designed to have; 1 would be total rank collapse.")
    return 1.0 - (1.0 - rho_L) ** (np.arange(n_layer + 1) / n_layer)

def uspa_kernel(rho, T):
    return (1.0 - rho) * np.eye(T) + rho * np.ones((T, T))

def _uniform_cholesky(rho, T):
    """Cholesky of a uniform kernel in O(T). Token i given tokens < i has regression weight
    b_i = rho / (1 + (i-1) rho) on each of them (so L^{-1} is constant along each row below the
    diagonal), innovation scale e_i, and L itself is constant down each column (c_j)."""
    i = np.arange(T)
    n = 1.0 - rho + i * rho                                 # 1 + (i-1) rho
    b = rho / n
    e = np.sqrt((1.0 - rho) * (1.0 + i * rho) / n)          # sqrt(1 - i rho b_i)
    c = rho * (1.0 - rho) / (n * e)                          # rho (1 - j b_j) / e_j
    return b, e, c

def uspa_factors(rho_prev, rho, T):
    """U-SPA's A_l in O(T) numbers: A(i,i) = diag_i and A(i,j) = u_j + v_i for j < i (sec. 4).
    Derived from A = L_l L_{l-1}^{-1} with the column/row structure of _uniform_cholesky.
    u_j + v_i cancels badly in float32 for large rho: sum them in float64."""
    b_prev, e_prev, _ = _uniform_cholesky(rho_prev, T)
    _, e, c = _uniform_cholesky(rho, T)
    G = np.concatenate([[0.0], np.cumsum(c * b_prev / e_prev)])
    u = c / e_prev + G[1:]
    v = -G[:-1] - e * b_prev / e_prev
    return e / e_prev, u, v

def uspa_log_bias(i, j, factors, where=np.where, log=np.log):
    """log A_l(i, j) for j <= i from uspa_factors' vectors (float64 in, for the reason above).
    `where`/`log` let model.py evaluate the same formula on torch tensors."""
    diag, u, v = factors
    return where(j == i, log(diag[i]), log((u[j] + v[i]).clip(min=1e-300)))

def uspa_row_sums(factors):
    """D_l = rowsum(A_l) in O(T): diag_i + sum_{j<i} u_j + i v_i."""
    diag, u, v = factors
    return diag + np.concatenate([[0.0], np.cumsum(u)[:-1]]) + np.arange(len(diag)) * v

def uspa_matrix(rho_prev, rho, T):
    """The T x T U-SPA attention matrix, from the Cholesky factors of the two uniform kernels.
    Entries are >= 0 when rho_prev <= rho (sec. 4)."""
    return cholesky_attention(uspa_kernel(rho_prev, T), uspa_kernel(rho, T))

# -----------------------------------------------------------------------------
# sec. 5: E-SPA, exponential kernels Sigma_l(i, j) = exp(-gamma_l |i - j|)

def espa_gammas(n_layer, gamma_L):
    """gamma_0 = inf (Sigma_0 = I), ..., gamma_L on the schedule
    1 - exp(-2 gamma_l) = (1 - exp(-2 gamma_L))^(l/L),
    which keeps the diagonal of every A_l equal."""
    if not gamma_L > 0.0:
        raise ValueError(f"gamma_L must be > 0 (got {gamma_L}): gamma_L = 0 is the all-ones "
                         f"kernel, total rank collapse. Typical values: 0.005 to 0.5.")
    s_L = -np.expm1(-2.0 * gamma_L)       # 1 - exp(-2 gamma_L), exact for small gamma
    with np.errstate(divide='ignore'):    # l = 0: log(0), gamma_0 = inf
        return -0.5 * np.log(1.0 - s_L ** (np.arange(n_layer + 1) / n_layer))

def espa_kernel(gamma, T):
    if gamma == math.inf:
        return np.eye(T)
    k = np.arange(T)
    return np.exp(-gamma * np.abs(k[:, None] - k[None, :]))

def espa_bias_constants(gamma_prev, gamma):
    """The four numbers that define log A_l (sec. 5), from a = exp(-gamma_prev), a' = exp(-gamma),
    s = sqrt(1 - a^2), s' = sqrt(1 - a'^2), r = s'/s:
      log A(i,i) = log r                                 (i >= 1)
      log A(i,0) = log(a' - a r) - gamma (i - 1)         (i >= 1)
      log A(i,j) = log r + log(a' - a) - gamma (i-j-1)   (1 <= j < i)
    so the bias is ALiBi-like with slope gamma plus a special diagonal and first column.
    expm1/log1p keep small gammas (0.005) exact."""
    if not gamma <= gamma_prev:
        raise ValueError(f"E-SPA needs gamma_l <= gamma_(l-1) (got {gamma} after {gamma_prev}): "
                         f"otherwise A_l has negative entries and no softmax can realise it.")
    a, a_new = math.exp(-gamma_prev), math.exp(-gamma)
    log_s = 0.5 * math.log(-math.expm1(-2.0 * gamma_prev)) if gamma_prev < math.inf else 0.0
    log_r = 0.5 * math.log(-math.expm1(-2.0 * gamma)) - log_s
    first = a_new - a * math.exp(log_r)
    log_first = math.log(first) if first > 0 else -math.inf
    # a' - a = a' (1 - exp(gamma - gamma_prev)), exact even when the two gammas are close
    log_gap = (-gamma + math.log(-math.expm1(gamma - gamma_prev)) if gamma < gamma_prev
               else -math.inf)
    return log_r, log_first, log_r + log_gap, gamma

def espa_log_bias(i, j, consts, where=np.where):
    """log A_l(i, j) for j <= i (entries above the diagonal are the causal mask's business).
    One formula for the float64 reference, the SDPA mask and the FlexAttention score_mod."""
    log_diag, log_first, log_off, gamma = consts
    zero = 0.0 * i   # an array of i's dtype: torch turns Python floats alone into float32
    diag = where(i == 0, zero, zero + log_diag)  # A(0,0) = 1: token 0 attends to itself only
    below = where(j == 0, log_first - gamma * (i - 1), log_off - gamma * (i - j - 1))
    return where(j == i, diag, below)

def espa_matrix(gamma_prev, gamma, T):
    """The T x T E-SPA attention matrix in closed form, built in log space: at L = 36 entries reach
    1e-236 at T = 512 and would underflow if built by products."""
    i, j = np.arange(T)[:, None], np.arange(T)[None, :]
    with np.errstate(over='ignore', invalid='ignore'):
        log_A = espa_log_bias(i, j, espa_bias_constants(gamma_prev, gamma))
    return np.where(j <= i, np.exp(np.where(j <= i, log_A, 0.0)), 0.0)

def espa_row_sums(consts, T):
    """D_l = rowsum(A_l) in O(T), summing the geometric series of sec. 5. It is the
    location-dependent rescaling that multiplies the softmax output (sec. 3)."""
    log_r, log_first, log_off, g = consts
    k = np.arange(T - 1, dtype=np.float64)                 # k = i - 1 for rows i >= 1
    first = np.exp(log_first - g * k)
    rest = np.exp(log_off) * -np.expm1(-g * k) / -math.expm1(-g)  # sum_{m<k} exp(log_off - g m)
    return np.concatenate([[1.0], first + math.exp(log_r) + rest])

# -----------------------------------------------------------------------------
# sec. 3-5 together: every layer's attention as numbers, and applied without a T x T matrix

def attention_layers(attn, n_layer, T, gamma_L=0.05, rho_L=0.3):
    """[(params_l, D_l)] for l = 1..n_layer: the numbers that define log A_l (E-SPA: its four
    constants; U-SPA: its three length-T vectors) and the row sums D_l that rescale the softmax.
    For 'softmax' (equal logits at W_Q = 0), 'vskipinit' and 'shaped' (both the identity at init)
    there is nothing to carry: (None, None). Causal, so the numbers for T also serve every
    shorter sequence."""
    if attn == 'espa':
        g = espa_gammas(n_layer, gamma_L)
        consts = [espa_bias_constants(g[l - 1], g[l]) for l in range(1, n_layer + 1)]
        return [(c, espa_row_sums(c, T)) for c in consts]
    if attn == 'uspa':
        r = uspa_rhos(n_layer, rho_L)
        factors = [uspa_factors(r[l - 1], r[l], T) for l in range(1, n_layer + 1)]
        return [(f, uspa_row_sums(f)) for f in factors]
    if attn in ('softmax', 'vskipinit', 'shaped'):
        return [(None, None)] * n_layer
    raise ValueError(f"unknown attention {attn!r}: "
                     f"expected 'softmax', 'vskipinit', 'shaped', 'uspa' or 'espa'")

def attend(attn, params, X):
    """A_l @ X for a T x n array, in O(T n) from the structure of A_l (the T x T matrix is never
    formed): the designed matrix of each attention at init (W_Q = 0, so logits = bias)."""
    if attn == 'vskipinit':                  # alpha = 1, beta = 0: the identity (sec. 2)
        return X.copy()
    if attn == 'shaped':                     # alpha I + beta P - gamma C = I at W_Q = 0 (sec. 13)
        return X.copy()
    if attn == 'softmax':                    # 1/(i+1) on j <= i: a running mean (sec. 1)
        return np.cumsum(X, axis=0) / np.arange(1, len(X) + 1)[:, None]
    before = lambda c: np.concatenate([np.zeros_like(c[:1]), c[:-1]])   # sum over j < i
    if attn == 'uspa':                       # diag_i x_i + sum_{j<i} u_j x_j + v_i sum_{j<i} x_j
        diag, u, v = (f[:len(X), None] for f in params)
        return diag * X + before(np.cumsum(u * X, axis=0)) + v * before(np.cumsum(X, axis=0))
    if attn == 'espa':
        # y_i = r x_i + A(i,0) x_0 + A(i,1+) s_i with s_i = sum_{1<=j<i} a'^(i-1-j) x_j,
        # a running sum that decays by a' = exp(-gamma) each step
        log_r, log_first, log_off, g = params
        r, off, decay = math.exp(log_r), math.exp(log_off), math.exp(-g)
        Y = np.empty_like(X)
        Y[0] = X[0]
        s = np.zeros_like(X[0])
        for i in range(1, len(X)):
            Y[i] = r * X[i] + math.exp(log_first - g * (i - 1)) * X[0] + off * s
            s *= decay
            s += X[i]
        return Y
    raise ValueError(f"unknown attention {attn!r}")

def attention_matrix(attn, params, T):
    """The T x T matrix A_l, dense: `attend` applied to the identity (for tests and plots)."""
    return attend(attn, params, np.eye(T))

# -----------------------------------------------------------------------------
# sec. 6: MLP blocks, TAT with leaky ReLU

def leaky_relu_cmap(c, slope):
    """Correlation map of phi(x) = sqrt(2/(1+s^2)) leaky_relu(x, s), which has q-map Q(1) = 1."""
    c = np.clip(c, -1.0, 1.0)
    k = (1.0 - slope) ** 2 / (math.pi * (1.0 + slope ** 2))
    return c + k * (np.sqrt(1.0 - c * c) - c * np.arccos(c))

def tat_scale(slope):
    """The output scale of the TAT activation: keeps E[phi(x)^2] = E[x^2]."""
    return math.sqrt(2.0 / (1.0 + slope ** 2))

def tat_c0(slope, n_layer, alpha=0.0, beta=1.0):
    """C(0) of the whole network's C-map, the quantity TAT fixes (sec. 6, 8): each block maps a
    correlation c -> alpha^2 c + beta^2 C_s(c), a weighted skip around one MLP nonlinearity
    (alpha = 0: a plain chain). Attention mixes tokens rather than mapping each pair's
    correlation, so this network function leaves it out, as TAT's sub-network function does for
    convolutions (ours)."""
    c = 0.0
    for _ in range(n_layer):
        c = alpha * alpha * c + beta * beta * float(leaky_relu_cmap(c, slope))
    return c

def tat_max_eta(n_layer, alpha=0.0, beta=1.0):
    """The largest eta any leaky ReLU can reach in this network: plain ReLU (slope 0), the most
    nonlinear one. Weighted skips keep the network close to linear: with beta^2 = 1/24 and 24
    blocks it is about 0.26; a plain chain of 4 nonlinearities reaches 0.681, of 12 0.897."""
    return tat_c0(0.0, n_layer, alpha, beta)

def tat_slope(n_layer, eta, alpha=0.0, beta=1.0):
    """The leaky-ReLU slope s for which the network's C-map sends correlation 0 to eta (sec. 6).
    C(0) falls from its ReLU value (s = 0) to 0 (s = 1, linear), so bisect."""
    if not 0.0 < eta < 1.0:
        raise ValueError(f"eta must be in (0, 1) (got {eta}): it is the correlation TAT lets the "
                         f"MLPs reach from 0; the paper uses 0.9.")
    relu_c0 = tat_max_eta(n_layer, alpha, beta)
    if relu_c0 < eta - 1e-12:
        raise ValueError(f"TAT cannot reach eta = {eta} in {n_layer} blocks (skip weights "
                         f"{alpha:.3g}, {beta:.3g}): even plain ReLU only gets C(0) = "
                         f"{relu_c0:.3f}. Use eta <= {relu_c0:.3f} or a deeper model.")
    if relu_c0 <= eta:
        return 0.0
    lo, hi = 0.0, 1.0
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if tat_c0(mid, n_layer, alpha, beta) > eta else (lo, mid)
    return 0.5 * (lo + hi)

def _erf(x):
    # numpy has no erf: Abramowitz & Stegun 7.1.26 (error < 1.5e-7), enough for a kernel predictor
    t = 1.0 / (1.0 + 0.3275911 * np.abs(x))
    poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741
                                                       + t * (-1.453152027 + t * 1.061405429))))
    return np.sign(x) * (1.0 - poly * np.exp(-x * x))

def _quadrature_kernel(sigma, phi, nodes=24):
    """E[phi(u_i) phi(u_j)], u ~ N(0, Sigma), by 2-D Gauss-Hermite quadrature (nodes^2 points)."""
    q = np.diag(sigma)
    c = np.clip(sigma / np.sqrt(np.outer(q, q)), -1.0, 1.0)
    x, w = np.polynomial.hermite.hermgauss(nodes)
    z, w = np.sqrt(2.0) * x, w / np.sqrt(np.pi)
    # u_i = sqrt(q_i) z_a, u_j = sqrt(q_j) (c_ij z_a + sqrt(1 - c_ij^2) z_b): correlation c_ij
    f1 = phi(np.sqrt(q)[:, None] * z[None, :])                             # (T, n): phi(u_i)
    rows = []
    for i in range(len(q)):   # row by row: the (T, n, n) quadrature grid of one row at a time
        c_perp = np.sqrt(1.0 - c[i] * c[i])
        z2 = c[i, :, None, None] * z[:, None] + c_perp[:, None, None] * z[None, :]  # (T, n, n)
        f2 = phi(np.sqrt(q)[:, None, None] * z2)                           # (T, n, n): phi(u_j)
        rows.append(np.einsum('a,jab,a,b->j', f1[i], f2, w, w))
    return np.array(rows)

def activation_kernel(sigma, act, slope=0.0):
    """Infinite-width map of a kernel through an elementwise activation:
    Sigma(i,j) -> E[phi(u_i) phi(u_j)], u ~ N(0, Sigma). Leaky ReLUs are positively homogeneous,
    so this is sqrt(q_i q_j) times their C-map (sec. 6); GELU uses quadrature."""
    q = np.diag(sigma)
    qq = np.sqrt(np.outer(q, q))
    c = np.clip(sigma / qq, -1.0, 1.0)
    if act in ('tat', 'relu'):
        # qq C_s(c) = sigma + k qq (sqrt(1 - c^2) - c arccos c), written in place: at T = 4096 every
        # temporary T x T array costs more than the arithmetic
        s = slope if act == 'tat' else 0.0
        gain = 1.0 if act == 'tat' else (1.0 + s * s) / 2.0   # plain ReLU keeps only half of q
        c_arccos = np.arccos(c)
        c_arccos *= c
        np.multiply(c, c, out=c)
        np.subtract(1.0, c, out=c)
        np.sqrt(c, out=c)
        c -= c_arccos
        c *= qq
        c *= (1.0 - s) ** 2 / (math.pi * (1.0 + s ** 2))
        c += sigma
        return c * gain if gain != 1.0 else c
    if act == 'gelu':
        return _quadrature_kernel(sigma, lambda t: 0.5 * t * (1.0 + _erf(t / np.sqrt(2.0))))
    raise ValueError(f"unknown activation {act!r}: expected 'tat', 'relu' or 'gelu'")

# -----------------------------------------------------------------------------
# sec. 7-8: the whole model at infinite width

def skip_weights(skip, norm, n_layer, skip_beta=None):
    """(alpha, beta) of x <- alpha x + beta f(x). Plain residuals (1, 1) next to LayerNorm;
    weighted shortcuts alpha^2 + beta^2 = 1 without it, beta^2 = 1/L by default (sec. 8, ours);
    (0, 1) without skips."""
    if not skip:
        return 0.0, 1.0
    if norm != 'none':
        return 1.0, 1.0
    beta = skip_beta or 1.0 / math.sqrt(n_layer)
    return math.sqrt(1.0 - beta * beta), beta

def _normalize(sigma):
    q = np.sqrt(np.diag(sigma))
    return sigma / np.outer(q, q)

def norm_kernel(sigma, norm, dyt_alpha=0.5):
    """The kernel after a pre-norm at init. LayerNorm and RMSNorm divide each token by its RMS (at
    infinite width the features have mean zero, so the two are the same map, sec. 14); DyT, weight
    1 and bias 0 at init, maps each entry through tanh(dyt_alpha u) (sec. 15); 'postln' and 'none'
    leave the branch input as it is."""
    if norm in ('layernorm', 'rmsnorm'):
        return _normalize(sigma)
    if norm == 'dyt':   # saturated, tanh is nearly a step and needs finer quadrature: 24 nodes
        # are within 1e-3 while alpha^2 q <= 1, 96 within 0.003 at alpha^2 q = 18
        nodes = 24 if dyt_alpha ** 2 * np.diag(sigma).max() <= 1.0 else 96
        return _quadrature_kernel(sigma, lambda u: np.tanh(dyt_alpha * u), nodes)
    return sigma

def propagate_kernels(T, n_layer, attn, alpha=0.0, beta=1.0, norm='none', act='tat', slope=0.0,
                      gains=(1.0, 1.0, 1.0, 1.0), embed_var=1.0, gamma_L=0.05, rho_L=0.3,
                      q_correct=False, sigma0=None, block='standard', block_gains=(1.0, 0.1),
                      dyt_alphas=(0.5, 0.5)):
    """Yields (D_l, kernel after block l) for l = 1..n_layer: the infinite-width kernel pushed
    through the model at init (sec. 7-8), block by block, in O(T^2) per block.

    gains: how much the init of (W_V, W_O, W_fc, W_mlp_out) scales a kernel (1 for orthogonal
    weights and for identity values and projection). norm: 'layernorm', 'rmsnorm' or 'dyt' before
    each branch (dyt_alphas: DyT's alpha before attention and before the MLP), 'postln' or 'none'.
    block: 'standard' (x -> alpha x + beta f(x) around each branch), 'sas' (no attention skip,
    then x + beta_FF MLP(N(x)); sec. 17) or 'sas-p' (beta_SA attention + beta_FF MLP, both of one
    N(x), no skip; sec. 16), with block_gains = (beta_SA, beta_FF). The MLP output weights are
    zero-mean and independent of everything before them, so every cross term (skip with branch,
    attention with MLP) vanishes in expectation. sigma0: the kernel after the embedding (default
    embed_var * I: distinct tokens get independent random vectors).
    D_l is the row rescaling of the biased attentions (None for the others); with q_correct it is
    re-picked from the predicted incoming kernel so that the attention output has q = 1 exactly
    (sec. 7, ours)."""
    g_v, g_o, g_fc, g_out = gains
    layers = attention_layers(attn, n_layer, T, gamma_L, rho_L)
    sigma = embed_var * np.eye(T) if sigma0 is None else np.array(sigma0, dtype=np.float64)
    pre_attn = lambda s: norm_kernel(s, norm, dyt_alphas[0])
    pre_mlp = lambda s: norm_kernel(s, norm, dyt_alphas[1])
    mlp = lambda s: g_out * activation_kernel(g_fc * s, act, slope)
    beta_attn, beta_mlp = block_gains
    if block == 'sas':
        (a_attn, b_attn), (a_mlp, b_mlp) = (0.0, beta_attn), (1.0, beta_mlp)
    else:
        (a_attn, b_attn), (a_mlp, b_mlp) = (alpha, beta), (alpha, beta)

    def residual(sigma, branch, a, b):   # in place on the branch (a fresh array): no temporaries
        if a:
            branch *= b * b
            branch += a * a * sigma
        elif b != 1.0:
            branch *= b * b
        return _normalize(branch) if norm == 'postln' else branch

    for params, D in layers:
        # attention: Y = A S A^T from two structured products (S symmetric, so (A S)^T = S A^T)
        S = pre_attn(sigma)
        Y = attend(attn, params, np.ascontiguousarray(attend(attn, params, g_v * S).T))
        if q_correct and attn in BIASED:
            q = np.diag(Y)
            D = D / np.sqrt(q * g_o)          # the rows of A_l scaled so that diag = 1 after W_O
            branch = Y / np.sqrt(np.outer(q, q))
        else:
            branch = g_o * Y
        if block == 'sas-p':                  # both branches read the same N(x): no skip at all
            sigma = beta_attn ** 2 * branch + beta_mlp ** 2 * mlp(S)
        else:
            sigma = residual(sigma, branch, a_attn, b_attn)
            sigma = residual(sigma, mlp(pre_mlp(sigma)), a_mlp, b_mlp)
        yield D, sigma

def predict_kernels(T, n_layer, attn, sigma0=None, embed_var=1.0, **block):
    """The infinite-width kernel after the embedding and after each block: n_layer + 1 T x T
    arrays (see propagate_kernels for the arguments)."""
    first = embed_var * np.eye(T) if sigma0 is None else np.asarray(sigma0, dtype=np.float64)
    return [first] + [k for _, k in propagate_kernels(T, n_layer, attn, sigma0=first, **block)]

def q_corrected_rescalings(T, n_layer, attn, **block):
    """D_l for every layer with the q-corrected rescaling (sec. 7): only the vectors are kept,
    so memory stays at a few T x T arrays whatever the depth."""
    return [D for D, _ in propagate_kernels(T, n_layer, attn, q_correct=True, **block)]
