"""
The signal-propagation math of "Deep Transformers without Shortcuts" (He et al., ICLR 2023).

Pure functions over float64 numpy arrays: kernels, the attention matrices that carry one kernel
to the next (Value-SkipInit, U-SPA, E-SPA), the TAT leaky-ReLU C-map and slope, and a predictor
that pushes the infinite-width kernel through a whole model. No nn.Module here: model.py imports
this file to build its attention biases; nothing here imports model.py (only the command line at
the bottom does, to measure a real model next to the prediction).

Section numbers (sec. N) refer to ../shared/method.md, which is the contract for this file.
Positions are 0-indexed in code (the method writes them 1-indexed).

    python spa.py --model=espa --n_layer=36 --block_size=256 [--measure]
"""
import math
import numpy as np

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
    """rho_0 = 0 (the input, Sigma_0 = I), ..., rho_L; schedule 1 - rho_l = (1 - rho_L)^(l/L) (ours)."""
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
    """U-SPA's A_l in O(T) numbers: A(i,i) = diag_i and A(i,j) = u_j + v_i for j < i.
    Derived from A = L_l L_{l-1}^{-1} with the column/row structure of _uniform_cholesky.
    u_j + v_i cancels badly in float32 for large rho: sum them in float64."""
    b_prev, e_prev, _ = _uniform_cholesky(rho_prev, T)
    _, e, c = _uniform_cholesky(rho, T)
    G = np.concatenate([[0.0], np.cumsum(c * b_prev / e_prev)])
    u = c / e_prev + G[1:]
    v = -G[:-1] - e * b_prev / e_prev
    return e / e_prev, u, v

def uspa_log_bias(i, j, diag, u, v, where=np.where, log=np.log):
    """log A_l(i, j) for j <= i from uspa_factors' vectors (float64 in, for the reason above).
    `where`/`log` let model.py evaluate the same formula on torch tensors."""
    return where(j == i, log(diag[i]), log((u[j] + v[i]).clip(min=1e-300)))

def uspa_matrix(rho_prev, rho, T):
    """The T x T U-SPA attention matrix, from the Cholesky factors of the two uniform kernels.
    Entries are >= 0 when rho_prev <= rho (sec. 4)."""
    return cholesky_attention(uspa_kernel(rho_prev, T), uspa_kernel(rho, T))

# -----------------------------------------------------------------------------
# sec. 5: E-SPA, exponential kernels Sigma_l(i, j) = exp(-gamma_l |i - j|)

def espa_gammas(n_layer, gamma_L):
    """gamma_0 = inf (Sigma_0 = I), ..., gamma_L; schedule 1 - exp(-2 gamma_l) = (1 - exp(-2 gamma_L))^(l/L),
    which keeps the diagonal of every A_l equal."""
    if not gamma_L > 0.0:
        raise ValueError(f"gamma_L must be > 0 (got {gamma_L}): gamma_L = 0 is the all-ones kernel, "
                         f"total rank collapse. Typical values: 0.005 to 0.5.")
    with np.errstate(divide='ignore'):
        return -0.5 * np.log(1.0 - (-np.expm1(-2.0 * gamma_L)) ** (np.arange(n_layer + 1) / n_layer))

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
    log_gap = -gamma + math.log(-math.expm1(gamma - gamma_prev)) if gamma < gamma_prev else -math.inf
    return log_r, log_first, log_r + log_gap, gamma

def espa_log_bias(i, j, consts, where=np.where):
    """log A_l(i, j) for j <= i (entries above the diagonal are the causal mask's business).
    One formula for the float64 reference, the SDPA mask and the FlexAttention score_mod."""
    log_diag, log_first, log_off, gamma = consts
    zero = 0.0 * i   # an array of i's dtype: torch turns Python floats alone into float32
    diag = where(i == 0, zero, zero + log_diag)   # A(0,0) = 1: the first token attends only to itself
    return where(j == i, diag, where(j == 0, log_first - gamma * (i - 1), log_off - gamma * (i - j - 1)))

def espa_matrix(gamma_prev, gamma, T):
    """The T x T E-SPA attention matrix in closed form, built in log space: at L = 36 entries reach
    1e-236 at T = 512 and would underflow if built by products."""
    i, j = np.arange(T)[:, None], np.arange(T)[None, :]
    with np.errstate(over='ignore', invalid='ignore'):
        log_A = espa_log_bias(i, j, espa_bias_constants(gamma_prev, gamma))
    return np.where(j <= i, np.exp(np.where(j <= i, log_A, 0.0)), 0.0)

def espa_row_sums(gamma_prev, gamma, T):
    """D_l = rowsum(A_l) in O(T), summing the geometric series of sec. 5. It is the
    location-dependent rescaling that multiplies the softmax output (sec. 3)."""
    log_r, log_first, log_off, g = espa_bias_constants(gamma_prev, gamma)
    k = np.arange(T - 1, dtype=np.float64)                 # k = i - 1 for rows i >= 1
    first = np.exp(log_first - g * k)
    rest = np.exp(log_off) * -np.expm1(-g * k) / -math.expm1(-g)  # sum_{m<k} exp(log_off - g m)
    return np.concatenate([[1.0], first + math.exp(log_r) + rest])

# -----------------------------------------------------------------------------
# sec. 6: MLP blocks, TAT with leaky ReLU

def leaky_relu_cmap(c, slope):
    """Correlation map of phi(x) = sqrt(2/(1+s^2)) leaky_relu(x, s), which has q-map Q(1) = 1."""
    c = np.clip(c, -1.0, 1.0)
    return c + (1.0 - slope) ** 2 / (math.pi * (1.0 + slope ** 2)) * (np.sqrt(1.0 - c * c) - c * np.arccos(c))

def tat_scale(slope):
    """The output scale of the TAT activation: keeps E[phi(x)^2] = E[x^2]."""
    return math.sqrt(2.0 / (1.0 + slope ** 2))

def tat_chain_c0(slope, n_nonlin):
    """C-map of a chain of n_nonlin TAT activations, evaluated at c = 0."""
    c = 0.0
    for _ in range(n_nonlin):
        c = float(leaky_relu_cmap(c, slope))
    return c

def tat_slope(n_nonlin, eta):
    """The leaky-ReLU slope s for which a chain of n_nonlin activations maps correlation 0 to eta.
    The chain's C(0) falls from its ReLU value (s = 0) to 0 (s = 1, linear), so bisect."""
    if not 0.0 < eta < 1.0:
        raise ValueError(f"eta must be in (0, 1) (got {eta}): it is the correlation TAT lets the "
                         f"MLP chain reach from 0; the paper uses 0.9.")
    relu_c0 = tat_chain_c0(0.0, n_nonlin)
    if relu_c0 < eta:
        raise ValueError(f"TAT cannot reach eta = {eta} with {n_nonlin} nonlinearities: even plain ReLU "
                         f"(the most nonlinear leaky ReLU) only gets C(0) = {relu_c0:.3f}. Lower eta "
                         f"(for example eta = {max(0.05, round(relu_c0 - 0.05, 2))}) or use a deeper model.")
    lo, hi = 0.0, 1.0
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if tat_chain_c0(mid, n_nonlin) > eta else (lo, mid)
    return 0.5 * (lo + hi)

def _erf(x):
    # numpy has no erf: Abramowitz & Stegun 7.1.26 (error < 1.5e-7), enough for a kernel predictor
    t = 1.0 / (1.0 + 0.3275911 * np.abs(x))
    y = 1.0 - t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429)))) * np.exp(-x * x)
    return np.sign(x) * y

def activation_kernel(sigma, act, slope=0.0):
    """Infinite-width map of a kernel through an elementwise activation:
    Sigma(i,j) -> E[phi(u_i) phi(u_j)], u ~ N(0, Sigma). Leaky ReLUs are positively homogeneous,
    so this is sqrt(q_i q_j) times their C-map (sec. 6); GELU uses 2-D Gauss-Hermite quadrature."""
    q = np.diag(sigma)
    qq = np.sqrt(np.outer(q, q))
    c = np.clip(sigma / qq, -1.0, 1.0)
    if act in ('tat', 'relu'):
        s = slope if act == 'tat' else 0.0
        gain = 1.0 if act == 'tat' else (1.0 + s * s) / 2.0   # plain ReLU keeps only half of q
        return qq * leaky_relu_cmap(c, s) * gain
    if act == 'gelu':
        x, w = np.polynomial.hermite.hermgauss(24)
        z, w = np.sqrt(2.0) * x, w / np.sqrt(np.pi)
        gelu = lambda t: 0.5 * t * (1.0 + _erf(t / np.sqrt(2.0)))
        f1 = gelu(np.sqrt(q)[:, None] * z[None, :])                                  # (T, n): phi(u_i)
        z2 = c[..., None, None] * z[:, None] + np.sqrt(1.0 - c * c)[..., None, None] * z[None, :]
        f2 = gelu(np.sqrt(q)[None, :, None, None] * z2)                               # (T, T, n, n)
        return np.einsum('ia,ijab,a,b->ij', f1, f2, w, w)
    raise ValueError(f"unknown activation {act!r}: expected 'tat', 'relu' or 'gelu'")

# -----------------------------------------------------------------------------
# sec. 7-8: the whole model, at infinite width

def _cfg(config, key, default=None):
    return config.get(key, default) if isinstance(config, dict) else getattr(config, key, default)

def skip_weights(config):
    """(alpha, beta) of x <- alpha x + beta f(x). Plain residuals (1, 1) next to LayerNorm;
    weighted shortcuts alpha^2 + beta^2 = 1 without it, beta^2 = 1/L by default (sec. 8, ours);
    (0, 1) without skips."""
    if not _cfg(config, 'skip'):
        return 0.0, 1.0
    if _cfg(config, 'norm') != 'none':
        return 1.0, 1.0
    beta = _cfg(config, 'skip_beta') or 1.0 / math.sqrt(_cfg(config, 'n_layer'))
    return math.sqrt(1.0 - beta * beta), beta

def mlp_slope(config):
    """The TAT slope of a model: solved for the chain of its n_layer MLP nonlinearities (ours: the
    paper's exact sub-network function is not public; with skips the network is more linear than
    that chain, which predict_kernels accounts for)."""
    return tat_slope(_cfg(config, 'n_layer'), _cfg(config, 'eta')) if _cfg(config, 'act') == 'tat' else 0.0

def _linear_gains(config):
    """Factor by which each linear map scales the kernel at init: 1 for (scaled) orthogonal weights,
    std^2 * fan_in for GPT-2's N(0, 0.02) (output projections 0.02 / sqrt(2L))."""
    if _cfg(config, 'init') != 'gpt2':
        return dict(qkv=1.0, attn_out=1.0, fc=1.0, mlp_out=1.0)
    d, L = _cfg(config, 'n_embd'), _cfg(config, 'n_layer')
    return dict(qkv=0.02 ** 2 * d, attn_out=0.02 ** 2 / (2 * L) * d, fc=0.02 ** 2 * d, mlp_out=0.02 ** 2 / (2 * L) * 4 * d)

def embedding_kernel(config, T):
    """Kernel after the embedding for T distinct tokens: q I (distinct tokens and positions get
    independent random vectors). q = 1 for the signal-propagation init."""
    var = 0.02 ** 2 * (2 if _cfg(config, 'pos') == 'learned' else 1) if _cfg(config, 'init') == 'gpt2' else 1.0
    return var * np.eye(T)

def _normalize(sigma):
    q = np.sqrt(np.diag(sigma))
    return sigma / np.outer(q, q)

def attention_matrices(config, T, sigma0=None):
    """The T x T matrix A_l that each layer's attention applies at init (W_Q = 0, so the logits are
    the bias alone), and the kernels after every block: (list of n_layer A's, list of n_layer + 1 kernels).
    For E-SPA/U-SPA with q_correct the rescaling D_l is chosen from the predicted incoming kernel
    so that the attention output has q = 1 exactly (sec. 7, ours)."""
    L, attn, norm = _cfg(config, 'n_layer'), _cfg(config, 'attn'), _cfg(config, 'norm')
    alpha, beta = skip_weights(config)
    gains, slope, act = _linear_gains(config), mlp_slope(config), _cfg(config, 'act')
    if attn == 'espa':
        gammas = espa_gammas(L, _cfg(config, 'gamma_L'))
        designed = [espa_matrix(gammas[l - 1], gammas[l], T) for l in range(1, L + 1)]
    elif attn == 'uspa':
        rhos = uspa_rhos(L, _cfg(config, 'rho_L'))
        designed = [_uspa_dense(rhos[l - 1], rhos[l], T) for l in range(1, L + 1)]
    elif attn == 'vskipinit':
        designed = [np.eye(T)] * L                     # alpha = 1, beta = 0 at init (sec. 2)
    else:
        designed = [uniform_causal_matrix(T)] * L      # zero logits (exact for W_Q = 0, approximate for GPT-2 init)

    def residual(sigma, branch):
        sigma_in = _normalize(sigma) if norm == 'layernorm' else sigma
        out = alpha ** 2 * sigma + beta ** 2 * branch(sigma_in) if alpha else branch(sigma_in)
        return _normalize(out) if norm == 'postln' else out

    sigma = embedding_kernel(config, T) if sigma0 is None else np.asarray(sigma0, dtype=np.float64)
    kernels, applied = [sigma], []
    for A in designed:
        if _cfg(config, 'q_correct') and attn in ('espa', 'uspa'):
            P = A / A.sum(1, keepdims=True)            # keep the softmax part, re-pick D_l
            s_in = gains['qkv'] * (_normalize(sigma) if norm == 'layernorm' else sigma)
            A = P / np.sqrt(np.einsum('ij,jk,ik->i', P, s_in, P))[:, None] / math.sqrt(gains['qkv'] * gains['attn_out'])
        applied.append(A)
        sigma = residual(sigma, lambda s: gains['qkv'] * gains['attn_out'] * A @ s @ A.T)
        sigma = residual(sigma, lambda s: gains['mlp_out'] * activation_kernel(gains['fc'] * s, act, slope))
        kernels.append(sigma)
    return applied, kernels

def _uspa_dense(rho_prev, rho, T):
    diag, u, v = uspa_factors(rho_prev, rho, T)
    i, j = np.arange(T)[:, None], np.arange(T)[None, :]
    return np.where(j <= i, np.exp(uspa_log_bias(i, j, diag, u, v)), 0.0)

def predict_kernels(config, T, sigma0=None):
    """Infinite-width kernel after the embedding and after each block: n_layer + 1 T x T arrays.
    config: a GPTConfig or a dict with its fields. sigma0: the kernel after the embedding, when
    the tokens are not all distinct (pass the measured one)."""
    return attention_matrices(config, T, sigma0)[1]

def attention_rescalings(config, T):
    """D_l per layer (float64, length T): the factor multiplying row i of the softmax output.
    Row sums of the designed A_l, or the q-corrected values (sec. 7)."""
    if _cfg(config, 'q_correct'):
        return [A.sum(1) for A in attention_matrices(config, T)[0]]
    L = _cfg(config, 'n_layer')
    if _cfg(config, 'attn') == 'espa':
        g = espa_gammas(L, _cfg(config, 'gamma_L'))
        return [espa_row_sums(g[l - 1], g[l], T) for l in range(1, L + 1)]
    r = uspa_rhos(L, _cfg(config, 'rho_L'))
    out = []
    for l in range(1, L + 1):
        diag, u, v = uspa_factors(r[l - 1], r[l], T)
        out.append(diag + np.concatenate([[0.0], np.cumsum(u)[:-1]]) + np.arange(T) * v)
    return out

# -----------------------------------------------------------------------------
# Command line: the predicted kernel layer by layer, and with --measure a real model next to it.

if __name__ == '__main__':
    import ast
    import sys
    from model import config_for, measure_kernels  # only the CLI needs the model (see the docstring)
    args = dict(model='espa', n_layer=None, n_embd=512, n_head=8, block_size=128, batch_size=8, measure=False, seed=0)
    overrides = {}
    for arg in sys.argv[1:]:
        key, _, val = arg.lstrip('-').partition('=')
        try:
            val = True if val == '' else ast.literal_eval(val)
        except (ValueError, SyntaxError):
            pass   # a plain string, e.g. --model=espa
        (args if key in args else overrides)[key] = val
    try:
        config = config_for(args['model'], n_layer=args['n_layer'], n_embd=args['n_embd'], n_head=args['n_head'],
                            block_size=args['block_size'], **overrides)
    except (ValueError, TypeError) as e:
        sys.exit(f"spa.py: {e}")
    T = config.block_size
    predicted = predict_kernels(config, T)
    measured = measure_kernels(config, T, args['batch_size'], args['seed']) if args['measure'] else None
    print(f"{args['model']}: attn={config.attn} skip={config.skip} norm={config.norm} act={config.act} "
          f"n_layer={config.n_layer} T={T}" + (f", measured at width {config.n_embd}, batch {args['batch_size']}" if measured else ""))
    head = f"{'layer':>5} | {'corr (pred)':>11} {'q range (pred)':>18}"
    print(head + (f" | {'corr (meas)':>11} {'q range (meas)':>18}" if measured else ""))
    for l, sigma in enumerate(predicted):
        c, qmin, qmax = kernel_stats(sigma)
        line = f"{l:>5} | {c:11.4f} {qmin:8.3f} .. {qmax:7.3f}"
        if measured:
            c, qmin, qmax = kernel_stats(measured[l])
            line += f" | {c:11.4f} {qmin:8.3f} .. {qmax:7.3f}"
        print(line)
