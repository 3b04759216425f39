"""``bench eval``, step 1: find the runs to score and train the standard ones that are missing.

A standard preset (``STANDARD_PRESETS``) without a finished run in ``--runs-dir`` (with
``--seeds N``: without one for each training seed 0..N-1) is trained by ``python -m train
--preset NAME`` with the evaluation's ``--set`` overrides and the step budget of the runs that
exist, ``--train-jobs`` at a time (``bench/train_jobs.py``). A subprocess, not an import: no stage
imports another. A failed training becomes a status row naming its command and log.
"""

from __future__ import annotations

import fnmatch
import sys
from pathlib import Path

from bench.train_jobs import TrainJob, run_jobs

STANDARD_PRESETS = ("pixel", "ssim_v3", "mixed")


def run_dirs(runs_dir: Path, globs: list[str]) -> list[Path]:
    """The run directories under ``runs_dir`` (names not starting with ``_`` or ``.``, holding a
    run.json, a config.toml or checkpoints) matching any of ``globs`` (all when empty)."""
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        return []
    found = [p for p in sorted(runs_dir.iterdir())
             if p.is_dir() and not p.name.startswith(("_", "."))
             and ((p / "run.json").is_file() or (p / "config.toml").is_file()
                  or (p / "checkpoints").is_dir())]
    return [p for p in found if not globs or any(fnmatch.fnmatch(p.name, g) for g in globs)]


def _config(run: Path):
    """The run's config.toml as a Config; None when unreadable (a damaged config only loses the
    hints it would give: its seed, its step budget)."""
    from medq.config import load_config

    try:
        return load_config(str(Path(run) / "config.toml"))
    except Exception:  # noqa: BLE001 - whatever a damaged file raises, the run gives no hint
        return None


def finished_runs(runs: list[Path], seeds: int) -> tuple[dict[str, Path], set[tuple]]:
    """({preset: its first finished run}, {(preset, run.seed)} when ``seeds`` > 1). A finished
    run whose init checkpoint changed since it trained does not count (it is said why)."""
    from medq.checkpoint import read_run_json
    from medq.training.task import init_changed

    have: dict[str, Path] = {}
    have_seed: set[tuple] = set()
    for r in runs:
        info = read_run_json(r) or {}
        finished = info.get("status") == "finished"
        stale = init_changed(r) if finished else None
        if stale:  # training it again stops with the same reason and the remedy, in its row
            print(f"[eval] {r}: finished, but {stale}; not counted as this preset's run")
        elif finished and info.get("preset") in STANDARD_PRESETS:
            have.setdefault(info["preset"], r)
            if seeds > 1:
                cfg = _config(r)
                have_seed.add((info["preset"], cfg.run.seed if cfg is not None else None))
    return have, have_seed


def _train_command(preset: str, seed: int | None, overrides: list[str], budget: list[int]):
    cmd = [sys.executable, "-m", "train", "--preset", preset]
    for o in overrides:
        cmd += ["--set", o]
    if seed is not None:
        cmd += ["--set", f"run.seed={seed}"]
    if budget and not any(o.startswith("optim.max_steps=") for o in overrides):
        cmd += ["--set", f"optim.max_steps={max(budget)}"]
    return cmd


def train_missing(args, runs: list[Path]) -> list[dict]:
    """Train each standard preset that has no finished run (with ``--seeds N`` > 1: no finished
    run for each training seed 0..N-1, ``run.seed``); returns status rows for failures."""
    seeds = getattr(args, "seeds", 1)
    have, have_seed = finished_runs(runs, seeds)
    budget = [cfg.optim.max_steps for cfg in map(_config, have.values()) if cfg is not None]
    todo = ([(p, None) for p in STANDARD_PRESETS if p not in have] if seeds <= 1 else
            [(p, k) for p in STANDARD_PRESETS for k in range(seeds) if (p, k) not in have_seed])
    jobs = []
    for preset, seed in todo:
        what = preset if seed is None else f"{preset} seed {seed}"
        if args.skip_train:
            print(f"[eval] no finished {what} run in {args.runs_dir}; --skip-train: "
                  f"not training it")
            continue
        cmd = _train_command(preset, seed, args.overrides, budget)
        print(f"[eval] {what}: no finished run; training it: {' '.join(cmd[1:])}", flush=True)
        jobs.append((TrainJob(what, cmd), preset, seed))
    codes = run_jobs([j for j, _, _ in jobs], getattr(args, "train_jobs", 1),
                     Path(args.runs_dir) / "_logs")
    failed = []
    for job, preset, seed in jobs:
        if codes[job.name] != 0:
            note = " ".join(job.cmd[1:]) + (f" (log: {job.log})" if job.log else "")
            failed.append({"status": f"train failed (exit {codes[job.name]})", "name": job.name,
                           "kind": "run", "preset": preset, "seed": seed, "note": note})
    return failed
