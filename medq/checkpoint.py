"""Training checkpoint files: atomic directories, content hashes, a ``latest`` pointer, retention.

Layout (``docs/ARCHITECTURE.md``)::

    <run_dir>/checkpoints/step_000300/   model.safetensors ema.safetensors arch.json tokenizer.json
                                         optim.pt config.toml state.json sha256.json
    <run_dir>/checkpoints/latest         the name of the newest complete checkpoint directory
    <run_dir>/checkpoints/best.json      {"name", "val_loss"} of the best validation checkpoint
    <run_dir>/run.json                   {"preset", "hash", "status", "step"}

A checkpoint is written into ``checkpoints/.tmp-<name>-<pid>/``: the writers' files, ``state.json``,
then ``sha256.json`` (the sha256 of every other file, the format of the shipped weights'
``manifest.json``), every file fsynced; then the directory is renamed into place (``os.replace``)
and only then ``latest`` is rewritten (temp file + ``os.replace``). A process killed at any point
leaves either the previous checkpoint as ``latest`` or the new one complete; temp directories are
never read and are removed by ``clean_temp``. ``MEDQ_TEST_SLOW_SAVE=<seconds>`` sleeps after each
file (and in retention between the rename and the delete) so a test can kill a save or a
retention half-way. A write that fails for lack of space (safetensors' ``SafetensorError``, torch's
"unexpected pos", which never mention the disk) is raised as ``CheckpointWriteError``, an
``OSError`` naming the disk.

Faults (``docs/ARCHITECTURE.md``, "Faults"): ``state.json`` records ``good`` (the step before the
save was finite and every weight is finite); retention keeps the newest good checkpoint and renames
a doomed directory to ``.tmp-del-*`` before deleting it. ``verify_checkpoint`` checks every file
against the sha256 recorded when it was written (so a same-size corruption is caught, not trained
on) and, before that, its structure (safetensors headers against the file size, ``optim.pt``'s zip
CRCs, the JSON files), which names a truncation as one. ``usable_checkpoint`` falls back from a
broken checkpoint to the previous complete one, moving the broken directory to ``broken-step_*``;
it never goes past the checkpoint ``latest`` names, and ``set_aside_newer`` moves complete
checkpoints newer than the resume point to ``stale-step_*`` (their metrics rows are rewritten by
the resumed run). Retention keeps the newest ``SET_ASIDE_KEPT`` of each kind of set-aside folder.

Weights are safetensors only; ``optim.pt`` (optimizer, scheduler, RNG states) is the one pickle,
and it never holds weights a model is initialised from. Loading a model from a checkpoint is
``medq.run_loading``; the run directory's lock is ``medq.run_lock``.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import shutil
import struct
import time
import zipfile
from pathlib import Path
from typing import Callable

from medq.files import TMP_PREFIX, disk_note, fsync_path, sha256_file, write_text_atomic
from medq.models.io import fingerprint  # noqa: F401 - one fingerprint everywhere (init.json, logs, reports)

# The shipped weights (``weights/``, checked by ``python -m train weights --check``).
SHIPPED_FILES = ("ema.safetensors", "arch.json", "tokenizer.json", "config.toml", "state.json")
MANIFEST = "manifest.json"
REBUILD = "make weights   (python -m train weights)"


def is_shipped(spec: str) -> bool:
    """Whether a ``model.vae`` / ``init.from`` value names a directory of the shipped weights."""
    path = Path(spec)
    return bool(spec) and (path.parent.name == "weights" or (path.parent / MANIFEST).is_file()
                           or (path / MANIFEST).is_file())


log = logging.getLogger(__name__)

STATE_FILE = "state.json"
HASHES = "sha256.json"
"""Per-file sha256 of a checkpoint, ``{"sha256": {file name: hex digest}}``, written last."""
LATEST = "latest"
BEST = "best.json"
SLOW_SAVE_ENV = "MEDQ_TEST_SLOW_SAVE"
BROKEN_PREFIX = "broken-"
STALE_PREFIX = "stale-"
SET_ASIDE_KEPT = 1
"""Retention rule for set-aside checkpoint folders: ``apply_retention`` keeps the newest (highest
step) ``broken-*`` and the newest ``stale-*`` folder and deletes older ones. One of each is the
evidence of the latest fault (its warning, in the log, names the file); more would let repeated
faults fill the disk with checkpoints that are never read again (44 of a run's 73 MB after one
pass of a chaos driver)."""
STEP_NAME = re.compile(r"step_\d+")
# Messages of writers that fail for lack of space without raising OSError (safetensors' Rust
# error carries the OS error text; torch's zip writer only says "unexpected pos").
_SPACE_WORDS = {errno.ENOSPC: ("no space left", "os error 28", "storagefull"),
                errno.EDQUOT: ("quota exceeded", "os error 122"),
                errno.EFBIG: ("file too large", "os error 27")}
_FAILED_WRITE_WORDS = ("unexpected pos", "file write failed", "failed writing")


class CheckpointError(RuntimeError):
    """A checkpoint cannot be used, or none is left; the message names the file and what to do."""


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (full disk, quota, permissions): ``errno`` says which,
    the message names the checkpoint, the file being written and the disk."""

    def __str__(self) -> str:
        return self.strerror or super().__str__()


def _pause() -> float:
    return float(os.environ.get(SLOW_SAVE_ENV, "0") or 0)


def step_name(step: int) -> str:
    return f"step_{step:06d}"


def _as_write_error(exc: Exception, tmp: Path, final: Path,
                    what: str) -> CheckpointWriteError | None:
    """``exc`` raised while writing ``what`` as a ``CheckpointWriteError`` when it is a failed
    write (an OSError, or a library's error whose text says the write failed); None otherwise."""
    text = str(exc).lower()
    code = exc.errno if isinstance(exc, OSError) else None
    if code is None:
        code = next((c for c, words in _SPACE_WORDS.items() if any(w in text for w in words)), None)
    if code is None and any(w in text for w in _FAILED_WRITE_WORDS):
        # torch names no cause: a disk with (almost) no room left is the cause in practice
        code = errno.ENOSPC if shutil.disk_usage(tmp.parent).free < (1 << 20) else errno.EIO
    if code is None:
        return None
    said = "" if isinstance(exc, OSError) else \
        f" ({type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''})"
    error = CheckpointWriteError(code, f"cannot write checkpoint {final} ({what}): "
                                       f"{os.strerror(code)}{said}; {disk_note(tmp)}")
    error.filename = str(final)
    return error


def save_checkpoint(root: Path, step: int, writers: dict[str, Callable[[Path], None]],
                    state: dict) -> Path:
    """Write ``root/step_<step>`` atomically and point ``root/latest`` at it; return its path.

    ``writers`` maps a label to a function that writes one or more files into the directory it is
    given (e.g. ``{"model": lambda d: save_model(model, tokenizer, d)}``); they run in order.
    ``state`` (JSON-serialisable: step, data position, counters) goes to ``state.json``, then the
    sha256 of every file to ``sha256.json``: a directory renamed into place is complete by
    construction. A failed write raises ``CheckpointWriteError`` and leaves no temp directory."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    name = step_name(step)
    tmp, final = root / f"{TMP_PREFIX}{name}-{os.getpid()}", root / name
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    pause, what = _pause(), "directory"
    try:
        for label, writer in writers.items():
            what = label
            writer(tmp)
            if pause:
                time.sleep(pause)
        what = STATE_FILE
        with open(tmp / STATE_FILE, "w") as f:
            json.dump({**state, "step": step, "content_hashes": HASHES}, f, indent=1)
        what = HASHES
        digests = {p.name: sha256_file(p) for p in sorted(tmp.iterdir())}
        (tmp / HASHES).write_text(json.dumps({"sha256": digests}, indent=1) + "\n")
        for file in tmp.iterdir():
            fsync_path(file)
        fsync_path(tmp)
        what = "rename"
        if final.exists():
            # A previous run crashed between the rename and the pointer update, then resumed from
            # an older checkpoint: the directory is replaced, never merged.
            old = root / f"{TMP_PREFIX}old-{name}-{os.getpid()}"
            os.replace(final, old)
            shutil.rmtree(old)
        os.replace(tmp, final)
        fsync_path(root)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        failed = _as_write_error(e, tmp, final, what) if isinstance(e, Exception) else None
        if failed is not None:
            raise failed from e
        raise
    write_text_atomic(root / LATEST, name + "\n", fsync=True)
    return final


def is_complete(ckpt: Path) -> bool:
    return ckpt.is_dir() and not ckpt.name.startswith(TMP_PREFIX) and (ckpt / STATE_FILE).is_file()


def list_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoint directories under ``root``, oldest step first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [p for p in root.glob("step_*") if is_complete(p)]
    return sorted(found, key=lambda p: _step_of(p.name))


def _pointer_target(root: Path) -> str | None:
    """The checkpoint name in ``root/latest``, or None when it is absent or holds no such name
    (binary garbage, an empty file)."""
    pointer = Path(root) / LATEST
    if not pointer.is_file():
        return None
    try:
        name = pointer.read_bytes().decode("ascii").strip()
    except (UnicodeDecodeError, OSError):
        name = ""
    if not STEP_NAME.fullmatch(name):
        log.warning("%s does not hold a checkpoint name (expected step_NNNNNN); ignoring it",
                    pointer)
        return None
    return name


def latest_checkpoint(root: Path) -> Path | None:
    """The checkpoint ``root/latest`` names, if complete; else the newest complete one; else
    None."""
    root = Path(root)
    name = _pointer_target(root)
    if name is not None:
        ckpt = root / name
        if is_complete(ckpt):
            return ckpt
        log.warning(
            "%s names %s, which is not a complete checkpoint; using the newest complete one",
            root / LATEST,
            ckpt,
        )
    found = list_checkpoints(root)
    return found[-1] if found else None


def point_latest(root: Path, ckpt: Path) -> None:
    """Make ``root/latest`` name ``ckpt`` (atomically)."""
    write_text_atomic(Path(root) / LATEST, Path(ckpt).name + "\n", fsync=True)


def is_good(ckpt: Path) -> bool:
    """Saved after a finite step with finite weights (``state.json`` ``good``; older checkpoints
    without the field count as good). An unreadable state.json is not good."""
    try:
        return bool(read_state(ckpt).get("good", True))
    except (OSError, ValueError, AttributeError):
        return False


def last_good_checkpoint(root: Path) -> Path | None:
    """The newest complete checkpoint that ``is_good``, else None."""
    for ckpt in reversed(list_checkpoints(root)):
        if is_good(ckpt):
            return ckpt
    return None


# ---------------------------------------------------------------------------------------------
# verification


def _check_safetensors(path: Path) -> None:
    """The header parses and the tensors it lists end exactly at the end of the file."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise ValueError(f"{size} bytes, shorter than a safetensors header")
        (n,) = struct.unpack("<Q", head)
        if n > size - 8:
            raise ValueError(f"header of {n} bytes in a file of {size} bytes (truncated)")
        header = json.loads(f.read(n))
    ends = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"]
    if 8 + n + max(ends, default=0) != size:
        raise ValueError(f"{size} bytes, but its header describes {8 + n + max(ends, default=0)} "
                         f"(truncated or padded)")


def _check_structure(path: Path) -> None:
    """Raise (ValueError, OSError, ...) when ``path`` is not what its name says."""
    if path.name == STATE_FILE:
        state = json.loads(path.read_text())
        if not isinstance(state, dict) or not isinstance(state.get("step"), int):
            raise ValueError("no integer 'step'")
    elif path.suffix == ".safetensors":
        _check_safetensors(path)
    elif path.suffix == ".pt":
        with zipfile.ZipFile(path) as z:
            bad = z.testzip()
        if bad is not None:
            raise ValueError(f"CRC mismatch in {bad}")
    elif path.suffix == ".json":
        json.loads(path.read_text())


def recorded_hashes(ckpt: Path) -> dict[str, str] | None:
    """{file name: sha256} recorded with ``ckpt`` (``sha256.json``, or the shipped weights'
    ``manifest.json``), or None for a checkpoint written before content hashes. Raises
    CheckpointError when ``state.json`` says the checkpoint has them and they are gone or
    unreadable."""
    ckpt = Path(ckpt)
    for name in (HASHES, MANIFEST):
        path = ckpt / name
        if path.is_file():
            try:
                digests = json.loads(path.read_text())["sha256"]
                if not isinstance(digests, dict):
                    raise TypeError("'sha256' is not a table")
                return {str(k): str(v) for k, v in digests.items()}
            except (OSError, ValueError, KeyError, TypeError) as e:
                raise CheckpointError(f"{path}: unreadable ({type(e).__name__}: {e})") from None
    try:
        promised = read_state(ckpt).get("content_hashes")
    except (OSError, ValueError, AttributeError):
        promised = None  # state.json itself is checked (and named) by verify_checkpoint
    if promised:
        raise CheckpointError(f"{ckpt / HASHES}: missing (state.json says the checkpoint was "
                              f"written with it)")
    return None


def verify_checkpoint(ckpt: Path, required: tuple[str, ...] = ()) -> None:
    """Raise CheckpointError naming the first missing or broken file of ``ckpt``.

    Checks without loading any tensor: each ``required`` file is present; ``state.json`` is a
    JSON object with an integer step; every ``*.safetensors`` header against the file size, every
    ``*.pt`` zip archive's CRCs, every other ``*.json`` parses; then every file against the sha256
    recorded when it was written (``recorded_hashes``), which catches what keeps a file's size and
    structure (flipped bytes inside a tensor). Checkpoints written before content hashes get the
    structural checks only."""
    ckpt = Path(ckpt)
    for name in required:
        if not (ckpt / name).is_file():
            raise CheckpointError(f"{ckpt / name}: missing")
    for path in sorted(ckpt.iterdir()):
        try:
            _check_structure(path)
        except (OSError, ValueError, KeyError, TypeError, zipfile.BadZipFile, struct.error) as e:
            raise CheckpointError(f"{path}: unreadable ({type(e).__name__}: {e})") from None
    for name, digest in (recorded_hashes(ckpt) or {}).items():
        path = ckpt / name
        if not path.is_file():
            raise CheckpointError(f"{path}: missing (listed in {HASHES})")
        if sha256_file(path) != digest:
            raise CheckpointError(f"{path}: content differs from the sha256 recorded when it was "
                                  f"written (corrupted on disk: same structure, other bytes)")


def _step_of(name: str) -> int:
    return int(name.split("_")[1])


def set_aside(root: Path, ckpt: Path, prefix: str) -> Path:
    """Rename ``ckpt`` to ``<prefix><name>`` beside it (replacing an older one of that name)."""
    aside = Path(root) / f"{prefix}{Path(ckpt).name}"
    if aside.exists():
        shutil.rmtree(aside, ignore_errors=True)
    os.replace(ckpt, aside)
    fsync_path(root)
    return aside


def usable_checkpoint(root: Path, required: tuple[str, ...] = (), *, move_broken: bool = True
                      ) -> tuple[Path | None, list[str]]:
    """The newest complete checkpoint under ``root`` whose files pass ``verify_checkpoint``, at or
    before the one ``latest`` names (``latest`` first, then older ones, newest first), and the
    messages about broken ones.

    A complete checkpoint newer than ``latest`` is never a candidate: it is history the run has
    left (a save killed between its rename and the pointer update, after which the run resumed
    from ``latest`` and rewrote its metrics from there; or a non-finite streak). Resuming from it
    would skip the metrics rows of the steps in between (``set_aside_newer`` moves such
    directories away on resume). A broken checkpoint is named in a warning and, with
    ``move_broken`` (the trainer, which owns the directory), renamed to ``broken-<name>`` (kept
    for inspection, never read again); the next candidate is tried. Readers (inference) pass
    ``move_broken=False`` and leave the directory as it is."""
    root = Path(root)
    name = _pointer_target(root)
    bound = _step_of(name) if name is not None else None
    candidates = [c for c in reversed(list_checkpoints(root))
                  if bound is None or _step_of(c.name) <= bound]
    broken = []
    for ckpt in candidates:
        try:
            verify_checkpoint(ckpt, required)
            return ckpt, broken
        except CheckpointError as e:
            msg = f"checkpoint {ckpt.name} is broken: {e}"
            if move_broken:
                aside = set_aside(root, ckpt, BROKEN_PREFIX)
                log.warning("%s; moved to %s, falling back to the previous complete checkpoint",
                            msg, aside)
            else:
                log.warning("%s; falling back to the previous complete checkpoint", msg)
            broken.append(msg)
    return None, broken


def set_aside_newer(root: Path, ckpt: Path) -> list[Path]:
    """Rename every complete checkpoint newer than ``ckpt`` (the one a run resumes from) to
    ``stale-<name>``, with a warning; return the new paths. The resumed run rewrites the metrics
    history after ``ckpt``, so those directories no longer match it and must never be resumed
    from, scored or kept by retention (the newest is kept on disk for inspection, like a
    ``broken-`` one: ``SET_ASIDE_KEPT``)."""
    root, step = Path(root), _step_of(Path(ckpt).name)
    moved = []
    for newer in list_checkpoints(root):
        if _step_of(newer.name) <= step:
            continue
        aside = set_aside(root, newer, STALE_PREFIX)
        log.warning("%s is newer than %s, which the run resumes from (a save killed before "
                    "'latest' was updated, or a non-finite streak): moved to %s, never resumed "
                    "from", newer, Path(ckpt).name, aside)
        moved.append(aside)
    return moved


def read_state(ckpt: Path) -> dict:
    return json.loads((Path(ckpt) / STATE_FILE).read_text())


def clean_temp(root: Path) -> list[Path]:
    """Remove half-written checkpoint directories and pointer temp files; return what was
    removed."""
    root = Path(root)
    removed = []
    if root.is_dir():
        for p in root.glob(f"{TMP_PREFIX}*"):
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
            removed.append(p)
    return removed


# ---------------------------------------------------------------------------------------------
# best checkpoint and retention


def update_best(root: Path, ckpt: Path, val_loss: float) -> bool:
    """Record ``ckpt`` as the best checkpoint if ``val_loss`` is lower than the recorded one."""
    best = read_best(root)
    if best is not None and best["val_loss"] <= val_loss:
        return False
    write_text_atomic(Path(root) / BEST, json.dumps({"name": Path(ckpt).name,
                                                      "val_loss": float(val_loss)}) + "\n",
                      fsync=True)
    return True


def read_best(root: Path) -> dict | None:
    path = Path(root) / BEST
    return json.loads(path.read_text()) if path.is_file() else None


def _delete(root: Path, directory: Path) -> None:
    """Rename ``directory`` to ``.tmp-del-<name>-<pid>``, then delete it: a kill in between leaves
    a temp directory that ``clean_temp`` removes, never a half-deleted checkpoint."""
    doomed = Path(root) / f"{TMP_PREFIX}del-{directory.name}-{os.getpid()}"
    os.replace(directory, doomed)
    fsync_path(root)
    if _pause():
        time.sleep(_pause())
    shutil.rmtree(doomed)


def apply_retention(root: Path, keep_last: int) -> list[Path]:
    """Delete complete checkpoints except the newest ``keep_last``, the best, ``latest`` and the
    newest good one (so a non-finite streak never leaves only bad checkpoints), and set-aside
    folders beyond the newest ``SET_ASIDE_KEPT`` of each kind; return what was deleted. Each
    doomed directory is renamed before it is deleted (``_delete``)."""
    root = Path(root)
    found = list_checkpoints(root)
    keep = {p.name for p in found[-keep_last:]}
    best = read_best(root)
    if best is not None:
        keep.add(best["name"])
    for ckpt in (latest_checkpoint(root), last_good_checkpoint(root)):
        if ckpt is not None:
            keep.add(ckpt.name)
    doomed = [p for p in found if p.name not in keep]
    for prefix in (BROKEN_PREFIX, STALE_PREFIX):
        aside = sorted((p for p in root.glob(f"{prefix}step_*") if p.is_dir()
                        and STEP_NAME.fullmatch(p.name[len(prefix):])),
                       key=lambda p: _step_of(p.name[len(prefix):]))
        doomed += aside[:-SET_ASIDE_KEPT] if SET_ASIDE_KEPT else aside
    for p in doomed:
        _delete(root, p)
    return doomed


# ---------------------------------------------------------------------------------------------
# run.json and finding the weights a run starts from


RUN_STATUSES = ("running", "finished", "collapsed", "aborted", "failed")


def write_run_json(run_dir: Path, *, preset: str, hash_: str, status: str, step: int) -> None:
    """``run.json``: status is running | finished | collapsed (stopped by the monitor) | aborted
    (non-finite losses) | failed (stopped by an error, e.g. a full disk; the same command
    resumes it from ``step``'s checkpoint). A SIGKILLed run stays ``running`` (its lock is free)."""
    if status not in RUN_STATUSES:
        raise ValueError(f"run status {status!r}: expected one of {', '.join(RUN_STATUSES)}")
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    write_text_atomic(Path(run_dir) / "run.json", json.dumps(
        {"preset": preset, "hash": hash_, "status": status, "step": step}, indent=1) + "\n",
        fsync=True)


def read_run_json(run_dir: Path) -> dict | None:
    path = Path(run_dir) / "run.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        return None


def finished_runs(out_dir: Path, preset: str) -> list[Path]:
    """Run directories of ``preset`` in ``out_dir`` whose run.json says finished, newest first."""
    runs = []
    for run_json in Path(out_dir).glob(f"{preset}-*/run.json"):
        info = read_run_json(run_json.parent)
        if info and info.get("preset") == preset and info.get("status") == "finished":
            runs.append(run_json.parent)
    return sorted(runs, key=lambda p: (p / "run.json").stat().st_mtime, reverse=True)


def resolve_init(spec: str, out_dir: Path) -> Path:
    """The checkpoint directory ``init.from = spec`` means.

    ``spec`` is a checkpoint directory (has ``state.json``), a run directory (its ``latest``
    checkpoint), or a preset name (the newest finished run ``<out_dir>/<spec>-*`` with that
    preset). Raises FileNotFoundError naming what was looked for."""
    path = Path(spec)
    if path.is_dir():
        if is_complete(path):
            return path
        if (path / "checkpoints").is_dir():
            ckpt = latest_checkpoint(path / "checkpoints")
            if ckpt is None:
                raise FileNotFoundError(f"init.from = {spec!r}: run directory has no complete "
                                        f"checkpoint in {path / 'checkpoints'}")
            return ckpt
        raise FileNotFoundError(f"init.from = {spec!r}: {path} is neither a checkpoint directory "
                                f"(with {STATE_FILE}) nor a run directory (with checkpoints/)")
    if "/" in spec or os.sep in spec:
        raise FileNotFoundError(f"init.from = {spec!r}: no such checkpoint or run directory")
    runs = finished_runs(out_dir, spec)
    if not runs:
        raise FileNotFoundError(
            f"init.from = {spec!r}: no finished run of preset {spec!r} in {out_dir} (looked for "
            f"{Path(out_dir) / (spec + '-*') / 'run.json'} with status 'finished'); run "
            f"`make check-weights` / `python -m train --preset {spec}` first")
    ckpt = latest_checkpoint(runs[0] / "checkpoints")
    if ckpt is None:
        raise FileNotFoundError(f"init.from = {spec!r}: finished run {runs[0]} has no complete "
                                f"checkpoint")
    return ckpt
