"""MS-SSIM, whole image and inside the field of view.

torchmetrics ``multiscale_structural_similarity_index_measure`` (5 scales, default betas,
``normalize="relu"`` so fractional powers never NaN). It needs ``min(H, W) // 16 > window - 1``,
i.e. images of at least ``MS_SSIM_MIN_SIDE`` = 176 px (so 256 and 512 px working sizes have it).
Smaller images give NaN, shown as "n/a" with ``ms_ssim_unsupported_reason``: upsampling would
score pixels nobody produced. FOV: the same computation with each scale's contrast-structure map
(and the last scale's SSIM map) averaged inside the mask, average-pooled along with the images
(``masked_ms_ssim``, equal to torchmetrics' value for an all-ones mask).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torchmetrics.functional.image import multiscale_structural_similarity_index_measure

from medq.metrics.fidelity import SSIM_K1, SSIM_K2, SSIM_SIGMA, SSIM_WINDOW, check_pair

MS_SSIM_BETAS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
# torchmetrics refuses MS-SSIM unless side // 16 > window - 1 (5 scales), i.e. side >= 176.
MS_SSIM_MIN_SIDE = 16 * SSIM_WINDOW


def ms_ssim_supported(height: int, width: int) -> bool:
    return min(height, width) // 16 > SSIM_WINDOW - 1


def ms_ssim_unsupported_reason(height: int, width: int) -> str | None:
    if ms_ssim_supported(height, width):
        return None
    return (f"MS-SSIM n/a: {height}x{width} px is below the {MS_SSIM_MIN_SIDE} px that 5 scales "
            f"with an {SSIM_WINDOW}-px window need (not upsampled on purpose)")


def _gaussian_window(channels: int, dtype, device) -> torch.Tensor:
    x = torch.arange(SSIM_WINDOW, dtype=torch.float64) - (SSIM_WINDOW - 1) / 2
    g = torch.exp(-(x ** 2) / (2 * SSIM_SIGMA ** 2))
    g = (g / g.sum()).to(dtype)
    return (g[:, None] * g[None, :]).expand(channels, 1, SSIM_WINDOW, SSIM_WINDOW).to(device)


def ssim_cs_maps(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """SSIM and contrast-structure maps (N, C, H, W) of one scale, reflect-padded as torchmetrics
    pads them (the per-scale maps ``masked_ms_ssim`` averages inside the mask)."""
    c1, c2 = (SSIM_K1 * 1.0) ** 2, (SSIM_K2 * 1.0) ** 2
    pad = (SSIM_WINDOW - 1) // 2
    xp, yp = (F.pad(t, (pad, pad, pad, pad), mode="reflect") for t in (x, y))
    win = _gaussian_window(x.shape[1], x.dtype, x.device)
    out = F.conv2d(torch.cat([xp, yp, xp * xp, yp * yp, xp * yp]), win, groups=x.shape[1])
    mx, my, sxx, syy, sxy = out.split(x.shape[0])
    vx, vy = (sxx - mx ** 2).clamp(min=0), (syy - my ** 2).clamp(min=0)
    cs = (2 * (sxy - mx * my) + c2) / (vx + vy + c2)
    return ((2 * mx * my + c1) / (mx ** 2 + my ** 2 + c1)) * cs, cs


def masked_ms_ssim(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """MS-SSIM per image inside a mask, (N, C, H, W) x2 + (N, 1, H, W) -> (N,). The mask is
    average-pooled with the images at each scale (kept where >= 0.5); contrast-structure maps are
    averaged over the interior (as torchmetrics crops them), the last scale's SSIM map over the
    whole mask. NaN if a scale's mask is empty or the images are too small."""
    check_pair(pred, target, mask)
    n, _, h, w = pred.shape
    if not ms_ssim_supported(h, w):
        return torch.full((n,), math.nan)
    x, y, m = pred.float(), target.float(), (mask > 0.5).float()
    pad = (SSIM_WINDOW - 1) // 2
    values = []
    for scale in range(len(MS_SSIM_BETAS)):
        smap, cs = ssim_cs_maps(x, y)
        last = scale == len(MS_SSIM_BETAS) - 1
        mm = (m >= 0.5).float().expand_as(smap)
        if not last:
            mm = mm[..., pad:-pad, pad:-pad]
            cs = cs[..., pad:-pad, pad:-pad]
        src = smap if last else cs
        count = mm.sum(dim=(1, 2, 3))
        v = torch.relu((src * mm).sum(dim=(1, 2, 3)) / count.clamp(min=1))
        values.append(torch.where(count > 0, v, torch.full_like(v, math.nan)))
        x, y, m = F.avg_pool2d(x, 2), F.avg_pool2d(y, 2), F.avg_pool2d(m, 2)
    stack = torch.stack(values)
    betas = torch.tensor(MS_SSIM_BETAS, dtype=stack.dtype).view(-1, 1)
    return torch.prod(stack ** betas, dim=0)


def ms_ssim(
    pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """MS-SSIM per image -> (N,): torchmetrics (relu-normalised) without a mask,
    ``masked_ms_ssim`` with one; NaN for images under ``MS_SSIM_MIN_SIDE`` px."""
    check_pair(pred, target, mask)
    if not ms_ssim_supported(*pred.shape[-2:]):
        return torch.full((pred.shape[0],), math.nan)
    if mask is not None:
        return masked_ms_ssim(pred, target, mask)
    return multiscale_structural_similarity_index_measure(
        pred.float(),
        target.float(),
        gaussian_kernel=True,
        sigma=SSIM_SIGMA,
        kernel_size=SSIM_WINDOW,
        data_range=1.0,
        k1=SSIM_K1,
        k2=SSIM_K2,
        betas=MS_SSIM_BETAS,
        normalize="relu",
        reduction="none",
    )
