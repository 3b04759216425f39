"""``python -m bench eval`` (make eval): train what is missing, infer, score every run + baselines.

    python -m bench eval                                  # pixel vs ssim_v3 vs mixed + baselines
    python -m bench eval --skip-train --tasks sr4 --test-images 16
    python -m bench eval --runs 'ssim_v3-*' --all-checkpoints       # step curves
    python -m bench eval --data eyeq --eyeq-root /data/EyeQ/original_img --labels /data/Label_EyeQ_test.csv --split all
    python -m bench eval --data folder --root /data/my_fundus_pngs --split all --skip-train
    python -m bench eval --skip-train --model my_pkg.wrap:BagelWrapper --model-arg ckpt=/models/x
    torchrun --nproc_per_node=2 -m bench eval --skip-train          # sharded, merged on rank 0

Steps: (1) for each of pixel / ssim_v3 / mixed without a finished run in ``runs/``, train it
(``python -m train --preset NAME`` with the same ``--set`` overrides and the step budget of the
runs that exist); (2) for every run (latest checkpoint, EMA weights; ``--all-checkpoints`` for all),
every ``--model``, and the baselines (bicubic and Lanczos for SR, identity for enhance, the
constant image = mean of the training targets on every task as the floor), run the
inference harness on the test split, or on every image with ``--split all`` (finished outputs are
reused); (3) score the PNGs (``medq.metrics``): per image PSNR / SSIM /
MS-SSIM over the full image and inside the field of view, per set FID/KID (or a Frechet distance
on a named stand-in backbone when the Inception weights are absent); (4) write
``reports/leaderboard.csv``, ``per_image.csv``, ``leaderboard.md`` and plots.

A run without checkpoint, an empty split, incomplete outputs or a failing model gives a row with
that status; the other rows are still scored. Failure is visible: when any row is not ``ok`` or
the data cannot be built, the command prints one ``[eval] FAILED ...`` line per failed run,
checkpoint, model, baseline or data source, writes its report to ``<out>/failed/`` (never over
the last good ``<out>``) and exits 1. A complete evaluation replaces ``<out>``'s files one by one
(written to a staging directory first). Runs stopped by the non-finite guard (``aborted``) are
failures unless ``--include-aborted`` scores their last good checkpoint, marked as such. Outputs
of data other than the embedded test split go to ``eval-<source>-<split>-<sha8>`` directories
(``infer.records.keyed_eval_dir``), never into ``eval/``.
"""

from __future__ import annotations

import argparse

import fnmatch
import hashlib
import json
import logging
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from bench import report
from medq import metrics as M
from medq.stats import bootstrap_ci, holm, paired_comparison, seed_comparison

log = logging.getLogger("bench.eval")
STANDARD_PRESETS = ("pixel", "ssim_v3", "mixed")
BASELINE_NAMES = ("bicubic", "lanczos", "identity", "constant")
# Each baseline only where it is the honest reference: upsampling for SR, the unchanged input for
# enhancement (where bicubic/Lanczos of a same-size input would be identity again, three equal rows).
# The constant image (mean of the training targets) is the floor on every task.
BASELINE_TASKS = {"bicubic": ("sr2", "sr4"), "lanczos": ("sr2", "sr4"), "identity": ("enhance",),
                  "constant": ("sr2", "sr4", "enhance")}
FLOOR = "constant"
REFERENCE = {"sr2": "bicubic", "sr4": "bicubic", "enhance": "identity"}
TASKS = ("sr2", "sr4", "enhance")
BOOTSTRAP_SEED = 0
KID_SEED = 0


def _seed_count(text: str) -> int:
    import argparse

    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--seeds {text!r}: expected a whole number >= 1") from None
    if not 1 <= n <= 20:
        raise argparse.ArgumentTypeError(f"--seeds {n}: expected 1 to 20 training seeds")
    return n


def add_arguments(p) -> None:
    p.add_argument("--runs", action="append", default=[], metavar="GLOB",
                   help="run directory names to score (fnmatch, repeatable; default all)")
    p.add_argument("--runs-dir", type=Path, default=Path("runs"), help="where runs live (default runs)")
    p.add_argument("--tasks", help="comma-separated subset of sr2,sr4,enhance (default: data.tasks)")
    p.add_argument("--test-images", type=int, metavar="N", help="at most N test images per task")
    p.add_argument("--skip-train", action="store_true", help="do not train missing standard runs")
    p.add_argument("--seeds", type=_seed_count, default=1, metavar="N",
                   help="training seeds per standard mode (run.seed 0..N-1; default 1): trains the "
                        "missing ones, reports per-seed rows, the mean +- seed std, and compares "
                        "modes on per-seed means")
    p.add_argument("--all-checkpoints", action="store_true", help="score every checkpoint, not only the latest")
    p.add_argument("--weights", choices=["ema", "model"], default="ema")
    p.add_argument("--include-aborted", action="store_true",
                   help="also score runs stopped by the non-finite guard (their last good "
                        "checkpoint), marked as such; by default they fail the evaluation unscored")
    p.add_argument("--no-baselines", action="store_true")
    p.add_argument("--model", dest="models", action="append", default=[], metavar="MODULE:CLASS",
                   help="also evaluate this ImageTextModel (repeatable; outputs in <runs-dir>/_models/<name>/eval)")
    p.add_argument("--model-arg", dest="model_args", action="append", default=[], metavar="K=V",
                   help="constructor keyword argument for every --model (TOML literal or string)")
    p.add_argument("--out", type=Path, default=Path("reports"))
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="config override for training and the data (e.g. data.num_images=48)")
    p.add_argument("--data", choices=["synthetic", "eyeq", "drive", "folder"], help="data.source")
    p.add_argument("--eyeq-root", help="EyeQ image folder (with --data eyeq)")
    p.add_argument("--root", help="image folder (with --data folder / drive)")
    p.add_argument("--labels", help="EyeQ label CSV (with --data eyeq)")
    p.add_argument("--split", choices=["test", "all"], default="test",
                   help="which images to evaluate: the test split (default), or all of them (a folder "
                        "or label CSV of held-out images, e.g. EyeQ's test CSV; never the training data)")
    p.add_argument("--channel", choices=["rgb", "y"], default="rgb", help="metrics on RGB or on Y (BT.601)")
    p.add_argument("--backbone", choices=["auto", "inception", "randresnet18"], default="auto",
                   help="FID/KID features (auto: Inception if $MEDQ_INCEPTION or clean-fid's file exists)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--no-text", action="store_true", help="skip report generation in the harness")
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--no-progress", action="store_true")


# ---------------------------------------------------------------------------------------------
# distributed helpers: per-image work is sharded r::world, gathered, aggregated on rank 0


def _dist() -> tuple[int, int]:
    import torch.distributed as tdist

    if tdist.is_available() and tdist.is_initialized():
        return tdist.get_rank(), tdist.get_world_size()
    return 0, 1


def _gather(obj, world: int) -> list:
    if world == 1:
        return [obj]
    import torch.distributed as tdist

    out = [None] * world
    tdist.all_gather_object(out, obj)
    return out


# ---------------------------------------------------------------------------------------------
# scoring a list of (id, output, target, mask) files


def _load(path: Path, mask: bool = False) -> torch.Tensor:
    """Image file -> float32 (3, H, W) in [0, 1]; a mask -> (1, H, W)."""
    from PIL import Image

    with Image.open(path) as im:
        arr = np.asarray(im.convert("L") if mask else im.convert("RGB"))
    arr = arr[..., None] if arr.ndim == 2 else arr
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float() / 255


class FeatureCache:
    """Features by file content (sha1): the same target PNG in several eval folders is embedded
    once. One image per forward pass, so the numbers do not depend on batching or sharding."""

    def __init__(self, backbone: M.FeatureBackbone):
        self.backbone = backbone
        self.cache: dict[str, np.ndarray] = {}

    def features(self, paths) -> np.ndarray:
        out = []
        for p in paths:
            key = hashlib.sha1(Path(p).read_bytes()).hexdigest()
            if key not in self.cache:
                self.cache[key] = M.image_features([p], self.backbone, batch_size=1)[0]
            out.append(self.cache[key])
        return np.stack(out) if out else np.zeros((0, self.backbone.dims))


def score_pairs(pairs: list[dict], *, channel: str = "rgb", features: FeatureCache | None = None
                ) -> tuple[list[dict], list[dict], dict]:
    """Score ``pairs`` [{"id", "output", "target", "mask" (path or None), **extra}] ->
    (per-image rows, problems [{"id", "file", "error"}], distribution metrics).

    Sharded across torchrun ranks and gathered; every rank returns the same result. A pair whose
    files cannot be read or whose sizes differ is a problem, not a crash."""
    rank, world = _dist()
    rows, problems, feats = [], [], []
    for k, pair in enumerate(pairs):
        if k % world != rank:
            continue
        try:
            out, tgt = _load(Path(pair["output"]))[None], _load(Path(pair["target"]))[None]
            mask = None
            if pair.get("mask") is not None:
                mask = (_load(Path(pair["mask"]), mask=True)[None] > 0.5).float()
            elif pair.get("mask_tensor") is not None:
                mask = pair["mask_tensor"][None]
        except (OSError, ValueError) as e:
            problems.append({"id": pair["id"], "file": str(pair["output"]), "error": f"unreadable: {e}"})
            continue
        if out.shape != tgt.shape or (mask is not None and mask.shape[-2:] != tgt.shape[-2:]):
            problems.append({"id": pair["id"], "file": str(pair["output"]), "error":
                             f"size mismatch: output {tuple(out.shape[-2:])} vs target {pair['target']} "
                             f"{tuple(tgt.shape[-2:])}" + ("" if mask is None else f" vs mask {tuple(mask.shape[-2:])}")})
            continue
        vals = M.image_metrics(out, tgt, mask, channel=channel)
        vals.update(fidelity_metrics(pair, out, tgt, mask))
        rows.append({"id": str(pair["id"]), **{m: float(v[0]) for m, v in vals.items()},
                     **{k2: pair.get(k2) for k2 in ("undecodable", "seconds")}})
        if features is not None:
            feats.append((str(pair["id"]), features.features([pair["output"]])[0],
                          features.features([pair["target"]])[0]))
    gathered = _gather((rows, problems, feats), world)
    rows = sorted((r for g in gathered for r in g[0]), key=lambda r: r["id"])
    problems = sorted((p for g in gathered for p in g[1]), key=lambda p: p["id"])
    feats = sorted((f for g in gathered for f in g[2]), key=lambda f: f[0])
    dist = {"fd_n": len(feats)}
    if features is not None:
        bb = features.backbone
        fo = np.stack([f[1] for f in feats]) if feats else np.zeros((0, bb.dims))
        ft = np.stack([f[2] for f in feats]) if feats else np.zeros((0, bb.dims))
        dist[bb.fd_column] = M.frechet_distance(fo, ft)
        dist[bb.kid_column], dist[f"{bb.kid_column}_lo"], dist[f"{bb.kid_column}_hi"] = \
            M.kid_interval(fo, ft, seed=KID_SEED)
    return rows, problems, dist


_TARGET_VESSELS: dict[str, object] = {}


def fidelity_metrics(pair: dict, out: torch.Tensor, tgt: torch.Tensor,
                     mask: torch.Tensor | None) -> dict[str, torch.Tensor]:
    """LR-consistency PSNR (SR: the output downscaled vs the input PNG) and vessel Dice inside the
    FOV (``medq.vessels``) of one scored pair -> {name: (1,) tensor}, NaN where undefined. The
    target's vessel map is cached by file content: every mode shares the targets."""
    from medq import vessels

    nan = torch.full((1,), math.nan, dtype=torch.float64)
    res = {"lr_psnr": nan, "vessel_dice": nan}
    if pair.get("input") is not None and Path(pair["input"]).is_file():
        res["lr_psnr"] = M.lr_consistency_psnr(out, _load(Path(pair["input"]))[None], mask)
    if mask is not None:
        m = mask[0, 0].numpy() > 0.5
        key = hashlib.sha1(Path(pair["target"]).read_bytes() + m.tobytes()).hexdigest()
        if key not in _TARGET_VESSELS:
            _TARGET_VESSELS[key] = vessels.vessel_map(tgt[0].permute(1, 2, 0).numpy(), m)
        res["vessel_dice"] = vessels.vessel_dice(out, tgt, mask, target_maps=[_TARGET_VESSELS[key]])
    return res


def aggregate(per_image: list[dict]) -> dict:
    """Mean (NaN ignored) and 95 % bootstrap interval of every scored metric."""
    out = {}
    for m in M.SCORED_METRICS:
        vals = [r[m] for r in per_image if not math.isnan(r[m])]
        out[m] = math.fsum(vals) / len(vals) if vals else math.nan
        out[f"{m}_lo"], out[f"{m}_hi"] = bootstrap_ci(vals, seed=BOOTSTRAP_SEED)
    return out


def image_verdict(harness_verdict: dict, pairs: list[dict]):
    """The harness's verdict (``summarize(...)["verdict"]``) judged again with what only the
    whole set shows: ``input_dependence`` (does each output match its own target better than the
    others'?) and the SSIM ratio to the reference inside the eroded FOV, from the PNGs of
    ``pairs`` [{"input", "output", "target", "mask"}]. Returns a ``medq.verdict.Verdict``."""
    from medq.baselines import bicubic
    from medq.verdict import finite_median, input_dependence, verdict

    checks = {k: c["value"] for k, c in harness_verdict.get("checks", {}).items()}
    try:
        outs = torch.stack([_load(Path(p["output"])) for p in pairs])
        tgts = torch.stack([_load(Path(p["target"])) for p in pairs])
        masks = torch.stack([(_load(Path(p["mask"]), mask=True) > 0.5).float() for p in pairs])
        size = tuple(tgts.shape[-2:])
        refs = torch.cat([bicubic(_load(Path(p["input"]))[None], size) for p in pairs])
    except (OSError, ValueError, RuntimeError, KeyError, TypeError) as e:
        log.warning("input-dependence check skipped (%s)", e)
        return verdict(**checks)
    ratios = (M.ssim(outs, tgts, masks) / M.ssim(refs, tgts, masks)).tolist()
    checks["ssim_ratio"] = finite_median(ratios)
    checks["input_dependence"] = input_dependence(outs, tgts, masks)
    return verdict(**checks)


def report_scores(records: list[dict], truth: dict[str, str] | None) -> tuple[dict, list[str]]:
    """DR-grade kappa, per-finding F1 and quality accuracy of the records' greedy reports against
    ``truth`` {id: ground-truth report text}, each with its majority-class floor
    (``medq.text_metrics.score_reports``) -> (leaderboard fields, n/a reasons). Empty for a model
    without text or without a truth."""
    from medq.text_metrics import REPORT_SCORE_COLUMNS, score_reports

    if not truth:
        return {}, []
    rows = [r for r in records if r.get("text") and str(r["id"]) in truth]
    if not rows:
        return {}, []
    s = score_reports([r.get("report_text") for r in rows], [truth[str(r["id"])] for r in rows])
    return {k: s[k] for k in REPORT_SCORE_COLUMNS}, s["reasons"]


def score_task_dir(task_dir: Path, expected_ids: list[str] | None, meta: dict, *,
                   channel: str, features: FeatureCache | None,
                   truth: dict[str, str] | None = None,
                   output_key: str = "output") -> tuple[dict, list[dict]]:
    """One leaderboard row (+ per-image rows) from ``<eval>/<task>/records.jsonl`` and its PNGs.
    ``expected_ids``: the test-split ids of that task (None: whatever the records hold).
    ``truth``: {id: ground-truth report} to score what the reports say (``report_scores``).
    ``output_key``: the records field of the image scored: "output" (the sample), or another
    output kind the harness wrote (``output_<kind>``, e.g. "output_mmse"; ``output_kinds``)."""
    from infer.records import read_jsonl

    KINDS = ("input", output_key, "target", "mask")
    records = {str(r["id"]): r for r in read_jsonl(Path(task_dir) / "records.jsonl")}
    ids = sorted(records) if expected_ids is None else sorted(expected_ids)
    pairs, missing = [], []
    for i in ids:
        r = records.get(i)
        if r is None or any(not isinstance(r.get(k), str) or not (Path(task_dir) / r[k]).is_file()
                            for k in KINDS):
            missing.append(i)
            continue
        pairs.append({"id": i, **{k: Path(task_dir) / r[k] for k in ("input", "target", "mask")},
                      "output": Path(task_dir) / r[output_key],
                      "undecodable": r.get("undecodable"), "seconds": r.get("seconds")})
    per_image, problems, dist = score_pairs(pairs, channel=channel, features=features)
    row = {**meta, **aggregate(per_image), **dist, "n_images": len(per_image)}
    used = [records[p["id"]] for p in pairs]
    secs = [float(r["seconds"]) for r in used if r.get("seconds") is not None]
    row["seconds_per_image"] = math.fsum(secs) / len(secs) if secs else math.nan
    if used:
        try:
            from infer.harness import summarize

            s = summarize(used)
            v = image_verdict(s["verdict"], pairs)
            row["verdict"] = v.status
            row["input_dependence"] = v.checks["input_dependence"]["value"]
            if s.get("text"):
                row["undecodable_rate"] = s["text"].get("undecodable_rate")
                row["report_accuracy"] = s["text"].get("quality_accuracy")
        except (KeyError, TypeError, ValueError) as e:
            log.warning("%s: no summary (%s)", task_dir, e)
    text_scores, notes = report_scores(used, truth)
    row.update(text_scores)
    if not ids:
        row["status"] = "empty: no test images"
    elif missing or problems:
        row["status"] = f"incomplete: {len(per_image)} of {len(ids)} scored"
        if missing:
            notes.append(f"{len(missing)} outputs missing (e.g. {missing[0]})")
        notes += [f"{p['id']}: {p['error']}" for p in problems[:3]]
    else:
        row["status"] = "ok"
    if row.get("verdict") == "collapsed":
        notes.append("collapsed: " + "; ".join(v.reasons))
    if per_image and math.isnan(row["ms_ssim"]):
        probe = _load(pairs[0]["target"])
        notes.append(M.ms_ssim_unsupported_reason(*probe.shape[-2:]) or "MS-SSIM n/a")
    row["note"] = "; ".join(notes)
    for r in per_image:
        r.update(name=meta["name"], task=meta["task"])
    return row, per_image


# ---------------------------------------------------------------------------------------------
# comparisons and protocol


def comparisons(rows: list[dict], per_image: list[dict],
                metrics=("ssim_fov", "psnr_fov", "vessel_dice")) -> list[dict]:
    """ssim_v3 - pixel, mixed - pixel, ssim_v3 / pixel - base (the no-image-loss control, when
    present), and every scored run - the task's reference baseline
    (``REFERENCE``: bicubic for SR, identity for enhance) and - the constant floor, per task,
    on the latest checkpoint of
    each run (the row with the highest step)."""
    values: dict[tuple[str, str], dict[str, dict[str, float]]] = {}
    for r in per_image:
        d = values.setdefault((str(r["name"]), str(r["task"])), {})
        for m in metrics:
            d.setdefault(m, {})[str(r["id"])] = float(r[m]) if str(r[m]) not in ("", "None") else math.nan
    out = []
    for task in sorted({str(r["task"]) for r in rows}):
        latest: dict[str, dict] = {}
        for r in rows:
            if str(r["task"]) != task or (str(r["name"]), task) not in values:
                continue
            if str(r.get("kind")) == "run":
                # the latest checkpoint; of several training seeds, the lowest (seed 0)
                key = (report._num(r.get("step")), -_seed_of(r))
                cur = latest.get(str(r.get("preset")))
                if cur is None or key > (report._num(cur.get("step")), -_seed_of(cur)):
                    latest[str(r.get("preset"))] = r
        # ... - base: against the control fine-tune without any image loss, when one was trained
        # (`python -m train --preset base`): what an image loss adds beyond more training.
        pairs = [(latest[a], latest[b]) for a, b in (("ssim_v3", "pixel"), ("mixed", "pixel"),
                                                      ("ssim_v3", "base"), ("pixel", "base"))
                 if a in latest and b in latest]
        for ref in (REFERENCE.get(task, "bicubic"), FLOOR):
            bic = [r for r in rows if str(r["task"]) == task and str(r.get("name")) == ref
                   and (str(r["name"]), task) in values]
            if bic:
                pairs += [(r, bic[0]) for _, r in sorted(latest.items())]
        for a, b in pairs:
            for m in metrics:
                c = paired_comparison(values[(str(a["name"]), task)][m], values[(str(b["name"]), task)][m],
                                      seed=BOOTSTRAP_SEED)
                out.append({"task": task, "a": a["name"], "b": b["name"], "metric": m, **c.as_dict()})
    for c, adj in zip(out, holm([c["p_value"] for c in out])):
        c["p_holm"] = adj
    return out


SEED_METRICS = ("ssim_fov", "psnr_fov", "lr_psnr", "vessel_dice")
SEED_PAIRS = (("ssim_v3", "pixel"), ("mixed", "pixel"), ("ssim_v3", "base"), ("pixel", "base"))


def seed_summary(rows: list[dict], metrics=SEED_METRICS) -> tuple[list[dict], list[dict]]:
    """Across training seeds: per (task, preset) with runs of >= 2 seeds, a row with the mean over
    seeds of each run's image mean (latest checkpoint of each run) and the seed standard
    deviation (``<metric>_seed_sd``, ddof 1); and comparisons of presets (``SEED_PAIRS``, and each
    preset against the task's reference and the constant floor, whose value is the same for
    every seed) on per-seed means (``medq.stats.seed_comparison``: a paired t interval over
    seeds). -> (rows, comparisons); both empty when no preset has two seeds."""
    runs: dict[tuple[str, str], dict[float, dict]] = {}
    for r in rows:
        if str(r.get("kind")) != "run" or str(r.get("status")) != "ok" or not r.get("preset"):
            continue
        by_seed = runs.setdefault((str(r["task"]), str(r["preset"])), {})
        cur = by_seed.get(_seed_of(r))
        if cur is None or report._num(r.get("step")) > report._num(cur.get("step")):
            by_seed[_seed_of(r)] = r
    if not any(len(v) >= 2 for v in runs.values()):
        return [], []
    out_rows, comps = [], []
    for (task, preset), by_seed in sorted(runs.items()):
        if len(by_seed) < 2:
            continue
        row = {"status": "ok", "name": f"{preset} (mean of {len(by_seed)} seeds)", "kind": "seeds",
               "run": ", ".join(str(r["name"]) for _, r in sorted(by_seed.items())),
               "preset": preset,
               "task": task, "n_seeds": len(by_seed),
               "step": report._num(next(iter(by_seed.values())).get("step")),
               "n_images": report._num(next(iter(by_seed.values())).get("n_images"))}
        for m in metrics:
            vals = np.asarray([report._num(r.get(m)) for r in by_seed.values()], dtype=np.float64)
            vals = vals[~np.isnan(vals)]
            row[m] = float(vals.mean()) if len(vals) else math.nan
            row[f"{m}_seed_sd"] = float(vals.std(ddof=1)) if len(vals) >= 2 else math.nan
        out_rows.append(row)
    for task in sorted({t for t, _ in runs}):
        presets = {p: v for (t, p), v in runs.items() if t == task}
        pairs = [(a, b) for a, b in SEED_PAIRS if a in presets and b in presets]
        fixed = {str(r["name"]): r for r in rows if str(r.get("task")) == task
                 and str(r.get("kind")) == "baseline" and str(r.get("status")) == "ok"}
        for ref in (REFERENCE.get(task, "bicubic"), FLOOR):
            if ref in fixed:
                pairs += [(p, ref) for p in sorted(presets)]
        for a, b in pairs:
            for m in metrics:
                va = {k: report._num(r.get(m)) for k, r in presets[a].items()}
                vb = ({k: report._num(r.get(m)) for k, r in presets[b].items()} if b in presets
                      else {k: report._num(fixed[b].get(m)) for k in va})
                c = seed_comparison(va, vb)
                comps.append({"task": task, "a": a, "b": b, "metric": m, **c.as_dict()})
    return out_rows, comps


def _seed_of(row: dict) -> float:
    v = report._num(row.get("seed"))
    return 0.0 if math.isnan(v) else v


def protocol(rows: list[dict], *, channel: str, backbone: M.FeatureBackbone | None, extra: dict) -> dict:
    import cleanfid
    import scipy
    import torchmetrics

    counts = {}
    for r in rows:
        counts.setdefault(str(r["task"]), set()).add(str(r.get("n_images")))
    return {
        **extra,
        "images scored per task": "; ".join(f"{t}: {', '.join(sorted(c))}" for t, c in sorted(counts.items())),
        "per-image metrics": f"torchmetrics {torchmetrics.__version__}: PSNR (data_range 1, per image, "
                             f"dim=(1,2,3), capped at {M.PSNR_CAP_DB:g} dB), MS-SSIM (5 scales, "
                             f"relu-normalised; n/a under {M.MS_SSIM_MIN_SIDE} px); SSIM: "
                             f"medq.losses.ssim (= scikit-image, Gaussian 11, sigma 1.5, K "
                             f"0.01/0.03, valid windows), ssim_fov over the windows entirely "
                             f"inside the field of view (the FOV eroded by half a window, as the "
                             f"SSIM loss); PSNR and MS-SSIM "
                             f"FOV variants average inside the mask (medq.metrics); channel "
                             f"{channel.upper()}"
                             + (" (BT.601 Y, 16-235)" if channel == "y" else ""),
        "distribution metrics": "off" if backbone is None else
        f"clean-fid {getattr(cleanfid, '__version__', '0.1.35')} mode clean, features: "
        f"{backbone.description}; columns {backbone.fd_column} (clamped at 0), "
        f"{backbone.kid_column} (unbiased MMD^2 on the whole set; 95 % bootstrap interval over "
        f"images, seed {KID_SEED})",
        "intervals and tests": f"95 % percentile bootstrap of the mean (2000 resamples, seed "
                               f"{BOOTSTRAP_SEED}); Wilcoxon signed-rank (scipy {scipy.__version__})",
        "torch": torch.__version__,
    }


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
    found = [p for p in sorted(runs_dir.iterdir()) if p.is_dir() and not p.name.startswith(("_", "."))
             and ((p / "run.json").is_file() or (p / "config.toml").is_file() or (p / "checkpoints").is_dir())]
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

    seeds = getattr(args, "seeds", 1)
    have, have_seed = {}, set()
    for r in runs:
        info = read_run_json(r) or {}
        if info.get("status") == "finished" and info.get("preset") in STANDARD_PRESETS:
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
    failed = []
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
        rc = subprocess.call(cmd)
        if rc != 0:
            failed.append({"status": f"train failed (exit {rc})", "name": what, "kind": "run",
                           "preset": preset, "seed": seed, "note": " ".join(cmd[1:])})
    return failed


class _Data:
    """Test-split items per (config data, image size), capped per task, built once."""

    def __init__(self, args, tasks):
        self.args, self.tasks, self.cache = args, tasks, {}
        self.failures: dict[str, str] = {}  # data key -> why building the items failed

    def items(self, cfg) -> list[dict]:
        from dataclasses import asdict

        key = json.dumps([asdict(cfg.data), cfg.model.image_size], sort_keys=True)
        if key not in self.cache:
            from medq.data import build_dataset

            try:
                ds = build_dataset(cfg.data, cfg.model.image_size, self.args.split)
            except Exception as e:  # noqa: BLE001 - recorded: the data failed, not one model
                self.failures[key] = f"{type(e).__name__}: {e}"
                raise
            counts, kept = {}, []
            for i in range(len(ds)):
                it = ds[i]
                if it["task"] in self.tasks and (self.args.test_images is None
                                                 or counts.get(it["task"], 0) < self.args.test_images):
                    counts[it["task"]] = counts.get(it["task"], 0) + 1
                    kept.append(it)
            self.cache[key] = kept
        return self.cache[key]


def _error_rows(meta: dict, tasks, status: str) -> list[dict]:
    return [{**meta, "task": t, "status": status} for t in tasks]


def output_kinds(task_dir: Path) -> list[str]:
    """Output kinds besides the sample that a records file carries: fields ``output_<kind>``
    holding an image path (e.g. ``output_mmse``), sorted. Each is scored as a row of its own,
    ``<name>/<kind>``, so a mode can appear as ``ssim_v3`` and ``ssim_v3/mmse``."""
    import re

    from infer.records import read_jsonl

    path = Path(task_dir) / "records.jsonl"
    if not path.is_file():
        return []
    kinds = set()
    for r in read_jsonl(path):
        kinds |= {m.group(1) for k, v in r.items() if isinstance(v, str)
                  for m in [re.fullmatch(r"output_([a-z0-9_]+)", k)] if m}
    return sorted(kinds)


def evaluate_model(model, meta, cfg, out_dir, data: _Data, tasks, args, feats, *,
                   text: bool | None = None) -> tuple[list, list]:
    from infer.harness import run_harness

    out_dir = _claim_outputs(out_dir, cfg, args)
    items = data.items(cfg)
    print(f"[eval] {meta['name']}: inference on {len(items)} test samples -> {out_dir}", flush=True)
    run_harness(model, items, out_dir, tasks=tasks, seed=cfg.sample.seed, batch_size=args.batch_size,
                text=(not args.no_text) if text is None else text, progress=not args.no_progress,
                meta={k: meta[k] for k in ("run", "checkpoint", "weights")})
    rows, per_image = [], []
    rank, _ = _dist()
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

    rank, world = _dist()
    overrides = _data_overrides(args)
    base_cfg = load_config("base", overrides=overrides)
    tasks = args.tasks.split(",") if args.tasks else list(base_cfg.data.tasks)
    if args.model_args and not args.models:
        raise ValueError(f"--model-arg {args.model_args[0]!r} given without --model MODULE:CLASS")
    if args.split == "all" and base_cfg.data.source == "synthetic":
        raise ValueError("--split all on the embedded synthetic data would score the training images; "
                         "use the test split, or --split all with --data eyeq/drive/folder of held-out images")
    bad = [t for t in tasks if t not in TASKS]
    if bad:
        raise ValueError(f"--tasks: unknown {', '.join(bad)}; expected sr2, sr4, enhance")
    rows: list[dict] = []
    runs = _run_dirs(args.runs_dir, args.runs)
    if rank == 0 and not args.runs:
        rows += train_missing(args, runs)
    if world > 1:
        import torch.distributed as tdist
        tdist.barrier()
    runs = _run_dirs(args.runs_dir, args.runs)
    backbone = M.feature_extractor(args.backbone)
    feats = FeatureCache(backbone)
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
    cfg = base_cfg if image_size is None else load_config(
        "base", overrides=overrides + [f"model.image_size={image_size}"])
    for spec in args.models:
        from infer.load import load_class, model_dir_name

        meta = {"name": spec, "kind": "model", "run": spec, "preset": "", "config_hash": "",
                "checkpoint": None, "step": None, "weights": None}
        try:
            model = load_class(spec, args.model_args)
            meta.update(name=model.name, run=model.name)
            rr, pi = evaluate_model(model, meta, cfg, args.runs_dir / "_models" / model_dir_name(model.name) / "eval",
                                    data, tasks, args, feats)
        except Exception as e:  # noqa: BLE001 - one failing model must not lose the other rows
            log.exception("model %s failed", spec)
            rr, pi = _error_rows(meta, tasks, f"error: {type(e).__name__}: {e}"), []
        rows += rr
        per_image += pi
    if not args.no_baselines:
        from infer.load import load_baseline

        for name in BASELINE_NAMES:
            btasks = [t for t in tasks if t in BASELINE_TASKS[name]]
            if not btasks:
                continue
            meta = {"name": name, "kind": "baseline", "run": name, "preset": "", "config_hash": "",
                    "checkpoint": None, "step": None, "weights": None}
            try:
                model = _constant_baseline(cfg, args) if name == FLOOR else load_baseline(name)
                rr, pi = evaluate_model(model, meta, cfg,
                                        args.runs_dir / "_baselines" / name / "eval", data, btasks, args, feats)
            except Exception as e:  # noqa: BLE001 - one failing model must not lose the other rows
                log.exception("baseline %s failed", name)
                rr, pi = _error_rows(meta, btasks, f"error: {type(e).__name__}: {e}"), []
            rows += rr
            per_image += pi
    result = {"rows": rows, "per_image": per_image, "backbone": backbone, "runs": runs}
    result["failures"] = failures(rows, list(data.failures.values()))
    if rank == 0:
        extra = {"split": args.split, "data": f"source {base_cfg.data.source}"
                 + (f", root {base_cfg.data.root}" if base_cfg.data.root else "")
                 + (f", labels {base_cfg.data.labels}" if base_cfg.data.labels else ""),
                 "test images cap": args.test_images or "none", "weights": args.weights,
                 "seeds": "inference: each run's sample.seed, per image derive_seed(seed, id)"}
        srows, scomps = seed_summary(rows)
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
                comparisons=comparisons(rows, per_image), run_dirs=runs, plots=not args.no_plots,
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
    ckpts = list_checkpoints(root) if args.all_checkpoints else [c for c in [latest_checkpoint(root)] if c]
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
        size = cfg.model.image_size
        m["seed"] = cfg.run.seed
        rr, pi = evaluate_outputs(run, ckpt.name, m, cfg, run / "eval" / f"{ckpt.name}-{args.weights}",
                                  args, tasks, data, feats)
        if info.get("status") == "aborted":
            rr = [{**r, "status": f"{r['status']} (aborted run, scored on request)"} for r in rr]
        rows += rr
        per_image += pi
    return rows, per_image, size


OUTPUTS = ("sample", "mmse")
"""What each mini-BAGEL checkpoint is scored on (``MiniBagelAdapter``): the Euler sample and the
MMSE output (x0 prediction from pure noise), the two ends of the perception-distortion trade-off.
The MMSE rows are a mode of their own (``<preset>/mmse``) so that comparisons keep them apart."""


def evaluate_outputs(run: Path, checkpoint: str | None, meta: dict, cfg, out_dir: Path, args, tasks,
                     data, feats) -> tuple[list, list]:
    """Rows of one checkpoint for each of ``OUTPUTS``; a failure is an error row, never a lost row.
    The MMSE output's report is the sample's (same model, same input), so it is not generated twice."""
    from infer.load import load_run

    rows, per_image = [], []
    for output in OUTPUTS:
        suffix = "" if output == "sample" else f"/{output}"
        m = {**meta, "name": meta["name"] + suffix, "preset": meta["preset"] + suffix}
        try:
            model, _, _ = load_run(run, weights=args.weights, checkpoint=checkpoint, output=output)
            rr, pi = evaluate_model(model, m, cfg, Path(f"{out_dir}{suffix.replace('/', '-')}"), data,
                                    tasks, args, feats, text=False if output != "sample" else None)
        except Exception as e:  # noqa: BLE001 - one failing run must not lose the other rows
            log.exception("run %s failed", m["name"])
            rr, pi = _error_rows(m, tasks, f"error: {type(e).__name__}: {e}"), []
        rows += rr
        per_image += pi
    return rows, per_image


def evaluate_init_sources(runs: list[Path], args, overrides, tasks, data, feats) -> tuple[list, list]:
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
        out = Path(args.runs_dir) / "_init" / hashlib.sha256(str(base.resolve()).encode()).hexdigest()[:8]
        try:
            cfg = load_config(str(base / "config.toml"), overrides=overrides)
        except Exception as e:  # noqa: BLE001 - one failing source must not lose the other rows
            rows += _error_rows(meta, tasks, f"error: {type(e).__name__}: {e}")
            continue
        rr, pi = evaluate_outputs(base, None, meta, cfg, out / "eval",
                                  argparse.Namespace(**{**vars(args), "weights": "ema"}), tasks, data,
                                  feats)
        rows += rr
        per_image += pi
    return rows, per_image


# ---------------------------------------------------------------------------------------------
# failure is visible: exit code, one line per failure, reports replaced only by complete ones

FAILED_DIR = "failed"
ABORTED_SKIPPED = ("aborted: not scored (stopped by the non-finite guard; --include-aborted "
                   "scores its last good checkpoint)")


def row_ok(row: dict) -> bool:
    """A row from a complete scoring: status ``ok`` (possibly marked, e.g. an aborted run scored
    on request)."""
    return str(row.get("status", "")).split(" ", 1)[0] == "ok"


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
    """``out_dir`` keyed by the data of this evaluation (``infer.records.keyed_eval_dir``), with
    outputs of other data cleared from it (rank 0; the other ranks wait)."""
    from infer.records import claim_eval_dir, data_key, keyed_eval_dir

    key = data_key(cfg.data, cfg.model.image_size, args.split)
    out_dir = keyed_eval_dir(out_dir, key)
    rank, world = _dist()
    if rank == 0:
        claim_eval_dir(out_dir, key, replace_stale=True)
    if world > 1:
        import torch.distributed as tdist
        tdist.barrier()
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
        v = report._num(r.get("ssim_fov"))
        print(f"  {str(r.get('task', '')):8s} {str(r.get('name', '')):45s} {str(r.get('status', '')):28s} "
              f"ssim_fov {'n/a' if math.isnan(v) else f'{v:.4f}'}  n={r.get('n_images', 0)}")
    if files:
        print(f"[eval] wrote {files['leaderboard_csv']}, {files['per_image_csv']}, {files['markdown']}")


def main(args) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        import torch.distributed as tdist
        tdist.init_process_group("gloo")
    t0 = time.perf_counter()
    try:
        result = run_eval(args)
        if _dist()[0] == 0:
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
        if world > 1:
            import torch.distributed as tdist
            if tdist.is_initialized():
                tdist.destroy_process_group()
