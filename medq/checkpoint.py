"""Training checkpoints: atomic directories, a ``latest`` pointer, retention, resolving init.

Layout (``docs/ARCHITECTURE.md``)::

    <run_dir>/checkpoints/step_000300/   model.safetensors ema.safetensors arch.json tokenizer.json
                                         optim.pt config.toml state.json
    <run_dir>/checkpoints/latest         the name of the newest complete checkpoint directory
    <run_dir>/checkpoints/best.json      {"name", "val_loss"} of the best validation checkpoint

A checkpoint is written into ``checkpoints/.tmp-<name>-<pid>/``, every file fsynced, ``state.json``
last, then the directory is renamed into place (``os.replace``) and only then ``latest`` is
rewritten (temp file + ``os.replace``). A process killed at any point leaves either the previous
checkpoint as ``latest`` or the new one complete; temp directories are never read and are removed
by ``clean_temp``. ``MEDQ_TEST_SLOW_SAVE=<seconds>`` sleeps after each file (and in retention
between the rename and the delete) so a test can kill a save or a retention half-way.

Faults (``docs/ARCHITECTURE.md``, "Faults"): ``state.json`` records ``good`` (the step before the
save was finite and every weight is finite); retention keeps the newest good checkpoint and renames
a doomed directory to ``.tmp-del-*`` before deleting it. ``usable_checkpoint`` checks the files of
the newest checkpoint (safetensors headers against the file size, ``optim.pt``'s zip directory and
CRCs, ``state.json``) and falls back to the previous complete one, moving a broken directory to
``broken-step_*``; it never goes past the checkpoint ``latest`` names, and ``set_aside_newer``
moves complete checkpoints newer than the resume point to ``stale-step_*`` (their metrics rows are
rewritten by the resumed run). ``run_lock`` holds ``<run_dir>/run.lock`` (``fcntl.flock``) for
a whole run.

Weights are safetensors only; ``optim.pt`` (optimizer, scheduler, RNG states) is the one pickle,
and it never holds weights a model is initialised from.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import shutil
import struct
import time
import zipfile
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from medq.files import TMP_PREFIX, fsync_path, write_text_atomic
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
LATEST = "latest"
BEST = "best.json"
SLOW_SAVE_ENV = "MEDQ_TEST_SLOW_SAVE"
BROKEN_PREFIX = "broken-"
STALE_PREFIX = "stale-"
LOCK_FILE = "run.lock"
STEP_NAME = re.compile(r"step_\d+")


class CheckpointError(RuntimeError):
    """A checkpoint cannot be used, or none is left; the message names the file and what to do."""


class RunLockedError(RuntimeError):
    """Another live process holds the run directory's lock; the message names its PID."""


def _pause() -> float:
    return float(os.environ.get(SLOW_SAVE_ENV, "0") or 0)


def step_name(step: int) -> str:
    return f"step_{step:06d}"




def save_checkpoint(root: Path, step: int, writers: dict[str, Callable[[Path], None]],
                    state: dict) -> Path:
    """Write ``root/step_<step>`` atomically and point ``root/latest`` at it; return its path.

    ``writers`` maps a label to a function that writes one or more files into the directory it is
    given (e.g. ``{"model": lambda d: save_model(model, tokenizer, d)}``); they run in order.
    ``state`` (JSON-serialisable: step, data position, counters) goes to ``state.json``, written
    last: a directory with ``state.json`` is complete by construction."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    name = step_name(step)
    tmp = root / f"{TMP_PREFIX}{name}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    pause = _pause()
    try:
        for writer in writers.values():
            writer(tmp)
            if pause:
                time.sleep(pause)
        with open(tmp / STATE_FILE, "w") as f:
            json.dump({**state, "step": step}, f, indent=1)
        for file in tmp.iterdir():
            fsync_path(file)
        fsync_path(tmp)
        final = root / name
        if final.exists():
            # A previous run crashed between the rename and the pointer update, then resumed from
            # an older checkpoint: the directory is replaced, never merged.
            old = root / f"{TMP_PREFIX}old-{name}-{os.getpid()}"
            os.replace(final, old)
            shutil.rmtree(old)
        os.replace(tmp, final)
        fsync_path(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
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
    return sorted(found, key=lambda p: int(p.name.split("_")[1]))


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


def verify_checkpoint(ckpt: Path, required: tuple[str, ...] = ()) -> None:
    """Raise CheckpointError naming the first missing or broken file of ``ckpt``.

    Checks without loading any tensor: ``state.json`` (a JSON object with an integer step), each
    ``required`` file present, every ``*.safetensors`` header against the file size, every ``*.pt``
    zip archive's CRCs, every other ``*.json`` parses."""
    ckpt = Path(ckpt)
    for name in required:
        if not (ckpt / name).is_file():
            raise CheckpointError(f"{ckpt / name}: missing")
    for path in sorted(ckpt.iterdir()):
        try:
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
        except CheckpointError:
            raise
        except (OSError, ValueError, KeyError, TypeError, zipfile.BadZipFile, struct.error) as e:
            raise CheckpointError(f"{path}: unreadable ({type(e).__name__}: {e})") from None


def _step_of(name: str) -> int:
    return int(name.split("_")[1])


def usable_checkpoint(root: Path, required: tuple[str, ...] = ()) -> tuple[Path | None, list[str]]:
    """The newest complete checkpoint under ``root`` whose files pass ``verify_checkpoint``, at or
    before the one ``latest`` names (``latest`` first, then older ones, newest first), and the
    messages about broken ones.

    A complete checkpoint newer than ``latest`` is never a candidate: it is history the run has
    left (a save killed between its rename and the pointer update, after which the run resumed
    from ``latest`` and rewrote its metrics from there; or a non-finite streak). Resuming from it
    would skip the metrics rows of the steps in between (``set_aside_newer`` moves such
    directories away on resume). A broken checkpoint is renamed to ``broken-<name>`` (kept for
    inspection, never read again) and a warning names the broken file; the next candidate is
    tried."""
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
            aside = root / f"{BROKEN_PREFIX}{ckpt.name}"
            if aside.exists():
                shutil.rmtree(aside, ignore_errors=True)
            os.replace(ckpt, aside)
            fsync_path(root)
            log.warning("%s; moved to %s, falling back to the previous complete checkpoint", msg,
                        aside)
            broken.append(msg)
    return None, broken


def set_aside_newer(root: Path, ckpt: Path) -> list[Path]:
    """Rename every complete checkpoint newer than ``ckpt`` (the one a run resumes from) to
    ``stale-<name>``, with a warning; return the new paths. The resumed run rewrites the metrics
    history after ``ckpt``, so those directories no longer match it and must never be resumed
    from, scored or kept by retention (kept on disk for inspection, like ``broken-`` ones)."""
    root, step = Path(root), _step_of(Path(ckpt).name)
    moved = []
    for newer in list_checkpoints(root):
        if _step_of(newer.name) <= step:
            continue
        aside = root / f"{STALE_PREFIX}{newer.name}"
        if aside.exists():
            shutil.rmtree(aside, ignore_errors=True)
        os.replace(newer, aside)
        fsync_path(root)
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


def apply_retention(root: Path, keep_last: int) -> list[Path]:
    """Delete complete checkpoints except the newest ``keep_last``, the best, ``latest`` and the
    newest good one (so a non-finite streak never leaves only bad checkpoints).

    Each doomed directory is first renamed to ``.tmp-del-<name>-<pid>`` and then deleted: a kill
    in between leaves a temp directory that ``clean_temp`` removes, never a half-deleted step_*."""
    root = Path(root)
    found = list_checkpoints(root)
    keep = {p.name for p in found[-keep_last:]}
    best = read_best(root)
    if best is not None:
        keep.add(best["name"])
    for ckpt in (latest_checkpoint(root), last_good_checkpoint(root)):
        if ckpt is not None:
            keep.add(ckpt.name)
    removed = []
    for p in found:
        if p.name not in keep:
            doomed = root / f"{TMP_PREFIX}del-{p.name}-{os.getpid()}"
            os.replace(p, doomed)
            fsync_path(root)
            if _pause():
                time.sleep(_pause())
            shutil.rmtree(doomed)
            removed.append(p)
    return removed


# ---------------------------------------------------------------------------------------------
# one process per run directory


_HELD_LOCKS: dict[Path, int] = {}


def _lock_holder(fd: int) -> str:
    text = os.pread(fd, 64, 0).decode("ascii", "replace").strip()
    return text if text.isdigit() else ""


def acquire_run_lock(run_dir: Path) -> bool:
    """Take the advisory lock ``<run_dir>/run.lock`` (``fcntl.flock``, exclusive, non-blocking)
    and write this PID into it; False when this process holds it already (nested use).

    Raises RunLockedError naming the holder's PID when another live process holds it. A lock
    file naming another PID that no longer holds the lock (a killed process: the kernel drops
    its flock) is taken over with a warning."""
    run_dir = Path(run_dir).resolve()
    if run_dir in _HELD_LOCKS:
        return False
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _lock_holder(fd) or "unknown"
        os.close(fd)
        raise RunLockedError(f"{run_dir} is in use by process {holder} (lock {path}); wait for it "
                             f"to finish or stop it, then run again") from None
    previous = _lock_holder(fd)
    if previous and int(previous) != os.getpid():
        log.warning("%s: lock left by process %s, which no longer holds it (killed?); taken over",
                    path, previous)
    os.ftruncate(fd, 0)
    # No fsync: the PID only informs a message; the kernel's flock is the lock.
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    _HELD_LOCKS[run_dir] = fd
    return True


def release_run_lock(run_dir: Path) -> None:
    """Empty the lock file (a clean exit leaves no holder to take over) and release the lock."""
    fd = _HELD_LOCKS.pop(Path(run_dir).resolve(), None)
    if fd is None:
        return
    try:
        os.ftruncate(fd, 0)
        fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


@contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """``with run_lock(run_dir):`` the run directory belongs to this process (re-entrant)."""
    taken = acquire_run_lock(run_dir)
    try:
        yield
    finally:
        if taken:
            release_run_lock(run_dir)


# ---------------------------------------------------------------------------------------------
# run.json and finding the weights a run starts from


def write_run_json(run_dir: Path, *, preset: str, hash_: str, status: str, step: int) -> None:
    """``run.json``: status is running | finished | collapsed (stopped by the monitor) | aborted."""
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


def _vae_path(spec: str, run_dir: Path) -> Path:
    """``model.vae`` as written in the config (relative to the working directory at training time);
    from elsewhere, the same name next to the run directory (``runs/vae`` beside ``runs/<run>``)."""
    path = Path(spec)
    if path.is_absolute() or path.exists():
        return path
    beside = Path(run_dir).parent / path.name
    return beside if beside.exists() else path


def load_for_inference(run_or_ckpt_dir, weights: str = "ema", device="cpu"):
    """Load a trained mini-BAGEL for inference: ``(model, tokenizer, vae, report, info)``.

    ``run_or_ckpt_dir``: a run directory (its ``checkpoints/latest`` is used) or a checkpoint
    directory (``.../checkpoints/step_000300``). ``weights``: "ema" (``ema.safetensors``, what
    inference normally uses) or "model" (the raw weights). The model is built from the checkpoint's
    own ``config.toml`` and loaded strictly (``medq.models.load_model``: raises
    ``CheckpointMismatchError`` listing missing / unexpected / shape-mismatched keys, or the
    architecture fields where ``arch.json`` and the config differ).

    Returns the model in eval mode on ``device``, its ``Tokenizer``, the frozen VAE (from
    ``model.vae`` of that config), the ``LoadReport`` and ``info`` = {"checkpoint", "run_dir",
    "run_name", "preset", "step", "weights", "fingerprint", "config" (a ``medq.config.Config``)}."""
    from medq import models as M
    from medq.config import load_config

    if weights not in ("ema", "model"):
        raise ValueError(f"weights = {weights!r}: expected 'ema' or 'model'")
    ckpt = resolve_init(str(run_or_ckpt_dir), Path("."))
    cfg = load_config(str(ckpt / "config.toml"))
    model, tokenizer, report = M.load_model(ckpt, weights_file=f"{weights}.safetensors",
                                            expect_arch=cfg.model, tile_size=cfg.model.tile_size)
    run_dir = ckpt.parent.parent
    vae = M.load_vae(_vae_path(cfg.model.vae, run_dir)).to(device).eval().requires_grad_(False)
    info = {"checkpoint": ckpt, "run_dir": run_dir, "run_name": run_dir.name,
            "preset": cfg.run.preset, "step": read_state(ckpt)["step"], "weights": weights,
            "fingerprint": report.fingerprint, "config": cfg}
    return model.to(device).eval(), tokenizer, vae, report, info
