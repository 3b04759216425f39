"""``python -m bench perf main``: stage times of the last ``make train-v3 && make eval``.

    python -m bench perf main                          # runs/ and reports/ of this checkout
    python -m bench perf main --runs-dir /x/runs --reports /x/reports

Nothing is rerun: every figure is read from what the stages left behind.

- data: the prepared-image caches (``<runs>/_cache/*.npz``); only their end time is recorded.
- VAE: ``<runs>/vae/metrics.json`` ``train_seconds`` (the training loop; load/save not included).
- base and each fine-tune: from the TensorBoard event file's creation time (its name holds the
  Unix time; the logger is created when the loop starts) to run.json's last write (the loop's end).
  ``make eval`` trains the missing fine-tunes side by side (``bench eval --train-jobs``), so a
  "fine-tunes" row gives their wall clock (overlapping spans counted once), and the sum uses it.
- inference, per model: the sum of the harness's per-sample ``seconds`` in ``records.jsonl``
  (model compute, without PNG writing) and the wall span from its first PNG to its last records.
- scoring: the gaps between one model's last records.jsonl and the next model's first PNG, and
  from the last one to ``<reports>/leaderboard.csv`` (scoring, plus loading the next model).

Times come from file modification times, so copying the directories without preserving them
(``cp -p``, rsync -t) spoils them; a resumed run counts from its last start.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import sys
from pathlib import Path

TB_TIME = re.compile(r"events\.out\.tfevents\.(\d+(?:\.\d+)?)\.")
RUN_ORDER = ("pretrain", "ssim_v3", "pixel", "mixed")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--runs-dir", type=Path, default=Path("runs"),
                        help="the runs directory of the job (default runs)")
    parser.add_argument("--reports", type=Path, default=Path("reports"),
                        help="the reports directory of make eval (default reports)")
    parser.add_argument("--vae", type=Path, default=None, help="VAE directory (default RUNS/vae)")


def _mtime(path: Path) -> float | None:
    try:
        return path.stat().st_mtime
    except OSError:
        return None


def run_span(run_dir: Path) -> dict:
    """Start (TensorBoard event file name), end (run.json mtime), status and steps of one run."""
    info = {}
    try:
        info = json.loads((run_dir / "run.json").read_text())
    except (OSError, json.JSONDecodeError):
        pass
    starts = [float(m.group(1)) for f in (run_dir / "logs" / "tb").glob("events.out.tfevents.*")
              if (m := TB_TIME.match(f.name))]
    return {"name": run_dir.name, "preset": info.get("preset", "?"),
            "status": info.get("status", "no run.json"), "step": info.get("step"),
            "start": min(starts) if starts else None, "end": _mtime(run_dir / "run.json")}


def inference_spans(runs_dir: Path) -> list[dict]:
    """Per model evaluation directory: harness seconds (sum), samples, first PNG, last records."""
    dirs = sorted(set(runs_dir.glob("*/eval/*")) | set(runs_dir.glob("_baselines/*/eval"))
                  | set(runs_dir.glob("_models/*/eval"))
                  | set(runs_dir.glob("_init/*/eval/*")))  # the base model the runs started from
    out = []
    for d in dirs:
        records = list(d.glob("*/records.jsonl"))
        if not d.is_dir() or not records:
            continue
        seconds, n = 0.0, 0
        for rec in records:
            for line in rec.read_text().splitlines():
                try:
                    seconds += float(json.loads(line).get("seconds", 0.0))
                    n += 1
                except (json.JSONDecodeError, TypeError, ValueError, AttributeError):
                    continue
        pngs = [t for p in d.glob("*/images/*.png") if (t := _mtime(p)) is not None]
        name = str(d.relative_to(runs_dir))
        out.append({"name": name, "seconds": seconds, "samples": n,
                    "first": min(pngs) if pngs else None,
                    "last": max(t for r in records if (t := _mtime(r)) is not None)})
    return sorted(out, key=lambda r: r["first"] if r["first"] is not None else r["last"])


def stage_rows(runs_dir: Path, reports: Path, vae_dir: Path) -> list[tuple[str, str, float | None,
                                                                          str]]:
    """(stage, what, seconds or None, source) in job order."""
    rows = []
    caches = sorted((_mtime(p), p.name) for p in (runs_dir / "_cache").glob("*.npz"))
    for t, name in caches:
        rows.append(("data", name, None, f"not recorded; written {_clock(t)}"))
    try:
        vae = json.loads((vae_dir / "metrics.json").read_text())
        rows.append(("VAE", str(vae_dir), float(vae["train_seconds"]),
                     "metrics.json train_seconds"))
    except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError):
        rows.append(("VAE", str(vae_dir), None, "no metrics.json with train_seconds"))
    runs = [run_span(p) for p in sorted(runs_dir.iterdir()) if (p / "run.json").is_file()]
    runs.sort(key=lambda r: (RUN_ORDER.index(r["preset"]) if r["preset"] in RUN_ORDER
                             else len(RUN_ORDER), r["start"] or r["end"] or 0))
    for r in runs:
        stage = "base" if r["preset"] == "pretrain" else "fine-tune"
        what = f"{r['name']} ({r['status']} at step {r['step']})"
        if r["start"] is None or r["end"] is None:
            rows.append((stage, what, None, "no TensorBoard event file"))
        else:
            rows.append((stage, what, r["end"] - r["start"], "tb event file -> run.json"))
    spans_ft = [(r["start"], r["end"]) for r in runs if r["preset"] != "pretrain"
                and r["start"] is not None and r["end"] is not None]
    if len(spans_ft) > 1:
        rows.append(("fine-tunes", f"wall clock of the {len(spans_ft)} fine-tunes",
                     union_seconds(spans_ft), "side by side runs counted once"))
    spans = inference_spans(runs_dir)
    for s in spans:
        wall = "" if s["first"] is None else f", wall {s['last'] - s['first']:.0f} s"
        rows.append(("inference", f"{s['name']} ({s['samples']} samples)", s["seconds"],
                     f"records.jsonl seconds{wall}"))
    ends = [s["last"] for s in spans]
    nexts = [s["first"] for s in spans[1:]] + [_mtime(reports / "leaderboard.csv")]
    gaps = [b - a for a, b in zip(ends, nexts) if a is not None and b is not None and b >= a]
    if spans:
        rows.append(("scoring", f"{len(gaps)} gaps after {len(spans)} models",
                     sum(gaps) if gaps else None,
                     "last records -> next first PNG / leaderboard.csv (+ model loading)"))
    return rows


def union_seconds(spans: list[tuple[float, float]]) -> float:
    """Length of the union of [start, end] intervals: the wall clock of runs that may overlap."""
    total, reach = 0.0, float("-inf")
    for a, b in sorted(spans):
        if b > reach:
            total += b - max(a, reach)
            reach = b
    return total


def _clock(t: float | None) -> str:
    return "?" if t is None else dt.datetime.fromtimestamp(t).strftime("%Y-%m-%d %H:%M:%S")


def main(args) -> int:
    if not args.runs_dir.is_dir():
        print(f"bench perf main: --runs-dir {args.runs_dir} does not exist: run `make train-v3 && "
              f"make eval` first, or point --runs-dir at the job's runs/", file=sys.stderr)
        return 2
    rows = stage_rows(args.runs_dir, args.reports, args.vae or args.runs_dir / "vae")
    if not any(r[2] is not None for r in rows):
        print(f"bench perf main: nothing timed under {args.runs_dir} (no VAE metrics, runs or "
              f"inference records): run `make train-v3 && make eval` first", file=sys.stderr)
        return 2
    from bench.perf_machine import print_machine

    print_machine()
    print(f"Stage times of the job in {args.runs_dir} (reports {args.reports}), read from its "
          f"files; the machine line above is now, not when the job ran")
    print(f"{'stage':<10} {'seconds':>9}  {'what':<48} source")
    total = 0.0
    walled = any(r[0] == "fine-tunes" for r in rows)
    for stage, what, seconds, source in rows:
        if not (walled and stage == "fine-tune"):
            total += seconds or 0.0
        s = "n/a" if seconds is None else f"{seconds:.1f}"
        print(f"{stage:<10} {s:>9}  {what:<48} {source}")
    note = "; fine-tunes by their wall clock" if walled else ""
    print(f"{'sum':<10} {total:>9.1f}  (of the stages that were timed{note})")
    return 0
