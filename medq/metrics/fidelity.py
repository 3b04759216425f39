"""Full-reference fidelity of one image to its target: PSNR and SSIM, whole image and inside the
field of view, on RGB or on Y.

Settings, fixed here so every number on the leaderboard means the same thing:

- PSNR: torchmetrics ``peak_signal_noise_ratio(data_range=1.0, dim=(1, 2, 3), reduction="none")``,
  one value per image (averaged afterwards, never pooled over images). Capped at ``PSNR_CAP_DB``
  so that one exact copy does not make a mean infinite. With a mask: the MSE over the mask's
  pixels. Two FOV variants: ``psnr_fov`` over every FOV pixel, and ``psnr_eroded_fov`` (the main
  PSNR column) over the eroded FOV, the centres of the SSIM windows ``ssim_fov`` counts. The rim
  band the erosion drops is where bicubic smears the black surround into the disc; a model that
  only fixes that band gains PSNR there without restoring anything inside the disc.
- SSIM: the project's SSIM (``medq.losses.ssim``: Gaussian window 11, sigma 1.5, K1 0.01,
  K2 0.03, ``data_range=1.0``, valid windows only), equal to scikit-image's
  ``structural_similarity(gaussian_weights=True, use_sample_covariance=False)`` and the same
  function the SSIM *loss* trains. Full image: the mean over every window inside the image.
  FOV (``ssim_fov``, the main metric): the map averaged over the windows that lie entirely inside
  the field of view, i.e. over the mask eroded by half a window (``eroded_fov``). The rim, where a
  window straddles the disc edge that every image shares, is not counted: any output with the
  right disc shape scores there. Undefined (NaN, "n/a" with ``ssim_unsupported_reason``) when the
  image is smaller than the window or no window fits inside the FOV. (torchmetrics reflect-pads and
  averages the whole map, which flatters small images.)
- ``channel="y"``: the BasicSR convention, RGB -> Y of YCbCr (ITU-R BT.601, studio range:
  Y = 16/255 + (65.481 R + 128.553 G + 24.966 B) / 255 on [0, 1] inputs), data range still 1.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torchmetrics.functional.image import peak_signal_noise_ratio

from medq.losses.ssim import window_max

PSNR_CAP_DB = 100.0
SSIM_WINDOW, SSIM_SIGMA, SSIM_K1, SSIM_K2 = 11, 1.5, 0.01, 0.03


def check_pair(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None) -> None:
    """Raise ValueError naming both shapes unless ``pred`` and ``target`` are (N, C, H, W) of one
    shape and ``mask`` (if given) is (N, 1, H, W)."""
    if pred.ndim != 4 or pred.shape != target.shape:
        raise ValueError(f"pred and target must both be (N, C, H, W) of one shape, got "
                         f"{tuple(pred.shape)} and {tuple(target.shape)}")
    if mask is not None and tuple(mask.shape) != (pred.shape[0], 1, *pred.shape[-2:]):
        raise ValueError(f"mask must be (N, 1, H, W) = {(pred.shape[0], 1, *pred.shape[-2:])}, "
                         f"got {tuple(mask.shape)}")


def rgb_to_y(images: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) RGB in [0, 1] -> (N, 1, H, W) Y of YCbCr, ITU-R BT.601 studio range
    [16/255, 235/255] (BasicSR's ``rgb2ycbcr(..., y_only=True)`` divided by 255)."""
    w = images.new_tensor([65.481, 128.553, 24.966]).view(1, 3, 1, 1)
    return (images * w).sum(1, keepdim=True) / 255.0 + 16.0 / 255.0


def psnr(
    pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """PSNR in dB per image, (N, C, H, W) x2 [+ mask (N, 1, H, W)] -> (N,), data range 1, capped at
    ``PSNR_CAP_DB``. With a mask: MSE over the masked pixels (all channels); NaN if it is empty."""
    check_pair(pred, target, mask)
    pred, target = pred.float(), target.float()
    if mask is None:
        value = peak_signal_noise_ratio(pred, target, data_range=1.0, reduction="none",
                                        dim=(1, 2, 3))
        return value.clamp(max=PSNR_CAP_DB)
    m = (mask > 0.5).float().expand_as(pred)
    count = m.sum(dim=(1, 2, 3))
    mse = (((pred - target) ** 2) * m).sum(dim=(1, 2, 3)) / count.clamp(min=1)
    value = (10 * torch.log10(1.0 / mse.clamp(min=10 ** (-PSNR_CAP_DB / 10)))).clamp(
        max=PSNR_CAP_DB
    )
    return torch.where(count > 0, value, torch.full_like(value, math.nan))


def eroded_fov(mask: torch.Tensor, window: int = SSIM_WINDOW) -> torch.Tensor:
    """(N, 1, H, W) mask -> (N, 1, H, W) float {0, 1}: the pixels whose whole ``window`` x
    ``window`` neighbourhood lies inside the mask and inside the image (the centres of the SSIM
    windows ``ssim_fov`` counts). Equal to ``scipy.ndimage.binary_erosion`` with a square
    structuring element and ``border_value=0``."""
    m = (mask > 0.5).float()
    inside = 1.0 - window_max(F.pad(1.0 - m, [window // 2] * 4, value=1.0), window)
    return inside


def psnr_eroded_fov(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """PSNR per image over the eroded FOV (``eroded_fov(mask)``: the pixels ``ssim_fov``'s windows
    are centred on) -> (N,); NaN where no SSIM window fits inside the FOV, as ``ssim_fov``."""
    return psnr(pred, target, eroded_fov(mask))


def ssim_unsupported_reason(height: int, width: int,
                            mask: torch.Tensor | None = None) -> str | None:
    """Why SSIM (with ``mask`` (1, H, W) or (H, W): the FOV variant) is undefined, or None."""
    if min(height, width) < SSIM_WINDOW:
        return (f"SSIM n/a: {height}x{width} px is smaller than the {SSIM_WINDOW}-px window")
    if mask is not None and float(eroded_fov(mask.reshape(1, 1, height, width).float()).sum()) == 0:
        return (f"SSIM fov n/a: no {SSIM_WINDOW}-px window fits entirely inside the field of view")
    return None


def ssim(
    pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """SSIM per image, (N, C, H, W) x2 [+ mask (N, 1, H, W)] -> (N,): ``medq.losses.ssim``
    (scikit-image's definition, valid windows). With a mask: the map averaged over the windows
    entirely inside the mask (``eroded_fov``). NaN for images smaller than the window and for a
    mask no window fits in (never SSIM = 1 as the loss uses for "nothing to compare")."""
    from medq.losses import ssim as ssim_exact

    check_pair(pred, target, mask)
    n, _, h, w = pred.shape
    if min(h, w) < SSIM_WINDOW:
        return torch.full((n,), math.nan)
    kw = dict(window_size=SSIM_WINDOW, sigma=SSIM_SIGMA, k1=SSIM_K1, k2=SSIM_K2, data_range=1.0,
              reduction="none")
    with torch.no_grad():
        value = ssim_exact(pred.float(), target.float(), mask=mask, **kw).float()
    if mask is None:
        return value
    empty = eroded_fov(mask).sum(dim=(1, 2, 3)) == 0
    return torch.where(empty, torch.full_like(value, math.nan), value)
