"""``python -m bench score``: score a folder of external predictions into the leaderboard.

    python -m bench score --pred my_preds/ --target targets/ --name bagel-14b --task sr4
    python -m bench score --pred p/ --target t/ --mask masks/ --resize pred-to-target

Matching rule: a prediction and a target pair up when their file stems are equal after removing
one trailing ``_pred`` / ``_output`` / ``_sr`` from the prediction's stem and one trailing
``_target`` / ``_gt`` / ``_hr`` from the target's (extensions are ignored: ``12_left_pred.png``
matches ``12_left.jpeg``). A mask matches the target's key with an optional ``_mask`` suffix.
Unmatched files on either side are listed, never dropped silently. Without ``--mask`` the field
of view is detected from the target (``medq.data.fov_mask``).

Reading: predictions, targets and masks go through the pipeline's one reader
(``medq.data.imageio``): 16-bit PNGs and TIFFs scaled to 8 bits, float TIFFs read (values in
[0, 1] or 0-255), palette, alpha, CMYK and EXIF orientation converted, so a file scores as the
picture the data readers see. A mask is inside where its brightest channel is at least half scale
(``MASK_THRESHOLD``); one of another size is resized to its target, one of another aspect ratio
or a 0/1 label image is refused with the reason.

Sizes: a prediction whose size differs from its target is an error naming both files, unless
``--resize pred-to-target`` (bicubic, antialiased) is given. Unreadable files, decompression
bombs, images smaller than the 11-px SSIM window and mismatches are reported, one line each
naming the file; the valid rest is scored. Where a metric leaves images out (``*_fov`` on a
target without a field of view, e.g. all black or all white), the row says ``partial``, and the
note gives n for that metric and why.

Reports: rows go into ``<out>/leaderboard.csv`` and ``per_image.csv`` (replacing rows with the
same name and task, keeping the others) with the same metrics as ``bench eval``;
``leaderboard.md`` and the plots are redrawn from the merged rows (``--no-plots``: not the plots).
Every file is written to a staging folder first and moved into place only when all are written
(``bench.publish``): a full disk leaves every report as it was.

Exit codes: 0 scored (``ok``, ``partial`` or ``incomplete``, said in the row); 1 nothing scored
(no row written, the reports left as they were); 2 bad input (a missing folder, two files with
one key) or ``--out`` not writable or a write failing (one ``error:`` line, nothing replaced, no
temp file left).
"""

from __future__ import annotations

import logging
import math
import re
import sys
import tempfile
from pathlib import Path

import torch

from bench import report
from bench.publish import check_writable, publish_reports
from medq import metrics as M
from medq.data.imageio import IMAGE_SUFFIXES
from medq.scoring import (
    FeatureCache,
    aggregate,
    comparisons,
    protocol,
    read_image,
    score_pairs,
)

log = logging.getLogger("bench.score")
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
    p.add_argument("--no-plots", action="store_true",
                   help="do not redraw the plots (they then miss this row)")


def _files(folder: Path, suffix: re.Pattern) -> dict[str, Path]:
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such folder")
    out: dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES:
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
            p, t = read_image(pred), read_image(target)
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
                t = (read_image(Path(pair["target"])).permute(1, 2, 0) * 255).round().byte().numpy()
                why.append(f"{i} ({describe_flat(t)})")
            else:
                why.append(str(i))
        reason = "target without a field of view" if m.endswith("_fov") else "undefined"
        notes.append(f"{m} on {n[m]} of {len(per_image)} ({reason}: {', '.join(why)}"
                     + (", ..." if len(dropped) > 3 else "") + ")")
    return n, notes


def _row(name: str, args, found: dict, pairs: list[dict], per_image: list[dict],
         problems: list[dict], dist: dict) -> dict:
    """The leaderboard row of the scored folder: means with intervals, its status (ok, partial,
    incomplete, empty) and a note saying what was left out and why."""
    meta = {"name": name, "kind": "external", "run": str(args.pred), "preset": "",
            "config_hash": "", "checkpoint": None, "step": None, "weights": None,
            "task": args.task}
    row = {**meta, **aggregate(per_image), **dist, "n_images": len(per_image)}
    n_total = len(found["pairs"]) + len(found["unmatched_pred"]) + len(found["unmatched_target"])
    row["status"] = ("empty: nothing scored" if not per_image else "ok"
                     if len(per_image) == n_total
                     else f"incomplete: {len(per_image)} of {n_total} scored")
    notes = [f"{len(found[k])} unmatched {what}" for k, what in
             (("unmatched_pred", "predictions"), ("unmatched_target", "targets")) if found[k]]
    notes += [f"{p['id']}: {p['error']}" for p in problems[:3]]
    if per_image and row["ms_ssim"] != row["ms_ssim"]:
        notes.append(M.ms_ssim_unsupported_reason(*read_image(pairs[0]["target"]).shape[-2:])
                     or "MS-SSIM n/a")
    counts, partial = metric_counts(per_image, pairs)
    notes += partial
    if partial and row["status"] == "ok":
        row["status"] = "partial: " + ", ".join(m for m in M.IMAGE_METRICS
                                               if counts[m] < len(per_image)
                                               and not (m.startswith("ms_ssim") and counts[m] == 0))
    row["n_per_metric"] = counts
    row["note"] = "; ".join(notes)
    return row


def run_score(args) -> dict:
    """Match, read, score and (when anything was scored) merge into ``--out``'s reports:
    {"row", "per_image", "problems", "pairs", "unmatched_pred", ...}."""
    name = args.name or args.pred.resolve().name
    found = match(args.pred, args.target, args.mask)
    for label in ("unmatched_pred", "unmatched_target", "missing_mask"):
        if found[label]:
            print(f"[score] {label.replace('_', ' ')} ({len(found[label])}): "
                  + ", ".join(p.name for p in found[label]))
    check_writable(args.out)
    backbone = M.feature_backbones(args.backbone)
    with tempfile.TemporaryDirectory() as tmp:
        pairs, problems = _prepare(found["pairs"], args, Path(tmp))
        per_image, more, dist = score_pairs(pairs, channel=args.channel,
                                            features=FeatureCache(backbone) if backbone else None)
    problems += more
    for p in problems:
        print(f"[score] {p['id']}: {p['error']}")
    row = _row(name, args, found, pairs, per_image, problems, dist)
    for r in per_image:
        r.update(name=name, task=args.task)
    if per_image:  # nothing scored: the leaderboard keeps what it had
        _write(args, name, row, per_image, backbone)
    return {"row": row, "per_image": per_image, "problems": problems, **found}


def _write(args, name: str, row: dict, per_image: list[dict], backbone) -> None:
    """Merge the row into ``--out``'s reports (rows of the same name and task replaced, the others
    kept) and rewrite the leaderboard page and plots from the merged rows: every file staged,
    then moved into place, all or none (``bench.publish``)."""
    row = {k: v for k, v in row.items() if k != "n_per_metric"}
    rows = report.merge_rows(report.read_csv(args.out / "leaderboard.csv"), [row])
    pis = report.merge_rows(report.read_csv(args.out / "per_image.csv"), per_image)
    proto = protocol(rows, channel=args.channel, backbone=backbone, extra={
        "external": f"{name}: {args.pred} vs {args.target} (resize {args.resize})"})
    publish_reports(args.out, lambda stage: report.write_reports(
        rows, pis, stage, protocol=proto, comparisons=comparisons(rows, pis),
        plots=not args.no_plots), prune=False)


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
