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
by ``clean_temp``. ``MEDQ_TEST_SLOW_SAVE=<seconds>`` sleeps after each file so a test can kill a
save half-way.

Weights are safetensors only; ``optim.pt`` (optimizer, scheduler, RNG states) is the one pickle,
and it never holds weights a model is initialised from.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Callable

from medq.models.io import fingerprint  # one fingerprint everywhere (init.json, logs, reports)

log = logging.getLogger(__name__)

STATE_FILE = "state.json"
LATEST = "latest"
BEST = "best.json"
TMP_PREFIX = ".tmp-"
SLOW_SAVE_ENV = "MEDQ_TEST_SLOW_SAVE"


def step_name(step: int) -> str:
    return f"step_{step:06d}"


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f"{TMP_PREFIX}{path.name}-{os.getpid()}")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_path(path.parent)


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
    pause = float(os.environ.get(SLOW_SAVE_ENV, "0") or 0)
    try:
        for writer in writers.values():
            writer(tmp)
            if pause:
                time.sleep(pause)
        with open(tmp / STATE_FILE, "w") as f:
            json.dump({**state, "step": step}, f, indent=1)
        for file in tmp.iterdir():
            _fsync_path(file)
        _fsync_path(tmp)
        final = root / name
        if final.exists():
            # A previous run crashed between the rename and the pointer update, then resumed from
            # an older checkpoint: the directory is replaced, never merged.
            old = root / f"{TMP_PREFIX}old-{name}-{os.getpid()}"
            os.replace(final, old)
            shutil.rmtree(old)
        os.replace(tmp, final)
        _fsync_path(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _write_text_atomic(root / LATEST, name + "\n")
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


def latest_checkpoint(root: Path) -> Path | None:
    """The checkpoint ``root/latest`` names, if complete; else the newest complete one; else None."""
    root = Path(root)
    pointer = root / LATEST
    if pointer.is_file():
        ckpt = root / pointer.read_text().strip()
        if is_complete(ckpt):
            return ckpt
        log.warning("%s names %s, which is not a complete checkpoint; using the newest complete one",
                    pointer, ckpt)
    found = list_checkpoints(root)
    return found[-1] if found else None


def read_state(ckpt: Path) -> dict:
    return json.loads((Path(ckpt) / STATE_FILE).read_text())


def clean_temp(root: Path) -> list[Path]:
    """Remove half-written checkpoint directories and pointer temp files; return what was removed."""
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
    _write_text_atomic(Path(root) / BEST, json.dumps({"name": Path(ckpt).name,
                                                      "val_loss": float(val_loss)}) + "\n")
    return True


def read_best(root: Path) -> dict | None:
    path = Path(root) / BEST
    return json.loads(path.read_text()) if path.is_file() else None


def apply_retention(root: Path, keep_last: int) -> list[Path]:
    """Delete complete checkpoints except the newest ``keep_last``, the best and ``latest``."""
    found = list_checkpoints(root)
    keep = {p.name for p in found[-keep_last:]}
    best = read_best(root)
    if best is not None:
        keep.add(best["name"])
    latest = latest_checkpoint(root)
    if latest is not None:
        keep.add(latest.name)
    removed = []
    for p in found:
        if p.name not in keep:
            shutil.rmtree(p)
            removed.append(p)
    return removed


# ---------------------------------------------------------------------------------------------
# run.json and finding the weights a run starts from


def write_run_json(run_dir: Path, *, preset: str, hash_: str, status: str, step: int) -> None:
    """``run.json``: status is running | finished | collapsed (stopped by the monitor) | aborted."""
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    _write_text_atomic(Path(run_dir) / "run.json", json.dumps(
        {"preset": preset, "hash": hash_, "status": status, "step": step}, indent=1) + "\n")


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
            f"`make base` / `python -m train --preset {spec}` first")
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
                                            expect_arch=cfg.model, image_size=cfg.model.image_size)
    run_dir = ckpt.parent.parent
    vae = M.load_vae(_vae_path(cfg.model.vae, run_dir)).to(device).eval().requires_grad_(False)
    info = {"checkpoint": ckpt, "run_dir": run_dir, "run_name": run_dir.name,
            "preset": cfg.run.preset, "step": read_state(ckpt)["step"], "weights": weights,
            "fingerprint": report.fingerprint, "config": cfg}
    return model.to(device).eval(), tokenizer, vae, report, info
