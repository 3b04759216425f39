"""Every per-image metric of one scored pair, by column name: what the leaderboard averages.

    m = image_metrics(pred, target, mask)  # {"psnr": (N,), ..., "psnr_eroded_fov": (N,)}
"""

from __future__ import annotations

import math

import torch

from medq.metrics.fidelity import check_pair, psnr, psnr_eroded_fov, rgb_to_y, ssim
from medq.metrics.multiscale import ms_ssim

# Column names. psnr_eroded_fov is the main PSNR (the eroded FOV, the pixels ssim_fov's windows are
# centred on); psnr_fov (every FOV pixel, rim band included) stays as a secondary column.
IMAGE_METRICS = ("psnr", "ssim", "ms_ssim", "psnr_fov", "ssim_fov", "ms_ssim_fov",
                 "psnr_eroded_fov")
# Scored by the leaderboard beside IMAGE_METRICS: LR consistency (SR only) and vessel Dice.
FIDELITY_METRICS = ("lr_psnr", "vessel_dice")
SCORED_METRICS = IMAGE_METRICS + FIDELITY_METRICS


def image_metrics(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None, *,
                  channel: str = "rgb") -> dict[str, torch.Tensor]:
    """Every per-image metric of ``IMAGE_METRICS`` -> {name: (N,) float64}. ``pred``/``target``
    (N, 3, H, W) in [0, 1] (values outside are clamped: PNG outputs never have any); ``mask``
    (N, 1, H, W) for the FOV variants (NaN without one). ``channel``: "rgb" | "y"."""
    if channel not in ("rgb", "y"):
        raise ValueError(f"channel = {channel!r}: expected 'rgb' or 'y'")
    check_pair(pred, target, mask)
    pred, target = pred.float().clamp(0, 1), target.float().clamp(0, 1)
    if channel == "y":
        pred, target = rgb_to_y(pred), rgb_to_y(target)
    with torch.no_grad():
        out = {
            "psnr": psnr(pred, target),
            "ssim": ssim(pred, target),
            "ms_ssim": ms_ssim(pred, target),
        }
        if mask is None:
            nan = torch.full((pred.shape[0],), math.nan)
            out.update({m: nan.clone() for m in IMAGE_METRICS if m not in out})
        else:
            out.update(psnr_fov=psnr(pred, target, mask), ssim_fov=ssim(pred, target, mask),
                       ms_ssim_fov=ms_ssim(pred, target, mask),
                       psnr_eroded_fov=psnr_eroded_fov(pred, target, mask))
    return {k: out[k].double().cpu() for k in IMAGE_METRICS}


def per_image_protocol(channel: str) -> str:
    """One line naming the implementation and settings of every per-image column (written beside
    the leaderboard: scores from different libraries are not comparable)."""
    import torchmetrics

    from medq.metrics.fidelity import PSNR_CAP_DB
    from medq.metrics.multiscale import MS_SSIM_MIN_SIDE

    return (f"torchmetrics {torchmetrics.__version__}: PSNR (data_range 1, per image, "
            f"dim=(1,2,3), capped at {PSNR_CAP_DB:g} dB), MS-SSIM (5 scales, relu-normalised; "
            f"n/a under {MS_SSIM_MIN_SIDE} px); SSIM: medq.losses.ssim (= scikit-image, Gaussian "
            f"11, sigma 1.5, K 0.01/0.03, valid windows), ssim_fov over the windows entirely "
            f"inside the field of view (the FOV eroded by half a window, as the SSIM loss); "
            f"psnr_eroded_fov (the main PSNR) over that eroded FOV, psnr_fov over every FOV "
            f"pixel (rim band included); MS-SSIM FOV averages inside the mask (medq.metrics); "
            f"channel {channel.upper()}" + (" (BT.601 Y, 16-235)" if channel == "y" else ""))
