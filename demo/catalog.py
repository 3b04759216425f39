"""What the page can show: the modes found under ``runs/`` and their evaluated test images.

A *mode* is one column of the comparison: a training preset (its newest run, preferring finished
ones: ``runs/<preset>-<hash8>/``) or a baseline (``runs/_baselines/<name>/`` or computed on the
fly). Its records are the rows of ``records.jsonl`` written by ``make eval``
(``docs/ARCHITECTURE.md``: ``runs/<run>/eval/<ckpt>-<weights>/<task>/records.jsonl``), looked up by
(task, id) before any model is run. A records row may name further outputs besides ``output``
(``output_<kind>``, e.g. a one-step estimate): each becomes a mode of its own, ``<label>:<kind>``.

Everything is read generically from what the eval writes, so new modes and verdict reasons
appear without a change here: verdicts from ``verdict*.json`` / ``summary*.json`` next to the
records and the ``verdict*`` / ``note`` columns of ``reports/leaderboard.csv``. Leaderboard cells
are read through ``medq.leaderboard`` only (the schema: ``read_leaderboard``, ``mode_of``,
``interval``), never by guessing a column's name.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from medq.checkpoint import read_run_json
from medq.harness.records import RECORDS, read_jsonl
from medq.tasks import TASK_NAMES

log = logging.getLogger(__name__)

DEFAULT_MODELS = ("ssim_v3:onestep", "ssim_v3", "pixel:onestep", "pixel", "mixed")
"""Model modes selected at start, in this order of preference, at most ``DEFAULT_MODEL_COUNT``;
the task's reference (bicubic for SR, the unchanged input for enhancement) is added to them."""
DEFAULT_MODEL_COUNT = 3
# The page's task choices, the headline task (x4, where bicubic loses most) first.
TASKS = {t: TASK_NAMES[t] for t in ("sr4", "enhance", "sr2")}

# label -> (readable name, one plain line: what the output is). Unknown labels show as
# "Training preset <label>".
MODE_INFO = {
    "pretrain": ("Base model (no image loss)",
                 "the starting model, before any of the fine-tunings below"),
    "pixel": ("Pixel-loss fine-tune", "trained to match the target pixel by pixel"),
    "ssim_v1": ("SSIM fine-tune (v1)",
                "trained for structural similarity at full strength (failed in the original "
                "work)"),
    "ssim_v2": ("SSIM fine-tune (v2, as intended)",
                "trained for structural similarity, gentler than v1"),
    "ssim_v2_as_run": ("SSIM fine-tune (v2, as run)",
                       "the failed original run: trained from scratch by mistake"),
    "ssim_v3": ("SSIM fine-tune (v3)",
                "trained for structural similarity with the safe settings"),
    "ssim_v3_relaxed": ("SSIM fine-tune (v3 relaxed)",
                        "v3 with a stronger structural-similarity term"),
    "mixed": ("Pixel + SSIM fine-tune", "trained for pixel match and structural similarity"),
    "bicubic": ("Bicubic upscaling", "no model: the small image enlarged by standard "
                "interpolation"),
    "lanczos": ("Lanczos upscaling", "no model: the small image enlarged by Lanczos "
                "interpolation"),
    "identity": ("Unchanged input", "no model: the input as it is"),
    "constant": ("Constant image", "no model: one average fundus, whatever the input"),
}
# On enhancement input and output have one size: the upscaling baselines return the input.
UNCHANGED_ON_ENHANCE = ("bicubic", "lanczos", "identity")
OUTPUT_PREFIX = "output_"
IGNORES_INPUT = "ignores its input"

# Directories in runs/ that are not training runs.
NOT_RUNS = {"vae", "_cache", "_baselines"}


@dataclass
class Record:
    """One evaluated sample: the records.jsonl row and the folder its relative paths start from."""

    row: dict
    folder: Path

    def path(self, kind: str) -> Path | None:
        rel = self.row.get(kind)
        return self.folder / rel if isinstance(rel, str) else None


@dataclass
class Mode:
    label: str
    kind: str                      # "run" | "baseline"
    root: Path | None              # run directory / baseline directory (None: computed only)
    eval_dir: Path | None = None   # the evaluation whose records are shown
    records: dict[str, dict[str, Record]] = field(default_factory=dict)   # task -> id -> Record
    output_key: str = "output"     # the records field of the image shown ("output_onestep", ...)
    parent: str | None = None      # for an extra output: the label of the mode that wrote it
    weights: Path | None = None    # what ``load_run`` loads (a run or checkpoint directory); None:
    #                                a run whose weights are not here (then no uploads)

    def record(self, task: str, sample_id: str) -> Record | None:
        return self.records.get(task, {}).get(sample_id)


def display_name(label: str, task: str | None = None) -> str:
    """The readable name of a mode on the page (Compare and Results alike)."""
    base, _, extra = label.partition(":")
    if task == "enhance" and base in UNCHANGED_ON_ENHANCE:
        name = "Unchanged input" + ("" if base == "identity" else f" ({base})")
    else:
        name = MODE_INFO.get(base, (f"Training preset {base}", ""))[0]
    if extra == "onestep":
        return f"{name}, one-step estimate"
    return f"{name}, {extra.upper() if len(extra) <= 4 else extra} output" if extra else name


def description(label: str, task: str | None = None) -> str:
    """One line saying what the mode is."""
    base, _, extra = label.partition(":")
    if task == "enhance" and base in UNCHANGED_ON_ENHANCE:
        text = "no model: on enhancement the input is returned as it is"
    else:
        text = MODE_INFO.get(base, ("", f"the newest run of configs/{base}.toml"))[1]
    if extra == "onestep":
        text += ("; its one-pass estimate, averaged over a few tries: smoother than a drawn "
                 "picture, closer to the original on average")
    elif extra:
        text += f"; its {extra} output, recorded for the test images"
    return text


def read_task_records(eval_dir: Path) -> dict[str, dict[str, Record]]:
    """``<eval_dir>/<task>/records.jsonl`` -> task -> id -> Record (rows whose output PNG
    exists)."""
    out: dict[str, dict[str, Record]] = {}
    for file in sorted(Path(eval_dir).glob(f"*/{RECORDS}")):
        for row in (r for r in read_jsonl(file) if "id" in r):
            rec = Record(row, file.parent)
            task = str(row.get("task") or file.parent.name)
            if rec.path("output") is not None and rec.path("output").is_file():
                out.setdefault(task, {})[str(row["id"])] = rec
    return out


def _pick_eval(run_dir: Path) -> Path | None:
    """The evaluation of a run to show: EMA weights first, then the latest checkpoint by name
    (``step_000300-ema`` sorts after ``step_000100-ema``)."""
    evals = [d for d in (run_dir / "eval").glob("*") if d.is_dir() and any(d.glob(f"*/{RECORDS}"))]
    if not evals:
        return None
    return max(evals, key=lambda d: (d.name.endswith("-ema"), d.name))


def discover(runs_dir: Path, baselines: tuple[str, ...] = ()) -> dict[str, Mode]:
    """Modes under ``runs_dir``: one per preset (its newest run; finished ones first) and one per
    baseline directory, plus every name in ``baselines`` (computed on demand), label -> Mode."""
    runs_dir = Path(runs_dir)
    best: dict[str, tuple[tuple, Path]] = {}
    for run_dir in sorted(runs_dir.glob("*")) if runs_dir.is_dir() else []:
        if not run_dir.is_dir() or run_dir.name in NOT_RUNS or run_dir.name.startswith((".", "_")):
            continue
        info = read_run_json(run_dir) or {}
        preset = info.get("preset") or (run_dir.name.rsplit("-", 1)[0] if "-" in run_dir.name
                                        else None)
        if not preset or not ((run_dir / "checkpoints").is_dir() or (run_dir / "eval").is_dir()):
            continue
        key = (info.get("status") == "finished", (run_dir / "run.json").stat().st_mtime
               if (run_dir / "run.json").exists() else run_dir.stat().st_mtime)
        if preset not in best or key > best[preset][0]:
            best[preset] = (key, run_dir)
    # The checkpoints the runs started from (bench eval scores them under _init/<hash>/, e.g. the
    # shipped base model): the base model's mode unless a pretrain run of its own is there.
    for init_dir in sorted((runs_dir / "_init").glob("*")) if (runs_dir / "_init").is_dir() else []:
        if "pretrain" not in best and (init_dir / "eval").is_dir():
            best["pretrain"] = ((False, 0.0), init_dir)
    modes: dict[str, Mode] = {}
    for preset, (_, run_dir) in sorted(best.items()):
        ev = _pick_eval(run_dir)
        if ev is None and run_dir.parent.name == "_init":
            ev = run_dir / "eval" if any((run_dir / "eval").glob(f"*/{RECORDS}")) else None
        records = read_task_records(ev) if ev else {}
        weights = _weights_of(run_dir, records)
        modes[preset] = Mode(preset, "run", run_dir, ev, records, weights=weights)
        onestep = ev.with_name(ev.name + "-onestep") if ev is not None else None
        # bench eval's one-step output of the same checkpoint
        if onestep is not None and onestep.is_dir():
            modes[f"{preset}:onestep"] = Mode(f"{preset}:onestep", "run", run_dir, onestep,
                                           read_task_records(onestep), parent=preset,
                                           weights=weights)
    base_root = runs_dir / "_baselines"
    names = sorted({d.name for d in base_root.glob("*") if d.is_dir()} if base_root.is_dir()
                   else set())
    for name in [*names, *(b for b in baselines if b not in names)]:
        if name in modes:
            log.warning("baseline %r has the name of a preset; the preset is shown", name)
            continue
        root = base_root / name
        ev = root / "eval" if (root / "eval").is_dir() else None
        modes[name] = Mode(name, "baseline", root if root.is_dir() else None, ev,
                           read_task_records(ev) if ev else {})
    for label, mode in list(modes.items()):
        for key in sorted({k for recs in mode.records.values() for rec in recs.values()
                           for k, v in rec.row.items()
                           if k.startswith(OUTPUT_PREFIX) and isinstance(v, str)}):
            extra = Mode(f"{label}:{key[len(OUTPUT_PREFIX):]}", mode.kind, mode.root, mode.eval_dir,
                         output_key=key, parent=label, weights=mode.weights)
            extra.records = {t: {i: r for i, r in recs.items() if r.path(key) is not None
                                 and r.path(key).is_file()} for t, recs in mode.records.items()}
            modes[extra.label] = extra
    return modes


def _weights_of(run_dir: Path, records: dict[str, dict[str, Record]]) -> Path | None:
    """The directory ``medq.harness.load.load_run`` loads for a mode: the run itself when it holds
    checkpoints; for the evaluated starting point (``runs/_init/<sha8>``, the shipped base model)
    the checkpoint its records name in their ``run`` field, when it is on this disk."""
    if (run_dir / "checkpoints").is_dir():
        return run_dir
    for recs in records.values():
        for rec in recs.values():
            source = Path(str(rec.row.get("run") or ""))
            if str(source) and (source / "state.json").is_file():
                return source
    return None


def runs_on_uploads(mode: Mode, modes: dict[str, Mode]) -> bool:
    """Whether the page can run ``mode`` on an uploaded photograph: a baseline, a run whose
    weights are here, or its one-step output (the same weights read out differently). Any other
    records-only output (``output_<kind>``) exists for evaluated test images only."""
    if mode.kind == "baseline":
        return True
    if mode.parent is not None:
        parent = modes.get(mode.parent)
        return mode.label.endswith(":onestep") and parent is not None and parent.weights is not None
    return mode.weights is not None


def default_selection(offered: list[str], task: str) -> list[str]:
    """The modes ticked at start among ``offered``: up to ``DEFAULT_MODEL_COUNT`` models of
    ``DEFAULT_MODELS`` and the task's reference, so the page opens on three or four panels
    besides input and target, not on every mode there is."""
    models = [m for m in DEFAULT_MODELS if m in offered][:DEFAULT_MODEL_COUNT]
    if not models:
        models = [m for m in offered if m not in UNCHANGED_ON_ENHANCE][:DEFAULT_MODEL_COUNT]
    refs = ("identity", "bicubic") if task == "enhance" else ("bicubic", "lanczos")
    return models + [r for r in refs if r in offered][:1]


def test_items(modes: dict[str, Mode], task: str) -> list[tuple[str, Record]]:
    """Evaluated test images of ``task``, (id, a Record holding its input/target/mask), by id."""
    found: dict[str, Record] = {}
    for mode in modes.values():
        for sid, rec in mode.records.get(task, {}).items():
            if sid not in found and rec.path("input") and rec.path("input").is_file() \
                    and rec.path("target") and rec.path("target").is_file():
                found[sid] = rec
    return sorted(found.items())


def _run_config(modes: dict[str, Mode]):
    """The saved config of the first run among ``modes`` whose config this code reads, or None."""
    from medq.config import load_config

    for mode in modes.values():
        if mode.kind != "run" or mode.root is None:
            continue
        for path in [*sorted(mode.root.glob("config.toml")),
                     *sorted(mode.root.glob("checkpoints/*/config.toml"))][:1]:
            try:
                return load_config(str(path))
            except Exception as e:  # noqa: BLE001 - a run's config from another version must not stop the page
                log.warning("%s: cannot read it (%s)", path, e)
    return None


def working_size(modes: dict[str, Mode]) -> int:
    """Side of the images the models work at: that of an evaluated target, else the
    ``data.image_size`` of a run's config, else ``medq.config``'s default (0, a photograph's own
    size, counts as the default too: test images always have one size)."""
    from medq.config import DataConfig

    for mode in modes.values():
        for recs in mode.records.values():
            for rec in recs.values():
                target = rec.path("target")
                if target is not None and target.is_file():
                    from PIL import Image

                    with Image.open(target) as im:
                        return int(im.height)
    cfg = _run_config(modes)
    return (cfg.data.image_size if cfg is not None else 0) or DataConfig.image_size


def tile_size(modes: dict[str, Mode]) -> int:
    """The models' tile (``model.tile_size``, the smallest image they generate): a run's config,
    else ``medq.config``'s default."""
    from medq.config import ModelConfig

    cfg = _run_config(modes)
    return cfg.model.tile_size if cfg is not None else ModelConfig.tile_size


# ---------------------------------------------------------------------------------------------
# verdicts and leaderboard rows, read from what the eval writes


def _verdict_reasons(obj) -> list[str]:
    """Reasons from a verdict-like JSON object: {"reasons": [...]}, {"verdict": {...}}, nested."""
    if not isinstance(obj, dict):
        return []
    found = [str(r) for r in obj.get("reasons") or [] if isinstance(obj.get("reasons"), list)]
    for key in ("verdict", "summary"):
        found += _verdict_reasons(obj.get(key))
    return found


def verdict_reasons(mode: Mode, task: str, leaderboard: list[dict] | None = None) -> list[str]:
    """Every verdict reason recorded for ``mode`` on ``task``: ``verdict*.json`` /
    ``summary*.json`` in the task's eval folder or the eval folder itself, then the leaderboard
    row's ``verdict*`` and ``note`` cells. Unreadable files are logged and skipped."""
    import json

    reasons: list[str] = []
    if mode.eval_dir is not None:
        for folder in (mode.eval_dir / task, mode.eval_dir):
            for f in sorted([*folder.glob("verdict*.json"), *folder.glob("summary*.json")]):
                try:
                    reasons += _verdict_reasons(json.loads(f.read_text(encoding="utf-8")))
                except (OSError, ValueError) as e:
                    log.warning("%s: not readable JSON (%s), skipped", f, e)
    for row in leaderboard_rows(leaderboard or [], mode, task):
        for col, cell in row.items():
            if col and (col.startswith("verdict") or col == "note") and cell \
                    and cell not in ("healthy", "collapsed", "unknown"):
                reasons += [r.strip() for r in str(cell).split(";") if r.strip()]
    return list(dict.fromkeys(reasons))


def ignores_input(reasons: list[str]) -> str | None:
    """The reason saying the mode's outputs ignore its input (the input-dependence check)."""
    return next((r for r in reasons if IGNORES_INPUT in r.lower()), None)


def row_label(row: dict) -> str:
    """The mode label of a leaderboard row as the Compare tab names modes
    (``medq.leaderboard.mode_of``; its one-step row ``ssim_v3/onestep`` -> ``ssim_v3:onestep``)."""
    from medq.leaderboard import mode_of

    return mode_of(row).replace("/", ":")


def leaderboard_rows(rows: list[dict], mode: Mode, task: str) -> list[dict]:
    base = mode.parent or mode.label
    run = mode.root.name if mode.root is not None else None
    return [r for r in rows if str(r.get("task", task)) == task
            and (row_label(r) == base or (run and r.get("run") == run) or r.get("name") == base)]


def verdict_status(rows: list[dict], mode: Mode, task: str) -> str | None:
    """The leaderboard's verdict of ``mode`` on ``task`` (healthy | collapsed | unknown), if any."""
    found = [r.get("verdict") for r in leaderboard_rows(rows, mode, task) if r.get("verdict")]
    return found[-1] if found else None
