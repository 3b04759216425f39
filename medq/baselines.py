"""Bicubic, Lanczos and identity as ``ImageTextModel``s, so the leaderboard ranks learned modes
against them through the same harness and the same ``records.jsonl`` format.

    from medq.baselines import BASELINES, Bicubic
    out = Bicubic().edit(lr, ["x4"], ["sr4"], (256, 256), seed=0)     # (N, 3, 256, 256) in [0, 1]

SR baselines upsample the input to the output size; ``Identity`` returns the input resized to the
output size (for ``enhance`` that is the degraded input itself: the "do nothing" reference).
They write no text: ``generate_report`` returns empty id lists and ``has_text = False``, which the
harness records as ``"text": false`` with null report fields (shown as n/a, not 0).
"""

from __future__ import annotations

from typing import Sequence

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


BASELINES = {"bicubic": Bicubic, "lanczos": Lanczos, "identity": Identity}
