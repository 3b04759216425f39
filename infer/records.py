"""``records.jsonl``: atomic writes, per-rank part files, merging, and what counts as finished.

One directory per task (``docs/ARCHITECTURE.md``)::

    <eval_dir>/<task>/records.jsonl               one row per sample, sorted by (task, id)
    <eval_dir>/<task>/records.part-<r>.jsonl      rank r's rows while running (merged, then removed)
    <eval_dir>/<task>/images/<id>_{input,output,target,mask}.png

Every file is written to a temp name in the same directory and renamed into place, so a reader
never sees a half-written file under its final name. A row is *finished* when it has every field
and the four PNGs it names exist; only then does a re-run skip it.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Iterable

log = logging.getLogger(__name__)

RECORDS = "records.jsonl"
PART_GLOB = "records.part-*.jsonl"
KINDS = ("input", "output", "target", "mask")
FIELDS = ("id", "task", "instruction", "run", "checkpoint", "weights", "seed", "settings", *KINDS, "seconds",
          "text", "report_text", "report_ids", "undecodable", "undecodable_positions",
          "quality_label", "report_quality")


def temp_name(path: Path) -> Path:
    """A sibling temp path that no reader globs for (leading dot, pid)."""
    return path.with_name(f".tmp-{os.getpid()}-{path.name}")


def write_jsonl_atomic(path: Path, rows: Iterable[dict]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_name(path)
    with open(tmp, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, sort_keys=True) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def write_json_atomic(path: Path, obj) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_name(path)
    tmp.write_text(json.dumps(obj, indent=1, sort_keys=True, default=str) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


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
