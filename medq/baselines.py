"""Bicubic, Lanczos, identity and the constant image as ``ImageTextModel``s, so the leaderboard
ranks learned modes against them through the same harness and the same ``records.jsonl`` format.

    from medq.baselines import BASELINES, Bicubic
    out = Bicubic().edit(lr, ["x4"], ["sr4"], (256, 256), seed=0)     # (N, 3, 256, 256) in [0, 1]

SR baselines upsample the input to the output size; ``Identity`` returns the input resized to the
output size (for ``enhance`` that is the degraded input itself: the "do nothing" reference).
``Constant`` is the floor: one image, the per-pixel mean of the training targets, returned for
every input (it ignores its input; a model that does not beat it has learned nothing specific to
the image).
They write no text: ``generate_report`` returns empty id lists and ``has_text = False``, which the
harness records as ``"text": false`` with null report fields (shown as n/a, not 0).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from medq.data.tasks import bicubic_resize, lanczos_resize
from medq.protocol import DecodeResult


def bicubic(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(N, 3, h, w) -> (N, 3, H, W): ``medq.data.bicubic_resize``, the kernel that made the SR
    inputs (antialiased bicubic, clamped to [0, 1])."""
    return bicubic_resize(images.float(), tuple(size))


def lanczos(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(N, 3, h, w) -> (N, 3, H, W): ``medq.data.lanczos_resize`` (PIL Lanczos on 8-bit images)."""
    return lanczos_resize(images.float(), tuple(size)).to(images.device)


class _Baseline:
    """Shared by the baselines: deterministic (seed ignored), no text."""

    name = "baseline"
    vocab_size = 0
    has_text = False
    # Deterministic: any batching gives the same outputs, so the harness may batch freely.
    seed_per_image = True
    settings: dict = {}
    _resize = staticmethod(bicubic)

    def edit(self, images: torch.Tensor, instructions: list[str], tasks: list[str],
             out_size: tuple[int, int], seed) -> torch.Tensor:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"{self.name}: images must be (N, 3, h, w), got {tuple(images.shape)}")
        return self._resize(images, (int(out_size[0]), int(out_size[1])))

    def generate_report(self, images: torch.Tensor, prompts: list[str], seed) -> list[list[int]]:
        return [[] for _ in range(images.shape[0])]

    def decode(self, ids: Sequence[int]) -> DecodeResult:
        # vocab_size 0: any id would be undecodable; baselines never produce one.
        return DecodeResult("", [int(i) for i in ids], list(range(len(ids))), [int(i) for i in ids])


class Bicubic(_Baseline):
    name = "bicubic"
    settings = {"resize": "bicubic", "antialias": True}


class Lanczos(_Baseline):
    name = "lanczos"
    settings = {"resize": "lanczos3 (PIL, 8-bit)"}
    _resize = staticmethod(lanczos)


class Identity(_Baseline):
    """The input, resized to the output size only when the sizes differ (bicubic)."""

    name = "identity"
    settings = {"resize": "none (bicubic if sizes differ)"}


def training_mean_image(data_cfg) -> torch.Tensor:
    """Per-pixel mean of the training split's target images of ``data_cfg``
    (``medq.config.DataConfig``) at its working size -> float32 (3, S, S) in [0, 1]. Every task
    shares the same clean targets, so one image serves all tasks."""
    from medq.data import build_dataset

    images = build_dataset(data_cfg, "train").data["images"]  # (N, H, W, 3) uint8
    if len(images) == 0:
        raise ValueError(f"constant baseline: the training split of data source "
                         f"{data_cfg.source!r} is empty")
    mean = images.astype(np.float64).mean(axis=0) / 255.0
    return torch.from_numpy(mean).permute(2, 0, 1).float().contiguous()


class Constant(_Baseline):
    """Returns the same image for every input: the per-pixel mean of the training targets.

    ``image`` (3, H, W): that image (resized bicubically to other output sizes). Without one, the
    mean of the training targets of ``data_cfg`` (default: the embedded data,
    ``medq.config.DataConfig()``) at its working size, computed once and resized to each
    requested size (a mean image is smooth: resizing it loses nothing)."""

    name = "constant"
    settings = {"image": "per-pixel mean of the training targets"}

    def __init__(self, image: torch.Tensor | None = None, data_cfg=None):
        if image is not None and (image.ndim != 3 or image.shape[0] != 3):
            raise ValueError(f"constant: image must be (3, H, W), got {tuple(image.shape)}")
        self._image = None if image is None else image.float().clamp(0, 1)
        self._data_cfg = data_cfg
        self._by_size: dict[tuple[int, int], torch.Tensor] = {}

    def image(self, size: tuple[int, int]) -> torch.Tensor:
        """The constant image at ``size`` (H, W) -> (3, H, W)."""
        size = (int(size[0]), int(size[1]))
        if size not in self._by_size:
            if self._image is None:
                from medq.config import DataConfig

                self._image = training_mean_image(self._data_cfg or DataConfig())
            self._by_size[size] = bicubic(self._image[None], size)[0]
        return self._by_size[size]

    def edit(self, images: torch.Tensor, instructions: list[str], tasks: list[str],
             out_size: tuple[int, int], seed) -> torch.Tensor:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"{self.name}: images must be (N, 3, h, w), got {tuple(images.shape)}")
        return self.image(out_size)[None].expand(images.shape[0], -1, -1, -1).clone()


BASELINES = {"bicubic": Bicubic, "lanczos": Lanczos, "identity": Identity, "constant": Constant}
