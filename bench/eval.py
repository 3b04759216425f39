"""``python -m bench eval`` (make eval): train what is missing, infer, score every run + baselines.

    python -m bench eval                                  # pixel vs ssim_v3 vs mixed + baselines
    python -m bench eval --skip-train --tasks sr4 --test-images 16
    python -m bench eval --runs 'ssim_v3-*' --all-checkpoints       # step curves
    python -m bench eval --data eyeq --eyeq-root /data/EyeQ/original_img \
        --labels /data/Label_EyeQ_test.csv --split all
    python -m bench eval --data folder --root /data/my_fundus_pngs --split all --skip-train
    python -m bench eval --skip-train --model my_pkg.wrap:BagelWrapper --model-arg ckpt=/models/x
    torchrun --nproc_per_node=2 -m bench eval --skip-train          # sharded, merged on rank 0

Steps: (1) for each of pixel / ssim_v3 / mixed without a finished run in ``runs/``, train it
(``python -m train --preset NAME`` with the same ``--set`` overrides and the step budget of the
runs that exist; ``--train-jobs`` of them side by side, ``bench/train_jobs.py``); (2) for every
run (latest checkpoint, EMA weights; ``--all-checkpoints`` for all),
every ``--model``, and the baselines (bicubic and Lanczos for SR, identity for enhance, the
constant image = mean of the training targets on every task as the floor), run the
inference harness on the test split, or on every image with ``--split all`` (finished outputs are
reused); (3) score the PNGs (``medq.metrics``): per image PSNR / SSIM /
MS-SSIM over the full image and inside the field of view, per set FID/KID on the pinned
Inception (and the random-feature distance as named secondary columns); (4) write
``reports/leaderboard.csv``, ``per_image.csv``, ``leaderboard.md`` and plots.

A run without checkpoint, an empty split, incomplete outputs or a failing model gives a row with
that status; the other rows are still scored. Failure is visible: when any row is not ``ok`` or
the data cannot be built, the command prints one ``[eval] FAILED ...`` line per failed run,
checkpoint, model, baseline or data source, writes its report to ``<out>/failed/`` (never over
the last good ``<out>``) and exits 1. A complete evaluation replaces ``<out>``'s files one by one
(written to a staging directory first). Runs stopped by the non-finite guard (``aborted``) are
failures unless ``--include-aborted`` scores their last good checkpoint, marked as such. Outputs
of data other than the embedded test split go to ``eval-<source>-<split>-<sha8>`` directories
(``medq.harness.records.keyed_eval_dir``), never into ``eval/``.
"""

from __future__ import annotations

import argparse
import fnmatch
import hashlib
import json
import logging
import math
import os
import sys
import time
from pathlib import Path

from bench import report
from bench.perf_machine import positive_int
from bench.train_jobs import TrainJob, default_jobs, run_jobs
from medq import metrics as M
from medq.dist import barrier, current, init_dist, shutdown_group
from medq.scoring import (
    FLOOR,
    FeatureCache,
    comparisons,
    number,
    output_kinds,
    protocol,
    row_ok,
    score_task_dir,
    seed_summary,
)
from medq.tasks import TASKS

log = logging.getLogger("bench.eval")
STANDARD_PRESETS = ("pixel", "ssim_v3", "mixed")
BASELINE_NAMES = ("bicubic", "lanczos", "identity", "constant")
# Each baseline only where it is the honest reference: upsampling for SR, the unchanged input for
# enhancement (where bicubic/Lanczos of a same-size input would be identity again, three equal
# rows).
# The constant image (mean of the training targets) is the floor on every task.
BASELINE_TASKS = {"bicubic": ("sr2", "sr4"), "lanczos": ("sr2", "sr4"), "identity": ("enhance",),
                  "constant": TASKS}


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
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="config override for training, the data and the sampler (e.g. "
                        "data.num_images=48, sample.noise_temperature=1)")
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


# ---------------------------------------------------------------------------------------------
# the command


def _data_overrides(args) -> list[str]:
    out = list(args.overrides)
    root = args.eyeq_root or args.root
    for key, value in (("source", args.data), ("root", root), ("labels", args.labels)):
        if value is not None:
            out.append(f"data.{key}={json.dumps(value)}")
    return out


def _run_dirs(runs_dir: Path, globs: list[str]) -> list[Path]:
    if not runs_dir.is_dir():
        return []
    found = [
        p
        for p in sorted(runs_dir.iterdir())
        if p.is_dir()
        and not p.name.startswith(("_", "."))
        and (
            (p / "run.json").is_file()
            or (p / "config.toml").is_file()
            or (p / "checkpoints").is_dir()
        )
    ]
    return [p for p in found if not globs or any(fnmatch.fnmatch(p.name, g) for g in globs)]


def _run_seed(run: Path) -> int | None:
    """``run.seed`` of a run directory's config.toml (None when unreadable)."""
    try:
        from medq.config import load_config

        return load_config(str(Path(run) / "config.toml")).run.seed
    except Exception:  # noqa: BLE001 - a damaged config: the run counts for no seed
        return None


def train_missing(args, runs: list[Path]) -> list[dict]:
    """Train each standard preset that has no finished run (with ``--seeds N`` > 1: no finished
    run for each training seed 0..N-1, ``run.seed``); returns status rows for failures."""
    from medq.checkpoint import read_run_json
    from medq.training.task import init_changed

    seeds = getattr(args, "seeds", 1)
    have, have_seed = {}, set()
    for r in runs:
        info = read_run_json(r) or {}
        stale = init_changed(r) if info.get("status") == "finished" else None
        if stale:  # training it again stops with the same reason and the remedy, in its row
            print(f"[eval] {r}: finished, but {stale}; not counted as this preset's run")
        elif info.get("status") == "finished" and info.get("preset") in STANDARD_PRESETS:
            have.setdefault(info.get("preset"), r)
            if seeds > 1:
                have_seed.add((info.get("preset"), _run_seed(r)))
    budget = []
    for r in have.values():
        try:
            from medq.config import load_config
            budget.append(load_config(str(r / "config.toml")).optim.max_steps)
        except Exception:  # noqa: BLE001 - a damaged config only loses the budget hint
            pass
    failed, jobs = [], []
    todo = ([(p, None) for p in STANDARD_PRESETS if p not in have] if seeds <= 1 else
            [(p, k) for p in STANDARD_PRESETS for k in range(seeds) if (p, k) not in have_seed])
    for preset, seed in todo:
        what = preset if seed is None else f"{preset} seed {seed}"
        if args.skip_train:
            print(f"[eval] no finished {what} run in {args.runs_dir}; --skip-train: "
                  f"not training it")
            continue
        cmd = [sys.executable, "-m", "train", "--preset", preset]
        for o in args.overrides:
            cmd += ["--set", o]
        if seed is not None:
            cmd += ["--set", f"run.seed={seed}"]
        if budget and not any(o.startswith("optim.max_steps=") for o in args.overrides):
            cmd += ["--set", f"optim.max_steps={max(budget)}"]
        print(f"[eval] {what}: no finished run; training it: {' '.join(cmd[1:])}", flush=True)
        jobs.append((TrainJob(what, cmd), preset, seed))
    codes = run_jobs([j for j, _, _ in jobs], getattr(args, "train_jobs", 1),
                     Path(args.runs_dir) / "_logs")
    for job, preset, seed in jobs:
        rc = codes[job.name]
        if rc != 0:
            note = " ".join(job.cmd[1:]) + (f" (log: {job.log})" if job.log else "")
            failed.append({"status": f"train failed (exit {rc})", "name": job.name, "kind": "run",
                           "preset": preset, "seed": seed, "note": note})
    return failed


class _Data:
    """Test-split items per (config data, image size), capped per task, built once."""

    def __init__(self, args, tasks):
        self.args, self.tasks, self.cache = args, tasks, {}
        self.failures: dict[str, str] = {}  # data key -> why building the items failed

    def items(self, cfg) -> list[dict]:
        from dataclasses import asdict

        key = json.dumps([asdict(cfg.data)], sort_keys=True)
        if key not in self.cache:
            from medq.data import build_dataset

            try:
                ds = build_dataset(cfg.data, self.args.split)
            except Exception as e:  # noqa: BLE001 - recorded: the data failed, not one model
                self.failures[key] = f"{type(e).__name__}: {e}"
                raise
            counts, kept = {}, []
            for i in range(len(ds)):
                it = ds[i]
                if it["task"] in self.tasks and (
                    self.args.test_images is None
                    or counts.get(it["task"], 0) < self.args.test_images
                ):
                    counts[it["task"]] = counts.get(it["task"], 0) + 1
                    kept.append(it)
            self.cache[key] = kept
        return self.cache[key]


def _error_rows(meta: dict, tasks, status: str) -> list[dict]:
    return [{**meta, "task": t, "status": status} for t in tasks]


def evaluate_model(model, meta, cfg, out_dir, data: _Data, tasks, args, feats, *,
                   text: bool | None = None) -> tuple[list, list]:
    from medq.harness import run_harness

    out_dir = _claim_outputs(out_dir, cfg, args)
    items = data.items(cfg)
    print(f"[eval] {meta['name']}: inference on {len(items)} test samples -> {out_dir}", flush=True)
    run_harness(
        model,
        items,
        out_dir,
        tasks=tasks,
        seed=cfg.sample.seed,
        batch_size=args.batch_size,
        text=(not args.no_text) if text is None else text,
        progress=not args.no_progress,
        meta={k: meta[k] for k in ("run", "checkpoint", "weights")},
    )
    rows, per_image = [], []
    for task in tasks:
        expected = [str(it["id"]) for it in items if it["task"] == task]
        print(f"[eval] {meta['name']}: scoring {task} ({len(expected)} images)", flush=True)
        truth = {str(it["id"]): it["report"] for it in items if it["task"] == task}
        row, pi = score_task_dir(Path(out_dir) / task, expected, {**meta, "task": task},
                                 channel=args.channel, features=feats, truth=truth)
        rows.append(row)
        per_image += pi
        for kind in output_kinds(Path(out_dir) / task):
            # e.g. the MMSE output beside the sample: its own row and its own "preset", so the
            # comparisons pair it with the baselines like any mode
            sub = {**meta, "task": task, "name": f"{meta['name']}/{kind}", "output": kind,
                   "preset": f"{meta['preset']}/{kind}" if meta.get("preset") else ""}
            row, pi = score_task_dir(Path(out_dir) / task, expected, sub, channel=args.channel,
                                     features=feats, truth=truth, output_key=f"output_{kind}")
            rows.append(row)
            per_image += pi
    return rows, per_image


def run_eval(args) -> dict:
    from medq.config import load_config

    group = current()
    rank = group.rank
    overrides = _data_overrides(args)
    eval_cfg = load_config("control", overrides=overrides)
    tasks = args.tasks.split(",") if args.tasks else list(eval_cfg.data.tasks)
    if args.model_args and not args.models:
        raise ValueError(f"--model-arg {args.model_args[0]!r} given without --model MODULE:CLASS")
    if args.split == "all" and eval_cfg.data.source == "synthetic":
        raise ValueError(
            "--split all on the embedded synthetic data would score the training images; "
            "use the test split, or --split all with --data eyeq/drive/folder of held-out images"
        )
    bad = [t for t in tasks if t not in TASKS]
    if bad:
        raise ValueError(f"--tasks: unknown {', '.join(bad)}; expected sr2, sr4, enhance")
    rows: list[dict] = []
    runs = _run_dirs(args.runs_dir, args.runs)
    if rank == 0 and not args.runs:
        rows += train_missing(args, runs)
    barrier(group)
    runs = _run_dirs(args.runs_dir, args.runs)
    backbone = M.feature_backbones(args.backbone)
    feats = FeatureCache(backbone) if backbone else None
    data = _Data(args, tasks)
    per_image: list[dict] = []
    image_size = None
    for run in runs:
        rr, pi, size = evaluate_run(run, args, overrides, tasks, data, feats)
        rows += rr
        per_image += pi
        image_size = image_size or size
    if not args.runs:  # the base model the runs started from (weights/base), as a mode
        rr, pi = evaluate_init_sources(runs, args, overrides, tasks, data, feats)
        rows += rr
        per_image += pi
    # External models and baselines see the same test items as the runs (the runs' image size).
    cfg = eval_cfg if image_size is None else load_config(
        "control", overrides=overrides + [f"data.image_size={image_size}"])
    for spec in args.models:
        from medq.harness.load import load_class, model_dir_name

        meta = {"name": spec, "kind": "model", "run": spec, "preset": "", "config_hash": "",
                "checkpoint": None, "step": None, "weights": None}
        try:
            model = load_class(spec, args.model_args)
            meta.update(name=model.name, run=model.name)
            rr, pi = evaluate_model(
                model,
                meta,
                cfg,
                args.runs_dir / "_models" / model_dir_name(model.name) / "eval",
                data,
                tasks,
                args,
                feats,
            )
        except Exception as e:  # noqa: BLE001 - one failing model must not lose the other rows
            log.exception("model %s failed", spec)
            rr, pi = _error_rows(meta, tasks, f"error: {type(e).__name__}: {e}"), []
        rows += rr
        per_image += pi
    if not args.no_baselines:
        from medq.harness.load import load_baseline

        for name in BASELINE_NAMES:
            btasks = [t for t in tasks if t in BASELINE_TASKS[name]]
            if not btasks:
                continue
            meta = {"name": name, "kind": "baseline", "run": name, "preset": "", "config_hash": "",
                    "checkpoint": None, "step": None, "weights": None}
            try:
                model = _constant_baseline(cfg, args) if name == FLOOR else load_baseline(name)
                rr, pi = evaluate_model(
                    model,
                    meta,
                    cfg,
                    args.runs_dir / "_baselines" / name / "eval",
                    data,
                    btasks,
                    args,
                    feats,
                )
            except Exception as e:  # noqa: BLE001 - one failing model must not lose the other rows
                log.exception("baseline %s failed", name)
                rr, pi = _error_rows(meta, btasks, f"error: {type(e).__name__}: {e}"), []
            rows += rr
            per_image += pi
    result = {"rows": rows, "per_image": per_image, "backbone": backbone, "runs": runs}
    result["failures"] = failures(rows, list(data.failures.values()))
    if rank == 0:
        extra = {"split": args.split, "data": f"source {eval_cfg.data.source}"
                 + (f", root {eval_cfg.data.root}" if eval_cfg.data.root else "")
                 + (f", labels {eval_cfg.data.labels}" if eval_cfg.data.labels else ""),
                 "test images cap": args.test_images or "none", "weights": args.weights,
                 "seeds": "inference: each run's sample.seed, per image derive_seed(seed, id)"}
        srows, scomps = seed_summary(rows, per_image=per_image)
        n_seeds = getattr(args, "seeds", 1)
        extra["training seeds"] = (f"--seeds {n_seeds}: " + ("one training seed per mode: "
                                   "intervals are over images and say nothing about seed-to-seed "
                                   "variance" if n_seeds == 1 else "per-seed rows, the mean over "
                                   "seeds with its standard deviation, comparisons on "
                                   "per-seed means"))
        result["files"] = publish_reports(
            args.out, bool(result["failures"]), lambda out: report.write_reports(
                rows + srows, per_image, out,
                protocol=protocol(rows, channel=args.channel, backbone=backbone, extra=extra),
                comparisons=comparisons(rows, per_image, features=feats), run_dirs=runs,
                plots=not args.no_plots,
                seed_comparisons=scomps))
    return result


def _constant_baseline(cfg, args):
    """The floor: the mean of the training targets of the data the runs train on; with --split
    all (held-out images of a real source, whose "train" split is not what anyone trained on) the
    embedded data's, which is what the standard modes train on."""
    from dataclasses import replace

    from medq.baselines import Constant
    from medq.config import DataConfig

    data_cfg = (cfg.data if args.split == "test"
                else replace(DataConfig(), cache_dir=cfg.data.cache_dir))
    return Constant(data_cfg=data_cfg)


def evaluate_run(run: Path, args, overrides, tasks, data, feats) -> tuple[list, list, int | None]:
    """Rows for one run directory: every (or the latest) checkpoint, or a status row."""
    from medq.checkpoint import latest_checkpoint, list_checkpoints, read_run_json
    from medq.config import load_config

    info = read_run_json(run) or {}
    meta = {"name": run.name, "kind": "run", "run": run.name, "preset": info.get("preset", ""),
            "config_hash": str(info.get("hash", ""))[:8], "checkpoint": None, "step": None,
            "weights": args.weights}
    root = run / "checkpoints"
    ckpts = (
        list_checkpoints(root)
        if args.all_checkpoints
        else [c for c in [latest_checkpoint(root)] if c]
    )
    if info.get("status") == "aborted":
        ckpts = _aborted_checkpoints(run, root, ckpts, args)
        if not ckpts:
            return _error_rows(meta, tasks, ABORTED_SKIPPED if not getattr(
                args, "include_aborted", False) else "aborted: no good checkpoint"), [], None
    if not ckpts:
        print(f"[eval] {run.name}: no complete checkpoint in {root}", flush=True)
        return _error_rows(meta, tasks, "no checkpoint"), [], None
    rows, per_image, size = [], [], None
    for ckpt in ckpts:
        m = {**meta, "checkpoint": ckpt.name, "step": int(ckpt.name.split("_")[1]),
             "name": f"{run.name}@{ckpt.name}/{args.weights}"}
        try:
            cfg = load_config(str(ckpt / "config.toml"), overrides=overrides)
        except Exception as e:  # noqa: BLE001 - one failing run must not lose the other rows
            rows += _error_rows(m, tasks, f"error: {type(e).__name__}: {e}")
            continue
        size = cfg.data.image_size
        m["seed"] = cfg.run.seed
        rr, pi = evaluate_outputs(
            run,
            ckpt.name,
            m,
            cfg,
            run / "eval" / f"{ckpt.name}-{args.weights}",
            args,
            tasks,
            data,
            feats,
        )
        if info.get("status") == "aborted":
            rr = [{**r, "status": f"{r['status']} (aborted run, scored on request)"} for r in rr]
        rows += rr
        per_image += pi
    return rows, per_image, size


OUTPUTS = ("sample", "mmse")
"""What each mini-BAGEL checkpoint is scored on (``MiniBagelAdapter``): the Euler sample and the
MMSE output (x0 prediction from the condition noised to ``sample.mmse_t``, averaged over
``sample.mmse_draws`` noise draws), the two ends of the
perception-distortion trade-off. The MMSE rows are a mode of their own (``<preset>/mmse``) so that
comparisons keep them apart."""


def evaluate_outputs(run: Path, checkpoint: str | None, meta: dict, cfg, out_dir: Path, args, tasks,
                     data, feats) -> tuple[list, list]:
    """Rows of one checkpoint for each of ``OUTPUTS``; a failure is an error row, never a lost row.
    The MMSE output's report is the sample's (same model, same input), so it is not generated
    twice."""
    from medq.harness.load import load_run

    rows, per_image = [], []
    for output in OUTPUTS:
        suffix = "" if output == "sample" else f"/{output}"
        m = {**meta, "name": meta["name"] + suffix, "preset": meta["preset"] + suffix}
        try:
            model, _, _ = load_run(run, weights=args.weights, checkpoint=checkpoint, output=output)
            model.sample_cfg = cfg.sample  # the checkpoint's, with any --set sample.* applied
            rr, pi = evaluate_model(
                model,
                m,
                cfg,
                Path(f"{out_dir}{suffix.replace('/', '-')}"),
                data,
                tasks,
                args,
                feats,
                text=False if output != "sample" else None,
            )
        except Exception as e:  # noqa: BLE001 - one failing run must not lose the other rows
            log.exception("run %s failed", m["name"])
            rr, pi = _error_rows(m, tasks, f"error: {type(e).__name__}: {e}"), []
        rows += rr
        per_image += pi
    return rows, per_image


def evaluate_init_sources(
    runs: list[Path], args, overrides, tasks, data, feats
) -> tuple[list, list]:
    """The checkpoints the evaluated runs were fine-tuned from (their ``init.json``) that are not
    runs of ``--runs-dir`` themselves, e.g. the shipped base model ``weights/base``: a fine-tune
    that does not beat its starting point learned nothing from its loss."""
    from medq.checkpoint import read_state
    from medq.config import load_config

    sources = {}
    for run in runs:
        init = run / "init.json"
        ckpt = json.loads(init.read_text()).get("checkpoint") if init.is_file() else None
        if ckpt and (Path(ckpt) / "state.json").is_file() \
                and Path(args.runs_dir).resolve() not in Path(ckpt).resolve().parents:
            sources.setdefault(str(Path(ckpt).resolve()), Path(ckpt))
    rows, per_image = [], []
    for base in sources.values():
        step = int(read_state(base)["step"])
        meta = {"name": f"{base}@step_{step:06d}/ema", "kind": "run", "run": str(base),
                "preset": "pretrain", "config_hash": "", "checkpoint": f"step_{step:06d}",
                "step": step, "weights": "ema"}
        out = (
            Path(args.runs_dir)
            / "_init"
            / hashlib.sha256(str(base.resolve()).encode()).hexdigest()[:8]
        )
        try:
            cfg = load_config(str(base / "config.toml"), overrides=overrides)
        except Exception as e:  # noqa: BLE001 - one failing source must not lose the other rows
            rows += _error_rows(meta, tasks, f"error: {type(e).__name__}: {e}")
            continue
        rr, pi = evaluate_outputs(
            base,
            None,
            meta,
            cfg,
            out / "eval",
            argparse.Namespace(**{**vars(args), "weights": "ema"}),
            tasks,
            data,
            feats,
        )
        rows += rr
        per_image += pi
    return rows, per_image


# ---------------------------------------------------------------------------------------------
# failure is visible: exit code, one line per failure, reports replaced only by complete ones

FAILED_DIR = "failed"
ABORTED_SKIPPED = ("aborted: not scored (stopped by the non-finite guard; --include-aborted "
                   "scores its last good checkpoint)")


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


def publish_reports(out: Path, failed: bool, write) -> dict:
    """Run ``write(directory) -> {kind: path(s)}`` into a staging directory inside ``out``, then
    move each file into place with ``os.replace``: a reader never sees a half-written report and
    a write error (full disk) leaves ``out`` as it was. A complete evaluation goes to ``out``
    (files the previous evaluation wrote and this one did not, e.g. plots of a task no longer
    scored, are removed; ``out/failed`` too); a failed one to ``out/failed``, never over a good
    report. Returns ``write``'s paths, as they are after the move."""
    import shutil

    out = Path(out)
    final = out / FAILED_DIR if failed else out
    out.mkdir(parents=True, exist_ok=True)
    stage = out / f".tmp-stage-{os.getpid()}"
    shutil.rmtree(stage, ignore_errors=True)
    try:
        files = write(stage)
        final.mkdir(parents=True, exist_ok=True)
        written = sorted(p.relative_to(stage) for p in stage.rglob("*") if p.is_file())
        for rel in written:
            (final / rel).parent.mkdir(parents=True, exist_ok=True)
            os.replace(stage / rel, final / rel)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    manifest = final / ".eval-files.json"
    try:
        before = set(json.loads(manifest.read_text())) if manifest.is_file() else set()
    except (OSError, ValueError):
        before = set()
    for rel in before - {str(r) for r in written}:
        (final / rel).unlink(missing_ok=True)
    manifest.write_text(json.dumps([str(r) for r in written]))
    if not failed:
        shutil.rmtree(out / FAILED_DIR, ignore_errors=True)

    def moved(v):
        if isinstance(v, (list, tuple)):
            return [moved(x) for x in v]
        return final / Path(v).relative_to(stage) if isinstance(v, Path) else v
    return {k: moved(v) for k, v in files.items()}


def _claim_outputs(out_dir: Path, cfg, args) -> Path:
    """``out_dir`` keyed by the data of this evaluation (``medq.harness.records.keyed_eval_dir``),
    with
    outputs of other data cleared from it (rank 0; the other ranks wait)."""
    from medq.harness.records import claim_eval_dir, data_key, keyed_eval_dir

    key = data_key(cfg.data, cfg.data.image_size, args.split)
    out_dir = keyed_eval_dir(out_dir, key)
    group = current()
    if group.is_main:
        claim_eval_dir(out_dir, key, replace_stale=True)
    barrier(group)
    return out_dir


def _aborted_checkpoints(run: Path, root: Path, ckpts: list[Path], args) -> list[Path]:
    """Of an aborted run, only on request (--include-aborted) and only good checkpoints (saved
    after a finite step): the last good one, or every good one with --all-checkpoints."""
    from medq.checkpoint import is_good, last_good_checkpoint

    if not getattr(args, "include_aborted", False):
        print(f"[eval] {run.name}: aborted by the non-finite guard; not scored "
              f"(--include-aborted to score its last good checkpoint)", flush=True)
        return []
    if args.all_checkpoints:
        return [c for c in ckpts if is_good(c)]
    good = last_good_checkpoint(root)
    return [good] if good is not None else []


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
    except OSError as e:
        print(f"error: cannot write {e.filename or args.out}: {e.strerror or e}; free space or "
              f"pass a writable --out ({args.out} left as it was)", file=sys.stderr)
        return 2
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        shutdown_group()
