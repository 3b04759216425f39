"""``python -m bench mmse-t``: where the MMSE output reads the model (``sample.mmse_t``).

    python -m bench mmse-t                                  # the shipped base model, val split
    python -m bench mmse-t --run runs/ssim_v3-4492092c --t 1,0.9 --images 16
    python -m bench mmse-t --t 0.9 --draws 1,4,8            # how sample.mmse_draws was chosen

For each task and each t, the MMSE output (``MiniBagelAdapter(output="mmse")``: the x0 prediction
from the condition latent noised to t; t = 1 is from pure noise) of the first ``--images`` images
of the split, scored inside the field of view (mean PSNR-fov, mean eroded SSIM-fov), beside the
reference (bicubic for sr2/sr4, the unchanged input for enhance); with several ``--draws``, one
column per (t, number of noise draws averaged). The defaults ``sample.mmse_t`` and
``sample.mmse_draws`` were chosen from this table on the validation split; choose on ``val``,
report on ``test``.
"""

from __future__ import annotations

import dataclasses
import math

from tqdm import tqdm

from medq.harness.load import InferError, load_run
from medq.harness.split_scores import split_fov_scores


def add_arguments(p) -> None:
    p.add_argument("--run", default="weights/base",
                   help="run directory or checkpoint (default: the shipped base model)")
    p.add_argument("--t", default="1,0.95,0.9,0.85,0.8",
                   help="comma-separated values of sample.mmse_t in (0, 1] (default: %(default)s)")
    p.add_argument("--draws", default=None,
                   help="comma-separated values of sample.mmse_draws (noise draws averaged), "
                        "e.g. 1,4,8 (default: the run's)")
    p.add_argument("--split", choices=("val", "test"), default="val")
    p.add_argument("--images", type=int, default=62, help="at most N images per task")
    p.add_argument("--no-progress", action="store_true")


def parse_list(text: str, flag: str, convert, kind: str, ok, bounds: str) -> list:
    """Comma-separated values of ``flag``; SystemExit naming the bad value otherwise."""
    out = []
    for part in text.split(","):
        try:
            value = convert(part)
        except ValueError:
            raise SystemExit(f"{flag} {text!r}: {part!r} is not {kind}") from None
        if not ok(value):
            raise SystemExit(f"{flag} {text!r}: {part!r} must be in {bounds}")
        out.append(value)
    return out


def parse_ts(text: str) -> list[float]:
    """``"1,0.9"`` -> [1.0, 0.9]."""
    return parse_list(text, "--t", float, "a number",
                       lambda t: math.isfinite(t) and 0 < t <= 1, "(0, 1]")


def parse_draws(text: str) -> list[int]:
    """``"1,4"`` -> [1, 4]."""
    return parse_list(text, "--draws", int, "an integer", lambda k: 1 <= k <= 64, "1..64")


def cell(psnr_fov: float, ssim_fov: float) -> str:
    return f"{psnr_fov:.2f} / {ssim_fov:.3f}"


def main(args) -> int:
    ts = parse_ts(args.t)
    if args.images < 1:
        raise SystemExit(f"--images {args.images}: must be >= 1")
    try:
        model, _, info = load_run(args.run, output="mmse")
    except InferError as e:
        raise SystemExit(f"error: {e}") from None
    cfg = info["config"]
    draws = parse_draws(args.draws) if args.draws else [cfg.sample.mmse_draws]
    grid = [(t, k) for t in ts for k in draws]
    print(f"MMSE output of {args.run} ({info['checkpoint']}) on the first {args.images} "
          f"{args.split} images per task (PSNR-fov dB / eroded SSIM-fov); sample.mmse_t of this "
          f"run: {cfg.sample.mmse_t}, sample.mmse_draws: {cfg.sample.mmse_draws}")
    heads = [f"t = {t:g}" + (f", {k} draws" if len(draws) > 1 else "") for t, k in grid]
    print("| task | reference | " + " | ".join(heads) + " |")
    print("|---|---|" + "---|" * len(grid))
    for task in cfg.data.tasks:
        cells = []
        for t, k in tqdm(grid, desc=task, disable=args.no_progress):
            model.sample_cfg = dataclasses.replace(cfg.sample, mmse_t=t, mmse_draws=k)
            try:
                s = split_fov_scores(model, cfg.data, cfg.model.image_size, args.split,
                                     args.images, tasks=[task])[task]
            except ValueError as e:
                raise SystemExit(f"error: {e}") from None
            cells.append(cell(s["psnr_fov"], s["ssim_fov"]))
        print(f"| {task} | {cell(s['ref_psnr_fov'], s['ref_ssim_fov'])} | " + " | ".join(cells)
              + " |", flush=True)
    return 0
