"""Run the training commands ``bench eval`` needs, several at a time.

A fine-tune of the default model uses one torch thread (``run.threads = 1``: its ops are small, and
two threads wait for each other after each one), so on a 2-core machine two fine-tunes side by side
take the time of one. With one job the child writes to this terminal as before (its progress bar
included); with more, each child writes to its own log file (``--no-progress``), and this process
prints one line when a job starts and one when it ends, with the log's tail when it fails.
"""

from __future__ import annotations

import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

# Children at once by default: one per core, at most this many (each holds its model, optimizer
# and data cache, ~1 GB).
MAX_DEFAULT_JOBS = 4
FAILED_LOG_LINES = 20


def default_jobs() -> int:
    return max(1, min(MAX_DEFAULT_JOBS, os.cpu_count() or 1))


@dataclass
class TrainJob:
    name: str  # what the user reads, e.g. "pixel seed 1"
    cmd: list[str]
    log: Path | None = None  # where its output goes when jobs run side by side


def run_jobs(jobs: list[TrainJob], max_parallel: int, log_dir: Path) -> dict[str, int]:
    """Run every job, at most ``max_parallel`` at once; returns {job name: exit code}. With
    ``max_parallel`` 1 the children inherit this terminal; otherwise each writes to
    ``log_dir/<name>.log``."""
    codes: dict[str, int] = {}
    if max_parallel <= 1 or len(jobs) <= 1:
        for job in jobs:
            codes[job.name] = subprocess.call(job.cmd)
        return codes
    log_dir.mkdir(parents=True, exist_ok=True)
    pending = list(jobs)
    running: list[tuple[TrainJob, subprocess.Popen, float]] = []
    try:
        while pending or running:
            while pending and len(running) < max_parallel:
                job = pending.pop(0)
                job.log = log_dir / (job.name.replace(" ", "-") + ".log")
                with open(job.log, "w") as log:
                    proc = subprocess.Popen(job.cmd + ["--no-progress"], stdout=log,
                                            stderr=subprocess.STDOUT)
                print(f"[eval] {job.name}: training (log: {job.log})", flush=True)
                running.append((job, proc, time.time()))
            time.sleep(0.2)
            for item in list(running):
                job, proc, start = item
                if proc.poll() is None:
                    continue
                running.remove(item)
                codes[job.name] = proc.returncode
                took = time.time() - start
                if proc.returncode == 0:
                    print(f"[eval] {job.name}: trained in {took:.0f} s", flush=True)
                else:
                    tail = job.log.read_text(errors="replace").splitlines()[-FAILED_LOG_LINES:]
                    print(f"[eval] {job.name}: training failed (exit {proc.returncode}) after "
                          f"{took:.0f} s; last lines of {job.log}:", flush=True)
                    print("\n".join("    " + line for line in tail), flush=True)
    finally:  # Ctrl-C or an error here: no child keeps training unobserved
        for _, proc, _ in running:
            if proc.poll() is None:
                proc.terminate()
                proc.wait()
    return codes
