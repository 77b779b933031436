"""
Fast paths for a CPU in eager mode: the same numbers as torch's own ops, in fewer passes over the
(B, T, C) activations. On this project's CPUs each elementwise pass over such a tensor costs about
as much as LayerNorm's whole fused kernel, so these decide whether the family's presets keep up
with Pre-LN (RESULTS.md, Performance). model.py uses them only on a CPU outside torch.compile; on a
GPU or compiled, torch's ops run, and are fast there or fused by inductor. test_model.py holds each
to its definition in float64, forward and backward.

    y = CumsumTokens.apply(x)                 # == x.cumsum(1), x (B, T, C)
    y = RMSNormGrad.apply(x, weight, eps)     # == F.rms_norm(x, (C,), weight, eps)
    y = DyTGrad.apply(x, alpha, weight, bias) # == weight * tanh(alpha x) + bias
"""
import torch
from torch.autograd.function import once_differentiable
from torch.nn import functional as F

eager_cpu = lambda x: x.device.type == 'cpu' and not torch.compiler.is_compiling()
tokens_sum = lambda u: u.flatten(0, -2).sum(0)   # (..., C) -> (C,): a gain's gradient

def blocked_cumsum(x, reverse=False, k=16):
    """sum_{j <= i} x_j over the tokens of x (B, T, C) (reverse: j >= i) as a blocked scan: a k x k
    triangular matmul within each block of k tokens, then the totals of the blocks before (after)
    added. torch's CPU cumsum over a middle dim is a scalar loop, about 3x slower."""
    B, T, C = x.shape
    pad = -T % k
    if pad:
        x = F.pad(x, (0, 0, pad, 0) if reverse else (0, 0, 0, pad))   # zeros: they add nothing
    ones = torch.ones(k, k, dtype=x.dtype, device=x.device)
    blocks = (ones.triu() if reverse else ones.tril()) @ x.reshape(B, -1, k, C)   # (B, nb, k, C)
    totals = blocks[:, :, 0 if reverse else -1]   # (B, nb, C): each block's sum
    running = totals.cumsum(1)
    blocks += (totals.sum(1, keepdim=True) - running if reverse else running - totals)[:, :, None]
    out = blocks.view(B, -1, C)
    return out[:, pad:] if reverse else out[:, :T]

class CumsumTokens(torch.autograd.Function):
    """x.cumsum(1); its gradient is the reverse cumulative sum of the incoming one."""
    @staticmethod
    def forward(ctx, x):
        return blocked_cumsum(x)

    @staticmethod
    @once_differentiable   # a clear error, not a wrong answer, for a second derivative
    def backward(ctx, g):
        return blocked_cumsum(g, reverse=True)

# RMSNorm and DyT: torch differentiates RMSNorm through about ten elementwise passes (torch 2.13
# has no fused CPU kernel for its backward) and DyT through seven, each about as slow as
# LayerNorm's one fused kernel; their gradients, written out (MATH.md secs. 14, 15), take fewer.

class RMSNormGrad(torch.autograd.Function):
    """y = w x_hat, x_hat = r x, r = (mean_c x^2 + eps)^(-1/2). With g_y = g w, per token:
    dL/dx = r (g_y - x_hat mean_c(g_y x_hat)); dL/dw = the sum over tokens of g x_hat."""
    @staticmethod
    def forward(ctx, x, weight, eps):
        # the norm reads x once and writes only (..., 1); x.pow(2) would write a copy of x
        r = torch.linalg.vector_norm(x, dim=-1, keepdim=True).square_().div_(x.size(-1))
        r = r.add_(eps).rsqrt_()   # (..., 1)
        x_hat = x * r
        ctx.save_for_backward(x_hat, weight, r)
        return x_hat * weight

    @staticmethod
    @once_differentiable
    def backward(ctx, g):
        x_hat, weight, r = ctx.saved_tensors
        g_y = g * weight
        mean = torch.linalg.vecdot(g_y, x_hat).unsqueeze(-1).div_(x_hat.size(-1))
        return g_y.addcmul_(x_hat, mean, value=-1).mul_(r), tokens_sum(g * x_hat), None

class DyTGrad(torch.autograd.Function):
    """y = w tanh(alpha x) + b. With t = tanh(alpha x) and d = g w (1 - t^2): dL/dx = alpha d,
    dL/dalpha = sum(d x), dL/dw and dL/db the sums over tokens of g t and of g."""
    @staticmethod
    def forward(ctx, x, alpha, weight, bias):
        t = (alpha * x).tanh_()
        ctx.save_for_backward(x, alpha, weight, t)
        return t * weight if bias is None else torch.addcmul(bias, t, weight)

    @staticmethod
    @once_differentiable
    def backward(ctx, g):
        x, alpha, weight, t = ctx.saved_tensors
        d = g * weight
        torch.ops.aten.tanh_backward(d, t, grad_input=d)   # d (1 - t^2), in place
        grad_alpha = torch.dot(d.reshape(-1), x.reshape(-1))
        grad_bias = tokens_sum(g) if ctx.needs_input_grad[3] else None
        return d.mul_(alpha), grad_alpha, tokens_sum(g * t), grad_bias
