"""Training tiles: random ``model.tile_size`` crops of working-size images, and real photographs of
the development set mixed in.

The model's token grid covers one tile (64 px by default); images are handled at the working size
(``data.image_size``, 256 px by default), so training sees crops. A crop is taken after the task
pair is made from the whole image: the SR input is the bicubic downscale of the *whole* working-
size image and its condition the bicubic upsampling of that, cropped at the same place as the
target, exactly what tiled inference cuts out of one upsampled image.

Where a tile lands (``pick_tile``): uniformly over the positions that touch the field of view
(``1 - RIM_SHARE - VESSEL_SHARE`` of the draws: the disc, the macula and the background in
proportion to their area), centred on a pixel of the FOV rim (``RIM_SHARE``: the rim band, where
bicubic smears the black surround into the disc, is a thin ring that uniform crops would seldom
cover fully) or on a vessel-like pixel (``VESSEL_SHARE``: what SR must recover; they also lead to
the optic disc, where they converge).

``TrainTiles`` item ``k`` (deterministic in (seed, k); the dataset is ``repeats`` passes over the
images, so an epoch sees every image ``repeats`` times at other places)::

    {"id", "task", "instruction", "report" (str, or None for a real photograph: no grade),
     "input":  (3, T, T) the condition tile at working resolution (upsampled SR input / degraded),
     "target": (3, T, T), "mask": (1, T, T),
     "report_input": (3, R, R) the whole input image resized to the report's view (one tile,
                     or ``report_size``: what reports are written from),
     "quality", "dr_grade", "scale", "real": bool,
     "place": (y, x) the tile's top-left corner in its working-size image}
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage
from torch.utils.data import Dataset

from medq.data.tasks import bicubic_resize, id_seed

RIM_SHARE = 0.2
VESSEL_SHARE = 0.3
RIM_WIDTH = 0.03
"""Width of the rim band, as a share of the image side."""


def vessel_weight(target: torch.Tensor, mask: torch.Tensor) -> np.ndarray:
    """(H, W) float >= 0: how much darker than its surroundings each FOV pixel of the green
    channel is (vessels are dark lines on the green channel), zero outside the FOV. A cheap
    stand-in for ``medq.vessels`` (Sato), good enough to aim crops at vessels."""
    g = target[1].numpy().astype(np.float32)
    m = mask[0].numpy() > 0.5
    size = max(3, (g.shape[0] // 32) | 1)
    local = ndimage.uniform_filter(g, size=size, mode="nearest")
    return np.clip(local - g, 0, None) * m


def rim_band(mask: torch.Tensor) -> np.ndarray:
    """(H, W) bool: the FOV pixels within ``RIM_WIDTH`` of the image side from its edge."""
    m = mask[0].numpy() > 0.5
    r = max(1, round(RIM_WIDTH * m.shape[0]))
    return m & ~ndimage.binary_erosion(m, iterations=r)


def pick_tile(mask: torch.Tensor, tile: int, rng: np.random.Generator,
              vessels: np.ndarray | None = None) -> tuple[int, int]:
    """Top-left (y, x) of a ``tile`` x ``tile`` crop of an image with FOV ``mask`` (1, H, W):
    uniform over crops that touch the FOV, or centred on the rim band or on a vessel-like pixel
    (``vessels``: ``vessel_weight``), as the module docstring says. An image no larger than a
    tile gives (0, 0)."""
    H, W = mask.shape[-2:]
    if H <= tile and W <= tile:
        return 0, 0
    u = rng.random()
    centre = None
    if u < RIM_SHARE:
        ys, xs = np.nonzero(rim_band(mask))
        if len(ys):
            j = rng.integers(len(ys))
            centre = ys[j], xs[j]
    elif u < RIM_SHARE + VESSEL_SHARE and vessels is not None and vessels.sum() > 0:
        p = vessels.ravel() / vessels.sum()
        j = rng.choice(p.size, p=p)
        centre = divmod(int(j), W)
    if centre is not None:
        y, x = int(centre[0]) - tile // 2, int(centre[1]) - tile // 2
        return int(np.clip(y, 0, max(0, H - tile))), int(np.clip(x, 0, max(0, W - tile)))
    m = mask[0]
    for _ in range(20):
        y = int(rng.integers(0, max(1, H - tile + 1)))
        x = int(rng.integers(0, max(1, W - tile + 1)))
        if m[y:y + tile, x:x + tile].any():
            break
    return y, x


def condition_image(item: dict) -> torch.Tensor:
    """The condition the model sees, at the target's size: the SR input upsampled with the
    antialiased bicubic of ``medq.data.tasks`` (the bicubic baseline's image), or the degraded
    image itself for enhancement. (3, H, W)."""
    size = tuple(item["target"].shape[-2:])
    if tuple(item["input"].shape[-2:]) == size:
        return item["input"]
    return bicubic_resize(item["input"][None], size)[0]


def crop(x: torch.Tensor, y0: int, x0: int, tile: int) -> torch.Tensor:
    """(C, H, W) -> (C, tile, tile) at (y0, x0), zero-padded where the image is smaller."""
    out = x[:, y0:y0 + tile, x0:x0 + tile]
    ph, pw = tile - out.shape[-2], tile - out.shape[-1]
    if ph or pw:
        out = torch.nn.functional.pad(out, (0, pw, 0, ph))
    return out.contiguous()


def tile_item(item: dict, tile: int, rng: np.random.Generator, real: bool = False,
              report_size: int | None = None) -> dict:
    """One training tile of a whole-image data item (``medq.data.build_dataset``'s), at a place
    drawn by ``pick_tile``; its ``report_input`` is the whole input resized to ``report_size``
    (default: one tile)."""
    cond = condition_image(item)
    y0, x0 = pick_tile(item["mask"], tile, rng, vessel_weight(item["target"], item["mask"]))
    return {
        "id": item["id"], "task": item["task"], "instruction": item["instruction"],
        "report": item["report"],
        "input": crop(cond, y0, x0, tile),
        "target": crop(item["target"], y0, x0, tile),
        "mask": crop(item["mask"], y0, x0, tile),
        "report_input": bicubic_resize(item["input"][None], report_size or tile)[0],
        "quality": item["quality"], "dr_grade": item["dr_grade"], "scale": item["scale"],
        "real": real, "place": (y0, x0),
    }


@dataclass
class Jitter:
    """Augmentation of a real photograph before its task pair is made: a flip, a quarter turn,
    per-channel gains and a gamma (cameras differ in colour balance and exposure)."""

    gain: float = 0.12
    gamma: float = 0.2

    def __call__(self, target: torch.Tensor, mask: torch.Tensor, rng: np.random.Generator
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        k = int(rng.integers(4))
        flip = bool(rng.integers(2))
        t, m = torch.rot90(target, k, (1, 2)), torch.rot90(mask, k, (1, 2))
        if flip:
            t, m = t.flip(-1), m.flip(-1)
        gains = torch.tensor(1 + rng.uniform(-self.gain, self.gain, 3), dtype=t.dtype)
        gamma = float(np.exp(rng.uniform(-self.gamma, self.gamma)))
        t = (t.clamp(0, 1) ** gamma * gains[:, None, None]).clamp(0, 1) * m
        return t.contiguous(), m.contiguous()


class TrainTiles(Dataset):
    """Training items (see the module docstring): tiles of ``base``'s items and, with probability
    ``mix_fraction``, of ``real`` photographs (a list of ``FundusDataset``s of the development
    set's train images, one per working size), jittered, without a report."""

    def __init__(self, base, tile: int, seed: int, repeats: int = 1, real: list | None = None,  # noqa: PLR0913
                 mix_fraction: float = 0.0, jitter: Jitter | None = None,
                 report_size: int | None = None):
        if repeats < 1:
            raise ValueError(f"TrainTiles: repeats = {repeats}, must be >= 1")
        if mix_fraction > 0 and not real:
            raise ValueError("TrainTiles: mix_fraction > 0 needs real photographs")
        self.base, self.tile, self.seed, self.repeats = base, tile, seed, repeats
        self.real, self.mix_fraction = list(real or []), mix_fraction
        self.jitter = jitter or Jitter()
        self.report_size = report_size or tile

    def __len__(self) -> int:
        return len(self.base) * self.repeats

    def __getitem__(self, k: int) -> dict:
        if not 0 <= k < len(self):
            raise IndexError(f"index {k} out of range for {len(self)} tiles")
        rng = np.random.default_rng(id_seed("tile", self.seed, k))
        if self.real and rng.random() < self.mix_fraction:
            return self._real(rng)
        return tile_item(self.base[k % len(self.base)], self.tile, rng,
                         report_size=self.report_size)

    def _real(self, rng: np.random.Generator) -> dict:
        from medq.data.dataset import task_pair

        ds = self.real[int(rng.integers(len(self.real)))]
        k = int(rng.integers(len(ds.ids)))
        task = ds.tasks[int(rng.integers(len(ds.tasks)))]
        target, mask = self.jitter(*ds.image(k), rng)
        image_id = f"{ds.ids[k]}@{target.shape[-1]}"
        pair = task_pair(target, mask, task, image_id, int(rng.integers(1 << 62)), 0)
        item = {"id": image_id, "task": task, "instruction": pair["instruction"], "report": None,
                "input": pair["input"], "target": target, "mask": mask,
                "quality": pair["quality"], "dr_grade": 0, "scale": pair["scale"]}
        return tile_item(item, self.tile, rng, real=True, report_size=self.report_size)
