"""What the page does, as plain functions of plain data (the Gradio wiring is in ``demo/app.py``).

A *comparison* is a dict built by ``compare``: the input, target and field-of-view mask of one
image, and per mode its output, where it came from (``make eval`` records or computed now), its
metrics and its text report. Every view (side-by-side panels, zoom, error maps, slider, metrics
table, reports) is a pure function of a comparison, so tests call them directly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from demo import catalog, imaging
from demo.models import ENHANCE_KINDS, ModelPool, load_mode_model, run_model
from demo.security import UploadError, read_upload

Progress = Callable[[float, str], None]
INPUT, TARGET = "Input", "Target"


@dataclass
class Demo:
    """Everything the handlers need: the folders, the modes found there and the loaded models."""

    runs: Path
    reports: Path
    modes: dict[str, catalog.Mode] = field(default_factory=dict)
    pool: ModelPool | None = None
    size: int = 64

    @classmethod
    def from_folders(cls, runs: Path, reports: Path, pool: ModelPool | None = None,
                     baselines: tuple[str, ...] = ("bicubic", "lanczos", "identity")) -> "Demo":
        modes = catalog.discover(Path(runs), baselines)
        demo = cls(Path(runs), Path(reports), modes, pool, catalog.working_size(modes))
        if demo.pool is None:
            demo.pool = ModelPool(lambda label: load_mode_model(demo.modes[label]))
        return demo

    def items(self, task: str) -> list[tuple[str, catalog.Record]]:
        return catalog.test_items(self.modes, task)


def gallery_items(demo: Demo, task: str) -> tuple[list[tuple[np.ndarray, str]], list[str]]:
    """Thumbnails (input PNG enlarged, caption = id) of the evaluated test images, and their ids."""
    thumbs, ids = [], []
    for sid, rec in demo.items(task):
        img = imaging.load_rgb(rec.path("input"))
        side = imaging.load_rgb(rec.path("target")).shape[0]
        thumbs.append((imaging.to_uint8(imaging.resize_nearest(img, (side, side))), sid))
        ids.append(sid)
    return thumbs, ids


def _from_test_set(demo: Demo, task: str, sample_id: str) -> dict:
    items = dict(demo.items(task))
    if sample_id not in items:
        raise ValueError(f"test image {sample_id!r} has no {task} record under {demo.runs} "
                         f"(known: {', '.join(list(items)[:8]) or 'none'})")
    rec = items[sample_id]
    target = imaging.load_rgb(rec.path("target"))
    return {"title": f"test image {sample_id}", "id": sample_id, "task": task,
            "input": imaging.load_rgb(rec.path("input")), "target": target,
            "mask": imaging.load_mask(rec.path("mask"), target.shape[:2]),
            "seed": int(rec.row.get("seed") or 0), "note": ""}


def _from_upload(demo: Demo, task: str, path) -> dict:
    import torch

    from infer.images import prepare

    # 8x the working size keeps the field-of-view crop exact to well under one output pixel.
    rgb = read_upload(path, max_side=max(8 * demo.size, 512))
    try:
        prep = prepare(torch.from_numpy(rgb.transpose(2, 0, 1).copy()), demo.size, task,
                       name=Path(path).name)
    except ValueError as e:
        raise UploadError(f"{e}; expected a colour fundus photograph") from e
    hwc = {k: prep[k].permute(1, 2, 0).numpy() for k in ("input", "target")}
    note = ("An uploaded photograph has no clean reference: for enhancement the 'target' is the "
            "photograph itself, so the metrics measure how much each mode changed it, not quality."
            if task == "enhance" else "The target is the uploaded photograph (field-of-view square, "
            f"{demo.size} px); the input is its bicubic downscale.")
    return {"title": f"uploaded {Path(path).name}", "id": None, "task": task, **hwc,
            "mask": prep["mask"][0].numpy() > 0.5, "seed": 0, "note": note}


def _recorded(mode: catalog.Mode, task: str, sample_id: str | None) -> dict | None:
    rec = mode.record(task, sample_id) if sample_id is not None else None
    if rec is None:
        return None
    row = rec.row
    has_text = row.get("text", True) is not False and row.get("report_text") is not None
    return {"image": imaging.load_rgb(rec.path("output")),
            "origin": f"make eval ({mode.eval_dir.name})" if mode.kind == "run" else "make eval",
            "seconds": row.get("seconds"),
            "report": row.get("report_text") if has_text else None,
            "undecodable": int(row.get("undecodable") or 0) if has_text else None,
            "undecodable_positions": list(row.get("undecodable_positions") or []) if has_text else []}


def compare(demo: Demo, task: str, labels: list[str], *, sample_id: str | None = None,
            upload=None, progress: Progress | None = None, enhance_kind: str = "blur") -> dict:
    """Build the comparison of ``labels`` (modes) on one image: a test image by id (outputs from
    ``make eval`` records where they exist) or an uploaded photograph (every mode run now).
    ``enhance_kind`` picks the enhancement instruction given to models run now (blur, haze,
    illumination, noise).

    Raises UploadError / ValueError with a message for the page. A mode that fails to load or
    run does not stop the others: its message is in ``comparison["errors"]``."""
    if task not in catalog.TASKS:
        raise ValueError(f"task {task!r}: expected one of {', '.join(catalog.TASKS)}")
    if task == "enhance" and enhance_kind not in ENHANCE_KINDS:
        raise ValueError(f"enhance kind {enhance_kind!r}: expected one of {', '.join(ENHANCE_KINDS)}")
    labels = [lb for lb in labels if lb in demo.modes]
    if not labels:
        raise ValueError("choose at least one mode to compare")
    if upload is None and not sample_id:
        raise ValueError("pick a test image from the gallery or upload a fundus photograph")
    progress = progress or (lambda frac, desc: None)
    progress(0.0, "reading the image")
    base = _from_upload(demo, task, upload) if upload is not None else \
        _from_test_set(demo, task, sample_id)
    from infer.harness import derive_seed

    seed = derive_seed(base["seed"], base["id"]) if base["id"] is not None else 0
    outputs, errors = {}, {}
    for k, label in enumerate(labels):
        mode = demo.modes[label]
        found = _recorded(mode, task, base["id"])
        if found is None:
            progress(k / len(labels), f"{label}: " + ("running" if demo.pool.loaded(label)
                                                       else "loading the model, then running"))
            try:
                edited = run_model(demo.pool.get(label), base["input"], base["target"], task, seed,
                                   enhance_kind)
            except Exception as e:  # one broken run must not take the page down with it
                errors[label] = f"{type(e).__name__}: {e}"
                continue
            rep = edited.report
            found = {"image": edited.output, "origin": "computed now", "seconds": edited.seconds,
                     "report": rep.text if rep is not None else None,
                     "undecodable": rep.n_bad if rep is not None else None,
                     "undecodable_positions": list(rep.bad_positions) if rep is not None else []}
        found["metrics"] = imaging.image_metrics(found["image"], base["target"], base["mask"])
        outputs[label] = found
    progress(1.0, "done")
    return {**base, "outputs": outputs, "errors": errors}


# ---------------------------------------------------------------------------------------------
# views of a comparison


def _views(cmp: dict) -> list[tuple[str, np.ndarray]]:
    """(caption, image at target size) in page order: input (nearest), outputs, target."""
    size = cmp["target"].shape[:2]
    views = [(f"{INPUT} {cmp['input'].shape[1]}x{cmp['input'].shape[0]}",
              imaging.resize_nearest(cmp["input"], size))]
    views += [(label, out["image"]) for label, out in cmp["outputs"].items()]
    views.append((f"{TARGET} {size[1]}x{size[0]}", cmp["target"]))
    return views


def gallery_columns(n: int) -> int:
    """Columns for n panels: one row up to 4, else two rows (bigger panels than one long row)."""
    return n if n <= 4 else math.ceil(n / 2)


def view_names(cmp: dict) -> list[str]:
    return [INPUT, *cmp["outputs"], TARGET]


def panels(cmp: dict) -> list[tuple[np.ndarray, str]]:
    """Side-by-side panels, whole-pixel enlarged, as (uint8 image, caption)."""
    f = imaging.display_factor(cmp["target"].shape[0])
    return [(imaging.to_uint8(imaging.enlarge(img, f)), cap) for cap, img in _views(cmp)]


def zoom(cmp: dict, cx: float, cy: float, factor: float) -> tuple[np.ndarray, list]:
    """The target with the zoom box drawn (uint8, enlarged) and the same box cropped from every
    panel, enlarged nearest-neighbour, as (uint8, caption); the box is ``zoom_box``."""
    target = cmp["target"]
    box = imaging.crop_box(target.shape[:2], cx, cy, factor)
    f = imaging.display_factor(target.shape[0])
    overview = imaging.draw_box(imaging.enlarge(target, f), tuple(v * f for v in box), thickness=2)
    side = max(imaging.DISPLAY_MIN_SIDE, min(512, target.shape[0]))
    crops = [(imaging.to_uint8(imaging.zoom_crop(img, box, side)), name)
             for name, (_, img) in zip(view_names(cmp), _views(cmp))]
    return imaging.to_uint8(overview), crops


def zoom_box_text(cmp: dict, cx: float, cy: float, factor: float) -> str:
    y0, y1, x0, x1 = imaging.crop_box(cmp["target"].shape[:2], cx, cy, factor)
    h, w = cmp["target"].shape[:2]
    return f"Region x {x0}-{x1}, y {y0}-{y1} of the {w}x{h} target, shown {factor:g}x larger."


def click_to_centre(cmp: dict, xy, overview_shape: tuple[int, int]) -> tuple[float, float]:
    """A click at pixel (x, y) of the overview image -> centre fractions (cx, cy)."""
    h, w = overview_shape[:2]
    x, y = float(xy[0]), float(xy[1])
    return min(max(x / w, 0.0), 1.0), min(max(y / h, 0.0), 1.0)


def error_maps(cmp: dict) -> tuple[list[tuple[np.ndarray, str]], float]:
    """1 - SSIM heatmaps per mode on one shared colour scale [0, vmax] (so colours compare across
    modes), and vmax: the 99th percentile of the errors inside the field of view, rounded up."""
    mask = cmp["mask"]
    errs = {label: 1.0 - imaging.ssim_map(out["image"], cmp["target"])
            for label, out in cmp["outputs"].items()}
    inside = np.concatenate([e[mask] for e in errs.values()]) if errs and mask.any() else np.zeros(1)
    vmax = float(min(1.0, max(0.05, math.ceil(np.quantile(inside, 0.99) * 20) / 20)))
    f = imaging.display_factor(cmp["target"].shape[0])
    maps = [(imaging.to_uint8(imaging.enlarge(imaging.error_heatmap(e, mask, vmax), f)),
             f"{label}: mean {1 - cmp['outputs'][label]['metrics']['ssim_fov']:.3f}")
            for label, e in errs.items()]
    return maps, vmax


def slider_pair(cmp: dict, left: str, right: str) -> tuple[np.ndarray, np.ndarray]:
    """Two views (by ``view_names``) for the before/after slider, enlarged, uint8."""
    views = dict(zip(view_names(cmp), (img for _, img in _views(cmp))))
    for name in (left, right):
        if name not in views:
            raise ValueError(f"{name!r} is not in this comparison (have: {', '.join(views)})")
    f = imaging.display_factor(cmp["target"].shape[0])
    return tuple(imaging.to_uint8(imaging.enlarge(views[n], f)) for n in (left, right))


METRIC_COLUMNS = ["mode", "PSNR (dB)", "PSNR FOV (dB)", "SSIM", "SSIM FOV", "undecodable tokens",
                  "time (s)", "output from"]


def metrics_table(cmp: dict) -> pd.DataFrame:
    """One row per mode: PSNR and SSIM over the whole image and inside the field of view."""
    rows = []
    for label, out in cmp["outputs"].items():
        m = out["metrics"]
        rows.append([label, _num(m["psnr"], 2), _num(m["psnr_fov"], 2), _num(m["ssim"], 4),
                     _num(m["ssim_fov"], 4),
                     "n/a (no text)" if out["undecodable"] is None else str(out["undecodable"]),
                     _num(out["seconds"], 2), out["origin"]])
    for label, msg in cmp["errors"].items():
        rows.append([label, None, None, None, None, None, None, f"failed: {msg}"])
    return pd.DataFrame(rows, columns=METRIC_COLUMNS)


def _num(v, digits: int):
    if v is None:
        return None
    return "inf" if math.isinf(v) else round(float(v), digits)


def reports_markdown(cmp: dict) -> str:
    """Each mode's text report, with a visible warning when it holds undecodable tokens."""
    lines = [f"### Text reports ({cmp['title']})"] + ([f"*{cmp['note']}*"] if cmp["note"] else [])
    for label, out in cmp["outputs"].items():
        if out["report"] is None and out["undecodable"] is None:
            lines.append(f"- **{label}**: no text (image-only baseline)")
            continue
        lines.append(f"- **{label}**: {out['report'] or '(empty report)'}")
        if out["undecodable"]:
            lines.append(f"    - ⚠️ **WARNING: {out['undecodable']} undecodable token(s)** at "
                         f"positions {out['undecodable_positions'][:12]}: the model produced ids "
                         "outside its vocabulary, the collapse signal of the failed SSIM v1/v2 "
                         "runs. They are left out of the text above; do not trust this model's "
                         "outputs.")
    for label, msg in cmp["errors"].items():
        lines.append(f"- **{label}**: ⚠️ could not run: {msg}")
    return "\n".join(lines)


def undecodable_warnings(cmp: dict) -> list[str]:
    return [f"{label}: {out['undecodable']} undecodable token(s) in its report"
            for label, out in cmp["outputs"].items() if out["undecodable"]]


# ---------------------------------------------------------------------------------------------
# results tab


def leaderboard(reports: Path) -> tuple[pd.DataFrame, str, list[tuple[str, str]]]:
    """reports/leaderboard.csv as a table, leaderboard.md, and the plots reports/*.png."""
    reports = Path(reports)
    csv, md = reports / "leaderboard.csv", reports / "leaderboard.md"
    table = pd.read_csv(csv) if csv.is_file() else pd.DataFrame(
        {"leaderboard": [f"no {csv} yet: run `make eval`"]})
    text = md.read_text(encoding="utf-8") if md.is_file() else \
        f"*No `{md}` yet: `make eval` writes the leaderboard and its plots.*"
    plots = [(str(p.resolve()), p.stem.replace("_", " ")) for p in sorted(reports.glob("*.png"))]
    return table, text, plots
