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
    """Names of the jobs that must end first."""
    needs_success: bool = True
    """Start only if every job of ``after`` succeeded (False: once they ended, however: a
    scoring still scores the checkpoints of a training that stopped early)."""
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


class _Runner:
    """The running children of ``run_jobs``: start one, collect the ended ones."""

    def __init__(self, log_dir: Path, say):
        self.log_dir, self.say = log_dir, say
        self.running: list[tuple[Job, subprocess.Popen, float]] = []

    def start(self, job: Job) -> None:
        log_path = self.log_dir / job.log_name
        with open(log_path, "w") as log:
            proc = subprocess.Popen(job.cmd, stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL)
        self.say(f"[study] {job.name}: started (log: {log_path})")
        self.running.append((job, proc, time.time()))

    def ended(self) -> dict[str, int]:
        """{name: exit code} of the children that ended since the last call, each said."""
        out = {}
        for job, proc, start in [r for r in self.running if r[1].poll() is not None]:
            self.running.remove((job, proc, start))
            out[job.name] = proc.returncode
            note = (f"done in {time.time() - start:.0f} s" if proc.returncode == 0 else
                    f"FAILED (exit {proc.returncode}) after {time.time() - start:.0f} s; last "
                    f"lines of {self.log_dir / job.log_name}:\n"
                    f"{_tail(self.log_dir / job.log_name)}")
            self.say(f"[study] {job.name}: {note}")
        return out

    def stop(self) -> None:
        for _, proc, _ in self.running:
            if proc.poll() is None:
                proc.terminate()
                proc.wait()


def run_jobs(jobs: list[Job], slots: int, log_dir: Path, *, progress: bool = True,
             desc: str = "study") -> dict[str, int]:
    """Run every job, at most ``slots`` at once, each after the jobs it names in ``after``;
    returns {job name: exit code} (jobs not started because a dependency failed: -1)."""
    from tqdm import tqdm

    log_dir = Path(log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    bar = tqdm(total=round(sum(j.cost for j in jobs)),
               initial=round(sum(min(j.progress(), j.cost) for j in jobs)), desc=desc, unit="s",
               disable=not progress, smoothing=0, dynamic_ncols=True,
               bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.0f}/{total:.0f} core-s "
                          "[{elapsed}<{remaining}]")
    runner = _Runner(log_dir, bar.write if progress else print)
    codes: dict[str, int] = {}
    pending = list(jobs)
    try:
        while pending or runner.running:
            alive = {j.name for j in pending} | {j.name for j, _, _ in runner.running}
            for job in [j for j in pending if any(
                    (codes.get(a, 0) != 0 and j.needs_success)
                    or (a not in codes and a not in alive) for a in j.after)]:
                pending.remove(job)  # a job it needs failed (or is in no list): never startable
                codes[job.name] = -1
                runner.say(f"[study] {job.name}: not started (a job it needs failed)")
            ready = sorted((j for j in pending if all(a in codes for a in j.after)),
                           key=lambda j: (j.priority, pending.index(j)))
            for job in ready[:max(slots - len(runner.running), 0)]:
                pending.remove(job)
                runner.start(job)
            time.sleep(POLL_SECONDS)
            codes.update(runner.ended())
            bar.update(max(round(sum(min(j.progress(), j.cost) for j in jobs)) - bar.n, 0))
    finally:  # Ctrl-C or an error here: no child keeps running unobserved
        runner.stop()
        bar.close()
    return codes
