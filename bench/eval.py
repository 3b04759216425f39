"""``python -m bench eval`` (make eval): train what is missing, infer, score every run + baselines.

    python -m bench eval                                  # pixel vs ssim_v3 vs mixed + baselines
    python -m bench eval --skip-train --tasks sr4 --test-images 16
    python -m bench eval --runs 'ssim_v3-*' --all-checkpoints       # step curves
    python -m bench eval --data eyeq --eyeq-root /data/EyeQ/original_img \
        --labels /data/Label_EyeQ_test.csv --split all
    python -m bench eval --data folder --root /data/my_fundus_pngs --split all --skip-train
    python -m bench eval --skip-train --model my_pkg.wrap:BagelWrapper --model-arg ckpt=/models/x
    torchrun --nproc_per_node=2 -m bench eval --skip-train          # sharded, merged on rank 0

Steps, one module each: (1) ``bench/eval_train.py``: for each of pixel / ssim_v3 / mixed without a
finished run in ``runs/``, train it (``python -m train --preset NAME`` with the same ``--set``
overrides and the step budget of the runs that exist; ``--train-jobs`` of them side by side);
(2) ``bench/eval_targets.py``: what is evaluated: every run (latest checkpoint, EMA weights;
``--all-checkpoints`` for all) as its sample and its one-step output, the checkpoint the runs
started from (the shipped base model), every ``--model``, and the baselines (bicubic and Lanczos
for SR, identity for enhance, the constant image = mean of the training targets on every task as the
floor); (3) ``bench/eval_infer.py``: the inference harness on the test split, or on every image
with ``--split all`` (finished outputs are reused); (4) ``bench/eval_score.py``: score the PNGs
(``medq.scoring``): per image PSNR / SSIM / MS-SSIM over the full image and inside the field of
view, per set FID/KID on the pinned Inception (and the random-feature distance as named
secondary columns); (5) ``bench/report.py`` through ``bench/publish.py``: write
``reports/leaderboard.csv``, ``per_image.csv``, ``leaderboard.md`` and plots, all or none.

Failure is visible. Exit codes:

- 0: every row ``ok``; the reports replace ``<out>``'s (staged, then moved into place).
- 1: some row is not ``ok`` (a training, run, checkpoint, model or baseline failed; its rows say
  why): one ``[eval] FAILED ...`` line per failed thing, its report in ``<out>/failed/``, never
  over the last good ``<out>``. Runs stopped by the non-finite guard (``aborted``) are failures
  unless ``--include-aborted`` scores their last good checkpoint, marked as such.
- 2: nothing evaluated, one ``error:`` line: bad arguments or configuration; the data source
  cannot be read (said once, naming the file, before any model is loaded or trained); ``--out``
  not writable (checked first); ``run.device`` not available here; another ``bench eval`` holds
  ``<runs-dir>`` (its lock file ``<runs-dir>/eval.lock`` names the process); a write error while
  publishing (``<out>`` left as it was).

Outputs of data other than the embedded test split go to ``eval-<source>-<split>-<sha8>``
directories (``medq.harness.records.keyed_eval_dir``), never into ``eval/``: the runs', their
one-step outputs', the base model's, the models' and the baselines' alike. Retention: an output
directory that holds no output (only its ``data.json``, e.g. its model failed to load or to run) is
removed when its evaluation fails, and any such leftover of a killed evaluation at the next start;
one holding outputs is kept, so a rerun resumes from it. Inference runs on ``run.device`` (``auto``:
CUDA when present, else the CPU); a device this machine lacks is refused.
"""

from __future__ import annotations

import json
import logging
import math
import sys
import time
import traceback
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

from bench import report
from bench.eval_infer import (
    DataSourceError,
    EvalItems,
    claim_outputs,
    image_size,
    image_size_override,
    infer,
    remove_if_unfilled,
    tidy_outputs,
)
from bench.eval_score import score_outputs
from bench.eval_targets import (
    Target,
    baseline_targets,
    init_targets,
    model_targets,
    run_targets,
    status_rows,
)
from bench.eval_train import run_dirs, train_missing
from bench.perf_machine import positive_int
from bench.publish import FAILED_DIR, check_writable, publish_reports
from bench.train_jobs import default_jobs
from medq import metrics as M
from medq.cli import data_overrides
from medq.dist import all_true, barrier, current, init_dist, shutdown_group
from medq.leaderboard import number
from medq.scoring import FeatureCache, comparisons, protocol, row_ok, seed_summary
from medq.tasks import TASKS

log = logging.getLogger("bench.eval")
EVAL_LOCK = "eval.lock"
"""The lock file in ``--runs-dir`` held by the one evaluation of it (``medq.run_lock``)."""


def add_arguments(p) -> None:
    p.add_argument("--runs", action="append", default=[], metavar="GLOB",
                   help="run directory names to score (fnmatch, repeatable; default all)")
    p.add_argument(
        "--runs-dir", type=Path, default=Path("runs"), help="where runs live (default runs)"
    )
    p.add_argument(
        "--tasks", help="comma-separated subset of sr2,sr4,enhance (default: data.tasks)"
    )
    p.add_argument("--test-images", type=int, metavar="N", help="at most N test images per task")
    p.add_argument("--skip-train", action="store_true", help="do not train missing standard runs")
    p.add_argument("--train-jobs", type=positive_int(None, "the number of training jobs"),
                   default=default_jobs(), metavar="N",
                   help="missing runs trained side by side, one torch thread each (default: one "
                        "per core, here %(default)s); with more than 1 each writes "
                        "<runs-dir>/_logs/<name>.log instead of a progress bar")
    p.add_argument("--seeds", type=positive_int(20, "the number of training seeds"), default=1,
                   metavar="N",
                   help="training seeds per standard mode (run.seed 0..N-1; default 1): trains the "
                        "missing ones, reports per-seed rows, the mean +- seed std, and compares "
                        "modes on per-seed means")
    p.add_argument(
        "--all-checkpoints", action="store_true", help="score every checkpoint, not only the latest"
    )
    p.add_argument("--weights", choices=["ema", "model"], default="ema")
    p.add_argument("--include-aborted", action="store_true",
                   help="also score runs stopped by the non-finite guard (their last good "
                        "checkpoint), marked as such; by default they fail the evaluation unscored")
    p.add_argument("--no-baselines", action="store_true")
    p.add_argument(
        "--model",
        dest="models",
        action="append",
        default=[],
        metavar="MODULE:CLASS",
        help="also evaluate this ImageTextModel (repeatable; outputs in "
        "<runs-dir>/_models/<name>/eval)",
    )
    p.add_argument("--model-arg", dest="model_args", action="append", default=[], metavar="K=V",
                   help="constructor keyword argument for every --model (TOML literal or string)")
    p.add_argument("--out", type=Path, default=Path("reports"))
    p.add_argument("--title", default="",
                   help="the report's heading in docs/RESULTS.md when --out is a folder of "
                        "results/ (meta.json; default: the data and split)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="config override for training, the data and the sampler (e.g. "
                        "data.num_images=48, sample.noise_temperature=1)")
    _add_data_arguments(p)
    p.add_argument(
        "--channel", choices=["rgb", "y"], default="rgb", help="metrics on RGB or on Y (BT.601)"
    )
    p.add_argument(
        "--backbone",
        choices=M.BACKBONE_CHOICES,
        default="auto",
        help=M.BACKBONE_HELP,
    )
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--no-text", action="store_true", help="skip report generation in the harness")
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--no-progress", action="store_true")


def _add_data_arguments(p) -> None:
    """Which images: the data source (``data.*`` overrides) and the split."""
    p.add_argument("--data", choices=["synthetic", "eyeq", "drive", "folder"], help="data.source")
    p.add_argument("--eyeq-root", help="EyeQ image folder (with --data eyeq)")
    p.add_argument("--root", help="image folder (with --data folder / drive)")
    p.add_argument("--labels", help="EyeQ label CSV (with --data eyeq)")
    p.add_argument(
        "--split",
        choices=["test", "all"],
        default="test",
        help="which images to evaluate: the test split (default), or all of them (a folder "
        "or label CSV of held-out images, e.g. EyeQ's test CSV; never the training data)",
    )


# ---------------------------------------------------------------------------------------------
# the command


class EvalRefused(ValueError):
    """The evaluation cannot start (exit 2); the message says why and what to do."""


@dataclass
class Context:
    """What every target's evaluation shares."""

    args: object                # the parsed command line
    overrides: list[str]        # --set and the data flags, as config overrides
    tasks: list[str]
    device: object              # torch.device the runs' models are loaded on
    items: EvalItems
    features: FeatureCache | None = None
    failure_log: Path | None = None


def evaluate(target: Target, ctx: Context) -> tuple[list[dict], list[dict]]:
    """Rows of one target: load, infer into its keyed directory, score. A failure is an error row
    and one line, never a lost row or a traceback on the console (it goes to
    ``<runs-dir>/_logs/eval-failures.log``); a data source that cannot be built was said once."""
    if target.status is not None:
        return status_rows(target.meta, target.tasks, target.status), []
    meta, out_dir = dict(target.meta), None
    try:
        model = target.load()
        if target.named_by_model:
            meta.update(name=model.name, run=model.name)
        items = ctx.items.items(target.cfg)
        out_dir = claim_outputs(target.out_dir(model), target.cfg, ctx.args.split)
        infer(model, target, meta, items, out_dir, ctx.args)
        rows, per_image = score_outputs(out_dir, meta, items, target.tasks,
                                        channel=ctx.args.channel, features=ctx.features)
    except DataSourceError as e:  # said once, as the data's failure
        rows, per_image = status_rows(meta, target.tasks, f"error: {e}"), []
    except Exception as e:  # noqa: BLE001 - one failing model must not lose the other rows
        _log_failure(ctx, meta["name"], e)
        rows, per_image = status_rows(meta, target.tasks, f"error: {type(e).__name__}: {e}"), []
        _remove_unfilled_outputs(out_dir, ctx)
    if target.mark:
        rows = [{**r, "status": f"{r['status']}{target.mark}"} for r in rows]
    return rows, per_image


def _log_failure(ctx: Context, name: str, error: Exception) -> None:
    where = ""
    if ctx.failure_log is not None and current().is_main:
        try:
            ctx.failure_log.parent.mkdir(parents=True, exist_ok=True)
            with open(ctx.failure_log, "a", encoding="utf-8") as f:
                f.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} {name}\n"
                        + traceback.format_exc())
            where = f" (traceback in {ctx.failure_log})"
        except OSError:
            pass
    print(f"[eval] {name}: failed: {type(error).__name__}: {error}{where}", flush=True)


def _remove_unfilled_outputs(out_dir: Path | None, ctx: Context) -> None:
    """The retention rule after a failure: the keyed output directory goes if it holds nothing."""
    if out_dir is None:
        return
    try:
        remove_if_unfilled(out_dir, Path(ctx.args.runs_dir))
    except OSError as e:
        log.warning("%s: could not remove the empty output directory (%s)", out_dir, e)


def failures(rows: list[dict], data_failures: list[str]) -> list[str]:
    """One line per failed thing: the data, then each run / checkpoint / model / baseline whose
    rows are not ok (its tasks folded into one line per status)."""
    out = [f"data: {msg}" for msg in data_failures]
    seen: dict[tuple[str, str, str], list[str]] = {}
    for r in rows:
        if not row_ok(r):
            key = (str(r.get("kind", "")), str(r.get("name", "")), str(r.get("status", "")))
            seen.setdefault(key, []).append(str(r.get("task", "")))
    for (kind, name, status), tasks in seen.items():
        if any(msg in status for msg in data_failures):
            continue  # already said once, as the data's failure
        out.append(f"{kind or 'row'} {name} ({', '.join(tasks)}): {status}")
    return out


# ---------------------------------------------------------------------------------------------
# before any work: settings, device, writable --out, the runs directory's lock, the data


def _settings(args) -> tuple[list[str], object, list[str]]:
    """(config overrides, the evaluation's config, tasks); ValueError naming a bad argument."""
    from medq.config import load_config

    overrides = data_overrides(args.overrides, source=args.data, root=args.eyeq_root or args.root,
                               labels=args.labels)
    eval_cfg = load_config("control", overrides=overrides)
    tasks = args.tasks.split(",") if args.tasks else list(eval_cfg.data.tasks)
    if args.model_args and not args.models:
        raise EvalRefused(f"--model-arg {args.model_args[0]!r} given without --model "
                          f"MODULE:CLASS")
    if args.split == "all" and eval_cfg.data.source == "synthetic":
        raise EvalRefused(
            "--split all on the embedded synthetic data would score the training images; "
            "use the test split, or --split all with --data eyeq/drive/folder of held-out images")
    bad = [t for t in tasks if t not in TASKS]
    if bad:
        raise EvalRefused(f"--tasks: unknown {', '.join(bad)}; expected {', '.join(TASKS)}")
    return overrides, eval_cfg, tasks


def _device(eval_cfg):
    """``run.device`` (``--set run.device=...``) for the runs' models: honoured, or refused in one
    line when this machine lacks it (``medq.dist.pick_device``, the one check of every stage)."""
    from medq.dist import pick_device

    return pick_device(eval_cfg.run.device)


def _claim(args, stack: ExitStack) -> None:
    """Rank 0: ``--out`` writable and ``--runs-dir`` this evaluation's alone (its lock, held until
    the evaluation ends), leftovers tidied; every rank learns whether that worked."""
    import torch

    from medq.run_lock import RunLockedError, run_lock

    group, error = current(), None
    if group.is_main:
        try:
            try:
                check_writable(args.out)
            except OSError as e:
                raise EvalRefused(f"--out {args.out}: cannot write there ({e.strerror or e}); "
                                  f"pass a writable folder") from None
            try:
                stack.enter_context(run_lock(Path(args.runs_dir), lock_file=EVAL_LOCK))
            except OSError as e:
                raise EvalRefused(f"--runs-dir {args.runs_dir}: cannot write there "
                                  f"({e.strerror or e})") from None
            except RunLockedError as e:
                raise EvalRefused(f"another bench eval is using it: {e}") from None
            tidy_outputs(Path(args.runs_dir))
        except EvalRefused as e:
            error = e
    if not all_true(error is None, group, torch.device("cpu")):
        raise error or EvalRefused("rank 0 could not start the evaluation (its message says why)")


def _check_data(ctx: Context, eval_cfg) -> None:
    """Build the evaluation's items now, before training or loading any model: a data source that
    cannot be read is one line naming the file, not one error per model."""
    try:
        ctx.items.items(eval_cfg)
    except DataSourceError as e:
        raise EvalRefused(f"the data cannot be read: {e}") from None


# ---------------------------------------------------------------------------------------------
# the evaluation


def _evaluate_all(targets: list[Target], ctx: Context) -> tuple[list[dict], list[dict]]:
    rows, per_image = [], []
    for target in targets:
        rr, pi = evaluate(target, ctx)
        rows += rr
        per_image += pi
    return rows, per_image


def run_eval(args) -> dict:
    """The whole evaluation: {"rows", "per_image", "backbone", "runs", "failures", "files"}."""
    from medq.config import load_config

    overrides, eval_cfg, tasks = _settings(args)
    ctx = Context(args, overrides, tasks, _device(eval_cfg),
                  EvalItems(args.split, tasks, args.test_images),
                  failure_log=Path(args.runs_dir) / "_logs" / "eval-failures.log")
    with ExitStack() as stack:
        _claim(args, stack)
        _check_data(ctx, eval_cfg)
        group = current()
        rows: list[dict] = []
        if group.is_main and not args.runs:
            rows += train_missing(args, run_dirs(args.runs_dir, []))
        barrier(group)
        runs = run_dirs(args.runs_dir, args.runs)
        backbone = M.feature_backbones(args.backbone)
        ctx.features = FeatureCache(backbone) if backbone else None
        targets = [t for run in runs for t in run_targets(run, ctx)]
        sizes = [image_size(t.cfg) for t in targets if t.cfg is not None]
        if not args.runs:  # the base model the runs started from (weights/base), as a mode
            targets += init_targets(runs, ctx, next((t.cfg for t in targets if t.cfg), None))
        # External models and baselines see the same test items as the runs (the runs' size).
        cfg = eval_cfg if not sizes else load_config(
            "control", overrides=overrides + [image_size_override(sizes[0])])
        targets += model_targets(cfg, ctx) + (baseline_targets(cfg, ctx)
                                              if not args.no_baselines else [])
        more, per_image = _evaluate_all(targets, ctx)
        rows += more
        result = {"rows": rows, "per_image": per_image, "backbone": backbone, "runs": runs,
                  "failures": failures(rows, list(ctx.items.failures.values()))}
        if group.is_main:
            result["files"] = write_reports(args, result, eval_cfg, ctx.features)
    return result


def _protocol_extra(args, eval_cfg) -> dict:
    data = eval_cfg.data
    n_seeds = getattr(args, "seeds", 1)
    return {"split": args.split,
            "data": f"source {data.source}" + (f", root {data.root}" if data.root else "")
            + (f", labels {data.labels}" if data.labels else ""),
            "test images cap": args.test_images or "none", "weights": args.weights,
            "seeds": "inference: each run's sample.seed, per image derive_seed(seed, id)",
            "training seeds": f"--seeds {n_seeds}: " + (
                "one training seed per mode: intervals are over images and say nothing about "
                "seed-to-seed variance" if n_seeds == 1 else "per-seed rows, the mean over seeds "
                "with its standard deviation, comparisons on per-seed means")}


def write_reports(args, result: dict, eval_cfg, features: FeatureCache) -> dict:
    """Every report of ``result`` into ``--out`` (a failed evaluation: ``--out/failed``), all or
    none (``bench.publish``); returns their paths."""
    rows, per_image = result["rows"], result["per_image"]
    srows, scomps = seed_summary(rows, per_image=per_image)
    proto = protocol(rows, channel=args.channel, backbone=result["backbone"],
                     extra=_protocol_extra(args, eval_cfg))
    meta = _meta(args, eval_cfg)

    def write(out: Path) -> dict:
        files = report.write_reports(
            rows + srows, per_image, out, protocol=proto,
            comparisons=comparisons(rows, per_image, features=features), run_dirs=result["runs"],
            plots=not args.no_plots, seed_comparisons=scomps)
        files["meta"] = out / "meta.json"
        files["meta"].write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
        return files

    return publish_reports(args.out, write, failed=bool(result["failures"]))


def _meta(args, eval_cfg) -> dict:
    """What produced the report (bench.results reads it): the title, the command as typed, the
    machine line with its calibration (measured now, under the load the evaluation ran with) and
    the date."""
    import datetime

    from bench.perf_machine import machine_line, measure_machine

    data = eval_cfg.data
    title = args.title or (f"bench eval: {data.source} data, {args.split} split, working size "
                           f"{data.image_size or 'own'}")
    return {"title": title,
            "command": getattr(args, "command_line", "python -m bench eval"),
            "measured_on": machine_line(measure_machine()),
            "date": datetime.date.today().isoformat()}


def print_summary(rows: list[dict], files: dict | None) -> None:
    for r in sorted(rows, key=report.row_key):
        v = number(r.get("ssim_fov"))
        print(
            f"  {str(r.get('task', '')):8s} {str(r.get('name', '')):45s} "
            f"{str(r.get('status', '')):28s} "
            f"ssim_fov {'n/a' if math.isnan(v) else f'{v:.4f}'}  n={r.get('n_images', 0)}"
        )
    if files:
        print(
            f"[eval] wrote {files['leaderboard_csv']}, {files['per_image_csv']}, "
            f"{files['markdown']}"
        )


def main(args) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    import torch

    init_dist(torch.device("cpu"))  # gloo under torchrun; nothing in a single process
    t0 = time.perf_counter()
    try:
        result = run_eval(args)
        if current().is_main:
            print_summary(result["rows"], result.get("files"))
            print(f"[eval] {len(result['rows'])} rows in {time.perf_counter() - t0:.1f} s")
            for line in result["failures"]:
                print(f"[eval] FAILED {line}", file=sys.stderr)
            if result["failures"]:
                print(f"[eval] {len(result['failures'])} failure(s): {args.out} left as it was; "
                      f"this evaluation's report is in {args.out / FAILED_DIR}", file=sys.stderr)
        return 1 if result["failures"] else 0
    except (ValueError, FileNotFoundError) as e:  # EvalRefused, ConfigError, DeviceError, ...
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"error: cannot write {e.filename or args.out}: {e.strerror or e}; free space or "
              f"pass a writable --out ({args.out} left as it was)", file=sys.stderr)
        return 2
    finally:
        shutdown_group()
