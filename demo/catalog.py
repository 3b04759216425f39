"""What the page can show: the modes found under ``runs/`` and their evaluated test images.

A *mode* is one column of the comparison: a training preset (its newest run, preferring finished
ones: ``runs/<preset>-<hash8>/``) or a baseline (``runs/_baselines/<name>/`` or computed on the
fly). Its records are the rows of ``records.jsonl`` written by ``make eval``
(``docs/ARCHITECTURE.md``: ``runs/<run>/eval/<ckpt>-<weights>/<task>/records.jsonl``), looked up by
(task, id) before any model is run.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from infer.records import RECORDS, read_jsonl
from medq.checkpoint import read_run_json

log = logging.getLogger(__name__)

DEFAULT_MODES = ("pixel", "ssim_v3", "mixed", "bicubic")
TASKS = {"sr4": "Super-resolution x4", "enhance": "Enhancement", "sr2": "Super-resolution x2"}

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

    def record(self, task: str, sample_id: str) -> Record | None:
        return self.records.get(task, {}).get(sample_id)


def read_task_records(eval_dir: Path) -> dict[str, dict[str, Record]]:
    """``<eval_dir>/<task>/records.jsonl`` -> task -> id -> Record (rows whose output PNG exists)."""
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
        preset = info.get("preset") or (run_dir.name.rsplit("-", 1)[0] if "-" in run_dir.name else None)
        if not preset or not ((run_dir / "checkpoints").is_dir() or (run_dir / "eval").is_dir()):
            continue
        key = (info.get("status") == "finished", (run_dir / "run.json").stat().st_mtime
               if (run_dir / "run.json").exists() else run_dir.stat().st_mtime)
        if preset not in best or key > best[preset][0]:
            best[preset] = (key, run_dir)
    modes: dict[str, Mode] = {}
    for preset, (_, run_dir) in sorted(best.items()):
        ev = _pick_eval(run_dir)
        modes[preset] = Mode(preset, "run", run_dir, ev, read_task_records(ev) if ev else {})
    base_root = runs_dir / "_baselines"
    names = sorted({d.name for d in base_root.glob("*") if d.is_dir()} if base_root.is_dir() else set())
    for name in [*names, *(b for b in baselines if b not in names)]:
        if name in modes:
            log.warning("baseline %r has the name of a preset; the preset is shown", name)
            continue
        root = base_root / name
        ev = root / "eval" if (root / "eval").is_dir() else None
        modes[name] = Mode(name, "baseline", root if root.is_dir() else None, ev,
                           read_task_records(ev) if ev else {})
    return modes


def default_selection(modes: dict[str, Mode]) -> list[str]:
    chosen = [m for m in DEFAULT_MODES if m in modes]
    return chosen or list(modes)[:4]


def test_items(modes: dict[str, Mode], task: str) -> list[tuple[str, Record]]:
    """Evaluated test images of ``task``, (id, a Record holding its input/target/mask), by id."""
    found: dict[str, Record] = {}
    for mode in modes.values():
        for sid, rec in mode.records.get(task, {}).items():
            if sid not in found and rec.path("input") and rec.path("input").is_file() \
                    and rec.path("target") and rec.path("target").is_file():
                found[sid] = rec
    return sorted(found.items())


def working_size(modes: dict[str, Mode], default: int = 64) -> int:
    """Side of the images the models work at: that of an evaluated target, else the
    ``model.image_size`` of a run's config, else ``default``."""
    for mode in modes.values():
        for recs in mode.records.values():
            for rec in recs.values():
                target = rec.path("target")
                if target is not None and target.is_file():
                    from PIL import Image

                    with Image.open(target) as im:
                        return int(im.height)
    for mode in modes.values():
        if mode.kind == "run" and mode.root is not None:
            try:
                from medq.config import load_config

                cfgs = sorted(mode.root.glob("config.toml")) + sorted(
                    mode.root.glob("checkpoints/*/config.toml"))
                if cfgs:
                    return int(load_config(str(cfgs[0])).model.image_size)
            except Exception as e:  # a run's config from another version must not stop the page
                log.warning("%s: cannot read model.image_size: %s", mode.root, e)
    return default
