"""
The optimizers of a GPT: parameter groups by role, AdamW for everything or Muon for the 2-D weights
inside the blocks (MATH.md sec. 10).

    optimizers = configure_optimizers(model, weight_decay=0.1, learning_rate=6e-4, betas=(0.9, 0.95),
                                      device_type='cuda', optimizer='muon')

Each group carries 'lr_scale': the training loop sets its lr to the schedule's lr times it.
"""
import torch
import torch.nn as nn


def configure_optimizers(model, weight_decay, learning_rate, betas, device_type, optimizer='adamw',
                         muon_lr=0.03, muon_momentum=0.95, muon_adjust_lr='original'):
    """A list of optimizers over parameter groups by role, not by ndim. Linear and Embedding
    weights decay; biases, norm weights (LayerNorm, RMSNorm, DyT) and gains never do. With
    block_lr_rule='depth', everything inside the blocks trains at lr / n_layer: with 2L weight
    matrices in series, each moving its own share keeps the end-to-end change bounded (sec. 10).
    optimizer='muon': the 2-D weights inside the blocks train with torch.optim.Muon at muon_lr
    (the same depth rule), the rest with AdamW (sec. 10)."""
    config = model.config
    block_scale = 1.0 / config.n_layer if config.block_lr_rule == 'depth' else 1.0
    groups, seen = {}, set()
    for module_name, module in model.named_modules():
        for name, p in module.named_parameters(recurse=False):
            if id(p) in seen or not p.requires_grad:   # the tied readout is the embedding: once
                continue
            seen.add(id(p))
            in_block = module_name.startswith('h.')
            muon = optimizer == 'muon' and in_block and p.dim() == 2
            decay = isinstance(module, (nn.Linear, nn.Embedding)) and name == 'weight'
            scale = (muon_lr / learning_rate if muon else 1.0) * (block_scale if in_block else 1.0)
            groups.setdefault((muon, decay, scale), []).append(p)

    def param_groups(muon):   # sorted, so the group order (and a checkpoint's) never changes
        return [dict(params=ps, weight_decay=weight_decay if decay else 0.0, lr_scale=scale,
                     lr=learning_rate * scale)
                for (is_muon, decay, scale), ps in sorted(groups.items()) if is_muon == muon]

    optimizers = [torch.optim.AdamW(param_groups(False), lr=learning_rate, betas=betas,
                                    fused=device_type == 'cuda')]
    if optimizer == 'muon':
        if not hasattr(torch.optim, 'Muon'):
            raise ValueError(f"optimizer='muon' needs torch.optim.Muon, which arrived in torch 2.9; "
                             f"this is torch {torch.__version__}. Upgrade torch, or use "
                             f"optimizer='adamw'.")
        if device_type == 'cpu':
            use_float32_newton_schulz()
        optimizers.append(torch.optim.Muon(param_groups(True), lr=muon_lr, momentum=muon_momentum,
                                           adjust_lr_fn=muon_adjust_lr))
    return optimizers


def newton_schulz_float32(grad, ns_coefficients, ns_steps, eps):
    """torch.optim.Muon's orthogonalisation (torch/optim/_muon.py, _zeropower_via_newtonschulz:
    the same quintic iteration, coefficients and normalisation) in float32 instead of bfloat16.
    Ours, for CPUs only: without bfloat16 matrix units a bfloat16 matmul is far slower there
    than a float32 one, and Muon's step would cost several AdamW steps."""
    a, b, c = ns_coefficients
    X = grad.float()
    X = X.T if grad.size(0) > grad.size(1) else X    # iterate on the wide side: X X^T is smaller
    X = X / X.norm().clamp(min=eps)                  # spectral norm <= Frobenius norm <= 1
    for _ in range(ns_steps):
        gram = X @ X.T
        X = torch.addmm(X, torch.addmm(gram, gram, gram, beta=b, alpha=c), X, beta=a)
    return X.T if grad.size(0) > grad.size(1) else X


def use_float32_newton_schulz():
    """Make torch.optim.Muon orthogonalise in float32 (newton_schulz_float32). Process-wide:
    Muon's step looks the function up in its module at every call. Only configure_optimizers on
    a CPU calls it."""
    from torch.optim import _muon
    if not hasattr(_muon, '_zeropower_via_newtonschulz'):
        raise ValueError(f"torch {torch.__version__}'s Muon has no _zeropower_via_newtonschulz to "
                         f"run in float32 on CPU; train on a GPU, or use optimizer='adamw'.")
    if _muon._zeropower_via_newtonschulz is not newton_schulz_float32:
        _muon.library_newton_schulz = _muon._zeropower_via_newtonschulz   # kept for the test
        _muon._zeropower_via_newtonschulz = newton_schulz_float32
