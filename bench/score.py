"""``python -m bench score``: score a folder of external predictions into the leaderboard.

    python -m bench score --pred my_preds/ --target targets/ --name bagel-14b --task sr4
    python -m bench score --pred p/ --target t/ --mask masks/ --resize pred-to-target

Matching rule: a prediction and a target pair up when their file stems are equal after removing
one trailing ``_pred`` / ``_output`` / ``_sr`` from the prediction's stem and one trailing
``_target`` / ``_gt`` / ``_hr`` from the target's (extensions are ignored: ``12_left_pred.png``
matches ``12_left.jpeg``). A mask matches the target's key with an optional ``_mask`` suffix.
Unmatched files on either side are listed, never dropped silently. Without ``--mask`` the field
of view is detected from the target (``medq.data.fov_mask``).

Sizes: a prediction whose size differs from its target is an error naming both files, unless
``--resize pred-to-target`` (bicubic, antialiased) is given. Unreadable files, decompression
bombs, images smaller than the 11-px SSIM window and mismatches are reported; the valid rest is
scored. Where a metric leaves images out (``*_fov`` on a target without a field of view, e.g.
all black or all white), the row says ``partial``, and the note gives n for that metric and why.
Nothing scored: no row is written and the exit code is 1. An output folder that cannot be
written (permissions, full disk) is one error line, exit 2, and no temp file left. Rows go into
``<out>/leaderboard.csv`` and ``per_image.csv`` (replacing rows with the same name and task,
keeping the others) with the same metrics as ``bench eval``; ``leaderboard.md`` is rewritten
from the merged rows.
"""

from __future__ import annotations

import logging
import math
import os
import re
import sys
import tempfile
import warnings
from pathlib import Path

import torch

from bench import report
from medq import metrics as M
from medq.scoring import FeatureCache, aggregate, comparisons, load_image, protocol, score_pairs

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
    p.add_argument(
        "--backbone", choices=M.BACKBONE_CHOICES, default="auto", help=M.BACKBONE_HELP
    )
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
    """{"pairs": [(key, pred, target, mask|None)], "unmatched_pred": [...],
    "unmatched_target": [...],
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
    from medq.baselines import bicubic
    from medq.data.imageio import save_png

    out, problems = [], []
    for key, pred, target, mask in pairs:
        try:
            p, t = _load_checked(pred), _load_checked(target)
        except (OSError, ValueError) as e:
            problems.append({"id": key, "file": f"{pred} / {target}", "error": f"unreadable: {e}"})
            continue
        small = next((f for f, x in ((pred, p), (target, t)) if min(x.shape[-2:]) < M.SSIM_WINDOW),
                     None)
        if small is not None:
            x = p if small == pred else t
            problems.append({"id": key, "file": str(small), "error":
                             f"too small: {small} is {x.shape[2]}x{x.shape[1]} pixels, below the "
                             f"{M.SSIM_WINDOW}x{M.SSIM_WINDOW} SSIM window"})
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


def _load_checked(path: Path) -> torch.Tensor:
    """``medq.scoring.load_image`` after refusing a decompression bomb (``medq.data.imageio``'s
    check,
    a DataError naming the file) instead of letting Pillow allocate it or raise its own error."""
    from PIL import Image

    from medq.data.imageio import check_pixels

    try:
        with warnings.catch_warnings():  # refused just below, naming the file
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(path)
        with im:
            check_pixels(im, Path(path))
    except Image.DecompressionBombError as e:
        raise ValueError(f"{path}: refused as a decompression bomb ({e})") from None
    return load_image(path)


def metric_counts(per_image: list[dict], pairs: list[dict]) -> tuple[dict[str, int], list[str]]:
    """n of each image metric (images where it is defined, not NaN) and, for every metric that
    leaves images out, why: e.g. "ssim_fov on 5 of 7 (target without a field of view: a (the
    image is all white (value 255)), b ...)"."""
    from medq.data.fov import describe_flat

    n = {m: sum(not math.isnan(r[m]) for r in per_image) for m in M.IMAGE_METRICS}
    by_id = {str(p["id"]): p for p in pairs}
    notes = []
    for m in M.IMAGE_METRICS:
        dropped = [r["id"] for r in per_image if math.isnan(r[m])]
        if not dropped or len(dropped) == len(per_image) and m.startswith("ms_ssim"):
            continue  # MS-SSIM undefined at this size for every image: its own note
        why = []
        for i in dropped[:3]:
            pair = by_id.get(str(i), {})
            if m.endswith("_fov") and pair.get("target") is not None:
                t = (load_image(Path(pair["target"])).permute(1, 2, 0) * 255).round().byte().numpy()
                why.append(f"{i} ({describe_flat(t)})")
            else:
                why.append(str(i))
        reason = "target without a field of view" if m.endswith("_fov") else "undefined"
        notes.append(f"{m} on {n[m]} of {len(per_image)} ({reason}: {', '.join(why)}"
                     + (", ..." if len(dropped) > 3 else "") + ")")
    return n, notes


def _check_writable(out: Path) -> None:
    """Create ``out`` and a file in it now, before minutes of scoring, so a bad --out fails at
    once (OSError)."""
    out.mkdir(parents=True, exist_ok=True)
    probe = out / f".tmp-{os.getpid()}-probe"
    try:
        probe.write_bytes(b"")
    finally:
        probe.unlink(missing_ok=True)


def run_score(args) -> dict:
    name = args.name or args.pred.resolve().name
    found = match(args.pred, args.target, args.mask)
    for label in ("unmatched_pred", "unmatched_target", "missing_mask"):
        if found[label]:
            print(f"[score] {label.replace('_', ' ')} ({len(found[label])}): "
                  + ", ".join(p.name for p in found[label]))
    _check_writable(args.out)
    backbone = M.feature_backbones(args.backbone)
    with tempfile.TemporaryDirectory() as tmp:
        pairs, problems = _prepare(found["pairs"], args, Path(tmp))
        per_image, more, dist = score_pairs(pairs, channel=args.channel,
                                            features=FeatureCache(backbone) if backbone else None)
    problems += more
    for p in problems:
        print(f"[score] {p['id']}: {p['error']}")
    meta = {
        "name": name,
        "kind": "external",
        "run": str(args.pred),
        "preset": "",
        "config_hash": "",
        "checkpoint": None,
        "step": None,
        "weights": None,
        "task": args.task,
    }
    row = {**meta, **aggregate(per_image), **dist, "n_images": len(per_image)}
    n_total = len(found["pairs"]) + len(found["unmatched_pred"]) + len(found["unmatched_target"])
    row["status"] = (
        "empty: nothing scored"
        if not per_image
        else "ok"
        if len(per_image) == n_total
        else f"incomplete: {len(per_image)} of {n_total} scored"
    )
    notes = (
        [f"{len(found['unmatched_pred'])} unmatched predictions"] if found["unmatched_pred"] else []
    )
    notes += (
        [f"{len(found['unmatched_target'])} unmatched targets"] if found["unmatched_target"] else []
    )
    notes += [f"{p['id']}: {p['error']}" for p in problems[:3]]
    if per_image and row["ms_ssim"] != row["ms_ssim"]:
        notes.append(
            M.ms_ssim_unsupported_reason(*load_image(pairs[0]["target"]).shape[-2:])
            or "MS-SSIM n/a"
        )
    counts, partial = metric_counts(per_image, pairs)
    notes += partial
    if partial and row["status"] == "ok":
        row["status"] = "partial: " + ", ".join(m for m in M.IMAGE_METRICS
                                               if counts[m] < len(per_image)
                                               and not (m.startswith("ms_ssim") and counts[m] == 0))
    row["n_per_metric"] = counts
    row["note"] = "; ".join(notes)
    for r in per_image:
        r.update(name=name, task=args.task)
    if not per_image:  # nothing to report: the leaderboard keeps what it had
        return {"row": row, "per_image": per_image, "problems": problems, **found}
    _write(args, name, row, per_image, backbone)
    return {"row": row, "per_image": per_image, "problems": problems, **found}


def _write(args, name: str, row: dict, per_image: list[dict], backbone) -> None:
    """Merge the row into <out>; on a write error remove the temp files this process left."""
    before = set(args.out.iterdir())
    try:
        _write_reports(args, name, row, per_image, backbone)
    except OSError:
        for p in set(args.out.iterdir()) - before:
            if p.name.startswith(".tmp-"):
                p.unlink(missing_ok=True)
        raise


def _write_reports(args, name: str, row: dict, per_image: list[dict], backbone) -> None:
    row = {k: v for k, v in row.items() if k != "n_per_metric"}
    rows = report.merge_rows(report.read_csv(args.out / "leaderboard.csv"), [row])
    pis = report.merge_rows(report.read_csv(args.out / "per_image.csv"), per_image)
    report.write_csvs(rows, pis, args.out)
    report.write_markdown(
        rows,
        comparisons(rows, pis),
        protocol(
            rows,
            channel=args.channel,
            backbone=backbone,
            extra={"external": f"{name}: {args.pred} vs {args.target} (resize {args.resize})"},
        ),
        args.out,
    )


def main(args) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        result = run_score(args)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        where = f" ({e.filename})" if e.filename else ""
        print(f"error: cannot write the reports to {args.out}: {e.strerror or e}{where}; free "
              f"space or pass a writable --out", file=sys.stderr)
        return 2
    r = result["row"]
    if not r["n_images"]:
        print(f"error: nothing scored for {r['name']} {r['task']} ({len(result['pairs'])} matched "
              f"pairs, {len(result['problems'])} problems listed above); {args.out} left unchanged",
              file=sys.stderr)
        return 1
    n = r["n_per_metric"]
    print(f"[score] {r['name']} {r['task']}: {r['status']}  n={r['n_images']}  "
          f"psnr {r['psnr']:.3f}  ssim {r['ssim']:.4f}  ssim_fov {r['ssim_fov']:.4f} "
          f"(n={n['ssim_fov']}) -> {args.out / 'leaderboard.csv'}")
    if r["note"]:
        print(f"[score] note: {r['note']}")
    return 0
