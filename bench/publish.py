"""Publishing reports, all of them or none: never a half-updated set (``bench eval``, ``score``).

    check_writable(out)                                # before minutes of work: OSError at once
    files = publish_reports(out, write, failed=False)  # write(stage) -> {kind: path(s)}

``write`` fills a staging directory inside ``out`` (so the renames stay on one file system); only
when it has written every file are they moved into place with ``os.replace``. A write error (full
disk, a plot that cannot be drawn) leaves ``out`` exactly as it was and no staging directory
behind. ``out/.eval-files.json`` (written atomically) lists the files the last publication wrote,
so the next complete one removes files it no longer writes (a plot of a task no longer scored).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Callable

from medq.files import TMP_PREFIX, write_json_atomic

FAILED_DIR = "failed"
MANIFEST = ".eval-files.json"


def check_writable(out: Path) -> None:
    """Create a file in ``out`` now, so a bad ``--out`` fails before any work (OSError naming
    the path). Folders this creates are removed again: a refused run leaves no empty report."""
    out = Path(out)
    missing = [p for p in (out, *out.parents) if not p.exists()]
    out.mkdir(parents=True, exist_ok=True)
    probe = out / f"{TMP_PREFIX}{os.getpid()}-probe"
    try:
        probe.write_bytes(b"")
    finally:
        probe.unlink(missing_ok=True)
        for p in missing:  # deepest first
            try:
                p.rmdir()
            except OSError:
                break


def _read_manifest(path: Path) -> set[str]:
    try:
        names = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else []
    except (OSError, ValueError):
        return set()
    return {str(n) for n in names} if isinstance(names, list) else set()


def publish_reports(out: Path, write: Callable[[Path], dict], *, failed: bool = False,
                    prune: bool = True) -> dict:
    """Run ``write(directory) -> {kind: path(s)}`` into a staging directory inside ``out``, then
    move each file into place. A complete evaluation goes to ``out`` (and, with ``prune``, clears
    ``out/failed``); a failed one to ``out/failed``, never over a good report. ``prune``: remove
    the files the previous publication listed and this one did not write (``bench eval``, which
    writes the whole set); without it (``bench score``, which adds rows to a set) they are kept
    and stay listed.
    Returns ``write``'s paths, as they are after the move."""
    out = Path(out)
    final = out / FAILED_DIR if failed else out
    out.mkdir(parents=True, exist_ok=True)
    stage = out / f"{TMP_PREFIX}stage-{os.getpid()}"
    shutil.rmtree(stage, ignore_errors=True)
    try:
        files = write(stage)
        written = sorted(str(p.relative_to(stage)) for p in stage.rglob("*") if p.is_file())
        final.mkdir(parents=True, exist_ok=True)
        for rel in written:
            (final / rel).parent.mkdir(parents=True, exist_ok=True)
            os.replace(stage / rel, final / rel)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    before = _read_manifest(final / MANIFEST)
    if prune:
        for rel in before - set(written):
            (final / rel).unlink(missing_ok=True)
    write_json_atomic(final / MANIFEST, sorted(set(written) | (set() if prune else before)))
    if prune and not failed:  # a complete evaluation supersedes the last failed one
        shutil.rmtree(out / FAILED_DIR, ignore_errors=True)

    def moved(v):
        if isinstance(v, (list, tuple)):
            return [moved(x) for x in v]
        return final / Path(v).relative_to(stage) if isinstance(v, Path) else v
    return {k: moved(v) for k, v in files.items()}
