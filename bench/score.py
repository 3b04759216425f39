"""``python -m bench score``: score a folder of external predictions into the leaderboard.

    python -m bench score --pred my_preds/ --target targets/ --name bagel-14b --task sr4
    python -m bench score --pred p/ --target t/ --mask masks/ --resize pred-to-target

Matching rule: a prediction and a target pair up when their file stems are equal after removing
one trailing ``_pred`` / ``_output`` / ``_sr`` from the prediction's stem and one trailing
``_target`` / ``_gt`` / ``_hr`` from the target's (extensions are ignored: ``12_left_pred.png``
matches ``12_left.jpeg``). A mask matches the target's key with an optional ``_mask`` suffix.
Unmatched files on either side are listed, never dropped silently. Without ``--mask`` the field
of view is detected from the target (``medq.data.fov_mask`` when present, else the brightness
threshold of ``infer.images``).

Sizes: a prediction whose size differs from its target is an error naming both files, unless
``--resize pred-to-target`` (bicubic, antialiased) is given. Unreadable files and mismatches are
reported; the valid rest is scored. Rows go into ``<out>/leaderboard.csv`` and ``per_image.csv``
(replacing rows with the same name and task, keeping the others) with the same metrics as
``bench eval``; ``leaderboard.md`` is rewritten from the merged rows.
"""

from __future__ import annotations

import logging
import re
import sys
import tempfile
from pathlib import Path

import torch

from bench import report
from bench.eval import FeatureCache, _load, aggregate, comparisons, protocol, score_pairs
from medq import metrics as M

log = logging.getLogger("bench.score")
IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".gif", ".webp"}
PRED_SUFFIX = re.compile(r"_(pred|output|sr)$", re.IGNORECASE)
TARGET_SUFFIX = re.compile(r"_(target|gt|hr)$", re.IGNORECASE)
MASK_SUFFIX = re.compile(r"_mask$", re.IGNORECASE)


def add_arguments(p) -> None:
    p.add_argument("--pred", type=Path, required=True, help="folder of predicted images")
    p.add_argument("--target", type=Path, required=True, help="folder of target images")
    p.add_argument("--mask", type=Path, help="folder of field-of-view masks (default: detected)")
    p.add_argument("--name", help="leaderboard name (default: the --pred folder name)")
    p.add_argument("--task", default="sr4", help="task label of the rows (default sr4)")
    p.add_argument("--resize", choices=["none", "pred-to-target"], default="none")
    p.add_argument("--channel", choices=["rgb", "y"], default="rgb")
    p.add_argument("--backbone", choices=["auto", "inception", "randresnet18", "none"], default="auto")
    p.add_argument("--out", type=Path, default=Path("reports"))


def _files(folder: Path, suffix: re.Pattern) -> dict[str, Path]:
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such folder")
    out: dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        if p.is_file() and p.suffix.lower() in IMAGE_EXTS:
            key = suffix.sub("", p.stem)
            if key in out:
                raise ValueError(f"{folder}: {out[key].name} and {p.name} both match key {key!r}")
            out[key] = p
    return out


def match(pred_dir: Path, target_dir: Path, mask_dir: Path | None = None) -> dict:
    """{"pairs": [(key, pred, target, mask|None)], "unmatched_pred": [...], "unmatched_target": [...],
    "unmatched_mask": [...]}, all sorted by key."""
    preds, targets = _files(pred_dir, PRED_SUFFIX), _files(target_dir, TARGET_SUFFIX)
    masks = _files(mask_dir, MASK_SUFFIX) if mask_dir is not None else {}
    common = sorted(set(preds) & set(targets))
    return {"pairs": [(k, preds[k], targets[k], masks.get(k)) for k in common],
            "unmatched_pred": [preds[k] for k in sorted(set(preds) - set(targets))],
            "unmatched_target": [targets[k] for k in sorted(set(targets) - set(preds))],
            "missing_mask": [targets[k] for k in common if mask_dir is not None and k not in masks]}


def detect_mask(target: torch.Tensor) -> torch.Tensor:
    """(3, H, W) target in [0, 1] -> (1, H, W) float field of view (``medq.data.fov_mask``)."""
    from medq.data import fov_mask

    return fov_mask(target)[None].float()


def _prepare(pairs, args, tmp: Path) -> tuple[list[dict], list[dict]]:
    """Pair dicts for ``score_pairs``; size mismatches become problems (or resized copies)."""
    from infer.images import save_png
    from medq.baselines import bicubic

    out, problems = [], []
    for key, pred, target, mask in pairs:
        try:
            p, t = _load(pred), _load(target)
        except (OSError, ValueError) as e:
            problems.append({"id": key, "file": f"{pred} / {target}", "error": f"unreadable: {e}"})
            continue
        if p.shape != t.shape:
            if args.resize == "none":
                problems.append({"id": key, "file": str(pred), "error":
                                 f"size mismatch: {pred} is {p.shape[2]}x{p.shape[1]}, {target} is "
                                 f"{t.shape[2]}x{t.shape[1]} (use --resize pred-to-target)"})
                continue
            pred = save_png(tmp / f"{key}_resized.png", bicubic(p[None], tuple(t.shape[-2:]))[0])
        pair = {"id": key, "output": pred, "target": target, "mask": mask}
        if mask is None:
            pair["mask_tensor"] = detect_mask(t)
        out.append(pair)
    return out, problems


def run_score(args) -> dict:
    name = args.name or args.pred.resolve().name
    found = match(args.pred, args.target, args.mask)
    for label in ("unmatched_pred", "unmatched_target", "missing_mask"):
        if found[label]:
            print(f"[score] {label.replace('_', ' ')} ({len(found[label])}): "
                  + ", ".join(p.name for p in found[label]))
    backbone = None if args.backbone == "none" else M.feature_extractor(args.backbone)
    with tempfile.TemporaryDirectory() as tmp:
        pairs, problems = _prepare(found["pairs"], args, Path(tmp))
        per_image, more, dist = score_pairs(pairs, channel=args.channel,
                                            features=FeatureCache(backbone) if backbone else None)
    problems += more
    for p in problems:
        print(f"[score] {p['id']}: {p['error']}")
    meta = {"name": name, "kind": "external", "run": str(args.pred), "preset": "", "config_hash": "",
            "checkpoint": None, "step": None, "weights": None, "task": args.task}
    row = {**meta, **aggregate(per_image), **dist, "n_images": len(per_image)}
    n_total = len(found["pairs"]) + len(found["unmatched_pred"]) + len(found["unmatched_target"])
    row["status"] = ("empty: nothing scored" if not per_image else
                     "ok" if len(per_image) == n_total else f"incomplete: {len(per_image)} of {n_total} scored")
    notes = [f"{len(found['unmatched_pred'])} unmatched predictions"] if found["unmatched_pred"] else []
    notes += [f"{len(found['unmatched_target'])} unmatched targets"] if found["unmatched_target"] else []
    notes += [f"{p['id']}: {p['error']}" for p in problems[:3]]
    if per_image and row["ms_ssim"] != row["ms_ssim"]:
        notes.append(M.ms_ssim_unsupported_reason(*_load(pairs[0]["target"]).shape[-2:]) or "MS-SSIM n/a")
    row["note"] = "; ".join(notes)
    for r in per_image:
        r.update(name=name, task=args.task)
    args.out.mkdir(parents=True, exist_ok=True)
    rows = report.merge_rows(report.read_csv(args.out / "leaderboard.csv"), [row])
    pis = report.merge_rows(report.read_csv(args.out / "per_image.csv"), per_image)
    report.write_csvs(rows, pis, args.out)
    report.write_markdown(rows, comparisons(rows, pis), protocol(
        rows, channel=args.channel, backbone=backbone,
        extra={"external": f"{name}: {args.pred} vs {args.target} (resize {args.resize})"}), args.out)
    return {"row": row, "per_image": per_image, "problems": problems, **found}


def main(args) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        result = run_score(args)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    r = result["row"]
    print(f"[score] {r['name']} {r['task']}: {r['status']}  n={r['n_images']}  "
          f"psnr {r['psnr']:.3f}  ssim {r['ssim']:.4f}  ssim_fov {r['ssim_fov']:.4f} -> "
          f"{args.out / 'leaderboard.csv'}")
    return 0
