"""``records.jsonl``: atomic writes, per-rank part files, merging, and what counts as finished.

One directory per task (``docs/ARCHITECTURE.md``)::

    <eval_dir>/<task>/records.jsonl               one row per sample, sorted by (task, id)
    <eval_dir>/<task>/records.part-<r>.jsonl      rank r's rows while running (merged, then removed)
    <eval_dir>/<task>/images/<id>_{input,output,target,mask}.png
    <eval_dir>/data.json                          the data these outputs are of (``data_key``)

An evaluation directory holds the outputs of one data source only: the default directories are
named by the data (``eval`` for the embedded test split, ``eval-<source>-<split>-<sha8>`` for any
other, ``keyed_eval_dir``), and ``claim_eval_dir`` refuses or clears outputs of other data.

Every file is written to a temp name in the same directory and renamed into place, so a reader
never sees a half-written file under its final name. A row is *finished* when it has every field
and the four PNGs it names exist; only then does a re-run skip it.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

from medq.files import write_json_atomic, write_jsonl_atomic  # noqa: F401 - this module's API

log = logging.getLogger(__name__)

RECORDS = "records.jsonl"
PART_GLOB = "records.part-*.jsonl"
KINDS = ("input", "output", "target", "mask")
FIELDS = ("id", "task", "instruction", "run", "checkpoint", "weights", "seed", "settings", *KINDS,
          "seconds", "text", "report_text", "report_ids", "undecodable", "undecodable_positions",
          "quality_label", "report_quality")


def read_jsonl(path: Path) -> list[dict]:
    """Rows (dicts) of a JSONL file; a line that does not parse is logged with its file and line
    and skipped (the harness then redoes that sample; the demo just does not show it)."""
    path = Path(path)
    if not path.is_file():
        return []
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            log.warning("%s:%d: not JSON, skipped", path, n)
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


def part_path(task_dir: Path, rank: int) -> Path:
    return Path(task_dir) / f"records.part-{rank}.jsonl"


def is_finished(row: dict, task_dir: Path) -> bool:
    """Every field present and every PNG it names on disk."""
    if any(k not in row for k in FIELDS):
        return False
    return all(isinstance(row[k], str) and (Path(task_dir) / row[k]).is_file() for k in KINDS)


def existing_rows(task_dir: Path) -> dict[str, dict]:
    """Finished rows already on disk (records.jsonl, then part files of any earlier run), by id."""
    task_dir = Path(task_dir)
    found: dict[str, dict] = {}
    for path in [task_dir / RECORDS, *sorted(task_dir.glob(PART_GLOB))]:
        for row in read_jsonl(path):
            if is_finished(row, task_dir):
                found[str(row["id"])] = row
    return found


def merge(task_dir: Path) -> Path:
    """Fold every part file into ``records.jsonl`` (sorted by (task, id)), then remove the parts."""
    task_dir = Path(task_dir)
    rows = existing_rows(task_dir)
    out = write_jsonl_atomic(task_dir / RECORDS,
                             sorted(rows.values(), key=lambda r: (r["task"], str(r["id"]))))
    for part in task_dir.glob(PART_GLOB):
        part.unlink(missing_ok=True)
    return out


def read_records(path: Path) -> list[dict]:
    """All rows under ``path``: a records.jsonl file, a task directory, or an eval directory
    holding one directory per task."""
    path = Path(path)
    if path.is_file():
        return read_jsonl(path)
    if (path / RECORDS).is_file():
        return read_jsonl(path / RECORDS)
    rows = []
    for f in sorted(path.glob(f"*/{RECORDS}")):
        rows.extend(read_jsonl(f))
    return rows


# ---------------------------------------------------------------------------------------------
# which data an evaluation directory holds

DATA_FILE = "data.json"
EMBEDDED_EVAL = "eval"


def data_key(data_cfg, image_size: int, split: str) -> dict:
    """What an evaluation's images are, as JSON-able values: the source kind, its root and labels
    file (absolute), the split, the working image size and the degradation seed (plus what picks
    the images of a split: synthetic count, split fractions, EyeQ quality filter).

    ``data_cfg``: ``medq.config.DataConfig``."""
    def absolute(p):
        return str(Path(p).expanduser().resolve()) if p else ""

    key = {"source": data_cfg.source, "root": absolute(data_cfg.root),
           "labels": absolute(data_cfg.labels), "split": split, "image_size": int(image_size),
           "seed": int(data_cfg.seed)}
    if data_cfg.source == "synthetic":
        key["num_images"] = int(data_cfg.num_images)
    if split != "all":
        key["val_fraction"], key["test_fraction"] = data_cfg.val_fraction, data_cfg.test_fraction
    if data_cfg.source == "eyeq":
        key["target_quality"] = sorted(data_cfg.target_quality)
    return key


def eval_dir_name(key: dict) -> str:
    """``eval`` for the embedded (synthetic) test split, which the demo shows; any other data
    ``eval-<source>-<split>-<sha8 of the key>``, so two data sources never share a directory."""
    if key["source"] == "synthetic" and key["split"] == "test":
        return EMBEDDED_EVAL
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:8]
    return f"eval-{key['source']}-{key['split']}-{digest}"


def keyed_eval_dir(out_dir: Path, key: dict) -> Path:
    """The default output directory ``out_dir`` (``<run>/eval/<ckpt>-<weights>``,
    ``<out>/_baselines/<name>/eval``, ...) for the data of ``key``: its last path component named
    ``eval`` becomes ``eval_dir_name(key)``. A path without such a component is returned as is."""
    parts = list(Path(out_dir).parts)
    for i in range(len(parts) - 1, -1, -1):
        if parts[i] == EMBEDDED_EVAL:
            parts[i] = eval_dir_name(key)
            return Path(*parts)
    return Path(out_dir)


class DataMismatchError(ValueError):
    """An evaluation directory holds outputs of other data than the evaluation at hand."""


def claim_eval_dir(out_dir: Path, key: dict, *, replace_stale: bool) -> None:
    """Make ``out_dir`` hold outputs of ``key``'s data only: record the key in ``data.json``.

    When the directory holds task outputs of other data (another ``data.json``, or none from
    before outputs were keyed): with ``replace_stale`` (a default, derived directory) those task
    directories are removed with a warning and redone; without it (a directory the user named)
    DataMismatchError names both."""
    import shutil

    out_dir = Path(out_dir)
    path = out_dir / DATA_FILE
    old = None
    if path.is_file():
        try:
            old = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            old = {"unreadable": str(path)}
    tasks = [d for d in out_dir.glob("*") if d.is_dir() and (d / RECORDS).is_file()
             or d.is_dir() and any(d.glob(PART_GLOB))]
    if old == key or (old is None and not tasks):
        if old is None:
            write_json_atomic(path, key)
        return
    was = "no data.json (written before outputs were keyed by data)" if old is None else \
        f"data {json.dumps(old, sort_keys=True)}"
    if not replace_stale:
        raise DataMismatchError(f"{out_dir} holds outputs of other data ({was}); this evaluation "
                                f"is of {json.dumps(key, sort_keys=True)}: choose another --out "
                                f"or delete that directory")
    log.warning("%s held outputs of other data (%s); removing %s and redoing them", out_dir, was,
                ", ".join(d.name for d in tasks) or "nothing")
    for d in tasks:
        shutil.rmtree(d)
    write_json_atomic(path, key)


# ---------------------------------------------------------------------------------------------
# retention: an evaluation directory exists only while it holds outputs


def holds_outputs(out_dir: Path) -> bool:
    """Whether ``out_dir`` holds any file but its ``data.json`` (records, part files, PNGs)."""
    out_dir = Path(out_dir)
    return any(p.is_file() and p != out_dir / DATA_FILE for p in out_dir.rglob("*"))


def remove_unfilled(out_dir: Path, *, stop: Path) -> bool:
    """The retention rule of evaluation directories: one that holds no output (nothing but its
    ``data.json`` and empty folders, e.g. after its model failed before writing a sample) is
    removed, and then each parent that this leaves empty, up to ``stop`` (not included). A
    directory holding any output is kept, so a rerun resumes from it. Returns whether ``out_dir``
    was removed."""
    import shutil

    out_dir, stop = Path(out_dir), Path(stop)
    if not out_dir.is_dir() or holds_outputs(out_dir):
        return False
    shutil.rmtree(out_dir)
    parent = out_dir.parent
    while parent != stop and stop in parent.parents and not any(parent.iterdir()):
        parent.rmdir()
        parent = parent.parent
    return True
