"""Scoring saved outputs: pairing, per-image metrics, aggregation, feature caching, comparisons.

Shared by ``bench eval`` (every run, model and baseline of a leaderboard) and ``bench score``
(a folder of external predictions): both call the same functions, so a number means the same in
either report. Stages keep the command line, progress and files; this module reads PNGs and
records and returns rows.

    rows, problems, dist = score_pairs(pairs, channel="rgb", features=FeatureCache(backbone))
    row, per_image = score_task_dir(Path("runs/x/eval/step_000300-ema/sr4"), ids, meta, ...)
    aggregate(per_image)                  # mean and 95 % bootstrap interval of every metric
    comparisons(rows, per_image)          # paired differences with Wilcoxon and Holm
    seed_summary(rows, per_image=per_image)   # mean +- seed std; comparisons over images x seeds

The metric protocol (which SSIM, which window, which interval) is ``protocol(...)``, written
beside every leaderboard; ``docs/BACKGROUND.md`` explains it.
"""

from __future__ import annotations

import hashlib
import logging
import math
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from medq import metrics as M
from medq.dist import current, gather
from medq.leaderboard import number
from medq.stats import (
    bootstrap_ci,
    holm,
    paired_comparison,
    seed_comparison,
    seed_image_comparison,
)

log = logging.getLogger(__name__)


FLOOR = "constant"


REFERENCE = {"sr2": "bicubic", "sr4": "bicubic", "enhance": "identity"}


BOOTSTRAP_SEED = 0


def read_image(path: Path, *, min_side: int = 1) -> torch.Tensor:
    """An image file -> float32 (3, H, W) in [0, 1], through the pipeline's one reader
    (``medq.data.imageio.load_rgb``: 16-bit and float files scaled, palette, CMYK and EXIF
    orientation converted, decompression bombs refused): a target means here what it meant to the
    data readers. ``DataError`` (a ValueError) names the file. ``min_side`` 1: the scorer reads
    back low-resolution inputs and checks sizes against the SSIM window itself."""
    from medq.data.imageio import load_rgb

    return torch.from_numpy(load_rgb(path, min_side=min_side)).permute(2, 0, 1).float() / 255


def read_mask(path: Path, shape: tuple[int, int]) -> torch.Tensor:
    """A field-of-view mask file -> float32 (1, H, W) in {0, 1} at ``shape`` (H, W), through the
    one mask reader (``medq.data.imageio.load_mask``: one threshold, resized to its image, refused
    at another aspect ratio or as a 0/1 label image)."""
    from medq.data.imageio import load_mask

    return torch.from_numpy(load_mask(path, tuple(shape))).float()[None]


class FeatureCache:
    """Features by file content (sha1): the same target PNG in several eval folders is embedded
    once. Missing ones are embedded together in fixed-size passes (``metrics.FEATURE_BATCH``), so
    the numbers do not depend on batching, sharding or what was cached before. ``backbones``: one
    ``metrics.FeatureBackbone`` or several (``metrics.feature_backbones("auto")``: Inception and
    the secondary random ResNet-18), each file decoded and resized once for all of them."""

    def __init__(self, backbones: M.FeatureBackbone | Sequence[M.FeatureBackbone]):
        self.backbones: tuple[M.FeatureBackbone, ...] = (
            (backbones,) if isinstance(backbones, M.FeatureBackbone) else tuple(backbones))
        self.cache: dict[str, tuple[np.ndarray, ...]] = {}
        self.sets: dict[tuple[str, str], dict[str, tuple[tuple, tuple]]] = {}
        """Every scored set's features by (name, task): {image id: (output's, target's)}, each a
        tuple with one vector per backbone, for the paired KID comparisons (``comparisons``);
        filed by ``score_pairs(..., set_key=)``."""

    def features(self, paths) -> tuple[np.ndarray, ...]:
        """One (N, D) array per backbone for the files ``paths``."""
        keys = [hashlib.sha1(Path(p).read_bytes()).hexdigest() for p in paths]
        todo = {k: p for k, p in zip(keys, paths) if k not in self.cache}
        if todo:
            new = M.image_features_many(list(todo.values()), self.backbones)
            for j, k in enumerate(todo):
                self.cache[k] = tuple(f[j] for f in new)
        return tuple(np.stack([self.cache[k][b] for k in keys]) if keys
                     else np.zeros((0, bb.dims)) for b, bb in enumerate(self.backbones))


def distribution_metrics(feats: list[tuple], backbones: Sequence[M.FeatureBackbone]) -> dict:
    """The set's distribution columns from ``feats`` [(id, output features, target features)]
    (one vector per backbone each): per backbone its Frechet distance (``fid_inception`` /
    ``fd_<name>``) and its paired KID with the jackknife interval (``kid_<name>``, ``_lo``,
    ``_hi``; ``metrics.kid_interval(paired=True)``: row i of both sides is image i)."""
    out = {}
    for b, bb in enumerate(backbones):
        fo = np.stack([f[1][b] for f in feats]) if feats else np.zeros((0, bb.dims))
        ft = np.stack([f[2][b] for f in feats]) if feats else np.zeros((0, bb.dims))
        out[bb.fd_column] = M.frechet_distance(fo, ft)
        out[bb.kid_column], out[f"{bb.kid_column}_lo"], out[f"{bb.kid_column}_hi"] = \
            M.kid_interval(fo, ft, paired=True)
    return out


def score_pairs(pairs: list[dict], *, channel: str = "rgb", features: FeatureCache | None = None,
                set_key: tuple[str, str] | None = None) -> tuple[list[dict], list[dict], dict]:
    """Score ``pairs`` [{"id", "output", "target", "mask" (path or None), **extra}] ->
    (per-image rows, problems [{"id", "file", "error"}], distribution metrics).

    With ``features`` and ``set_key`` (name, task), the set's per-image features are filed in
    ``features.sets[set_key]`` for the paired KID comparisons.
    Sharded across torchrun ranks and gathered; every rank returns the same result. A pair whose
    files cannot be read or whose sizes differ is a problem, not a crash."""
    group = current()
    rank, world = group.rank, group.world
    rows, problems, feats = [], [], []
    for k, pair in enumerate(pairs):
        if k % world != rank:
            continue
        try:
            out, tgt, mask, inp = _read_pair(pair)
        except (OSError, ValueError) as e:
            problems.append(
                {"id": pair["id"], "file": str(pair["output"]), "error": f"unreadable: {e}"}
            )
            continue
        if out.shape != tgt.shape or (mask is not None and mask.shape[-2:] != tgt.shape[-2:]):
            problems.append(
                {
                    "id": pair["id"],
                    "file": str(pair["output"]),
                    "error": f"size mismatch: output {tuple(out.shape[-2:])} vs target "
                    f"{pair['target']} "
                    f"{tuple(tgt.shape[-2:])}"
                    + ("" if mask is None else f" vs mask {tuple(mask.shape[-2:])}"),
                }
            )
            continue
        vals = M.image_metrics(out, tgt, mask, channel=channel)
        vals.update(fidelity_metrics(pair, out, tgt, mask, inp))
        rows.append({"id": str(pair["id"]), **{m: float(v[0]) for m, v in vals.items()},
                     **{k2: pair.get(k2) for k2 in ("undecodable", "seconds")}})
        if features is not None:
            feats.append((str(pair["id"]), pair["output"], pair["target"]))
    if features is not None and feats:  # embedded together: fixed-size passes, not one by one
        fo = features.features([f[1] for f in feats])
        ft = features.features([f[2] for f in feats])
        feats = [(f[0], tuple(x[j] for x in fo), tuple(x[j] for x in ft))
                 for j, f in enumerate(feats)]
    gathered = gather((rows, problems, feats), group)
    rows = sorted((r for g in gathered for r in g[0]), key=lambda r: r["id"])
    problems = sorted((p for g in gathered for p in g[1]), key=lambda p: p["id"])
    feats = sorted((f for g in gathered for f in g[2]), key=lambda f: f[0])
    dist = {"fd_n": len(feats)}
    if features is not None:
        dist.update(distribution_metrics(feats, features.backbones))
        if set_key is not None:
            features.sets[set_key] = {f[0]: (f[1], f[2]) for f in feats}
    return rows, problems, dist


def _read_pair(pair: dict) -> tuple:
    """(output, target, mask or None, input or None) of a pair, each (1, C, H, W); the mask read
    at the target's size (or ``mask_tensor``, a detected one). OSError / ValueError (``DataError``)
    naming the file when one cannot be read."""
    out, tgt = read_image(Path(pair["output"]))[None], read_image(Path(pair["target"]))[None]
    mask = None
    if pair.get("mask") is not None:
        mask = read_mask(Path(pair["mask"]), tuple(tgt.shape[-2:]))[None]
    elif pair.get("mask_tensor") is not None:
        mask = pair["mask_tensor"][None]
    inp = None
    if pair.get("input") is not None and Path(pair["input"]).is_file():
        inp = read_image(Path(pair["input"]))[None]
    return out, tgt, mask, inp


_TARGET_VESSELS: dict[str, object] = {}


def fidelity_metrics(pair: dict, out: torch.Tensor, tgt: torch.Tensor,
                     mask: torch.Tensor | None, inp: torch.Tensor | None = None
                     ) -> dict[str, torch.Tensor]:
    """LR-consistency PSNR (SR: the output downscaled vs ``inp``, the input PNG) and vessel Dice
    inside the FOV (``medq.vessels``) of one scored pair -> {name: (1,) tensor}, NaN where
    undefined. The target's vessel map is cached by file content: every mode shares the
    targets."""
    from medq import vessels

    nan = torch.full((1,), math.nan, dtype=torch.float64)
    res = {"lr_psnr": nan, "vessel_dice": nan}
    if inp is not None:
        res["lr_psnr"] = M.lr_consistency_psnr(out, inp, mask)
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
        outs = torch.stack([read_image(Path(p["output"])) for p in pairs])
        tgts = torch.stack([read_image(Path(p["target"])) for p in pairs])
        masks = torch.stack([read_mask(Path(p["mask"]), tuple(t.shape[-2:]))
                             for p, t in zip(pairs, tgts)])
        size = tuple(tgts.shape[-2:])
        refs = torch.cat([bicubic(read_image(Path(p["input"]))[None], size) for p in pairs])
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
    output kind the harness wrote (``output_<kind>``, e.g. "output_onestep"; ``output_kinds``)."""
    from medq.harness.records import read_jsonl

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
    per_image, problems, dist = score_pairs(pairs, channel=channel, features=features,
                                            set_key=(str(meta.get("name")), str(meta.get("task"))))
    row = {**meta, **aggregate(per_image), **dist, "n_images": len(per_image)}
    used = [records[p["id"]] for p in pairs]
    secs = [float(r["seconds"]) for r in used if r.get("seconds") is not None]
    row["seconds_per_image"] = math.fsum(secs) / len(secs) if secs else math.nan
    if used:
        try:
            from medq.harness import summarize

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
        probe = read_image(pairs[0]["target"])
        notes.append(M.ms_ssim_unsupported_reason(*probe.shape[-2:]) or "MS-SSIM n/a")
    row["note"] = "; ".join(notes)
    for r in per_image:
        r.update(name=meta["name"], task=meta["task"])
    return row, per_image


def comparisons(rows: list[dict], per_image: list[dict],
                metrics=("ssim_fov", "psnr_eroded_fov", "vessel_dice", "psnr_fov"),
                features: FeatureCache | None = None) -> list[dict]:
    """ssim_v3 - pixel, mixed - pixel, ssim_v3 / pixel - base (the no-image-loss control, when
    present), and every scored run - the task's reference baseline
    (``REFERENCE``: bicubic for SR, identity for enhance) and - the constant floor, per task,
    on the latest checkpoint of
    each run (the row with the highest step). With ``features`` (the cache that scored them),
    also KID a - KID b on the primary backbone (``kid_comparisons``: paired KID, jackknife
    interval and p; lower is better) for every pair but those with the floor."""
    values: dict[tuple[str, str], dict[str, dict[str, float]]] = {}
    for r in per_image:
        d = values.setdefault((str(r["name"]), str(r["task"])), {})
        for m in metrics:
            d.setdefault(m, {})[str(r["id"])] = (
                float(r[m]) if str(r[m]) not in ("", "None") else math.nan
            )
    out = []
    for task in sorted({str(r["task"]) for r in rows}):
        latest: dict[str, dict] = {}
        for r in rows:
            if str(r["task"]) != task or (str(r["name"]), task) not in values:
                continue
            if str(r.get("kind")) == "run":
                # the latest checkpoint; of several training seeds, the lowest (seed 0)
                key = (number(r.get("step")), -seed_of(r))
                cur = latest.get(str(r.get("preset")))
                if cur is None or key > (number(cur.get("step")), -seed_of(cur)):
                    latest[str(r.get("preset"))] = r
        # ... - control: against the control fine-tune without any image loss, when one was trained
        # (`python -m train --preset control`): what an image loss adds beyond more training.
        pairs = [(latest[a], latest[b]) for a, b in (("ssim_v3", "pixel"), ("mixed", "pixel"),
                                                      ("ssim_v3", "control"), ("pixel", "control"))
                 if a in latest and b in latest]
        for ref in (REFERENCE.get(task, "bicubic"), FLOOR):
            bic = [r for r in rows if str(r["task"]) == task and str(r.get("name")) == ref
                   and (str(r["name"]), task) in values]
            if bic:
                pairs += [(r, bic[0]) for _, r in sorted(latest.items())]
        for a, b in pairs:
            for m in metrics:
                c = paired_comparison(
                    values[(str(a["name"]), task)][m],
                    values[(str(b["name"]), task)][m],
                    seed=BOOTSTRAP_SEED,
                )
                out.append(
                    {"task": task, "a": a["name"], "b": b["name"], "metric": m, **c.as_dict()}
                )
            if features is not None and str(b["name"]) != FLOOR:
                out += kid_comparisons(features, task, str(a["name"]), str(b["name"]))
    for c, adj in zip(out, holm([c["p_value"] for c in out])):
        c["p_holm"] = adj
    return out


def kid_comparisons(features: FeatureCache, task: str, a: str, b: str) -> list[dict]:
    """KID a - KID b on the images both scored, on the primary backbone (the first: Inception
    under ``feature_backbones("auto")``; a secondary column is shown, not tested, so it adds
    nothing to the Holm family) (``metrics.kid_difference``: paired KID, jackknife interval and
    p); none when either set's features are missing. KID is a set metric: no per-image wins, no
    Wilcoxon."""
    fa, fb = features.sets.get((a, task)), features.sets.get((b, task))
    if not fa or not fb:
        return []
    ids = sorted(set(fa) & set(fb))
    if not ids:
        return []
    out = []
    for j, bb in enumerate(features.backbones[:1]):
        diff, lo, hi, p = M.kid_difference(np.stack([fa[i][0][j] for i in ids]),
                                           np.stack([fb[i][0][j] for i in ids]),
                                           np.stack([fa[i][1][j] for i in ids]))
        out.append({"task": task, "a": a, "b": b, "metric": bb.kid_column, "n": len(ids),
                    "mean_diff": diff, "ci_low": lo, "ci_high": hi, "p_value": p, "wins": "n/a",
                    "losses": "n/a", "ties": "n/a", "n_nonzero": "", "p_holm": math.nan,
                    "note": "set metric (lower is better): paired KID difference, jackknife "
                            "interval and p (normal approximation)"})
    return out


SEED_METRICS = ("ssim_fov", "psnr_eroded_fov", "psnr_fov", "lr_psnr", "vessel_dice")


SEED_PAIRS = (
    ("ssim_v3", "pixel"),
    ("mixed", "pixel"),
    ("ssim_v3", "control"),
    ("pixel", "control"),
)


def seed_summary(rows: list[dict], metrics=SEED_METRICS,
                 per_image: list[dict] | None = None) -> tuple[list[dict], list[dict]]:
    """Across training seeds: per (task, preset) with runs of >= 2 seeds, a row with the mean over
    seeds of each run's image mean (latest checkpoint of each run) and the seed standard
    deviation (``<metric>_seed_sd``, ddof 1); and comparisons of presets (``SEED_PAIRS``, and each
    preset against the task's reference and the constant floor, whose value is the same for
    every seed) by ``seed_pair_comparison``: with ``per_image`` (the per-image rows of the same
    scoring) an interval over images and seeds, else the seed spread on the fixed test set.
    -> (rows, comparisons); both empty when no preset has two seeds."""
    images: dict[tuple[str, str], dict[str, dict]] | None = None
    if per_image is not None:
        images = {}
        for r in per_image:
            images.setdefault((str(r["name"]), str(r["task"])), {})[str(r["id"])] = r
    runs: dict[tuple[str, str], dict[float, dict]] = {}
    for r in rows:
        if str(r.get("kind")) != "run" or str(r.get("status")) != "ok" or not r.get("preset"):
            continue
        by_seed = runs.setdefault((str(r["task"]), str(r["preset"])), {})
        cur = by_seed.get(seed_of(r))
        if cur is None or number(r.get("step")) > number(cur.get("step")):
            by_seed[seed_of(r)] = r
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
               "step": number(next(iter(by_seed.values())).get("step")),
               "n_images": number(next(iter(by_seed.values())).get("n_images"))}
        for m in metrics:
            vals = np.asarray([number(r.get(m)) for r in by_seed.values()], dtype=np.float64)
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
                b_runs = presets[b] if b in presets else {k: fixed[b] for k in presets[a]}
                c = seed_pair_comparison(presets[a], b_runs, m, images)
                comps.append({"task": task, "a": a, "b": b, "metric": m, **c.as_dict()})
    return out_rows, comps


def seed_pair_comparison(a_runs: dict, b_runs: dict, metric: str, images: dict | None):
    """``a - b`` on ``metric`` across training seeds: ``a_runs``, ``b_runs`` {seed: leaderboard
    row} (a baseline: its one row under every seed). With ``images`` {(name, task): {id: row}}
    holding every row's per-image rows: over images and seeds
    (``medq.stats.seed_image_comparison``); otherwise the seed spread of per-seed means on the
    fixed test set (``medq.stats.seed_comparison``). -> ``medq.stats.SeedResult``."""

    def per_image(row: dict) -> dict[str, float] | None:
        found = (images or {}).get((str(row.get("name")), str(row.get("task"))))
        return None if found is None else {i: number(r.get(metric)) for i, r in found.items()}

    va, vb = ({k: per_image(r) for k, r in runs.items()} for runs in (a_runs, b_runs))
    if all(v is not None for v in (*va.values(), *vb.values())):
        return seed_image_comparison(va, vb)
    return seed_comparison({k: number(r.get(metric)) for k, r in a_runs.items()},
                           {k: number(r.get(metric)) for k, r in b_runs.items()})


def seed_of(row: dict) -> float:
    v = number(row.get("seed"))
    return 0.0 if math.isnan(v) else v


def protocol(
    rows: list[dict], *, channel: str,
    backbone: M.FeatureBackbone | Sequence[M.FeatureBackbone] | None, extra: dict
) -> dict:
    """The metric protocol written beside every leaderboard. ``backbone``: the feature
    backbone(s) the distribution columns were computed with (None or empty: off)."""
    import scipy

    from medq.stats import IMAGES_X_SEEDS, SEED_SPREAD

    counts = {}
    for r in rows:
        counts.setdefault(str(r["task"]), set()).add(str(r.get("n_images")))
    backbones = (() if backbone is None else (backbone,)
                 if isinstance(backbone, M.FeatureBackbone) else tuple(backbone))
    return {
        **extra,
        "images scored per task": "; ".join(
            f"{t}: {', '.join(sorted(c))}" for t, c in sorted(counts.items())
        ),
        "per-image metrics": M.per_image_protocol(channel),
        "distribution metrics": M.distribution_protocol(backbones),
        "intervals and tests": f"95 % percentile bootstrap of the mean (2000 resamples, seed "
        f"{BOOTSTRAP_SEED}); Wilcoxon signed-rank (scipy {scipy.__version__}); across training "
        f"seeds: {IMAGES_X_SEEDS} (crossed random effects, Satterthwaite t) where per-image "
        f"values exist, else {SEED_SPREAD} (paired t over per-seed means)",
        "torch": torch.__version__,
    }


def output_kinds(task_dir: Path) -> list[str]:
    """Output kinds besides the sample that a records file carries: fields ``output_<kind>``
    holding an image path (e.g. ``output_onestep``), sorted. Each is scored as a row of its own,
    ``<name>/<kind>``, so a mode can appear as ``ssim_v3`` and ``ssim_v3/onestep``."""
    import re

    from medq.harness.records import read_jsonl

    path = Path(task_dir) / "records.jsonl"
    if not path.is_file():
        return []
    kinds = set()
    for r in read_jsonl(path):
        kinds |= {m.group(1) for k, v in r.items() if isinstance(v, str)
                  for m in [re.fullmatch(r"output_([a-z0-9_]+)", k)] if m}
    return sorted(kinds)



def row_ok(row: dict) -> bool:
    """A row from a complete scoring: status ``ok`` (possibly marked, e.g. an aborted run scored
    on request)."""
    return str(row.get("status", "")).split(" ", 1)[0] == "ok"

