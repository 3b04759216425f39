"""Field-of-view (FOV) masks and the EyeQ-style crop around the FOV circle.

A fundus photograph is a bright disc of retina on a dark surround. ``fov_mask`` thresholds the
brightest channel at a level derived from the image itself (half-way between the dark surround and
the retina, never below ``MIN_THRESHOLD``), then cleans the result with morphology: the largest
connected component, holes filled, a small opening to cut JPEG noise off the rim. Measured against
DRIVE's hand-made masks: IoU >= 0.98 on every sample image (tests/test_data_fov.py).
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage

MIN_THRESHOLD = 12
"""Lowest brightness (0-255, max over RGB) counted as retina: dark JPEG noise sits below it."""


class NoFieldOfView(ValueError):
    """The image has no bright region that could be a field of view (e.g. all black)."""


def _mask_uint8(img: np.ndarray) -> np.ndarray:
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"fov_mask: expected an RGB array (H, W, 3), got shape {img.shape}")
    v = img.max(axis=2).astype(np.float32)
    dark = float(np.percentile(v, 2))
    bright = float(np.percentile(v, 60))
    thr = max(MIN_THRESHOLD, dark + 0.25 * (bright - dark))
    m = v > thr
    if not m.any():
        return m
    # Opening with a radius ~0.5 % of the image removes specks and thin glare outside the FOV.
    r = max(1, round(0.005 * max(img.shape[:2])))
    m = ndimage.binary_opening(m, structure=np.ones((2 * r + 1, 2 * r + 1), bool))
    labels, n = ndimage.label(m)
    if n == 0:
        return m
    sizes = ndimage.sum(m, labels, index=np.arange(1, n + 1))
    m = labels == (1 + int(np.argmax(sizes)))
    return ndimage.binary_fill_holes(m)


def fov_mask(image):
    """Field of view of a fundus image.

    ``image``: RGB uint8 numpy array (H, W, 3) -> bool numpy array (H, W); or a float tensor in
    [0, 1], (3, H, W) -> bool tensor (H, W) or (N, 3, H, W) -> bool tensor (N, H, W).
    An image without any bright region gives an all-False mask (callers decide whether that is an
    error; ``require_fov`` raises)."""
    if isinstance(image, torch.Tensor):
        x = image.detach().float().cpu()
        batched = x.ndim == 4
        x = x if batched else x[None]
        arr = (x.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
        out = torch.from_numpy(np.stack([_mask_uint8(a) for a in arr]))
        return out if batched else out[0]
    img = np.asarray(image)
    if img.dtype != np.uint8:
        raise ValueError(f"fov_mask: expected uint8 RGB, got dtype {img.dtype}")
    return _mask_uint8(img)


def require_fov(image: np.ndarray, name: str) -> np.ndarray:
    """``fov_mask`` that raises ``NoFieldOfView`` naming ``name`` when the mask is (nearly)
    empty."""
    m = fov_mask(image)
    if m.sum() < 0.02 * m.size:
        raise NoFieldOfView(f"{name}: no field of view found ({describe_flat(image)}: "
                            f"{int(m.sum())} of {m.size} pixels above the brightness threshold)")
    return m


def describe_flat(image: np.ndarray) -> str:
    """Why an RGB uint8 (H, W, 3) image has no field of view, in words: all black, all white,
    one flat grey level, or no dark surround to tell the retina from."""
    v = np.asarray(image).max(axis=2)
    lo, hi = int(v.min()), int(v.max())
    if hi <= MIN_THRESHOLD:
        return "the image is black or nearly so"
    if hi - lo <= 2:
        return (f"the image is all white (value {hi})" if lo >= 250 else
                f"the image is one flat level (value {lo}-{hi}), with no retina to find")
    if float(np.percentile(v, 2)) > 200:
        return "the image is bright everywhere, with no dark surround around a retina"
    return "no bright region stands out from the surround"


def crop_to_fov(image: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """EyeQ ``fundus_prep.py``: estimate the FOV circle, black out the rest, crop the square around
    the circle, padding with black where the circle leaves the image (EyePACS cuts top/bottom).

    (H, W, 3) uint8, (H, W) bool -> (D, D, 3) uint8, (D, D) bool with D the circle's diameter."""
    ys, xs = np.nonzero(mask)
    cy, cx = (ys.min() + ys.max()) / 2, (xs.min() + xs.max()) / 2
    # The widest extent is the true diameter: the other one may be cut by the sensor frame.
    radius = max(ys.max() - ys.min() + 1, xs.max() - xs.min() + 1) / 2
    d = int(np.ceil(2 * radius))
    top, left = int(round(cy - d / 2)), int(round(cx - d / 2))
    out = np.zeros((d, d, 3), np.uint8)
    out_m = np.zeros((d, d), bool)
    y0, x0 = max(top, 0), max(left, 0)
    y1, x1 = min(top + d, image.shape[0]), min(left + d, image.shape[1])
    out[y0 - top:y1 - top, x0 - left:x1 - left] = image[y0:y1, x0:x1] * mask[y0:y1, x0:x1, None]
    out_m[y0 - top:y1 - top, x0 - left:x1 - left] = mask[y0:y1, x0:x1]
    return out, out_m
