"""Artifacts of tiled generation, measured on an output against its target: seams along tile
borders and a pattern at the token pitch.

    seam_ratio(out, mask, borders)        # gradient energy across tile borders / nearby columns
    pitch_peaks(out, mask, pitch=8)       # spectral power at the token pitch's harmonics / nearby

Both are read against the same number of the target (a photograph has neither seams nor a token
grid, but its own texture varies from column to column and frequency to frequency): an artifact
shows as the output's value well above the target's.

- ``seam_ratio``: the mean squared horizontal step of the luminance between the two pixels on
  either side of each border column, divided by the same over the columns 2-4 pixels away on both
  sides (a local reference: the FOV's brightness falls towards the rim, so a global mean would
  compare a border with another part of the picture). Pixels outside the FOV are left out.
  Vertical borders cover seams of both orientations when the tiling is square; ``transpose`` the
  image for the other.
- ``pitch_peaks``: the power spectrum of the luminance over the centred square that lies inside the
  FOV (Hann-windowed), at the pitch's harmonics k / pitch cycles per pixel (k = 1 .. pitch / 2 - 1)
  on both axes, divided by the mean power 2-3 frequency bins away. A token grid repeats every
  ``pitch`` pixels (``model.patch_size`` x the VAE's downsampling).
"""

from __future__ import annotations

import numpy as np
import torch

REFERENCE_OFFSETS = (2, 3, 4)
"""Columns (each side of a border) whose steps are the local reference of ``seam_ratio``."""
NEIGHBOUR_BINS = (2, 3)
"""Frequency bins (each side of a harmonic) whose power is the reference of ``pitch_peaks``."""


def _luminance(image: torch.Tensor) -> np.ndarray:
    return image.detach().float().mean(0).cpu().numpy().astype(np.float64)


def seam_ratio(image: torch.Tensor, mask: torch.Tensor, borders: list[int]) -> float:
    """image (3, H, W) in [0, 1], mask (1, H, W), ``borders``: the x positions (pixels) where a
    tile starts or ends inside the image -> mean step energy across the borders / the same beside
    them (1 = no seam; NaN without a border inside the FOV)."""
    g, m = _luminance(image), mask[0].cpu().numpy() > 0.5
    step = np.diff(g, axis=1) ** 2                  # step[:, c]: between columns c and c + 1
    both = m[:, 1:] & m[:, :-1]
    width = step.shape[1]

    def energy(c: int) -> float:
        rows = both[:, c]
        return float(step[rows, c].mean()) if 0 <= c < width and rows.sum() >= 8 else np.nan

    at, near = [], []
    for b in borders:
        here = energy(b - 1)                         # the step from column b - 1 to b
        ref = [energy(b - 1 + s * d) for d in REFERENCE_OFFSETS for s in (-1, 1)]
        if np.isnan(here) or np.all(np.isnan(ref)):
            continue
        at.append(here)
        near.append(np.nanmean(ref))
    return float(np.mean(at) / np.mean(near)) if at else float("nan")


def pitch_peaks(image: torch.Tensor, mask: torch.Tensor, pitch: int = 8) -> list[float]:
    """image (3, H, W), mask (1, H, W) -> for each harmonic k = 1 .. pitch/2 - 1 of the pitch, the
    spectral power at k / pitch cycles per pixel (mean of the two axes) over the mean power of
    the neighbouring bins: about 1 without a pattern, large with one."""
    g, m = _luminance(image), mask[0].cpu().numpy() > 0.5
    H, W = g.shape
    cy, cx = H // 2, W // 2
    half = min(H, W) // 2
    while half > 8 and not m[cy - half:cy + half, cx - half:cx + half].all():
        half -= 1                                    # the centred square inside the FOV
    crop = g[cy - half:cy + half, cx - half:cx + half]
    n = crop.shape[0]
    window = np.outer(np.hanning(n), np.hanning(n))
    power = np.abs(np.fft.fft2((crop - crop.mean()) * window)) ** 2
    out = []
    for k in range(1, pitch // 2):
        f = round(n * k / pitch)
        peak = (power[f, 0] + power[0, f]) / 2
        ref = np.mean([power[f + s * d, 0] for d in NEIGHBOUR_BINS for s in (-1, 1)]
                      + [power[0, f + s * d] for d in NEIGHBOUR_BINS for s in (-1, 1)])
        out.append(float(peak / ref))
    return out
