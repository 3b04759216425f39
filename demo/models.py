"""Loading and running models for images that ``make eval`` has not already processed.

Models are loaded once per mode and kept (``ModelPool``): the tiny CPU models edit one image in
seconds, loading is what costs. Any ``medq.protocol.ImageTextModel`` works, so tests pass fakes.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from medq.protocol import DecodeResult, ImageTextModel

# Enhancement is trained on four degradations, each with its own instructions (medq.data.text).
ENHANCE_KINDS = ("blur", "haze", "illumination", "noise")


def instruction_for(task: str, enhance_kind: str = "blur") -> str:
    """The first phrasing of ``medq.data``'s instruction for ``task`` (for enhance: for the
    degradation ``enhance_kind`` the user says the photograph suffers from)."""
    from medq.data.text import instruction

    kind = enhance_kind if task == "enhance" else task
    if task == "enhance" and kind not in ENHANCE_KINDS:
        raise ValueError(f"enhance kind {kind!r}: expected one of {', '.join(ENHANCE_KINDS)}")
    return instruction(kind, 0)


def report_prompt() -> str:
    from medq.data.text import REPORT_PROMPT

    return REPORT_PROMPT


def load_mode_model(mode) -> ImageTextModel:
    """The model behind a ``demo.catalog.Mode``: a baseline by name, or a run's EMA weights."""
    if mode.kind == "baseline":
        from medq.baselines import BASELINES

        if mode.label not in BASELINES:
            raise ValueError(f"mode {mode.label!r}: no such baseline (known: {', '.join(BASELINES)})")
        return BASELINES[mode.label]()
    from infer.load import load_run

    model, _, _ = load_run(Path(mode.root), weights="ema")
    return model


class ModelPool:
    """label -> loaded model, loading each at most once (thread-safe: Gradio runs handlers in
    worker threads)."""

    def __init__(self, loader: Callable[[str], ImageTextModel]):
        self._loader = loader
        self._models: dict[str, ImageTextModel] = {}
        self._lock = threading.Lock()

    def get(self, label: str) -> ImageTextModel:
        with self._lock:
            if label not in self._models:
                self._models[label] = self._loader(label)
            return self._models[label]

    def loaded(self, label: str) -> bool:
        return label in self._models


@dataclass
class Edited:
    output: np.ndarray             # (H, W, 3) float32 in [0, 1]
    report: DecodeResult | None    # None: the model writes no text
    seconds: float


def _chw(img: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1))).float()


def run_model(model: ImageTextModel, inp: np.ndarray, target: np.ndarray, task: str,
              seed: int, enhance_kind: str = "blur") -> Edited:
    """``model.edit`` on one input (h, w, 3) to the target's size, and its report written from the
    target (as the harness does), with undecodable ids flagged, never raised."""
    t0 = time.perf_counter()
    size = target.shape[:2]
    s = [seed] if getattr(model, "seed_per_image", False) else seed
    with torch.no_grad():
        out = model.edit(_chw(inp)[None], [instruction_for(task, enhance_kind)], [task], size, seed=s)
    out = torch.as_tensor(out).detach().float().cpu()
    if tuple(out.shape) != (1, 3, *size):
        raise ValueError(f"model {model.name!r}: edit returned shape {tuple(out.shape)}, expected "
                         f"{(1, 3, *size)}")
    report = None
    if getattr(model, "has_text", True):
        with torch.no_grad():
            ids = model.generate_report(_chw(target)[None], [report_prompt()], seed=s)[0]
        ids = ids.tolist() if isinstance(ids, torch.Tensor) else [int(i) for i in ids]
        report = model.decode(ids)
    output = torch.nan_to_num(out[0], nan=0.0).clamp(0, 1).permute(1, 2, 0).numpy()
    return Edited(output, report, time.perf_counter() - t0)
