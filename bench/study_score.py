"""Scoring the study's points: one child process per run (``python -m bench study score``), so
that two of them, or one beside a training, each use one core.

A point (``bench.study_plan.Point``) is one output of one checkpoint on a fixed subset of the
validation split. Its outputs are written by the inference harness (``medq.harness.run_harness``,
resumable image by image) under ``<study>/eval/<point>/``, scored by ``medq.scoring.
score_task_dir`` (SSIM-fov, PSNR over the eroded FOV, vessel Dice, KID on the pinned Inception,
report DR kappa from the greedy reports on the one-step point), and recorded in
``<study>/scores/<point>.json`` with its per-image values, plus ``.npz`` holding the Inception
features (for paired KID comparisons later). The JSON is written last and atomically: it is the
point's "done" mark, so a killed scoring resumes at the first point without one. The one-step point
of a checkpoint also carries the gradient ratio (``gradient_ratio``) measured at its weights.

Images of a point that is not a run's last checkpoint are deleted once it is scored (the curves
need the scores, not thousands of PNGs); ``--keep-images`` keeps them.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import time
from pathlib import Path

import numpy as np

from bench.study_plan import Point
from medq.files import atomic_path, write_json_atomic

log = logging.getLogger("bench.study")

ROW_KEYS = ("task", "n_images", "status", "verdict", "note", "dr_kappa", "dr_kappa_floor",
            "dr_parsed", "findings_f1_macro", "report_accuracy", "undecodable_rate",
            "fid_inception", "kid_inception", "kid_inception_lo", "kid_inception_hi",
            "seconds_per_image")
"""Leaderboard fields a point keeps besides every scored metric with its interval."""


def point_paths(study: Path, point: Point) -> tuple[Path, Path, Path]:
    """(scores JSON, features .npz, harness output folder) of ``point``."""
    stem = Path(study) / "scores" / point.key
    return (stem.with_name(stem.name + ".json"), stem.with_name(stem.name + ".npz"),
            Path(study) / "eval" / point.key)


def read_point(study: Path, point: Point) -> dict | None:
    """The point's record, or None when it is not (completely) scored."""
    path = point_paths(study, point)[0]
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def validation_subset(data_cfg, tasks, images: int) -> list[dict]:
    """The first ``images`` images of the validation split, each on every task in ``tasks`` (the
    same items every time: a split's items are image-major, ``medq.data.FundusDataset``)."""
    from medq.data import build_dataset

    ds = build_dataset(data_cfg, "val", tasks=list(tasks))
    return [ds[i] for i in range(min(images * len(tasks), len(ds)))]


def gradient_ratio(task, ratio_max_t: float, clamp: float, batches: int, seed: int = 0) -> dict:
    """Median gradient norms at the VAE decoder's input (``x0_hat``) and at the backbone
    (``hidden``) of SSIM (weight 1, grad scale 1), of SSIM with the per-element clamp ``clamp``,
    of L2 (weight 1), all gated at ``ratio_max_t``, and of the latent MSE, on the same
    ``batches`` training batches (``medq.pulls.loss_variant_norms``), and their ratios:
    {where: {"l2", "ssim", "ssim_clamped", "mse", "ssim_over_l2", "ssim_clamped_over_l2"}}. The
    original measured SSIM's gradient 200-2000x larger than L2's through the decoder."""
    from medq.pulls import loss_variant_norms, median_pull

    loss = task.cfg.loss
    l2 = dataclasses.replace(loss, pixel_weight=1.0, pixel_kind="l2", pixel_max_t=ratio_max_t,
                             ssim_weight=0.0)
    ssim = dataclasses.replace(loss, pixel_weight=0.0, ssim_weight=1.0, ssim_max_t=ratio_max_t,
                               ssim_grad_scale=1.0, ssim_grad_clamp=0.0)
    variants = {"l2": l2, "ssim": ssim,
                "ssim_clamped": dataclasses.replace(ssim, ssim_grad_clamp=clamp)}
    norms = loss_variant_norms(task, variants, batches, seed=seed, wheres=("x0_hat", "hidden"))
    out = {}
    for where in ("x0_hat", "hidden"):
        row = {"l2": median_pull(norms["l2"].get(where, {}).get("pixel", [])),
               "ssim": median_pull(norms["ssim"].get(where, {}).get("ssim", [])),
               "ssim_clamped": median_pull(norms["ssim_clamped"].get(where, {}).get("ssim", [])),
               "mse": median_pull(norms["l2"].get(where, {}).get("mse", []))}
        row["ssim_over_l2"] = row["ssim"] / row["l2"] if row["l2"] > 0 else float("nan")
        row["ssim_clamped_over_l2"] = (row["ssim_clamped"] / row["l2"] if row["l2"] > 0
                                       else float("nan"))
        out[where] = row
    out["batches"] = batches
    out["max_t"] = ratio_max_t
    out["clamp"] = clamp
    return out


class Scorer:
    """Scores points of one study: the validation subset, its report truths and one Inception
    feature cache, built once per process."""

    def __init__(self, study: Path, state: dict, keep_images: bool = False):
        from medq import metrics as M
        from medq.config import load_config
        from medq.scoring import FeatureCache

        self.study, self.state, self.keep_images = Path(study), state, keep_images
        self.cfg = load_config("control", overrides=state["overrides"])
        self.tasks = list(self.cfg.data.tasks)
        self.items = validation_subset(self.cfg.data, self.tasks, state["budget"]["images"])
        self.truth = {t: {str(it["id"]): it["report"] for it in self.items if it["task"] == t}
                      for t in self.tasks}
        self.features = FeatureCache(M.inception_backbone())
        self._probe = None  # (run name, MiniBagelTask) of the last gradient-ratio measurement

    # -- one point ----------------------------------------------------------------------------

    def score(self, point: Point, model, meta: dict, info: dict, tasks=None) -> dict:
        """Run ``model`` over the subset into the point's folder, score it, write its record
        (JSON last) and return it."""
        from medq.harness import run_harness
        from medq.scoring import score_task_dir

        t0 = time.perf_counter()
        json_path, npz_path, out_dir = point_paths(self.study, point)
        tasks = tasks or self.tasks
        run_harness(model, self.items, out_dir, tasks=tasks, seed=self.cfg.sample.seed,
                    batch_size=8, text=point.output == "onestep" and point.source != "baseline",
                    progress=False, meta={k: meta.get(k) for k in ("run", "checkpoint",
                                                                   "weights")})
        rows, per_image, arrays = [], [], {}
        for task in tasks:
            ids = [str(it["id"]) for it in self.items if it["task"] == task]
            row_meta = {"name": point.key, "task": task}
            row, pi = score_task_dir(out_dir / task, ids, row_meta, channel="rgb",
                                     features=self.features, truth=self.truth[task])
            rows.append(_row_fields(row))
            per_image += [_per_image_fields(r) for r in pi]
            feats = self.features.sets.get((point.key, task), {})
            fid = sorted(feats)
            arrays[f"{task}/ids"] = np.asarray(fid)
            for j, part in enumerate(("output", "target")):
                arrays[f"{task}/{part}"] = np.stack([feats[i][j][0] for i in fid]).astype(
                    np.float32) if fid else np.zeros((0, 0), np.float32)
        record = {"key": point.key, "source": point.source, "name": point.name,
                  "step": point.step, "output": point.output, "final": point.final,
                  **info, "rows": rows, "per_image": per_image}
        if point.output == "onestep" and point.source != "baseline":
            t1 = time.perf_counter()
            record["grad_ratio"] = self.gradient_ratio(point)
            record["seconds_ratio"] = time.perf_counter() - t1
        record["seconds"] = time.perf_counter() - t0
        with atomic_path(npz_path, suffix=".npz") as tmp:
            np.savez(tmp, **arrays)
        write_json_atomic(json_path, record)
        if not point.final and not self.keep_images:
            for task in tasks:
                shutil.rmtree(out_dir / task / "images", ignore_errors=True)
        return record

    def gradient_ratio(self, point: Point) -> dict:
        """``gradient_ratio`` at the point's weights: the training weights of a run's checkpoint
        (what its gradients act on), the init's EMA weights at step 0 (what a fine-tune starts
        from). One task per run, its weights reloaded for each checkpoint."""
        from medq.config import load_config, with_overrides
        from medq.dist import pick_device
        from medq.training.task import MiniBagelTask

        b = self.state["budget"]
        if point.source == "init":
            cfg, ckpt = self.cfg, None
        else:
            run_dir = self.study / "runs" / point.name
            ckpt = run_dir / "checkpoints" / f"step_{point.step:06d}"
            cfg = with_overrides(load_config(str(run_dir / "config.toml")),
                                 [f"init.from={json.dumps(str(ckpt))}", 'init.weights="model"'])
        if self._probe is None or self._probe[0] != point.name:
            self._probe = (point.name, MiniBagelTask(cfg, pick_device("cpu"), write_init=False))
        elif ckpt is not None:
            self._probe[1].load_model(ckpt)
        return gradient_ratio(self._probe[1], b["ratio_max_t"], b["clamp"], b["probe_batches"],
                              seed=cfg.run.seed)

    # -- the points of a run, the init, the baselines -----------------------------------------

    def score_run(self, run: dict, points: list[Point]) -> int:
        """Every point of the study run ``run`` (plan.json's entry) not scored yet."""
        from medq.harness.load import load_run

        done = 0
        for point in points:
            if read_point(self.study, point) is not None:
                continue
            run_dir = self.study / "runs" / point.name
            if not (run_dir / "checkpoints" / f"step_{point.step:06d}").is_dir():
                print(f"[study] {point.key}: no checkpoint step_{point.step:06d} in {run_dir} "
                      f"(the run stopped before it); not scored", flush=True)
                continue
            model, meta, _ = load_run(run_dir, weights="ema",
                                      checkpoint=f"step_{point.step}", output=point.output,
                                      overrides=self.sample_overrides())
            info = {k: run[k] for k in ("preset", "stage", "seed", "steps")}
            self._log(point, self.score(point, model, meta, {"run": point.name, **info}))
            done += 1
        return done

    def score_shared(self, points: list[Point]) -> int:
        """The init checkpoint's points and the reference baselines (each on its tasks)."""
        from medq.checkpoint import resolve_init
        from medq.harness.load import load_baseline, load_run
        from medq.scoring import REFERENCE

        done = 0
        for point in points:
            if read_point(self.study, point) is not None:
                continue
            info = {"run": point.name, "preset": point.name, "stage": point.source, "seed": None,
                    "steps": 0}
            if point.source == "init":
                ckpt = resolve_init(self.cfg.init.from_, Path(self.cfg.run.out_dir))
                model, meta, _ = load_run(ckpt, weights=self.cfg.init.weights,
                                          output=point.output, overrides=self.sample_overrides())
                info["checkpoint"] = str(ckpt)
                tasks = None
            else:
                model, meta = load_baseline(point.name), {"run": point.name}
                tasks = [t for t in self.tasks if REFERENCE.get(t) == point.name]
            self._log(point, self.score(point, model, meta, info, tasks=tasks))
            done += 1
        return done

    def sample_overrides(self) -> list[str]:
        """The study's ``--set sample.*`` values, applied to every checkpoint's sampler."""
        return [o for o in self.state["overrides"] if o.split("=", 1)[0].strip()
                .startswith("sample.")]

    @staticmethod
    def _log(point: Point, record: dict) -> None:
        print(f"[study] scored {point.key} in {record['seconds']:.0f} s", flush=True)


def _row_fields(row: dict) -> dict:
    from medq.metrics import SCORED_METRICS

    keys = [*ROW_KEYS, *SCORED_METRICS, *(f"{m}_{s}" for m in SCORED_METRICS for s in ("lo", "hi"))]
    return {k: row.get(k) for k in keys if k in row}


def _per_image_fields(row: dict) -> dict:
    from medq.metrics import SCORED_METRICS

    return {"id": str(row["id"]), "task": row.get("task"),
            **{m: row.get(m) for m in SCORED_METRICS}}
