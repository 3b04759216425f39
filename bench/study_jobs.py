"""Run the study's jobs (trainings and scorings, each a child process with one torch thread) a few
at a time, in dependency order, under one progress bar with an estimate of the remaining time.

    jobs = [Job("train pixel", cmd, cost=..., progress=lambda: steps_done * step_s), ...]
    failed = run_jobs(jobs, slots=2, log_dir=study / "logs")

Each job has a cost in estimated seconds of one core (``bench.study_plan.Timing``) and a
``progress`` callable giving the estimated seconds of it already done (a training's steps in its
run directory, a scoring's finished points), so a job killed halfway and run again counts what it
left behind. The bar's total is the sum of the costs; its rate (work per wall second, about the
number of slots when the estimates are right) turns the remaining work into the remaining time,
and corrects itself as measured progress comes in.

Children write to ``<log_dir>/<job>.log``; this process prints one line when a job starts and one
when it ends (with the log's tail when it fails). A job whose dependency failed is not started.
Ctrl-C or an error here terminates the running children: nothing keeps training unobserved.
"""

from __future__ import annotations

import re
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

FAILED_LOG_LINES = 20
POLL_SECONDS = 1.0


@dataclass
class Job:
    name: str
    cmd: list[str]
    cost: float
    """Estimated seconds of one core for the whole job."""
    progress: Callable[[], float] = lambda: 0.0
    """Estimated seconds of the job already done (from what it has written)."""
    after: list[str] = field(default_factory=list)
    """Names of the jobs that must succeed first."""
    priority: int = 1
    """Lower starts first among ready jobs (scorings before trainings: results come early)."""

    @property
    def log_name(self) -> str:
        return re.sub(r"[^A-Za-z0-9._-]+", "-", self.name).strip("-") + ".log"


def simulate(jobs: list[Job], slots: int) -> float:
    """Wall seconds the plan takes on ``slots`` cores by the cost estimates, scheduled as
    ``run_jobs`` schedules (ready jobs by priority, then order), minus what is already done."""
    remaining = {j.name: max(j.cost - j.progress(), 0.0) for j in jobs}
    done: dict[str, float] = {}
    running: list[tuple[float, str]] = []
    pending = list(jobs)
    now = 0.0
    while pending or running:
        ready = sorted((j for j in pending if all(a in done for a in j.after)),
                       key=lambda j: (j.priority, pending.index(j)))
        while ready and len(running) < slots:
            job = ready.pop(0)
            pending.remove(job)
            start = max([now] + [done[a] for a in job.after])
            running.append((start + remaining[job.name], job.name))
        if not running:  # dependencies that are not in the plan: nothing can start
            break
        running.sort()
        now, name = running.pop(0)
        done[name] = now
    return now


def _tail(path: Path, lines: int = FAILED_LOG_LINES) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return "    (no log)"
    return "\n".join("    " + line for line in text)


def run_jobs(jobs: list[Job], slots: int, log_dir: Path, *, progress: bool = True,
             desc: str = "study") -> dict[str, int]:
    """Run every job, at most ``slots`` at once, each after the jobs it names in ``after``;
    returns {job name: exit code} (jobs not started because a dependency failed: -1)."""
    from tqdm import tqdm

    log_dir = Path(log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    total = sum(j.cost for j in jobs)
    done_before = sum(min(j.progress(), j.cost) for j in jobs)
    codes: dict[str, int] = {}
    pending = list(jobs)
    running: list[tuple[Job, subprocess.Popen, float]] = []
    bar = tqdm(total=round(total), initial=round(done_before), desc=desc, unit="s",
               disable=not progress, smoothing=0, dynamic_ncols=True,
               bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.0f}/{total:.0f} core-s "
                          "[{elapsed}<{remaining}]")

    def say(text: str) -> None:
        (bar.write if progress else print)(text)

    try:
        while pending or running:
            for job in [j for j in pending if any(codes.get(a, 0) != 0 for a in j.after)]:
                pending.remove(job)
                codes[job.name] = -1
                say(f"[study] {job.name}: not started (a job it needs failed)")
            ready = sorted((j for j in pending if all(a in codes for a in j.after)),
                           key=lambda j: (j.priority, pending.index(j)))
            while ready and len(running) < slots:
                job = ready.pop(0)
                pending.remove(job)
                with open(log_dir / job.log_name, "w") as log:
                    proc = subprocess.Popen(job.cmd, stdout=log, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL)
                say(f"[study] {job.name}: started (log: {log_dir / job.log_name})")
                running.append((job, proc, time.time()))
            time.sleep(POLL_SECONDS)
            for item in list(running):
                job, proc, start = item
                if proc.poll() is None:
                    continue
                running.remove(item)
                codes[job.name] = proc.returncode
                took = time.time() - start
                if proc.returncode == 0:
                    say(f"[study] {job.name}: done in {took:.0f} s")
                else:
                    say(f"[study] {job.name}: FAILED (exit {proc.returncode}) after {took:.0f} s; "
                        f"last lines of {log_dir / job.log_name}:\n{_tail(log_dir / job.log_name)}")
            now = sum(min(j.progress(), j.cost) for j in jobs)
            bar.update(max(round(now) - bar.n, 0))
            if not running and pending and not any(
                    all(a in codes for a in j.after) for j in pending):
                for job in pending:  # waiting on jobs that are not in the list
                    codes[job.name] = -1
                pending.clear()
    finally:
        for _, proc, _ in running:
            if proc.poll() is None:
                proc.terminate()
                proc.wait()
        bar.close()
    return codes
