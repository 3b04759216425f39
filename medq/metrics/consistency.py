"""Consistency of a super-resolved output with the low-resolution input it was made from."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from medq.metrics.fidelity import psnr


def lr_consistency_psnr(output: torch.Tensor, lr_input: torch.Tensor,
                        mask: torch.Tensor | None = None) -> torch.Tensor:
    """LR consistency of super-resolved outputs: PSNR (dB) between ``output`` (N, 3, H, W)
    downscaled with the task's own operator (``medq.data.bicubic_resize``, the kernel that made
    the inputs) and the low-resolution ``lr_input`` (N, 3, h, w) -> (N,). ``mask`` (N, 1, H, W):
    inside the FOV (area-downscaled, kept >= 0.5). A hallucinating model fails it even when it
    looks sharp; the NTIRE perceptual SR challenges require >= 45 dB. NaN when h, w are not
    smaller than H, W (no downscaling operator: enhance)."""
    from medq.data.tasks import bicubic_resize

    n, _, H, W = output.shape
    h, w = lr_input.shape[-2:]
    if h >= H and w >= W:
        return torch.full((n,), math.nan, dtype=torch.float64)
    down = bicubic_resize(output.float().clamp(0, 1), (h, w))
    lr_mask = None
    if mask is not None:
        lr_mask = (F.interpolate(mask.float(), size=(h, w), mode="area") >= 0.5).float()
    return psnr(down, lr_input.float(), lr_mask).double()
