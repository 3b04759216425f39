"""Gradient shaping at an activation: identity forward, modified backward.

Used at ``x0_hat`` on the SSIM branch: SSIM's rational-function gradient through the VAE decoder
was 200-2000x larger than L2's in the original runs and corrupted the backbone.
"""

from __future__ import annotations

import torch


class _MapGradient(torch.autograd.Function):
    """Identity forward; the backward passes on ``fn(incoming gradient)``."""

    @staticmethod
    def forward(ctx, x, fn):
        ctx.fn = fn
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return ctx.fn(grad), None


def scale_gradient(x: torch.Tensor, s: float) -> torch.Tensor:
    """Return ``x`` unchanged (any shape/dtype); in backward the incoming gradient is multiplied by
    ``s``. ``s = 1`` returns ``x`` itself (no graph node)."""
    s = float(s)
    if s == 1.0:
        return x
    return _MapGradient.apply(x, lambda grad: grad * s)


def clamp_gradient(x: torch.Tensor, c: float) -> torch.Tensor:
    """Return ``x`` unchanged; in backward each gradient element is clamped to [-c, c], c > 0."""
    c = float(c)
    if not c > 0:
        raise ValueError(f"clamp_gradient: c = {c} must be > 0 (callers treat 0 as 'off')")
    return _MapGradient.apply(x, lambda grad: grad.clamp(-c, c))
