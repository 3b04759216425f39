"""``python -m bench study`` (``make study``): does an SSIM loss beat a pixel loss, at a length
that means something (issue 28).

    python -m bench study --plan              # what would run, and the hours it takes here
    python -m bench study                     # run it all (resumable: Ctrl-C, run again)
    python -m bench study --quick             # about an hour (configs/study/quick.toml)
    python -m bench study inert               # where v3's SSIM term can act, from the code
    python -m bench study report              # the tables and plots from what exists so far
    python -m bench study export --name study # the final tables into results/ (bench results)

What it does (``configs/study/full.toml``): fine-tunes control, pixel, ssim_v3, ssim_v3_relaxed,
ssim_v1, ssim_matched and mixed from the shipped base, three seeds at the main budget (300
steps), one seed to the check length (4000 steps, a checkpoint every 500 kept), and ssim_v3 and
ssim_matched far past it (20000 steps); scores every kept checkpoint's one-step output on a fixed
validation subset (SSIM-fov, PSNR over the eroded FOV, vessel Dice, Inception KID, report DR
kappa) and each run's last checkpoint's sample too; measures at every scored checkpoint how much
larger SSIM's gradient is than L2's at the VAE decoder's input and at the backbone, with and
without the per-element clamp; collects the gradient norms each run logged while training; and
writes learning curves, the perception-distortion plane, stability, the final leaderboards and
the differences between presets with intervals over images and seeds (``bench.study_report``).

Two cores: the jobs (each training and each run's scoring a child process with one torch thread)
run ``--jobs`` at a time (default 2), scorings first when ready. Everything goes under ``--out``
(default ``reports/study``; other budgets ``reports/study-<budget>``): the runs, their outputs,
one score file per point, the logs, the tables and plots. Killed at any point, the same command
resumes: finished runs, checkpoints and points are skipped (trainings resume from their last
checkpoint, scorings from their first unscored point, the harness from its first missing image).
The study folder is bound to its settings (``study.json``: the ``--set`` values, the scoring
settings, the base model's fingerprint): running it with others is refused, naming the
difference; use another ``--out``.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from bench.perf_machine import positive_int
from bench.study_plan import (
    BudgetError,
    Point,
    RunSpec,
    Timing,
    load_budget,
    plan_runs,
    run_points,
    shared_points,
)

ACTIONS = ("run", "inert", "report", "export", "score")
SHARED = "_shared"
STATE = "study.json"
PLAN = "plan.json"
TIMING = "timing.json"
SCORE_SETTINGS = ("images", "sample", "ratio_max_t", "clamp", "probe_batches")
"""Budget keys every point of one study folder must share (its points are compared)."""


class StudyError(ValueError):
    """A study that cannot run as asked (one line naming the folder, file or value)."""


def add_arguments(p) -> None:
    p.add_argument("action", nargs="?", default="run", choices=ACTIONS,
                   help="run (default): plan, train, score, report; inert: the table of where "
                        "each preset's image terms act; report: rewrite the tables and plots; "
                        "export: the final tables into --results; score: one run's points (the "
                        "study's child jobs)")
    p.add_argument("--out", type=Path, help="the study folder (default reports/study, or "
                   "reports/study-<budget> for another budget)")
    p.add_argument("--budget", default="full",
                   help="configs/study/<name>.toml or a .toml path (default full)")
    p.add_argument("--quick", action="store_true", help="--budget quick: about an hour here")
    p.add_argument("--plan", "--dry-run", dest="plan", action="store_true",
                   help="print the jobs and the estimated hours, run nothing (measures the step "
                        "and scoring times once, kept in <out>/timing.json)")
    p.add_argument("--jobs", type=positive_int(16, "--jobs"), default=2,
                   help="jobs side by side, one torch thread each (default 2)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="config override for every run and the scoring (e.g. data.image_size=512)")
    p.add_argument("--step-time", type=float, metavar="S",
                   help="seconds per training step of every preset, instead of measuring")
    p.add_argument("--image-time", type=float, metavar="S",
                   help="seconds per scored image, instead of measuring")
    p.add_argument("--remeasure", action="store_true", help="measure the times again")
    p.add_argument("--keep-images", action="store_true",
                   help="keep the PNGs of every scored checkpoint (default: only of the last)")
    p.add_argument("--run", help="score: the run to score (its name), or _shared")
    p.add_argument("--results", type=Path, default=Path("results"),
                   help="export: the results folder (default results)")
    p.add_argument("--name", default="study", help="export: <results>/<name>_main_budget and "
                   "<name>_check_length")
    p.add_argument("--partial", action="store_true",
                   help="export: also when points are missing (the tables say how many)")
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--no-progress", action="store_true")


def budget_of(args):
    return load_budget("quick" if args.quick else args.budget)


def out_of(args, budget) -> Path:
    if args.out is not None:
        return Path(args.out)
    return Path("reports/study") if budget.name == "full" else Path(f"reports/study-{budget.name}")


# ---------------------------------------------------------------------------------------------
# the study folder's state and plan


def init_fingerprint(overrides: list[str]) -> dict:
    """The checkpoint every fine-tune of the study starts from, and the sha256 of its weights."""
    from medq.checkpoint import resolve_init
    from medq.config import load_config
    from medq.files import sha256_file

    cfg = load_config("control", overrides=overrides)
    ckpt = resolve_init(cfg.init.from_, Path(cfg.run.out_dir))
    weights = ckpt / ("ema.safetensors" if cfg.init.weights == "ema" else "model.safetensors")
    return {"checkpoint": str(ckpt), "sha256": sha256_file(weights)}


def make_state(budget, overrides: list[str]) -> dict:
    return {"budget": budget.as_dict(), "overrides": list(overrides),
            "init": init_fingerprint(list(overrides))}


def check_state(out: Path, state: dict) -> None:
    """Refuse a study folder made with other ``--set`` values, scoring settings or base model."""
    path = out / STATE
    if not path.is_file():
        return
    old = json.loads(path.read_text(encoding="utf-8"))
    diffs = []
    if old.get("overrides") != state["overrides"]:
        diffs.append(f"--set {old.get('overrides')} -> {state['overrides']}")
    for key in SCORE_SETTINGS:
        a, b = old.get("budget", {}).get(key), state["budget"][key]
        if a != b:
            diffs.append(f"score.{key} {a!r} -> {b!r}")
    if old.get("init", {}).get("sha256") != state["init"]["sha256"]:
        diffs.append(f"the base model {state['init']['checkpoint']} holds other weights than "
                     f"when the study started")
    if diffs:
        raise StudyError(f"{out} is a study made with other settings ({'; '.join(diffs)}); its "
                         f"points would not compare: pass another --out (or remove {out})")


def make_plan(out: Path, budget, overrides: list[str]) -> dict:
    """plan.json: every run (name, stage, preset, seed, steps, checkpoint spacing, its --set
    values) and the shared points (init, baselines)."""
    from medq.config import load_config
    from medq.scoring import REFERENCE

    runs = []
    for spec in plan_runs(budget):
        sets = list(overrides) + spec.overrides(out)
        cfg = load_config(spec.preset, overrides=sets)
        runs.append({"name": cfg.run_name, "stage": spec.stage, "preset": spec.preset,
                     "seed": spec.seed, "steps": spec.steps, "every": spec.every, "sets": sets})
    tasks = load_config("control", overrides=overrides).data.tasks
    baselines = sorted({REFERENCE[t] for t in tasks if t in REFERENCE})
    shared = [vars(p) for p in shared_points(budget, baselines)]
    n = len(shared) + sum(len(run_points(r["name"], spec_of(r), budget)) for r in runs)
    return {"runs": runs, "shared": shared, "points": n}


def spec_of(run: dict) -> RunSpec:
    return RunSpec(run["stage"], run["preset"], run["seed"], run["steps"], run["every"])


def read_study(out: Path) -> tuple[dict, dict]:
    """(study.json, plan.json) of an existing study folder."""
    try:
        return (json.loads((out / STATE).read_text(encoding="utf-8")),
                json.loads((out / PLAN).read_text(encoding="utf-8")))
    except FileNotFoundError:
        raise StudyError(f"{out}: no study there (no {STATE} / {PLAN}); start one with "
                         f"python -m bench study --out {out}") from None
    except json.JSONDecodeError as e:
        raise StudyError(f"{out}: unreadable {STATE} or {PLAN} ({e})") from None


def budget_from_state(state: dict):
    from bench.study_plan import Budget

    return Budget(**{k: tuple(v) if isinstance(v, list) else v
                     for k, v in state["budget"].items()})


# ---------------------------------------------------------------------------------------------
# progress of what exists


def logged_step(run_dir: Path) -> int:
    """The last step a run has logged (``logs/metrics.csv``'s last complete line), else the step
    of its run.json, else 0."""
    from medq.checkpoint import read_run_json

    path = Path(run_dir) / "logs" / "metrics.csv"
    step = int((read_run_json(run_dir) or {}).get("step", 0) or 0)
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            f.seek(max(f.tell() - 4096, 0))
            lines = f.read().decode("utf-8", "replace").splitlines()[1:-1]
    except OSError:
        return step
    for line in reversed(lines):
        head = line.split(",", 1)[0]
        if head.isdigit():
            return max(step, int(head))
    return step


def run_status(out: Path, run: dict) -> str:
    from medq.checkpoint import read_run_json

    return str((read_run_json(out / "runs" / run["name"]) or {}).get("status", "todo"))


def points_of(run: dict, budget) -> list[Point]:
    return run_points(run["name"], spec_of(run), budget)


def shared_of(plan: dict) -> list[Point]:
    return [Point(**p) for p in plan["shared"]]


# ---------------------------------------------------------------------------------------------
# times: measured once, refined from the study's own jobs


def get_timing(out: Path, args, state: dict, presets) -> Timing:
    """The plan's times: given on the command line, else ``<out>/timing.json`` with whatever it
    lacks measured now (and kept there); then refined from what the study's runs and points
    recorded."""
    from bench.study_timing import measure
    from medq.files import write_json_atomic

    path = out / TIMING
    if args.step_time is not None and args.image_time is not None:
        timing = Timing(step_seconds={p: args.step_time for p in presets},
                        point_image_seconds={"onestep": args.image_time, "sample": args.image_time,
                                             "baseline": args.image_time},
                        source="given on the command line (--step-time, --image-time)")
    else:
        timing = (Timing.from_dict(json.loads(path.read_text(encoding="utf-8")))
                  if path.is_file() and not args.remeasure else Timing())
        if (any(p not in timing.step_seconds for p in presets) or not timing.validation_seconds
                or not timing.point_image_seconds):
            print(f"[study] measuring the step and scoring times (one torch thread; kept in "
                  f"{path})", flush=True)
            timing = measure(presets, state["overrides"], state["budget"], timing=timing,
                             save=lambda t: write_json_atomic(path, t.as_dict()))
    return refine(timing, out)


def refine(timing: Timing, out: Path) -> Timing:
    """``timing`` with each preset's step time replaced by its runs' logged median
    ``time/steps_per_s`` and each output's image time by its scored points' median, where the
    study has them."""
    import statistics

    from bench.study_report import load_records, read_metrics_csv

    rates: dict[str, list[float]] = {}
    for cfg_file in (out / "runs").glob("*/config.toml"):
        preset = cfg_file.parent.name.rsplit("-", 1)[0]
        rates.setdefault(preset, []).extend(
            v for _, k, v in read_metrics_csv(cfg_file.parent / "logs" / "metrics.csv")
            if k == "time/steps_per_s" and v > 0)
    for preset, vals in rates.items():
        if len(vals) >= 3:
            timing.step_seconds[preset] = 1.0 / statistics.median(vals)
    per: dict[str, list[float]] = {}
    for rec in load_records(out):
        n = sum(r.get("n_images") or 0 for r in rec["rows"])
        kind = "baseline" if rec["source"] == "baseline" else rec["output"]
        if n:
            per.setdefault(kind, []).append(
                (rec["seconds"] - rec.get("seconds_ratio", 0.0)) / n)
            if rec.get("seconds_ratio"):
                timing.point_fixed_seconds[kind] = rec["seconds_ratio"]
    for kind, vals in per.items():
        timing.point_image_seconds[kind] = statistics.median(vals)
    return timing


# ---------------------------------------------------------------------------------------------
# jobs


def _sets(values: list[str]) -> list[str]:
    return [a for v in values for a in ("--set", v)]


def build_jobs(out: Path, state: dict, plan: dict, timing: Timing, args):
    """The study's jobs (``bench.study_jobs.Job``), done ones left out: each run's training
    unless it has ended, then its scoring; the shared points' scoring first."""
    from bench.study_jobs import Job
    from bench.study_score import read_point

    budget = budget_from_state(state)
    tasks = len(_tasks(state))
    keep = ["--keep-images"] if args.keep_images else []
    score = [sys.executable, "-m", "bench", "study", "score", "--out", str(out), *keep]

    def points_job(name: str, points: list[Point], after: list[str]) -> Job | None:
        if all(read_point(out, p) is not None for p in points):
            return None
        cost = {p.key: timing.point_seconds(p, budget.images, tasks) for p in points}

        def progress() -> float:  # a job's start-up counts as done with its first point
            scored = [k for k in cost if (out / "scores" / f"{k}.json").is_file()]
            return sum(cost[k] for k in scored) + (timing.job_seconds if scored else 0.0)

        return Job(f"score {name}", score + ["--run", name],
                   sum(cost.values()) + timing.job_seconds, progress, after=after, priority=0,
                   needs_success=False)  # a run that stopped early: score what it left

    jobs = [j for j in [points_job(SHARED, shared_of(plan), [])] if j]
    for run in plan["runs"]:
        spec, run_dir = spec_of(run), out / "runs" / run["name"]
        after = []
        if run_status(out, run) in ("todo", "running", "failed"):
            total = timing.run_seconds(spec)
            jobs.append(Job(f"train {run['name']}", [
                sys.executable, "-m", "train", "--preset", run["preset"], *_sets(run["sets"]),
                "--no-progress"], total,
                lambda s=spec, d=run_dir, t=total: t - timing.run_seconds(s, logged_step(d)),
                priority=1))
            after = [jobs[-1].name]
        job = points_job(run["name"], points_of(run, budget), after)
        if job:
            jobs.append(job)
    return jobs


def _tasks(state: dict) -> list[str]:
    from medq.config import load_config

    return list(load_config("control", overrides=state["overrides"]).data.tasks)


def check_runs(out: Path, plan: dict) -> None:
    """Refuse runs that finished on weights the base no longer holds (``init_changed``)."""
    from medq.training.task import init_changed

    for run in plan["runs"]:
        why = init_changed(out / "runs" / run["name"])
        if why:
            raise StudyError(f"{out / 'runs' / run['name']}: {why}; its results describe another "
                             f"base model: pass another --out (or remove it)")


# ---------------------------------------------------------------------------------------------
# the plan as a table


def plan_lines(out: Path, state: dict, plan: dict, timing: Timing, jobs, slots: int) -> list[str]:
    from bench.study_jobs import simulate
    from bench.study_score import read_point

    budget = budget_from_state(state)
    tasks = len(_tasks(state))
    head = (f"{'stage':10s} {'preset':16s} {'seed':>4s} {'steps':>6s} {'ckpts':>5s} "
            f"{'points':>6s}  {'status':22s} {'core-h left':>11s}")
    lines = [f"study plan: budget {budget.name} ({budget.source}), folder {out}, {slots} jobs "
             f"side by side", head]
    train_s = score_s = 0.0
    for run in plan["runs"]:
        spec, run_dir = spec_of(run), out / "runs" / run["name"]
        pts = points_of(run, budget)
        status, step = run_status(out, run), logged_step(run_dir)
        left_t = timing.run_seconds(spec, step) if status in ("todo", "running", "failed") else 0
        left_pts = [p for p in pts if read_point(out, p) is None]
        left_s = sum(timing.point_seconds(p, budget.images, tasks) for p in left_pts) + (
            timing.job_seconds if left_pts else 0.0)
        train_s, score_s = train_s + left_t, score_s + left_s
        scored = sum(read_point(out, p) is not None for p in pts)
        lines.append(f"{run['stage']:10s} {run['preset']:16s} {run['seed']:4d} {spec.steps:6d} "
                     f"{len(spec.checkpoints):5d} {len(pts):6d}  "
                     f"{f'{status} {step}/{spec.steps}, {scored} scored':22s} "
                     f"{(left_t + left_s) / 3600:11.2f}")
    shared = shared_of(plan)
    left_pts = [p for p in shared if read_point(out, p) is None]
    left = sum(timing.point_seconds(p, budget.images, tasks) for p in left_pts) + (
        timing.job_seconds if left_pts else 0.0)
    score_s += left
    lines.append(f"{'shared':10s} {'init, baselines':16s} {'':4s} {'':6s} {'':5s} "
                 f"{len(shared):6d}  {'':22s} {left / 3600:11.2f}")
    wall = simulate(jobs, slots)
    lines += [f"left: training {train_s / 3600:.2f} core-h, scoring {score_s / 3600:.2f} core-h "
              f"({plan['points']} points of {budget.images} images x {tasks} tasks in all); "
              f"about {wall / 3600:.1f} h ({wall / 60:.0f} min) on {slots} cores side by side",
              "times (" + (timing.source or "measured") + "): step "
              + ", ".join(f"{p} {s:.3f} s" for p, s in sorted(timing.step_seconds.items()))
              + f"; validation {timing.validation_seconds:.1f} s; scoring per image "
              + ", ".join(f"{k} {s:.2f} s" for k, s in sorted(timing.point_image_seconds.items())),
              *(f"{part} measured on: {line}" for part, line in timing.measured_on.items())]
    return lines


# ---------------------------------------------------------------------------------------------
# actions


def action_run(args) -> int:
    """Plan (and with --plan stop there), train and score what is missing, write the report."""
    from bench.perf_machine import machine_line, measure_machine
    from bench.study_jobs import run_jobs
    from bench.study_report import write_report
    from medq.files import write_json_atomic

    budget = budget_of(args)
    out = out_of(args, budget)
    state = make_state(budget, args.overrides)
    check_state(out, state)
    plan = make_plan(out, budget, args.overrides)
    check_runs(out, plan)
    timing = get_timing(out, args, state, budget.presets)
    jobs = build_jobs(out, state, plan, timing, args)
    print("\n".join(plan_lines(out, state, plan, timing, jobs, args.jobs)), flush=True)
    if args.plan:
        return 0
    state["machine"] = machine_line(measure_machine())
    write_json_atomic(out / STATE, state)
    write_json_atomic(out / PLAN, plan)
    t0 = time.time()
    codes = run_jobs(jobs, args.jobs, out / "logs", progress=not args.no_progress)
    failed = sorted(name for name, rc in codes.items() if rc != 0)
    files = write_report(out, state, plan, plots=not args.no_plots)
    print(f"[study] {len(codes)} jobs in {(time.time() - t0) / 3600:.2f} h; report: "
          f"{files['summary']}, {files['curves']}, plots in {out / 'plots'}", flush=True)
    for name in failed:
        print(f"[study] FAILED {name} (exit {codes[name]}; log in {out / 'logs'}); run the same "
              f"command again to resume", file=sys.stderr)
    return 1 if failed else 0


def action_score(args) -> int:
    """One child job: score the points of run ``--run`` (or the shared points), one thread."""
    import torch

    from bench.study_score import Scorer

    torch.set_num_threads(1)
    out = Path(args.out or "reports/study")
    state, plan = read_study(out)
    if not args.run:
        raise StudyError("score: --run NAME (a run of plan.json, or _shared) is required")
    scorer = Scorer(out, state, keep_images=args.keep_images)
    if args.run == SHARED:
        scorer.score_shared(shared_of(plan))
        return 0
    run = next((r for r in plan["runs"] if r["name"] == args.run), None)
    if run is None:
        raise StudyError(f"score: no run {args.run!r} in {out / PLAN} (runs: "
                         f"{', '.join(r['name'] for r in plan['runs'])})")
    scorer.score_run(run, points_of(run, budget_from_state(state)))
    return 0


def action_report(args) -> int:
    from bench.study_report import write_report

    out = Path(args.out or out_of(args, budget_of(args)))
    state, plan = read_study(out)
    files = write_report(out, state, plan, plots=not args.no_plots)
    for name, path in files.items():
        print(f"{name}: {path}")
    return 0


def action_inert(args) -> int:
    """The table of ``medq.study.term_reach`` for every preset with an image term."""
    from bench.study_report import inert_rows
    from medq.config import load_config
    from medq.study import inference_timesteps

    presets = ["ssim_v3", "ssim_v3_relaxed", "ssim_v2", "ssim_v1", "mixed", "pixel",
               "ssim_matched"]
    rows = inert_rows(presets, args.overrides)
    sample = load_config("control", overrides=args.overrides).sample
    ts = inference_timesteps(sample)
    print(f"inference evaluates the model at t = {', '.join(f'{t:.3f}' for t in ts)} (Euler "
          f"sampler: {sample.steps} steps, shift {sample.shift:g}; one-step output: t = "
          f"{sample.onestep_t:g}); training draws t = shift(sigmoid(N(0, 1)))")
    print(f"{'preset':16s} {'term':5s} {'weight':>7s} {'scale':>6s} {'w x scale':>9s} "
          f"{'max_t':>6s} {'min sampler t':>13s} {'inference t in gate':>19s} "
          f"{'gated':>8s} {'samples reached':>17s}")
    for r in rows:
        print(f"{r['preset']:16s} {r['term']:5s} {r['weight']:7g} {r['grad_scale']:6g} "
              f"{r['gradient_factor']:9.3g} {r['max_t']:6g} {r['smallest_sampler_t']:13.4f} "
              f"{r['inference_ts_in_gate']:>11d} of {r['inference_ts']:<5d} "
              f"{100 * r['gated_fraction']:7.2f}% {r['samples_reached']:8.0f} of "
              f"{r['samples_trained']:<6d}")
    inert = [r["preset"] for r in rows if r["term"] == "ssim" and r["inference_ts_in_gate"] == 0]
    print(f"SSIM terms whose gate contains none of the timesteps any scored output is computed "
          f"at (inert by construction at inference): {', '.join(inert) or 'none'}")
    return 0


def action_export(args) -> int:
    from bench.study_export import export

    out = Path(args.out or out_of(args, budget_of(args)))
    state, plan = read_study(out)
    for path in export(out, state, plan, args.results, args.name, partial=args.partial):
        print(f"wrote {path}")
    return 0


def main(args) -> int:
    from medq.config import ConfigError
    from medq.harness.text import InferError

    actions = {"run": action_run, "score": action_score, "report": action_report,
               "inert": action_inert, "export": action_export}
    try:
        return actions[args.action](args)
    except (StudyError, BudgetError, ConfigError, InferError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("[study] interrupted: what is done is kept; the same command resumes",
              file=sys.stderr)
        return 130
