"""Image-quality metrics: a functional core (per-image values) and FID/KID feature backbones.

    m = image_metrics(pred, target, mask)  # {"psnr": (N,), "ssim": (N,), ..., "ms_ssim_fov": (N,)}
    bb = feature_extractor()                       # Inception if on disk, else a named stand-in
    feats = image_features(png_paths, bb)          # (N, D) through clean-fid's "clean" pipeline
    frechet_distance(f_pred, f_target); kid(f_pred, f_target, seed=0)

Conventions (``docs/ARCHITECTURE.md``): float32 RGB in [0, 1], NCHW; masks (N, 1, H, W) in {0, 1}.
Settings, all fixed here so every number on the leaderboard means the same thing:

- PSNR: torchmetrics ``peak_signal_noise_ratio(data_range=1.0, dim=(1, 2, 3), reduction="none")``,
  one value per image (averaged afterwards, never pooled over images). Capped at ``PSNR_CAP_DB``
  so that one exact copy does not make a mean infinite. FOV: the MSE over the mask's pixels.
- SSIM: the project's SSIM (``medq.losses.ssim``: Gaussian window 11, sigma 1.5, K1 0.01,
  K2 0.03, ``data_range=1.0``, valid windows only), equal to scikit-image's
  ``structural_similarity(gaussian_weights=True, use_sample_covariance=False)`` to ~1e-7 and the
  same function the SSIM *loss* trains. Full image: the mean over every window inside the image.
  FOV (``ssim_fov``, the main metric): the map averaged over the windows that lie entirely inside
  the field of view, i.e. over the mask eroded by half a window (``eroded_fov``). The rim, where a
  window straddles the disc edge that every image shares, is not counted: any output with the
  right disc shape scores there. Undefined (NaN, "n/a" with ``ssim_unsupported_reason``) when the
  image is smaller than the window or no window fits inside the FOV. (torchmetrics reflect-pads and
  averages the whole map; at 64 px that is 0.014-0.028 above scikit-image, not ~1e-3.)
- MS-SSIM: torchmetrics ``multiscale_structural_similarity_index_measure`` (5 scales, default
  betas, ``normalize="relu"`` so fractional powers never NaN). It needs
  ``min(H, W) // 16 > kernel - 1``, i.e. images of at least ``MS_SSIM_MIN_SIDE`` = 176 px. Smaller
  images (our default is 64 px) give NaN, shown as "n/a": upsampling would score pixels nobody
  produced. FOV: the same computation with each scale's contrast-structure map (and the last
  scale's SSIM map) averaged inside the mask, average-pooled along with the images
  (``masked_ms_ssim``, equal to torchmetrics' value for an all-ones mask).
- ``channel="y"``: the BasicSR convention, RGB -> Y of YCbCr (ITU-R BT.601, studio range:
  Y = 16/255 + (65.481 R + 128.553 G + 24.966 B) / 255 on [0, 1] inputs), data range still 1.
- FID/KID: clean-fid 0.1.35 features (``mode="clean"``: PIL bicubic resize on float values to
  299 x 299). With the Inception TorchScript file on disk (``$MEDQ_INCEPTION``, else clean-fid's
  own location ``<tempdir>/inception-2015-12-05.pt``) the backbone is ``inception`` and the
  numbers are FID/KID. Without it the backbone is ``randresnet18`` (torchvision ResNet-18 with
  weights drawn from seed 0, global-pooled 512-d features of a 128 px input): a Frechet distance
  on those features is *not* FID and is named ``fd_randresnet18``.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torchmetrics.functional.image import (
    multiscale_structural_similarity_index_measure,
    peak_signal_noise_ratio,
)

log = logging.getLogger(__name__)

PSNR_CAP_DB = 100.0
SSIM_WINDOW, SSIM_SIGMA, SSIM_K1, SSIM_K2 = 11, 1.5, 0.01, 0.03
MS_SSIM_BETAS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
# torchmetrics refuses MS-SSIM unless side // 16 > window - 1 (5 scales), i.e. side >= 176.
MS_SSIM_MIN_SIDE = 16 * SSIM_WINDOW
IMAGE_METRICS = ("psnr", "ssim", "ms_ssim", "psnr_fov", "ssim_fov", "ms_ssim_fov")
# Scored by the leaderboard beside IMAGE_METRICS: LR consistency (SR only) and vessel Dice.
FIDELITY_METRICS = ("lr_psnr", "vessel_dice")
SCORED_METRICS = IMAGE_METRICS + FIDELITY_METRICS
INCEPTION_ENV = "MEDQ_INCEPTION"
INCEPTION_FILE = "inception-2015-12-05.pt"


def _check_pair(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None) -> None:
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
    _check_pair(pred, target, mask)
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
    inside = 1.0 - F.max_pool2d(F.pad(1.0 - m, [window // 2] * 4, value=1.0), window, stride=1)
    return inside


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

    _check_pair(pred, target, mask)
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


def _ssim_cs_maps(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """SSIM and contrast-structure maps (N, C, H, W), reflect-padded as torchmetrics does."""
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
    _check_pair(pred, target, mask)
    n, _, h, w = pred.shape
    if not ms_ssim_supported(h, w):
        return torch.full((n,), math.nan)
    x, y, m = pred.float(), target.float(), (mask > 0.5).float()
    pad = (SSIM_WINDOW - 1) // 2
    values = []
    for scale in range(len(MS_SSIM_BETAS)):
        smap, cs = _ssim_cs_maps(x, y)
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
    _check_pair(pred, target, mask)
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


def image_metrics(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None, *,
                  channel: str = "rgb") -> dict[str, torch.Tensor]:
    """Every per-image metric of ``IMAGE_METRICS`` -> {name: (N,) float}. ``pred``/``target``
    (N, 3, H, W) in [0, 1] (values outside are clamped: PNG outputs never have any); ``mask``
    (N, 1, H, W) for the ``*_fov`` variants (NaN without one). ``channel``: "rgb" | "y"."""
    if channel not in ("rgb", "y"):
        raise ValueError(f"channel = {channel!r}: expected 'rgb' or 'y'")
    _check_pair(pred, target, mask)
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
            out.update(psnr_fov=nan, ssim_fov=nan.clone(), ms_ssim_fov=nan.clone())
        else:
            out.update(psnr_fov=psnr(pred, target, mask), ssim_fov=ssim(pred, target, mask),
                       ms_ssim_fov=ms_ssim(pred, target, mask))
    return {k: v.double().cpu() for k, v in out.items()}


# ---------------------------------------------------------------------------------------------
# distribution metrics: feature backbones, Frechet distance, KID


@dataclass
class FeatureBackbone:
    """A feature extractor in clean-fid's convention: float (B, 3, 299, 299) in [0, 255] -> (B, D).

    ``fd_column`` / ``kid_column`` name the leaderboard columns: "fid_inception" only for the real
    Inception network; anything else is a Frechet distance on other features ("fd_<name>")."""

    name: str
    fn: Callable[[torch.Tensor], torch.Tensor]
    dims: int
    description: str

    @property
    def fd_column(self) -> str:
        return "fid_inception" if self.name == "inception" else f"fd_{self.name}"

    @property
    def kid_column(self) -> str:
        return f"kid_{self.name}"

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)


def inception_path() -> Path | None:
    """The Inception TorchScript file: ``$MEDQ_INCEPTION`` (the file, or a folder holding it), else
    clean-fid's fixed location in the system temp dir; None if neither exists."""
    env = os.environ.get(INCEPTION_ENV)
    if env:
        p = Path(env)
        p = p / INCEPTION_FILE if p.is_dir() else p
        if not p.is_file():
            raise FileNotFoundError(f"${INCEPTION_ENV} = {env!r}: no such file (expected the "
                                    f"TorchScript {INCEPTION_FILE} clean-fid uses)")
        return p
    p = Path(tempfile.gettempdir()) / INCEPTION_FILE
    return p if p.is_file() else None


def _inception_backbone(path: Path) -> FeatureBackbone:
    # Same wrapping as cleanfid.inception_torchscript.InceptionV3W(resize_inside=False), which only
    # accepts a folder it may download into.
    base = torch.jit.load(str(path), map_location="cpu").eval()

    def fn(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return base.layers.forward((x - 128) / 128).view(x.shape[0], 2048)

    return FeatureBackbone("inception", fn, 2048, f"Inception-v3 TorchScript {path.name} "
                           f"(clean-fid, StyleGAN2 weights), pool3 2048-d")


def _random_resnet18_backbone() -> FeatureBackbone:
    import torchvision

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = torchvision.models.resnet18(weights=None)
    net.fc = torch.nn.Identity()
    net.eval()

    def fn(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            # 128 px instead of 299: 5x cheaper on CPU, and random filters have no preferred scale.
            x = F.interpolate(x.float() / 255.0, size=(128, 128), mode="bilinear",
                              align_corners=False, antialias=True)
            return net(x)

    return FeatureBackbone("randresnet18", fn, 512,
                           "torchvision ResNet-18, random weights from torch.manual_seed(0) "
                           f"(torch {torch.__version__}), global-pooled 512-d features of a 128 px "
                           "input; NOT Inception: not comparable with published FID")


def feature_extractor(name: str = "auto") -> FeatureBackbone:
    """``auto``: Inception when its file is on disk (see ``inception_path``), else
    ``randresnet18``. ``inception`` requires the file; ``randresnet18`` forces the stand-in."""
    if name not in ("auto", "inception", "randresnet18"):
        raise ValueError(f"feature backbone {name!r}: expected auto, inception or randresnet18")
    path = inception_path() if name != "randresnet18" else None
    if name == "inception" and path is None:
        raise FileNotFoundError(f"Inception weights not found: set ${INCEPTION_ENV} to "
                                f"{INCEPTION_FILE} or put it in {tempfile.gettempdir()}")
    if path is not None:
        return _inception_backbone(path)
    return _random_resnet18_backbone()


FEATURE_BATCH = 16
"""Images per feature forward pass. Every pass has exactly this many (the last one padded), so an
image's features do not depend on which images share its pass: at a fixed input shape each
image's arithmetic is the same (randresnet18: bit-identical at every position and with any
neighbours; a different batch size changes them by ~4e-7, ``tests/test_metrics.py``)."""


def image_features(paths: Sequence[str | Path], backbone: FeatureBackbone,
                   batch_size: int = FEATURE_BATCH) -> np.ndarray:
    """(N, D) float64 features of image files through clean-fid's ``clean`` pipeline (its
    ``ResizeDataset``: PIL bicubic to 299 px) on CPU, in passes of exactly ``batch_size`` images
    (the last padded with copies of its final image, whose rows are dropped)."""
    from cleanfid.utils import ResizeDataset

    if not paths:
        return np.zeros((0, backbone.dims))
    dataset = ResizeDataset([str(p) for p in paths], mode="clean")
    out = []
    for start in range(0, len(dataset), batch_size):
        batch = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
        k = len(batch)
        batch += [batch[-1]] * (batch_size - k)
        with torch.no_grad():
            out.append(backbone(torch.stack(batch)).detach().cpu().numpy()[:k])
    return np.concatenate(out).astype(np.float64)


def frechet_distance(feats1: np.ndarray, feats2: np.ndarray) -> float:
    """Frechet distance between Gaussians fitted to (N1, D) and (N2, D) features (clean-fid's
    ``frechet_distance``), clamped at 0 (a distance; sqrtm's round-off made a set against itself
    come out slightly negative); NaN when either set has fewer than 2 samples or sqrtm fails."""
    from cleanfid import fid

    if len(feats1) < 2 or len(feats2) < 2:
        return math.nan
    mu1, mu2 = feats1.mean(0), feats2.mean(0)
    s1, s2 = np.cov(feats1, rowvar=False), np.cov(feats2, rowvar=False)
    buf = io.StringIO()
    try:
        with contextlib.redirect_stdout(buf), warnings.catch_warnings():
            # clean-fid prints its singular-matrix retry; few samples make sigma singular by design
            warnings.simplefilter("ignore")
            value = float(fid.frechet_distance(mu1, s1, mu2, s2))
    except ValueError as e:
        log.warning("Frechet distance failed (%s); reported as NaN", e)
        return math.nan
    if buf.getvalue().strip():
        log.info("clean-fid: %s", buf.getvalue().strip())
    return max(0.0, value)


def _poly_kernel(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a @ b.T / a.shape[1] + 1.0) ** 3


def kid_interval(feats1: np.ndarray, feats2: np.ndarray, *, seed: int = 0, n_boot: int = 1000,
                 level: float = 0.95) -> tuple[float, float, float]:
    """KID on the whole sets with a bootstrap interval -> (value, low, high); NaNs with fewer
    than 2 samples per side.

    value: the unbiased MMD^2 with clean-fid's cubic kernel k(a, b) = (a.b / D + 1)^3 over all
    pairs (= clean-fid's ``kernel_distance`` whenever N <= its 1000-image subset size, where its
    100 "subsets" are all the whole set and carry no spread). Interval: percentile bootstrap over
    images, resampling the index of each set with replacement (seeded) and leaving pairs of the
    same original image out of the within-set terms, so duplicates do not bias the estimator."""
    n1, n2 = len(feats1), len(feats2)
    if n1 < 2 or n2 < 2:
        return math.nan, math.nan, math.nan
    x, y = np.asarray(feats1, np.float64), np.asarray(feats2, np.float64)
    kxx, kyy, kxy = _poly_kernel(x, x), _poly_kernel(y, y), _poly_kernel(x, y)

    def mmd(ix: np.ndarray, iy: np.ndarray) -> float:
        ox, oy = ix[:, None] != ix[None, :], iy[:, None] != iy[None, :]
        if not ox.any() or not oy.any():
            return math.nan
        return float(kxx[np.ix_(ix, ix)][ox].mean() + kyy[np.ix_(iy, iy)][oy].mean()
                     - 2 * kxy[np.ix_(ix, iy)].mean())

    value = mmd(np.arange(n1), np.arange(n2))
    rng = np.random.default_rng(seed)
    boots = [mmd(rng.integers(0, n1, n1), rng.integers(0, n2, n2)) for _ in range(n_boot)]
    boots = np.asarray([b for b in boots if not math.isnan(b)])
    alpha = (1 - level) / 2
    lo, hi = np.quantile(boots, [alpha, 1 - alpha]) if len(boots) else (math.nan, math.nan)
    return value, float(lo), float(hi)


def kid_difference(out_a: np.ndarray, out_b: np.ndarray, targets: np.ndarray, *, seed: int = 0,
                   n_boot: int = 1000, level: float = 0.95) -> tuple[float, float, float, float]:
    """KID(out_a, targets) - KID(out_b, targets) of two modes' outputs of the same images (row i of
    each (N, D) array is image i) -> (difference, low, high, p).

    Paired percentile bootstrap over images: each replicate resamples the image indices once, for
    both modes' outputs and the targets alike, with ``kid_interval``'s estimator (pairs of the
    same original image left out of the within-set terms). p: two-sided bootstrap p-value,
    2 min(share of replicates <= 0, share >= 0), at least 1 / n_boot. NaNs with fewer than 3
    images."""
    n = len(targets)
    if n < 3 or len(out_a) != n or len(out_b) != n:
        return math.nan, math.nan, math.nan, math.nan
    a, b, y = (np.asarray(v, np.float64) for v in (out_a, out_b, targets))
    kaa, kbb = _poly_kernel(a, a), _poly_kernel(b, b)
    kay, kby = _poly_kernel(a, y), _poly_kernel(b, y)

    def diff(ix: np.ndarray) -> float:
        off = ix[:, None] != ix[None, :]
        if not off.any():
            return math.nan
        sub = np.ix_(ix, ix)
        # KID_a - KID_b: the targets' own term cancels
        return float(kaa[sub][off].mean() - kbb[sub][off].mean()
                     - 2 * (kay[sub].mean() - kby[sub].mean()))

    value = diff(np.arange(n))
    rng = np.random.default_rng(seed)
    boots = np.asarray([diff(rng.integers(0, n, n)) for _ in range(n_boot)])
    boots = boots[~np.isnan(boots)]
    if not len(boots):
        return value, math.nan, math.nan, math.nan
    alpha = (1 - level) / 2
    lo, hi = np.quantile(boots, [alpha, 1 - alpha])
    p = max(2 * min(float((boots <= 0).mean()), float((boots >= 0).mean())), 1 / len(boots))
    return value, float(lo), float(hi), min(p, 1.0)


def kid(feats1: np.ndarray, feats2: np.ndarray, *, seed: int = 0, num_subsets: int = 100,
        max_subset_size: int = 1000) -> float:
    """Kernel Inception Distance (clean-fid's ``kernel_distance``, cubic polynomial kernel,
    unbiased) with its subset sampling seeded; NaN with fewer than 2 samples per side."""
    from cleanfid import fid

    if len(feats1) < 2 or len(feats2) < 2:
        return math.nan
    state = np.random.get_state()
    np.random.seed(seed)  # kernel_distance draws subsets from numpy's global generator
    try:
        return float(fid.kernel_distance(feats1, feats2, num_subsets=num_subsets,
                                         max_subset_size=max_subset_size))
    finally:
        np.random.set_state(state)
