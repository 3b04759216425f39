"""What the page does, as plain functions of plain data (the Gradio wiring is in ``demo/app.py``).

A *comparison* is a dict built by ``compare``: the input, target and field-of-view mask of one
image, its reference report (test images), and per mode its output, where it came from (``make
eval`` records or computed now by the harness), its metrics, its text report with each finding
marked agree / disagree, its flags (identical to another mode within a tolerance, ignores its
input), whether its reports read the DR grade on the test set (``grade``: when they did not, its
grade is withheld), and whether the photograph is like the report model's training images
(``ood``: when it is not, no report is shown as a finding). Every view (side-by-side panels,
zoom, error maps, slider, metrics table, reports) is a pure function of a comparison, so tests
call them directly.
Panels, tables and reports name modes by ``catalog.display_name``, as the Results tab does.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from demo import catalog, imaging, reports
from demo.models import (
    ENHANCE_KINDS,
    ModelPool,
    instruction_for,
    load_mode_model,
    run_on_test_image,
    run_on_upload,
)
from demo.security import UploadError, read_upload, upload_info
from medq.data.readers import MAX_OWN_SIDE
from medq.leaderboard import MAIN_METRIC, interval, read_leaderboard

log = logging.getLogger(__name__)
Progress = Callable[[float, str], None]
INPUT, TARGET = "Input", "Target"
BANNER = ("**Research demo: small models trained on synthetic fundus images. Not for diagnosis "
          "or any clinical decision.**")
TRAINED_ON = ("The report model learnt from synthetic fundus images only (made by this project's "
              "generator), never from a real photograph: its reports are research output, not "
              "findings.")
OOD_CALIBRATION = Path(__file__).with_name("report_ood.json")
"""The committed calibration of the report out-of-distribution check (``python -m demo
calibrate-ood`` writes it; ``medq.report_ood``)."""
IDENTICAL_MAX_DIFF = 1
"""Two outputs are flagged identical when no 8-bit pixel differs by more than this many levels
(1/255), or their SSIM is at least ``IDENTICAL_SSIM``: pixel and pixel+SSIM fine-tunes differ by
one level here and there, which no eye can see."""
IDENTICAL_SSIM = 0.999
GRADE_MIN_KAPPA = 0.4
"""The page shows a mode's DR grade only when that mode's reports scored at least this
quadratic-weighted kappa against the true grade of the test images (the leaderboard's
``dr_kappa``). 0.4 is where "moderate agreement" begins on the usual reading of kappa (Landis and
Koch): below it the grades agree with the truth little more than guesses that ignore the image
would, yet a clinician reads a stated grade as a finding all the same. This is the one place the
bar is set; the page, its tests and docs/DEMO.md take it from here."""
ERROR_SCALE = (0.0, 1.0)
"""Every error map is coloured on this one fixed scale of 1 - SSIM, so colours mean the same
thing on every comparison."""


@dataclass
class Demo:
    """Everything the handlers need: the folders, the modes found there and the loaded models."""

    runs: Path
    reports: Path
    modes: dict[str, catalog.Mode] = field(default_factory=dict)
    pool: ModelPool | None = None
    size: int = 256                    # the working size of the test images
    references: reports.ReferenceReports | None = None
    ood: object | None = None          # a medq.report_ood.Calibration
    ood_problem: str | None = None     # why no report can be assessed (no or stale calibration)
    real_reports: Path | None = None   # a leaderboard of real photographs (bench eval --data)
    tile: int = 64                     # the models' tile (model.tile_size): the smallest upload
    upload_size: int = 0
    """Side uploads are worked at: 0 = each photograph's own size (its field-of-view square, at
    most ``medq.data.readers.MAX_OWN_SIDE``), as ``medq.harness.edit_one(size=0)`` does."""
    speed: dict[str, float] = field(default_factory=dict)
    """Seconds per megapixel of each mode's last run here: the estimate shown while it runs again
    (an own-size upload may take minutes on a CPU; the bar must not stand still)."""

    @classmethod
    def from_folders(cls, runs: Path, reports_dir: Path, pool: ModelPool | None = None,
                     baselines: tuple[str, ...] = ("bicubic", "lanczos", "identity"),
                     ood_calibration: Path | None = OOD_CALIBRATION,
                     real_reports: Path | None = None) -> "Demo":
        """The modes under ``runs``, the leaderboard in ``reports_dir`` (and, for the Results
        tab, one of real photographs in ``real_reports``), the report-OOD calibration."""
        modes = catalog.discover(Path(runs), baselines)
        configs = [m.root / "config.toml" for m in modes.values()
                   if m.kind == "run" and m.root is not None and (m.root / "config.toml").is_file()]
        demo = cls(Path(runs), Path(reports_dir), modes, pool, catalog.working_size(modes),
                   reports.ReferenceReports(configs), *load_ood(ood_calibration),
                   Path(real_reports) if real_reports else None, catalog.tile_size(modes))
        if demo.pool is None:
            demo.pool = ModelPool(lambda label: load_mode_model(demo.modes[label],
                                                                demo.pool.get))
        return demo

    def items(self, task: str) -> list[tuple[str, catalog.Record]]:
        return catalog.test_items(self.modes, task)


def load_ood(path: Path | None) -> tuple[object | None, str | None]:
    """(calibration, problem) of the report out-of-distribution check from its JSON. With no
    usable calibration every report is "not assessed", and ``problem`` says why, in words for the
    page; a stale one (other generator or feature version) is kept but not trusted."""
    from medq.report_ood import Calibration

    fix = "an administrator can set it up with python -m demo calibrate-ood"
    if path is None or not Path(path).is_file():
        return None, f"the check for photographs unlike the training images is not set up ({fix})"
    try:
        cal = Calibration.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))
    except (OSError, ValueError) as e:
        log.warning("%s: unreadable report-OOD calibration (%s)", path, e)
        return None, f"the check for photographs unlike the training images is broken ({fix})"
    stale = cal.stale_reason()
    if stale:
        log.warning("%s is stale: %s", path, stale)
        return cal, (f"the check for photographs unlike the training images was set up for "
                     f"other training images ({fix})")
    return cal, None


def assess_photograph(demo: Demo, photo: np.ndarray, name: str) -> dict:
    """{"unlike", "distance", "threshold", "size", "problem"} of a photograph (H, W, 3) float:
    ``medq.report_ood``'s verdict; unlike whenever the check cannot be made."""
    import torch

    if demo.ood is None or demo.ood_problem:
        return {"unlike": True, "distance": None, "threshold": None, "size": None,
                "problem": demo.ood_problem}
    verdict = demo.ood.assess(torch.from_numpy(np.ascontiguousarray(photo.transpose(2, 0, 1))),
                              name=name)
    return {"unlike": verdict.unlike, "distance": verdict.distance,
            "threshold": verdict.threshold, "size": verdict.size, "problem": None}


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
        raise ValueError(f"test image {sample_id!r} has no {task} record "
                         f"(known: {', '.join(list(items)[:8]) or 'none'})")
    rec = items[sample_id]
    target = imaging.load_rgb(rec.path("target"))
    instruction = rec.row.get("instruction")
    return {"title": f"test image {sample_id}", "id": sample_id, "task": task,
            "input": imaging.load_rgb(rec.path("input")), "target": target,
            "mask": imaging.load_mask(rec.path("mask"), target.shape[:2]), "row": rec.row,
            "instruction": instruction,
            "reference": demo.references.get(task, sample_id, rec.row) if demo.references else None,
            "note": (f"This test image was degraded for the instruction \u201c{instruction}\u201d; "
                     "every mode gets that instruction." if task == "enhance" and instruction
                     else "")}


UPLOAD_DECODE_SIDE = 2 * MAX_OWN_SIDE
"""Photographs are decoded to at most this side (a large JPEG reduced while decoding): twice the
largest own size worked at, so that the field of view of a usual photograph is still at least
that size after decoding and is only ever downscaled to it, never enlarged."""


def _own_side(rgb: np.ndarray, info, name: str) -> int:
    """Pixels across the field of view of the photograph as uploaded (``rgb`` may have been
    decoded reduced: its diameter is scaled back by the header's size)."""
    from medq.data.fov import NoFieldOfView, crop_to_fov, require_fov

    u8 = imaging.to_uint8(rgb)
    try:
        diameter = crop_to_fov(u8, require_fov(u8, name))[1].shape[0]
    except NoFieldOfView as e:
        raise UploadError(f"{e}; expected a colour fundus photograph") from e
    return round(diameter * max(info.width, info.height) / max(rgb.shape[:2]))


def upload_notes(info, own: int, side: int) -> list[str]:
    """What the page did to an upload to make it a model input, one line each: the size it is
    worked at, and why when that is not the field of view's own size (over ``MAX_OWN_SIDE``)."""
    if side < own:         # fov_square pads the own size up to a multiple of 4, never down
        notes = [f"Its field of view is {own} px across, over this page's limit of "
                 f"{MAX_OWN_SIDE} px: downscaled to {side} px (what the panels and the zoom "
                 "show)."]
    else:
        notes = [f"Worked at its own size: the {side} px square around its field of view."]
    if info.width != info.height:
        notes.append(f"The photograph is {info.size}: the square around its disc is used, "
                     "black where the disc leaves the frame.")
    return notes


def _from_upload(demo: Demo, task: str, path, enhance_kind: str) -> dict:
    """An upload at its own size (``demo.upload_size`` 0): the square around its field of view,
    downscaled only beyond ``MAX_OWN_SIDE`` (said in its notes); refused when its field of view
    is smaller than one model tile, which the models cannot generate."""
    import torch

    from medq.harness.images import prepare

    name = Path(path).name
    info = upload_info(path)
    rgb = read_upload(path, max_side=UPLOAD_DECODE_SIDE)
    own = _own_side(rgb, info, name)
    if own < demo.tile:
        raise UploadError(f"{name} ({info.size}): its field of view is {own} px across, smaller "
                          f"than the smallest image the models generate ({demo.tile} px); "
                          "upload the photograph at its original size")
    try:
        prep = prepare(torch.from_numpy(rgb.transpose(2, 0, 1).copy()), demo.upload_size, task,
                       name=name)
    except ValueError as e:
        raise UploadError(f"{e}; expected a colour fundus photograph") from e
    hwc = {k: prep[k].permute(1, 2, 0).numpy() for k in ("input", "target")}
    side = hwc["target"].shape[0]
    note = ("An uploaded photograph has no clean reference: for enhancement the 'target' is the "
            "photograph itself, so the metrics measure how much each mode changed it, not quality."
            if task == "enhance" else "The target is the uploaded photograph (field-of-view "
            f"square, {side} px); the input is its bicubic downscale.")
    return {"title": f"uploaded {name} ({info.size})", "id": None, "task": task,
            **hwc, "mask": prep["mask"][0].numpy() > 0.5, "row": None, "image": rgb, "name": name,
            "instruction": instruction_for(task, enhance_kind), "reference": None, "note": note,
            "notes": upload_notes(info, own, side)}


def _recorded(mode: catalog.Mode, task: str, sample_id: str | None) -> dict | None:
    rec = mode.record(task, sample_id) if sample_id is not None else None
    if rec is None:
        return None
    row = rec.row
    has_text = row.get("text", True) is not False and row.get("report_text") is not None
    return {"image": imaging.load_rgb(rec.path(mode.output_key)),
            "origin": f"make eval ({mode.eval_dir.name})" if mode.kind == "run" else "make eval",
            "seconds": row.get("seconds"),
            "report": row.get("report_text") if has_text else None,
            "undecodable": int(row.get("undecodable") or 0) if has_text else None,
            "undecodable_positions": list(row.get("undecodable_positions") or [])
            if has_text else []}


def _computed(edited) -> dict:
    rep = edited.report
    return {"image": edited.output, "origin": "computed now (the harness)",
            "seconds": edited.seconds, "report": rep.text if rep is not None else None,
            "undecodable": rep.n_bad if rep is not None else None,
            "undecodable_positions": list(rep.bad_positions) if rep is not None else []}


PROGRESS_TICK = 0.5
"""Seconds between progress updates while a model runs."""


def _with_progress(work: Callable[[], object], progress: Progress, span: tuple[float, float],
                   desc: str, estimate: float | None):
    """``work()`` run in a worker thread while this one moves ``progress`` through ``span`` by
    the time elapsed against ``estimate`` (seconds; None: no estimate yet, the bar creeps), with
    the seconds in the description. Returns ``work()``'s result or raises its exception."""
    import threading
    import time

    box: dict = {}

    def run():
        try:
            box["result"] = work()
        except BaseException as e:  # noqa: BLE001 - handed to the caller's thread as it is
            box["error"] = e

    worker = threading.Thread(target=run, name="medq-demo-mode", daemon=True)
    t0 = time.perf_counter()
    worker.start()
    lo, hi = span
    progress(lo, desc)
    while worker.is_alive():
        worker.join(PROGRESS_TICK)
        elapsed = time.perf_counter() - t0
        share = min(elapsed / estimate, 0.95) if estimate else elapsed / (elapsed + 30.0)
        progress(lo + (hi - lo) * share, f"{desc}: {elapsed:.0f} s"
                 + (f" of about {estimate:.0f} s" if estimate else ""))
    if "error" in box:
        raise box["error"]
    return box["result"]


def _run_mode(demo: Demo, label: str, base: dict, task: str, progress: Progress,
              span: tuple[float, float]):
    """One mode on the comparison's image through the harness (``run_on_upload`` /
    ``run_on_test_image``), loading the model first if needed, with progress over ``span``; the
    time it took per megapixel is kept as the next run's estimate."""
    name = catalog.display_name(label, task)
    if not demo.pool.loaded(label):
        _with_progress(lambda: demo.pool.get(label), progress, (span[0], span[0]),
                       f"{name}: loading the model", None)
    model = demo.pool.get(label)
    mpx = base["target"].shape[0] * base["target"].shape[1] / 1e6
    estimate = demo.speed[label] * mpx if label in demo.speed else None
    side = base["target"].shape[0]
    if base["id"] is None:
        def work():
            return run_on_upload(model, base["image"], task, demo.upload_size,
                                 base["instruction"], base["name"])[0]
    else:
        def work():
            return run_on_test_image(model, base["row"], base["input"], base["target"],
                                     base["mask"], task)
    edited = _with_progress(work, progress, span, f"{name}: {side}-px image", estimate)
    demo.speed[label] = edited.seconds / mpx
    return edited


def compare(demo: Demo, task: str, labels: list[str], *, sample_id: str | None = None,
            upload=None, progress: Progress | None = None, enhance_kind: str = "blur") -> dict:
    """Build the comparison of ``labels`` (modes) on one image: a test image by id (outputs from
    ``make eval`` records where they exist, else the harness run now on the recorded item, with
    its own instruction) or an uploaded photograph (every mode run now through the harness's
    ``edit_one``; ``enhance_kind`` picks the enhancement instruction: blur, haze,
    illumination, noise; it does not apply to test images).

    Raises UploadError / ValueError with a message for the page. A mode that fails to load or
    run does not stop the others: its message is in ``comparison["errors"]``."""
    if task not in catalog.TASKS:
        raise ValueError(f"task {task!r}: expected one of {', '.join(catalog.TASKS)}")
    if task == "enhance" and upload is not None and enhance_kind not in ENHANCE_KINDS:
        raise ValueError(f"enhance kind {enhance_kind!r}: expected one of "
                         f"{', '.join(ENHANCE_KINDS)}")
    labels = [lb for lb in labels if lb in demo.modes]
    if not labels:
        raise ValueError("choose at least one mode to compare")
    if upload is None and not sample_id:
        raise ValueError("pick a test image from the gallery or upload a fundus photograph")
    progress = progress or (lambda frac, desc: None)
    progress(0.0, "reading the image")
    base = _from_upload(demo, task, upload, enhance_kind) if upload is not None else \
        _from_test_set(demo, task, sample_id)
    progress(0.03, "checking whether the photograph is like the training images")
    base["ood"] = assess_photograph(demo, base.get("image", base["target"]),
                                    base.get("name") or str(base["id"]))
    board = read_leaderboard(demo.reports)
    outputs, errors = {}, {}
    for k, label in enumerate(labels):
        mode = demo.modes[label]
        found = _recorded(mode, task, base["id"])
        if found is None and not catalog.runs_on_uploads(mode, demo.modes):
            errors[label] = ("not available for this image: its outputs exist only for the "
                             "evaluated test images")
            continue
        if found is None:
            span = (0.05 + 0.9 * k / len(labels), 0.05 + 0.9 * (k + 1) / len(labels))
            try:
                found = _computed(_run_mode(demo, label, base, task, progress, span))
            except Exception:  # noqa: BLE001 - one broken run must not take the page down
                log.exception("mode %s failed on %s", label, base["title"])
                errors[label] = ("could not be run on this image; the server log has the "
                                 "technical details")
                continue
        found["metrics"] = imaging.image_metrics(found["image"], base["target"], base["mask"])
        reasons = catalog.verdict_reasons(mode, task, board)
        found["ignores_input"] = catalog.ignores_input(reasons)
        found["verdict"] = catalog.verdict_status(board, mode, task)
        found["findings"] = reports.compare_findings(found["report"], base["reference"]) \
            if base["reference"] and found["report"] is not None else []
        found["grade"] = grade_gate(board, mode, task)
        outputs[label] = found
    _mark_identical(outputs, task)
    progress(1.0, "done")
    base.pop("image", None)
    return {"notes": [], **base, "outputs": outputs, "errors": errors}


def _report_rows(board: list[dict], mode: catalog.Mode, task: str) -> list[dict]:
    """The leaderboard rows scoring ``mode``'s reports on ``task`` that hold a DR kappa: the
    mode's own rows, else, for an extra image read-out (``ssim_v3:onestep``), its parent's: the
    report is written once by the parent's model from the input, whatever image it then reads
    out, so the parent's score is the score of the very same text. Rows of the run shown come
    first when the leaderboard names it."""
    def scored(label: str) -> list[dict]:
        return [r for r in board if str(r.get("task", "")) == task
                and str(r.get("status", "ok")).startswith("ok") and catalog.row_label(r) == label
                and not math.isnan(interval(r, "dr_kappa")[0])]

    rows = scored(mode.label) or (scored(mode.parent) if mode.parent else [])
    run = mode.root.name if mode.root is not None else None
    return [r for r in rows if run and r.get("run") == run] or rows


def grade_gate(board: list[dict], mode: catalog.Mode, task: str) -> dict:
    """Whether the page may show ``mode``'s DR grade on ``task``: {"assessed", "kappa",
    "floor"}. Assessed only when its reports' DR kappa on the test set (``board``: the
    leaderboard's rows) is at least ``GRADE_MIN_KAPPA``; a mode with no score is not assessed,
    since nothing shows its grades mean anything. With several scores (runs or seeds of one
    preset, none of them the run shown) the lowest counts: the grade is shown only if every
    measurement clears the bar."""
    rows = _report_rows(board, mode, task)
    if not rows:
        return {"assessed": False, "kappa": None, "floor": None}
    row = min(rows, key=lambda r: interval(r, "dr_kappa")[0])
    kappa, floor = interval(row, "dr_kappa")[0], interval(row, "dr_kappa_floor")[0]
    return {"assessed": kappa >= GRADE_MIN_KAPPA, "kappa": kappa,
            "floor": None if math.isnan(floor) else floor}


def grade_notice(gate: dict) -> str:
    """Why a mode's DR grade is not shown, in a clinician's words (``grade_gate``)."""
    if gate["kappa"] is None:
        return ("not assessed: this model's reports have no DR grade score on the test images "
                "(no kappa against the truth was measured), so their grade cannot be trusted")
    return ("not assessed: this model's reports did not read the DR grade reliably on the test "
            f"images (kappa {gate['kappa']:.2f} against the truth; a grade is shown only from "
            f"{GRADE_MIN_KAPPA:.2f}, moderate agreement)")


def kept(cmp: dict) -> dict:
    """What the page keeps of a comparison for the session's zoom, pan and slider: the task, the
    input, the target and each output with its flags, pictures as uint8. The page shows uint8
    pictures anyway and every later view only cuts, repeats and outlines pixels, so those views
    are the very pixels the full comparison gives, at a quarter of the memory of float32; the
    metrics, reports and error maps were shown when it was made and are not needed again."""
    return {"task": cmp["task"], "title": cmp.get("title"),
            "input": imaging.to_uint8(cmp["input"]), "target": imaging.to_uint8(cmp["target"]),
            "outputs": {label: {"image": imaging.to_uint8(out["image"]),
                                "identical_to": out.get("identical_to"),
                                "ignores_input": out.get("ignores_input")}
                        for label, out in cmp["outputs"].items()}}


def _mark_identical(outputs: dict, task: str) -> None:
    """``identical_to``: the display name of the first earlier mode whose output is the same
    picture within ``IDENTICAL_MAX_DIFF`` / ``IDENTICAL_SSIM`` (None when none is), so the page
    can say two columns are one picture."""
    labels = list(outputs)
    for k, label in enumerate(labels):
        out = outputs[label]
        out["identical_to"] = next(
            (catalog.display_name(prev, task) for prev in labels[:k]
             if outputs[prev]["identical_to"] is None
             and imaging.nearly_identical(outputs[prev]["image"], out["image"],
                                          IDENTICAL_MAX_DIFF, IDENTICAL_SSIM)), None)


# ---------------------------------------------------------------------------------------------
# views of a comparison


def mode_name(cmp: dict, label: str) -> str:
    return catalog.display_name(label, cmp["task"])


def _caption(cmp: dict, label: str, out: dict) -> str:
    cap = mode_name(cmp, label)
    if out.get("identical_to"):
        cap += f" (identical to {out['identical_to']})"
    if out.get("ignores_input"):
        cap += " \u26a0 ignores its input"
    return cap


def _views(cmp: dict) -> list[tuple[str, np.ndarray]]:
    """(caption, image at target size) in page order: input (nearest), outputs, target."""
    size = cmp["target"].shape[:2]
    views = [(f"{INPUT} {cmp['input'].shape[1]}x{cmp['input'].shape[0]}",
              imaging.resize_nearest(cmp["input"], size))]
    views += [(_caption(cmp, label, out), out["image"]) for label, out in cmp["outputs"].items()]
    views.append((f"{TARGET} {size[1]}x{size[0]}", cmp["target"]))
    return views


def gallery_columns(n: int) -> int:
    """Columns for n panels: one row up to 4, else two rows (bigger panels than one long row)."""
    return n if n <= 4 else math.ceil(n / 2)


def view_names(cmp: dict) -> list[str]:
    """Names of the views (slider and zoom): Input, each mode's readable name, Target."""
    return [INPUT, *(mode_name(cmp, label) for label in cmp["outputs"]), TARGET]


def panels(cmp: dict) -> list[tuple[np.ndarray, str]]:
    """Side-by-side panels, whole-pixel enlarged, as (uint8 image, caption)."""
    f = imaging.display_factor(cmp["target"].shape[0])
    return [(imaging.to_uint8(imaging.enlarge(img, f)), cap) for cap, img in _views(cmp)]


ZOOM_VIEW = 256
"""Side in screen pixels of every zoomed view. The page shows each at exactly its own size (no
browser scaling: ``demo/app.py``'s CSS), so at zoom factor 1 one image pixel is one screen pixel
and at factor f an f x f block: a region ``ZOOM_VIEW // f`` image pixels across. Kept this small
so that the views of a comparison sit side by side on a laptop screen."""
ZOOM_FACTORS = (1, 8)
"""The zoom factors offered: whole numbers only, so that no pixel is interpolated."""


def zoom_side(cmp: dict, factor: int) -> int:
    """Image pixels across the zoomed region at ``factor``: as many as fill ``ZOOM_VIEW`` screen
    pixels, at most the whole target."""
    return min(ZOOM_VIEW // max(1, int(factor)), *cmp["target"].shape[:2])


def zoom_region(cmp: dict, cx: float, cy: float, factor: int) -> tuple[int, int, int, int]:
    """The zoomed region (y0, y1, x0, x1) of the target centred near the fractions (cx, cy)."""
    return imaging.crop_box(cmp["target"].shape[:2], cx, cy, zoom_side(cmp, factor))


def zoom(cmp: dict, cx: float, cy: float, factor: int) -> tuple[np.ndarray, list]:
    """The target with the zoomed region drawn as a box (uint8, whole-pixel enlarged when small:
    an overview, scaled to fit on the page), and that region cut from every view at native pixels,
    each pixel a ``factor`` x ``factor`` block, as (uint8, caption)."""
    target, factor = cmp["target"], max(1, int(factor))
    box = zoom_region(cmp, cx, cy, factor)
    f = imaging.display_factor(target.shape[0])
    thickness = max(2, target.shape[0] * f // ZOOM_VIEW)    # still visible when scaled to fit
    overview = imaging.draw_box(imaging.enlarge(target, f), tuple(v * f for v in box), thickness)
    crops = [(imaging.to_uint8(imaging.zoom_crop(img, box, factor)), name)
             for name, (_, img) in zip(view_names(cmp), _views(cmp))]
    return imaging.to_uint8(overview), crops


def zoom_box_text(cmp: dict, cx: float, cy: float, factor: int) -> str:
    """Where the zoomed region is, and what one image pixel is on the screen."""
    factor = max(1, int(factor))
    y0, y1, x0, x1 = zoom_region(cmp, cx, cy, factor)
    h, w = cmp["target"].shape[:2]
    scale = ("native pixels: one image pixel per screen pixel" if factor == 1
             else f"each image pixel a {factor}x{factor} block of screen pixels")
    text = f"Region x {x0}-{x1}, y {y0}-{y1} of the {w}x{h} target, {scale}."
    ratio = w // max(1, cmp["input"].shape[1])
    if ratio > 1:
        text += (f" The input has {ratio}x fewer pixels across: each of its pixels is a "
                 f"{ratio}x{ratio} block of the target's here.")
    return text


def pan(cmp: dict, cx: float, cy: float, factor: int, dx: int, dy: int) -> tuple[float, float]:
    """The centre (fractions) of the zoomed region moved by half its side in the direction
    (dx, dy) (each -1, 0 or 1), stopping at the image's edges. Moves the region as shown (the
    box ``crop_box`` already kept inside the image), so a step away from an edge is never lost."""
    h, w = cmp["target"].shape[:2]
    y0, y1, x0, x1 = zoom_region(cmp, cx, cy, factor)
    side = y1 - y0
    step = max(1, side // 2)
    x0 = min(max(x0 + dx * step, 0), w - side)
    y0 = min(max(y0 + dy * step, 0), h - side)
    # Four decimals place the box on the same pixel (within 0.05 px up to 1024 px).
    return round((x0 + side / 2) / w, 4), round((y0 + side / 2) / h, 4)


def click_to_centre(cmp: dict, xy, overview_shape: tuple[int, int]) -> tuple[float, float]:
    """A click at pixel (x, y) of the overview image -> centre fractions (cx, cy)."""
    h, w = overview_shape[:2]
    x, y = float(xy[0]), float(xy[1])
    return min(max(x / w, 0.0), 1.0), min(max(y / h, 0.0), 1.0)


def error_maps(cmp: dict) -> tuple[list[tuple[np.ndarray, str]], float]:
    """1 - SSIM heatmaps per mode, all on the one fixed scale ``ERROR_SCALE`` (0 to 1: the same
    colour means the same error on every comparison; see ``imaging.colour_bar``), and its top."""
    mask = cmp["mask"]
    vmax = ERROR_SCALE[1]
    f = imaging.display_factor(cmp["target"].shape[0])
    maps = []
    for label, out in cmp["outputs"].items():
        err = 1.0 - imaging.ssim_map(out["image"], cmp["target"])
        maps.append((imaging.to_uint8(imaging.enlarge(imaging.error_heatmap(err, mask, vmax), f)),
                     f"{mode_name(cmp, label)}: mean 1 - SSIM in the field of view "
                     f"{1 - out['metrics']['ssim_fov']:.3f}"))
    return maps, vmax


def slider_pair(cmp: dict, left: str, right: str) -> tuple[np.ndarray, np.ndarray]:
    """Two views (by ``view_names``) for the before/after slider, enlarged, uint8."""
    views = dict(zip(view_names(cmp), (img for _, img in _views(cmp))))
    for name in (left, right):
        if name not in views:
            raise ValueError(f"{name!r} is not in this comparison (have: {', '.join(views)})")
    f = imaging.display_factor(cmp["target"].shape[0])
    return tuple(imaging.to_uint8(imaging.enlarge(views[n], f)) for n in (left, right))


METRIC_COLUMNS = ["Mode", "SSIM FOV", "PSNR eroded FOV (dB)", "SSIM", "PSNR (dB)",
                  "undecodable tokens", "time (s)", "output from", "note"]


def _note(out: dict) -> str:
    notes = []
    if out.get("identical_to"):
        notes.append(f"identical to {out['identical_to']}")
    if out.get("ignores_input"):
        notes.append(f"ignores its input ({out['ignores_input']})")
    if out.get("verdict") == "collapsed":
        notes.append("verdict: collapsed")
    return "; ".join(notes)


def metrics_table(cmp: dict) -> pd.DataFrame:
    """One row per mode (readable names): SSIM inside the field of view first (the main metric),
    then PSNR over the same pixels (the eroded field of view), then both over the whole image."""
    rows = []
    for label, out in cmp["outputs"].items():
        m = out["metrics"]
        rows.append([mode_name(cmp, label), _num(m["ssim_fov"], 4), _num(m["psnr_eroded_fov"], 2),
                     _num(m["ssim"], 4), _num(m["psnr"], 2),
                     "n/a (no text)" if out["undecodable"] is None else str(out["undecodable"]),
                     _num(out["seconds"], 2), out["origin"], _note(out)])
    for label, msg in cmp["errors"].items():
        rows.append([mode_name(cmp, label), None, None, None, None, None, None,
                     f"failed: {msg}", ""])
    return pd.DataFrame(rows, columns=METRIC_COLUMNS)


def _num(v, digits: int):
    if v is None:
        return None
    return "inf" if math.isinf(v) else round(float(v), digits)


def ood_notice(cmp: dict) -> str | None:
    """Why no report of this image is shown as a finding, in a clinician's words; None when the
    photograph is like the training images and its reports are shown."""
    ood = cmp.get("ood")
    if ood is None or not ood["unlike"]:
        return None
    if ood["problem"]:
        return f"Reports not assessed: {ood['problem']}."
    if ood["distance"] is None or ood["distance"] != ood["distance"]:
        return ("Reports not assessed: this photograph could not be compared with the images "
                "the report model was trained on.")
    return ("Reports not assessed: this photograph is unlike the images the report model was "
            f"trained on (distance {ood['distance']:.1f} from them; images like them stay below "
            f"{ood['threshold']:.1f}), so no grade is shown.")


def _warnings(name: str, out: dict) -> list[str]:
    """The flags under one mode's report: collapsed verdict, undecodable tokens."""
    lines = []
    if out.get("verdict") == "collapsed":
        lines.append("    - ⚠️ **verdict of make eval on the test set: collapsed** (see the "
                     "Results tab): do not trust this model's outputs.")
    if out["undecodable"]:
        lines.append(f"    - ⚠️ **WARNING: {out['undecodable']} undecodable token(s)** at "
                     f"positions {out['undecodable_positions'][:12]}: the model produced ids "
                     "outside its vocabulary, the collapse signal of the failed SSIM v1/v2 "
                     "runs. They are left out of the text above; do not trust this model's "
                     "outputs.")
    return lines


def reports_markdown(cmp: dict) -> str:
    """What the report model was trained on; then either the notice that the reports are not
    assessed (a photograph unlike the training images: no grade shown) or the reference report
    (test images) and each mode's report with every finding marked agree / disagree; warnings
    (undecodable tokens, ignores its input, collapsed) either way. A mode whose reports did not
    read the DR grade reliably on the test set (``grade_gate``) shows only its image quality and
    why its grade is withheld: its kappa is named there as the reason, and is never printed
    beside a grade that is shown (report scores are on the Results tab)."""
    lines = [f"### Text reports ({cmp['title']})", f"*{TRAINED_ON}*"]
    if cmp["note"]:
        lines.append(f"*{cmp['note']}*")
    notice = ood_notice(cmp)
    if notice:
        lines.append(f"**{notice}**")
    elif cmp.get("reference"):
        lines.append(f"**Reference report** (the label of this test image): {cmp['reference']}")
    elif cmp.get("id") is None:
        lines.append("**No reference report**: an uploaded photograph has no labels, so the "
                     "reports below cannot be checked.")
    else:
        lines.append("**No reference report** could be found for this test image.")
    for label, out in cmp["outputs"].items():
        name = mode_name(cmp, label)
        if out.get("ignores_input"):
            lines.append(f"- \u26a0\ufe0f **{name} ignores its input**: {out['ignores_input']}. "
                         "Its pictures and report look plausible whatever it is given.")
        if out["report"] is None and out["undecodable"] is None:
            base, _, extra = label.partition(":")
            why = (f"an image read-out of the same model, which writes its report once: see "
                   f"**{mode_name(cmp, base)}**" if extra else "image-only baseline")
            lines.append(f"- **{name}**: no text ({why})")
            continue
        if notice:
            lines.append(f"- **{name}**: not assessed")
            lines += _warnings(name, out)
            continue
        gate = out.get("grade") or {"assessed": False, "kappa": None, "floor": None}
        if gate["assessed"]:
            lines.append(f"- **{name}**: {out['report'] or '(empty report)'}")
            marks = out["findings"]
        else:
            # Only the image quality is shown: the lesions are read from the same shrunken image
            # as the grade, and "new vessels" on a healthy eye is a grade 4 in other words.
            lines.append(f"- **{name}**: {reports.quality_only(out['report'])}  \n"
                         f"    **DR grade {grade_notice(gate)}.** The lesion findings of the same "
                         "report are withheld with it.")
            marks = [f for f in out["findings"] if f["finding"] == "image quality"]
        if marks:
            lines.append("    - " + "; ".join(
                f"{f['finding']}: {f['model']} \u2192 **{'agree' if f['agree'] else 'disagree'}**"
                + ("" if f["agree"] else f" (reference: {f['reference']})")
                for f in marks))
        lines += _warnings(name, out)
    for label, msg in cmp["errors"].items():
        lines.append(f"- **{mode_name(cmp, label)}**: ⚠️ {msg}")
    return "\n".join(lines)


def undecodable_warnings(cmp: dict) -> list[str]:
    return [f"{mode_name(cmp, label)}: {out['undecodable']} undecodable token(s) in its report"
            for label, out in cmp["outputs"].items() if out["undecodable"]]


# ---------------------------------------------------------------------------------------------
# results tab


REFERENCE_MODE = {"sr2": "bicubic", "sr4": "bicubic", "enhance": "identity"}
FLOOR_MODE = "constant"
RESULT_METRICS = (("ssim_fov", "SSIM inside the disc", 3),
                  ("psnr_eroded_fov", "PSNR inside the disc (dB)", 2),
                  ("vessel_dice", "Vessel Dice", 3))
"""Columns of the clinicians' tables: (leaderboard column, header, digits)."""


def _ok_rows(rows: list[dict], task: str) -> list[dict]:
    return [r for r in rows if str(r.get("task", "")) == task
            and str(r.get("status", "ok")).startswith("ok")]


def best_fine_tune(rows: list[dict], task: str) -> dict | None:
    """The fine-tune row of ``task`` with the best main metric (SSIM inside the disc): runs and
    their means over seeds, not the base model they start from."""
    runs = [r for r in _ok_rows(rows, task) if str(r.get("kind")) in ("run", "seeds")
            and not catalog.row_label(r).startswith("pretrain")]
    if any(str(r.get("kind")) == "seeds" for r in runs):
        runs = [r for r in runs if str(r.get("kind")) == "seeds"]
    scored = [r for r in runs if not math.isnan(interval(r, MAIN_METRIC)[0])]
    return max(scored, key=lambda r: interval(r, MAIN_METRIC)[0], default=None)


def _named(rows: list[dict], task: str, label: str) -> dict | None:
    return next((r for r in _ok_rows(rows, task) if catalog.row_label(r) == label), None)


def _cell(row: dict, metric: str, digits: int) -> str:
    v, lo, hi = interval(row, metric)
    if v != v:
        return "n/a"
    return f"{v:.{digits}f}" + (f" [{lo:.{digits}f}, {hi:.{digits}f}]" if lo == lo else "")


def task_table(rows: list[dict], task: str) -> tuple[list[tuple[str, dict]], str]:
    """The three rows a clinician compares on ``task`` as (role, row): the reference, the best
    fine-tune, the floor (those present), and a Markdown table of them in the Compare tab's
    names with the main metrics and their 95 % intervals."""
    picked = [(role, row) for role, row in (
        ("reference", _named(rows, task, REFERENCE_MODE[task])),
        ("best fine-tune", best_fine_tune(rows, task)),
        ("floor", _named(rows, task, FLOOR_MODE))) if row is not None]
    metrics = [m for m in RESULT_METRICS if any(
        interval(r, m[0])[0] == interval(r, m[0])[0] for _, r in picked)]
    head = ["", "Mode", *(f"{title} [95% CI]" for _, title, _ in metrics)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for role, row in picked:
        lines.append("| " + " | ".join([role, catalog.display_name(catalog.row_label(row), task),
                                        *(_cell(row, m, d) for m, _, d in metrics)]) + " |")
    return picked, "\n".join(lines)


def _versus(best: dict, ref: dict, where: str, task: str) -> tuple[str, bool]:
    """One clause comparing the best fine-tune with the reference on SSIM inside the disc, and
    whether it loses there."""
    b, r = interval(best, "ssim_fov")[0], interval(ref, "ssim_fov")[0]
    name = catalog.display_name(catalog.row_label(ref), task)
    if b != b or r != r:
        return f"{where} it was not compared with {name}", False
    verb = "beats" if b > r else "loses to" if b < r else "ties with"
    return f"{where} it {verb} {name} ({b:.3f} against {r:.3f})", b < r


def finding(rows: list[dict], real_rows: list[dict], task: str) -> str:
    """The finding of ``task`` in one sentence: the best fine-tune against the reference on the
    synthetic test images and, when measured, on real photographs, saying where it loses."""
    best, ref = best_fine_tune(rows, task), _named(rows, task, REFERENCE_MODE[task])
    if best is None or ref is None:
        return "Not enough results yet: `make eval` scores the fine-tunes and the reference."
    name = catalog.display_name(catalog.row_label(best), task)
    synthetic, lost = _versus(best, ref, "on the synthetic test images", task)
    real_best = _named(real_rows, task, catalog.row_label(best))
    real_ref = _named(real_rows, task, REFERENCE_MODE[task])
    if real_best is not None and real_ref is not None:
        real, real_lost = _versus(real_best, real_ref, "on real photographs", task)
        lost = lost or real_lost
    else:
        real = "on real photographs it has not been measured here"
    verdict = " It loses somewhere: do not take it for an improvement." if lost else ""
    return (f"The best fine-tune, {name}, judged by SSIM inside the disc: {synthetic}; {real}."
            + verdict)


def results_markdown(rows: list[dict], real_rows: list[dict]) -> str:
    """The Results tab for clinicians: per task the finding in one sentence and one short table
    (reference, best fine-tune, floor) on the synthetic test images, and on real photographs
    when measured; then the report scores, which belong here and never beside a report."""
    if not rows:
        return "*No results yet: `make eval` writes them (reports/leaderboard.csv).*"
    out = []
    for task in [t for t in catalog.TASKS if _ok_rows(rows, t)]:
        out += [f"### {catalog.TASKS[task]}", finding(rows, real_rows, task), "",
                "Synthetic test images:", "", task_table(rows, task)[1], ""]
        if _ok_rows(real_rows, task):
            out += ["Real photographs (development set, never trained on):", "",
                    task_table(real_rows, task)[1], ""]
    out += [report_scores_markdown(rows)]
    return "\n".join(out)


def report_scores_markdown(rows: list[dict]) -> str:
    """The report scores on the synthetic test images (DR kappa beside its majority-class floor)
    of each fine-tune: what the reports are worth where they can be checked at all."""
    lines = ["### Text reports, scored on the synthetic test images",
             "Quadratic-weighted kappa of the DR grade the reports state against the truth (1 "
             "perfect, 0 no better than one answer for every image). Real photographs have no "
             "grade labels here, so their reports are not scored and the page does not show them "
             "for photographs unlike the training images. The Compare tab shows a mode's DR "
             f"grade only where its kappa here is at least {GRADE_MIN_KAPPA:.2f} (moderate "
             "agreement); below that, or with no score, the grade is marked not assessed.", "",
             "| Mode | Task | DR kappa | floor |", "|---|---|---|---|"]
    found = False
    for r in rows:
        kappa = interval(r, "dr_kappa")[0]
        if kappa == kappa and str(r.get("status", "ok")).startswith("ok"):
            task = str(r.get("task", ""))
            floor = interval(r, "dr_kappa_floor")[0]
            lines.append(f"| {catalog.display_name(catalog.row_label(r), task)} | "
                         f"{catalog.TASKS.get(task, task)} | {kappa:.3f} | "
                         f"{'n/a' if floor != floor else f'{floor:.3f}'} |")
            found = True
    return "\n".join(lines) if found else ""


def results(reports_dir: Path, real_dir: Path | None = None
            ) -> tuple[str, list[Path], list[tuple[str, str]]]:
    """The Results tab: ``results_markdown``, the full leaderboard files to download
    (leaderboard.csv, leaderboard.md, per_image.csv: those present) and the plots
    reports/*.png as (path, caption)."""
    reports_dir = Path(reports_dir)
    real_rows = read_leaderboard(real_dir) if real_dir is not None else []
    text = results_markdown(read_leaderboard(reports_dir), real_rows)
    files = [reports_dir / n for n in ("leaderboard.csv", "leaderboard.md", "per_image.csv")
             if (reports_dir / n).is_file()]
    plots = [(str(p.resolve()), p.stem.replace("_", " "))
             for p in sorted(reports_dir.glob("*.png"))]
    return text, files, plots
