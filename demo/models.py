"""Loading and running models for images that ``make eval`` has not already processed.

Models are loaded once per mode and kept (``ModelPool``): the tiny CPU models edit one image in
seconds, loading is what costs. Any ``medq.protocol.ImageTextModel`` works, so tests pass fakes.
Running is the harness's own code, never a copy: ``run_on_test_image`` calls
``medq.harness.run_harness`` on the one item, ``run_on_upload`` calls ``medq.harness.edit_one``;
both write the report from the model's *input* (what it sees), decoded with ``safe_decode``.
"""

from __future__ import annotations

import contextlib
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from demo.imaging import load_rgb
from medq.protocol import DecodeResult, ImageTextModel
from medq.tasks import DEGRADATIONS

# Enhancement is trained on four degradations, each with its own instructions (medq.data.text).
ENHANCE_KINDS = DEGRADATIONS
"""What an uploaded photograph may suffer from, for the enhancement instruction."""


def instruction_for(task: str, enhance_kind: str = "blur") -> str:
    """The first phrasing of ``medq.data``'s instruction for ``task`` (for enhance: for the
    degradation ``enhance_kind`` the user says the photograph suffers from)."""
    from medq.data.text import instruction

    kind = enhance_kind if task == "enhance" else task
    if task == "enhance" and kind not in ENHANCE_KINDS:
        raise ValueError(f"enhance kind {kind!r}: expected one of {', '.join(ENHANCE_KINDS)}")
    return instruction(kind, 0)


def load_mode_model(mode, parent_model: Callable[[str], ImageTextModel] | None = None
                    ) -> ImageTextModel:
    """The model behind a ``demo.catalog.Mode``: a baseline by name, a run's (or the base
    model's) EMA weights from ``mode.weights``, or for a one-step output the parent's model
    (``parent_model(label)``, so the weights are loaded once) reading out its x0 prediction.
    Raises ValueError for a mode that cannot run here (records only)."""
    if mode.kind == "baseline":
        from medq.baselines import BASELINES

        if mode.label not in BASELINES:
            raise ValueError(f"mode {mode.label!r}: no such baseline (known: "
                             f"{', '.join(BASELINES)})")
        return BASELINES[mode.label]()
    if mode.parent is not None:
        if not mode.label.endswith(":onestep") or parent_model is None:
            raise ValueError(f"mode {mode.label!r} exists only as recorded outputs")
        from medq.models import MiniBagelAdapter

        base = parent_model(mode.parent)
        return MiniBagelAdapter(base.model, base.vae, base.tokenizer, base.sample_cfg,
                                name=f"{base.name}/onestep", output="onestep")
    if mode.weights is None:
        raise ValueError(f"mode {mode.label!r}: its weights are not on this disk")
    from medq.harness.load import load_run

    model, _, _ = load_run(Path(mode.weights), weights="ema")
    return model


class ModelPool:
    """label -> loaded model, loading each at most once (thread-safe: Gradio runs handlers in
    worker threads)."""

    def __init__(self, loader: Callable[[str], ImageTextModel]):
        self._loader = loader
        self._models: dict[str, ImageTextModel] = {}
        # a loader may ask for another mode (a one-step output: its parent)
        self._lock = threading.RLock()

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


def _hwc(img: torch.Tensor) -> np.ndarray:
    return img.detach().float().cpu().permute(1, 2, 0).numpy()


def run_on_test_image(model: ImageTextModel, row: dict, inp: np.ndarray, target: np.ndarray,
                      mask: np.ndarray, task: str) -> Edited:
    """A test image through ``medq.harness.run_harness`` itself, exactly as ``make eval`` runs
    it: the row's instruction and seed (so ``derive_seed(seed, id)``), report of the input, greedy,
    ``safe_decode``. ``row``: any records row of this image (id, instruction, seed); ``inp``
    (h, w, 3), ``target`` (H, W, 3), ``mask`` (H, W) as read from its PNGs. The harness writes
    into a temporary folder (inside the page's, ``demo.hygiene.scratch_dir``), which is
    removed."""
    from demo.hygiene import scratch_dir
    from medq.harness import run_harness
    from medq.harness.records import read_jsonl

    item = {"id": str(row["id"]), "task": task, "instruction": row["instruction"],
            "input": _chw(inp), "target": _chw(target),
            "mask": torch.from_numpy(np.asarray(mask, np.float32))[None],
            "quality": row.get("quality_label")}
    t0 = time.perf_counter()
    # In the page's private temp folder: removed with it at the stop, even if this run is cut off.
    with tempfile.TemporaryDirectory(prefix="medq-demo-run-", dir=scratch_dir()) as tmp:
        paths = run_harness(model, [item], tmp, tasks=[task], seed=int(row.get("seed") or 0),
                            batch_size=1, progress=False)
        out_row = read_jsonl(paths[task])[0]
        output = load_rgb(paths[task].parent / out_row["output"])
    report = None
    if out_row.get("text"):
        report = DecodeResult(ids=list(out_row["report_ids"]), text=out_row["report_text"],
                              bad_positions=list(out_row["undecodable_positions"] or []))
    return Edited(output, report, time.perf_counter() - t0)


def run_on_upload(model: ImageTextModel, image: np.ndarray, task: str, size: int,
                  instruction: str, name: str) -> tuple[Edited, dict]:
    """An uploaded photograph (h, w, 3) float in [0, 1] through ``medq.harness.edit_one``: the
    any-size policy (field-of-view square at ``size``), the report written from the model's
    input with ``safe_decode``, greedy as in the harness. Returns the result and the prepared
    {"input", "target", "mask"} as (H, W, 3) / (H, W) arrays."""
    from medq.harness import edit_one
    from medq.harness.text import decoding, supports_sampling

    # decoding() yields the model to use (a copy with the settings changed, since ba0fcb9).
    greedy = decoding(model, temperature=0.0, top_p=1.0) if supports_sampling(model) \
        else contextlib.nullcontext(model)
    with torch.no_grad(), greedy as greedy_model:
        res = edit_one(greedy_model, _chw(image), task, size=size, instruction=instruction,
                       seed=0, report=True, name=name)
    prepared = {"input": _hwc(res["input"]), "target": _hwc(res["target"]),
                "mask": res["mask"][0].numpy() > 0.5}
    return Edited(_hwc(res["output"]), res["report"], res["seconds"]), prepared
