"""Task pairs from a clean image: super-resolution (x2, x4) and editing ("enhance").

Downsampling kernel (the one every SR input and the bicubic baseline use):
``torch.nn.functional.interpolate(mode="bicubic", antialias=True, align_corners=False)``, i.e.
Keys' cubic (a = -0.5) stretched by the reduction factor (antialiased, as PIL's BICUBIC with
reducing), output clamped to [0, 1]. The Lanczos baseline uses PIL ``Image.LANCZOS`` on uint8.

Enhance degradations, seeded from the image id (never from the global RNG), each with the EyeQ
quality grade of the degraded input (1 Usable, 2 Reject): blur (Gaussian), haze (veiling light
and contrast loss), illumination (a smooth multiplicative gradient), noise (Gaussian).
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from medq.tasks import DEGRADATIONS  # noqa: F401 - re-exported: medq.data.DEGRADATIONS


def bicubic_resize(x: torch.Tensor, size) -> torch.Tensor:
    """(N, 3, h, w) float in [0, 1] -> (N, 3, H, W), antialiased bicubic, clamped to [0, 1].
    ``size``: (H, W) or an int for a square."""
    size = (size, size) if isinstance(size, int) else tuple(int(s) for s in size)
    if tuple(x.shape[-2:]) == size:
        return x.clamp(0, 1)
    return F.interpolate(x, size=size, mode="bicubic", antialias=True, align_corners=False).clamp(
        0, 1
    )


def lanczos_resize(x: torch.Tensor, size) -> torch.Tensor:
    """(N, 3, h, w) float in [0, 1] -> (N, 3, H, W) with PIL LANCZOS on 8-bit images."""
    size = (size, size) if isinstance(size, int) else tuple(int(s) for s in size)
    out = []
    for img in x:
        arr = (img.clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255 + 0.5).astype(np.uint8)
        res = Image.fromarray(arr).resize((size[1], size[0]), Image.LANCZOS)
        out.append(torch.from_numpy(np.asarray(res).copy()).permute(2, 0, 1))
    return torch.stack(out).float() / 255.0


def id_seed(*parts) -> int:
    """A stable 64-bit seed from strings/ints (sha256; Python's hash() is salted per process)."""
    return int.from_bytes(hashlib.sha256("/".join(map(str, parts)).encode()).digest()[:8], "little")


def gauss_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    r = max(1, int(3 * sigma + 0.5))
    k = torch.exp(-torch.arange(-r, r + 1, dtype=torch.float32) ** 2 / (2 * sigma ** 2))
    k = (k / k.sum()).to(x)
    c = x.shape[0]
    y = F.conv2d(
        F.pad(x[None], (r, r, 0, 0), mode="replicate"),
        k.view(1, 1, 1, -1).repeat(c, 1, 1, 1),
        groups=c,
    )
    y = F.conv2d(
        F.pad(y, (0, 0, r, r), mode="replicate"), k.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c
    )
    return y[0]


def degrade(
    image: torch.Tensor, mask: torch.Tensor, kind: str, grade: int, seed: int
) -> torch.Tensor:
    """(3, H, W) clean image, (1, H, W) mask -> (3, H, W) degraded, clamped, zero outside the FOV.
    ``grade`` 1 (Usable) is mild, 2 (Reject) is strong. Deterministic in ``seed``."""
    if kind not in DEGRADATIONS or grade not in (1, 2):
        raise ValueError(
            f"degrade: kind {kind!r} must be one of {DEGRADATIONS}, grade {grade} 1 or 2"
        )
    g = torch.Generator().manual_seed(seed % (2 ** 63))
    u = float(torch.rand((), generator=g))
    H = image.shape[-1]
    if kind == "blur":
        sigma = H / 256 * (1.5 + 1.0 * u if grade == 1 else 3.5 + 2.0 * u)
        y = gauss_blur(image, max(0.6, sigma))
    elif kind == "haze":
        a = 0.25 + 0.1 * u if grade == 1 else 0.5 + 0.15 * u
        veil = torch.tensor([0.85, 0.75, 0.65]).view(3, 1, 1)
        y = image * (1 - a) + veil * a
    elif kind == "illumination":
        ang = 2 * np.pi * u
        yy, xx = torch.meshgrid(
            torch.linspace(-1, 1, image.shape[-2]), torch.linspace(-1, 1, H), indexing="ij"
        )
        ramp = xx * np.cos(ang) + yy * np.sin(ang)
        depth = 0.35 if grade == 1 else 0.7
        y = image * (1 - depth * (ramp + 1) / 2)[None]
    else:
        std = 0.04 + 0.02 * u if grade == 1 else 0.10 + 0.05 * u
        y = image + std * torch.randn(image.shape, generator=g)
    return y.clamp(0, 1) * mask


def enhance_spec(image_id: str, seed: int) -> tuple[str, int]:
    """(degradation kind, grade) for the enhance input of ``image_id``, stable across runs."""
    s = id_seed("enhance", seed, image_id)
    return DEGRADATIONS[s % len(DEGRADATIONS)], 1 + (s >> 8) % 2
