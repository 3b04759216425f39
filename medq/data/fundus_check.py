"""Is this a colour fundus photograph? A plausibility check for images of unknown origin.

    check = check_fundus(rgb)          # rgb: uint8 (H, W, 3)
    check.ok, check.reason, check.stats
    require_fundus(rgb, "upload.png")  # raises NotFundus("upload.png: <reason>") when not

The models of this project turn *any* input into a plausible orange retina (they ignore what they
cannot read), so an image that is not a fundus photograph must be refused before it reaches them.
A colour fundus photograph is a round, bright, reddish disc of retina with vessels on a black
surround. Each check below tests one of those properties on the image shrunk to ``ANALYSIS_SIDE``
pixels (so the numbers do not depend on the camera's resolution), in this order, and the first
that fails is the reason:

1. ``aspect``: longer side / shorter side <= ``MAX_ASPECT``. Fundus cameras give 1:1 to 3:2
   frames; a 2000x40 strip is not one.
2. ``flat``: the standard deviation of the pixels >= ``MIN_STD`` (0-255 scale): a single colour
   (all white, all black, one grey) is not a photograph.
3. ``disc``: the field of view (``medq.data.fov.fov_mask``) covers >= ``MIN_FOV_FRACTION`` of the
   image, and it is round: intersection over union with the circle ``crop_to_fov`` fits to it
   (clipped to the frame, since cameras may cut the top and bottom) >= ``MIN_DISC_IOU``.
4. ``surround``: outside that circle the image is dark: median brightness there / median inside
   <= ``MAX_SURROUND_RATIO``, over at least ``MIN_SURROUND_FRACTION`` of the frame.
5. ``colour``: inside the disc red carries >= ``MIN_RED_SHARE`` of R+G+B (greyscale and blue-ish
   images have 1/3 or less).
6. ``texture``: the green channel's high-pass standard deviation inside the (eroded) disc lies in
   [``MIN_TEXTURE``, ``MAX_TEXTURE``]: vessels give texture, a flat painted disc has none, noise
   has far too much.

Measured (tests/test_fundus_check.py, at 256 px): the 20 DRIVE training photographs, the DRIVE
test and EyeQ samples and the synthetic fundus images have disc IoU >= 0.98, surround ratio
<= 0.07, red share 0.44-0.63 and texture 0.006-0.05; uniform, Gaussian and CMYK noise, an
EXIF-rotated noise JPEG, flat images, a painted disc, text pages and dark screenshots each fail at
least one check by a wide margin (noise: IoU 0.66, surround 0.99, red share 0.33, texture 0.29).
The thresholds sit roughly half-way between the two groups.

This is a plausibility check, not a classifier: a photograph of an orange ball on black may pass.
It only has to stop the cases that the page would otherwise turn into a confident-looking retina.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from PIL import Image
from scipy import ndimage

from medq.data.fov import fov_mask

ANALYSIS_SIDE = 256
"""Longer side (pixels) the image is shrunk to before measuring (box filter, aspect kept)."""
MAX_ASPECT = 2.5
MIN_STD = 4.0
MIN_FOV_FRACTION = 0.2
MIN_DISC_IOU = 0.85
MIN_SURROUND_FRACTION = 0.04
MAX_SURROUND_RATIO = 0.3
MIN_RED_SHARE = 0.38
MIN_TEXTURE = 0.003
MAX_TEXTURE = 0.1


class NotFundus(ValueError):
    """The image does not look like a colour fundus photograph; the message says why."""


@dataclass
class FundusCheck:
    ok: bool
    reason: str
    """Empty when ok; else one plain sentence naming the property that is missing."""
    stats: dict = field(default_factory=dict)
    """The measured values (aspect, std, fov_fraction, disc_iou, surround_ratio, red_share,
    texture); a value is absent when an earlier check already failed."""


def _shrink(image: np.ndarray) -> np.ndarray:
    h, w = image.shape[:2]
    if max(h, w) <= ANALYSIS_SIDE:
        return image
    f = ANALYSIS_SIDE / max(h, w)
    size = (max(1, round(w * f)), max(1, round(h * f)))
    return np.asarray(Image.fromarray(image).resize(size, Image.BOX))


def _disc_circle(mask: np.ndarray) -> np.ndarray:
    """The circle ``crop_to_fov`` assumes (centre of the bounding box, diameter = its longer
    side), clipped to the frame, as a bool mask of the same shape."""
    ys, xs = np.nonzero(mask)
    cy, cx = (ys.min() + ys.max()) / 2, (xs.min() + xs.max()) / 2
    r = max(ys.max() - ys.min() + 1, xs.max() - xs.min() + 1) / 2
    yy, xx = np.mgrid[:mask.shape[0], :mask.shape[1]]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def check_fundus(image: np.ndarray) -> FundusCheck:
    """Check that ``image`` (uint8 (H, W, 3) RGB) looks like a colour fundus photograph.

    Returns a ``FundusCheck``; ``reason`` names the first failing property in words a clinician
    understands (see the module docstring for the measures and thresholds)."""
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"check_fundus: expected uint8 RGB (H, W, 3), got {image.dtype} "
                         f"{image.shape}")
    h, w = image.shape[:2]
    stats: dict = {"aspect": max(h, w) / max(1, min(h, w))}

    def fail(reason: str) -> FundusCheck:
        return FundusCheck(False, reason, {k: round(float(v), 4) for k, v in stats.items()})

    if stats["aspect"] > MAX_ASPECT:
        return fail(f"a {w}x{h} image is {stats['aspect']:.1f} times longer than wide; a fundus "
                    f"photograph is close to square (at most {MAX_ASPECT}:1)")
    small = _shrink(image)
    stats["std"] = float(small.std())
    if stats["std"] < MIN_STD:
        mean = small.reshape(-1, 3).mean(0)
        tone = "white" if mean.min() > 230 else "black" if mean.max() < 25 else \
            f"colour (RGB {', '.join(str(int(round(v))) for v in mean)})"
        return fail(f"the image is one flat {tone} with no detail")
    mask = fov_mask(small)
    stats["fov_fraction"] = float(mask.mean())
    if stats["fov_fraction"] < MIN_FOV_FRACTION:
        return fail(f"no bright round field of view: only {stats['fov_fraction']:.0%} of the image "
                    f"stands out from a dark background (a fundus photograph's retina fills "
                    f"at least {MIN_FOV_FRACTION:.0%})")
    circle = _disc_circle(mask)
    stats["disc_iou"] = float((mask & circle).sum() / (mask | circle).sum())
    if stats["disc_iou"] < MIN_DISC_IOU:
        return fail(f"the bright region is not a round disc (overlap with a circle "
                    f"{stats['disc_iou']:.2f}, a fundus photograph has >= {MIN_DISC_IOU})")
    brightness = small.max(axis=2).astype(np.float32)
    outside = ~circle
    stats["surround_fraction"] = float(outside.mean())
    inside_level = max(float(np.median(brightness[mask])), 1.0)
    stats["surround_ratio"] = (float(np.median(brightness[outside])) / inside_level
                               if outside.any() else 1.0)
    if stats["surround_fraction"] < MIN_SURROUND_FRACTION \
            or stats["surround_ratio"] > MAX_SURROUND_RATIO:
        return fail("there is no dark surround around the disc: the corners are "
                    f"{stats['surround_ratio']:.0%} as bright as the centre (a fundus photograph's "
                    f"corners are black, <= {MAX_SURROUND_RATIO:.0%})")
    rgb = small[mask].astype(np.float64).mean(axis=0)
    stats["red_share"] = float(rgb[0] / max(rgb.sum(), 1e-6))
    if stats["red_share"] < MIN_RED_SHARE:
        kind = "greyscale" if np.ptp(rgb) < 0.05 * max(rgb.max(), 1e-6) else "not reddish"
        return fail(f"the colours are {kind} (red is {stats['red_share']:.0%} of the colour inside "
                    f"the disc; a colour fundus photograph has >= {MIN_RED_SHARE:.0%})")
    green = small[..., 1].astype(np.float32) / 255.0
    side = max(small.shape[:2])
    core = ndimage.binary_erosion(mask, iterations=max(1, round(0.03 * side)))
    core = core if core.any() else mask
    highpass = green - ndimage.gaussian_filter(green, max(1.0, 0.01 * side))
    stats["texture"] = float(highpass[core].std())
    if stats["texture"] < MIN_TEXTURE:
        return fail(f"the disc has no visible vessels or detail (texture {stats['texture']:.4f} "
                    f"< {MIN_TEXTURE})")
    if stats["texture"] > MAX_TEXTURE:
        return fail(f"the image is dominated by noise or fine patterns (texture "
                    f"{stats['texture']:.3f} > {MAX_TEXTURE}), not retinal detail")
    return FundusCheck(True, "", {k: round(float(v), 4) for k, v in stats.items()})


def require_fundus(image: np.ndarray, name: str) -> FundusCheck:
    """``check_fundus`` that raises ``NotFundus("<name>: not a fundus photograph: <reason>")``."""
    check = check_fundus(image)
    if not check.ok:
        raise NotFundus(f"{name}: not a colour fundus photograph: {check.reason}")
    return check
