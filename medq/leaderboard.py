"""The leaderboard's schema: every column of ``reports/leaderboard.csv`` and ``per_image.csv``, what
it means, which way is better, and which metrics are the main ones.

The one home of these facts: ``bench`` writes the reports from it (``bench/report.py``), the demo
reads them through it, so neither guesses a column by its name.

    rows = read_leaderboard(Path("reports"))            # [] when there is none yet
    column("ssim_fov").higher_is_better                 # True
    column("kid_inception_hi").meaning                  # any column, the dynamic ones included
    mode_of(row)                                        # "ssim_v3/onestep", "bicubic", "my-model"
    interval(row, "psnr_fov")                           # (value, lo, hi), NaN where empty
    floor_of("dr_kappa")                                # "dr_kappa_floor"
    present(rows, "distribution")                       # the distribution columns these rows hold

Roles: ``id`` (which row this is), ``main`` (the metrics a mode is judged by; ``MAIN_METRIC``
sorts every table), ``secondary`` (whole-image and multi-scale variants), ``distribution``
(set metrics on image features, named after their backbone), ``report`` (what the generated
reports say, each beside its ``floor``), ``interval`` (a metric's 95 % bootstrap bounds),
``seeds`` (spread over training seeds), ``detail`` (counts, text health, verdict, timing, notes).
A cell is text; empty means undefined or not measured (``number`` reads it as NaN).
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from medq.metrics import SCORED_METRICS
from medq.text_metrics import REPORT_SCORE_COLUMNS

ROLES = ("id", "main", "secondary", "distribution", "report", "floor", "interval", "seeds",
         "detail")


@dataclass(frozen=True)
class Column:
    """One leaderboard column. ``higher_is_better`` is None for a column that is not a score
    (an identity, a count, a floor to read a score against, a text)."""

    name: str
    role: str
    meaning: str
    higher_is_better: bool | None = None
    label: str = ""

    @property
    def header(self) -> str:
        """The column as a header a reader understands."""
        return self.label or self.name


def number(cell) -> float:
    """A CSV / row cell as a float; NaN when it is empty or not a number."""
    try:
        return float(cell)
    except (TypeError, ValueError):
        return math.nan


MAIN_METRIC = "ssim_fov"
"""The metric every table is sorted by: SSIM inside the field of view, the SSIM loss's own
definition (the shared disc rim is not counted)."""
MAIN_METRICS = ("ssim_fov", "psnr_eroded_fov", "lr_psnr", "vessel_dice")
"""What a mode is judged by: inside the field of view (SSIM's windows and the PSNR over their
centres, so the rim band every image shares does not count), consistency with the input, vessels."""
SECONDARY_METRICS = ("psnr_fov", "ssim", "psnr", "ms_ssim", "ms_ssim_fov")

_METRICS = {
    "ssim_fov": ("SSIM over the windows lying entirely inside the field of view", "SSIM FOV"),
    "psnr_eroded_fov": ("PSNR (dB) over the eroded field of view: the pixels ssim_fov's windows "
                        "are centred on (the rim band, where bicubic smears the surround into "
                        "the disc, left out)", "PSNR eroded FOV (dB)"),
    "psnr_fov": ("PSNR (dB) over every pixel of the field of view, rim band included",
                 "PSNR FOV (dB)"),
    "lr_psnr": ("PSNR (dB) of the output downscaled with the task's operator against the "
                "low-resolution input (SR only; consistency with what the model was given)",
                "LR-PSNR (dB)"),
    "vessel_dice": ("Dice of the Sato vessel maps of output and target inside the field of view "
                    "(medq.vessels)", "Vessel Dice"),
    "ssim": ("SSIM over every window of the whole image", "SSIM"),
    "psnr": ("PSNR (dB) over the whole image, capped at 100 dB", "PSNR (dB)"),
    "ms_ssim": ("MS-SSIM over the whole image (5 scales; undefined under 176 px)", "MS-SSIM"),
    "ms_ssim_fov": ("MS-SSIM averaged inside the field of view (undefined under 176 px)",
                    "MS-SSIM FOV"),
}

_ID = {
    "status": "ok, or why the row is not a complete scoring (incomplete, empty, error, ...); "
              "a trailing remark such as (aborted run, scored on request) keeps it ok",
    "name": "the row's name: <run>@<checkpoint>/<weights>[/<output>] for a run, else the model's "
            "or baseline's name",
    "kind": "run, model (--model), baseline, external (bench score) or seeds (mean over seeds)",
    "run": "the run directory's name, the model's name or the predictions folder",
    "preset": "the training preset of a run, with /<output> for its other outputs "
              "(ssim_v3/onestep); pretrain for the checkpoint the runs started from; empty "
              "otherwise",
    "config_hash": "the first 8 hex digits of the run's config hash",
    "checkpoint": "the checkpoint scored (step_N)",
    "step": "its training step",
    "weights": "ema or model",
    "seed": "the run's training seed (run.seed)",
    "output": "the records' output kind scored, when not the sample",
    "task": "sr2, sr4 or enhance",
    "n_images": "images scored",
}
_REPORT = {
    "dr_kappa": ("DR grade of the greedy report against the truth: quadratic-weighted kappa",
                 True, "DR kappa"),
    "dr_parsed": ("share of reports with a readable DR grade", True, "DR grade read"),
    "quality_accuracy": ("quality word of the report against the truth: accuracy", True,
                         "Report quality accuracy"),
    "findings_f1_macro": ("findings of the report against the truth: macro F1 over lesions",
                          True, "Findings F1 (macro)"),
}
_FLOORS = {"dr_kappa": "dr_kappa_floor", "quality_accuracy": "quality_floor"}
_DETAIL = {
    "fd_n": ("images in the distribution metrics", None, "Images (distribution)"),
    "undecodable_rate": ("share of generated report tokens the tokenizer cannot decode (the "
                         "text collapse signal)", False, "Undecodable-token rate"),
    "report_accuracy": ("quality word of the report read back by the harness: accuracy", True,
                        "Report quality-word accuracy"),
    "input_dependence": ("how much better each output matches its own target than the others' "
                         "(0: the output ignores its input)", True, "Input dependence"),
    "verdict": ("healthy, collapsed or unknown (medq.verdict), reasons in note", None, "Verdict"),
    "seconds_per_image": ("inference seconds per image (timing: differs between identical "
                          "runs)", False, "Seconds / image"),
    "note": ("why a value is n/a, what was left out, the verdict's reasons", None, "Note"),
}

ID_COLUMNS = list(_ID)
METRIC_COLUMNS = [c for m in SCORED_METRICS for c in (m, f"{m}_lo", f"{m}_hi")]
TAIL_COLUMNS = list(_DETAIL)
PER_IMAGE_COLUMNS = ["name", "task", "id", *SCORED_METRICS, "undecodable", "seconds"]
TIMING_COLUMNS = ("seconds_per_image", "seconds")
"""The only columns expected to differ between two identical evaluations."""
DISTRIBUTION_PREFIXES = ("fid_", "fd_", "kid_")


def _is_distribution(name: str) -> bool:
    return name.startswith(DISTRIBUTION_PREFIXES) and name != "fd_n"


def floor_of(name: str) -> str | None:
    """The majority-class floor column of a report score (``dr_kappa`` -> ``dr_kappa_floor``);
    None for a column without one."""
    if name in _FLOORS:
        return _FLOORS[name]
    if name.startswith("findings_f1_") and not name.endswith("_floor"):
        return f"{name}_floor"
    return None


def _report_column(name: str) -> Column | None:
    if name not in REPORT_SCORE_COLUMNS:
        return None
    scored = next((s for s in REPORT_SCORE_COLUMNS if floor_of(s) == name), None)
    if scored is not None:
        return Column(name, "floor", f"the majority-class floor of {scored}: one answer for every "
                      f"image", None, f"{column(scored).header} floor")
    if name in _REPORT:
        meaning, better, label = _REPORT[name]
        return Column(name, "report", meaning, better, label)
    lesion = name[len("findings_f1_"):].replace("_", " ")
    return Column(name, "report", f"{lesion} named in the report against the truth: F1", True,
                  f"Findings F1 {lesion}")


def _distribution_column(name: str) -> Column:
    base, bound = name, ""
    for end in ("_lo", "_hi"):
        if name.endswith(end):
            base, bound = name[: -len(end)], end
    kind, _, backbone = base.partition("_")
    what = {"fid": "FID (Inception features)", "kid": f"KID on {backbone} features",
            "fd": f"Frechet distance on {backbone} features (not FID)"}[kind]
    if backbone != "inception":
        what += " (a secondary column: random features, a fidelity proxy)"
    if bound:
        return Column(name, "interval", f"{'lower' if bound == '_lo' else 'upper'} end of the "
                      f"95 % bootstrap interval of {base}", None, f"{base} {bound[1:]}")
    return Column(name, "distribution", f"{what} between the outputs and the targets; a set "
                  f"metric, biased upwards on small sets", False,
                  "FID" if kind == "fid" else f"{kind.upper()} {backbone}")


def column(name: str) -> Column:
    """The ``Column`` of any leaderboard column name, dynamic ones included (``kid_<backbone>``
    and its interval, ``<metric>_lo`` / ``_hi``, ``<metric>_seed_sd``, ``n_seeds``). KeyError
    for a name the leaderboard never writes."""
    if name in _ID:
        return Column(name, "id", _ID[name], None, name.replace("_", " ").capitalize())
    if name in _METRICS:
        role = "main" if name in MAIN_METRICS else "secondary"
        return Column(name, role, _METRICS[name][0], True, _METRICS[name][1])
    for end, what in (("_lo", "lower"), ("_hi", "upper")):
        if name.endswith(end) and name[: -len(end)] in _METRICS:
            return Column(name, "interval", f"{what} end of the 95 % bootstrap interval of the "
                          f"mean of {name[:-len(end)]} over images", None)
    if name.endswith("_seed_sd") and name[: -len("_seed_sd")] in _METRICS:
        return Column(name, "seeds", f"standard deviation of {name[:-len('_seed_sd')]} over "
                      f"training seeds (rows of kind seeds)", None)
    if name == "n_seeds":
        return Column(name, "seeds", "training seeds averaged (rows of kind seeds)", None, "Seeds")
    if name in _DETAIL:
        meaning, better, label = _DETAIL[name]
        return Column(name, "detail", meaning, better, label)
    found = _report_column(name)
    if found is not None:
        return found
    if _is_distribution(name):
        return _distribution_column(name)
    raise KeyError(f"{name!r} is not a leaderboard column")


def leaderboard_columns(rows: Iterable[dict]) -> list[str]:
    """The columns of ``leaderboard.csv`` for ``rows``, in order: the fixed ones, plus the
    distribution columns the rows carry (named after the backbone: fid_inception /
    fd_randresnet18, kid_* with its interval) and the seed columns of rows averaged over training
    seeds (n_seeds, <metric>_seed_sd), each sorted."""
    rows = list(rows)
    extra = sorted({k for r in rows for k in r if _is_distribution(k)})
    extra += sorted({k for r in rows for k in r if k == "n_seeds" or k.endswith("_seed_sd")})
    return ID_COLUMNS + METRIC_COLUMNS + extra + list(REPORT_SCORE_COLUMNS) + TAIL_COLUMNS


def present(rows: Iterable[dict], role: str) -> list[str]:
    """The columns of ``role`` that ``rows`` hold a value in, in leaderboard order."""
    if role not in ROLES:
        raise ValueError(f"role {role!r}: expected one of {', '.join(ROLES)}")
    rows = list(rows)
    return [c for c in leaderboard_columns(rows) if column(c).role == role
            and any(str(r.get(c, "") or "") != "" for r in rows)]


def mode_of(row: dict) -> str:
    """The mode a row belongs to: a run's preset (``ssim_v3``, ``ssim_v3/onestep``, ``pretrain``),
    else its name (a baseline, a ``--model``, an external folder)."""
    return str(row.get("preset") or row.get("name") or "")


def interval(row: dict, metric: str) -> tuple[float, float, float]:
    """(mean, 95 % lower, upper) of ``metric`` in ``row``, NaN where a cell is empty."""
    return number(row.get(metric)), number(row.get(f"{metric}_lo")), \
        number(row.get(f"{metric}_hi"))


def read_leaderboard(path: Path) -> list[dict]:
    """Rows of a ``leaderboard.csv`` (or of the one in the folder ``path``) as dicts of strings;
    [] when there is none."""
    path = Path(path)
    if path.is_dir():
        path = path / "leaderboard.csv"
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))
