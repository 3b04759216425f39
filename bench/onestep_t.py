"""``python -m bench onestep-t``: where the one-step output reads the model (``sample.onestep_t``).

    python -m bench onestep-t                                  # the shipped base model, val split
    python -m bench onestep-t --run runs/ssim_v3-4492092c --t 1,0.9 --images 16
    python -m bench onestep-t --t 0.9 --draws 1,4,8            # how sample.onestep_draws was chosen

For each task and each t, the one-step output (``MiniBagelAdapter(output="onestep")``: the x0
prediction from the condition latent noised to t; t = 1 is from pure noise) of the first
``--images`` images of the split, scored inside the field of view (mean PSNR and SSIM over the
eroded FOV), beside the reference (bicubic for sr2/sr4, the unchanged input for enhance); with
several ``--draws``, one column per (t, number of noise draws averaged). The defaults
``sample.onestep_t`` and ``sample.onestep_draws`` were chosen from this table on the validation
split; choose on ``val``, report on ``test``.
"""

from __future__ import annotations

import dataclasses
import math

from bench.sweep import add_common_arguments, load, parse_list, print_sweep


def add_arguments(p) -> None:
    add_common_arguments(p)
    p.add_argument("--t", default="1,0.95,0.9,0.85,0.8",
                   help="comma-separated values of sample.onestep_t in (0, 1] "
                        "(default: %(default)s)")
    p.add_argument("--draws", default=None,
                   help="comma-separated values of sample.onestep_draws (noise draws averaged), "
                        "e.g. 1,4,8 (default: the run's)")


def parse_ts(text: str) -> list[float]:
    """``"1,0.9"`` -> [1.0, 0.9]."""
    return parse_list(text, "--t", float, "a number",
                       lambda t: math.isfinite(t) and 0 < t <= 1, "(0, 1]")


def parse_draws(text: str) -> list[int]:
    """``"1,4"`` -> [1, 4]."""
    return parse_list(text, "--draws", int, "an integer", lambda k: 1 <= k <= 64, "1..64")


def main(args) -> int:
    ts = parse_ts(args.t)
    model, info = load(args, "onestep")
    cfg = info["config"]
    draws = parse_draws(args.draws) if args.draws else [cfg.sample.onestep_draws]
    print(f"one-step output of {args.run} ({info['checkpoint']}) on the first {args.images} "
          f"{args.split} images per task (PSNR dB / SSIM over the eroded FOV); sample.onestep_t "
          f"of this run: {cfg.sample.onestep_t}, sample.onestep_draws: {cfg.sample.onestep_draws}")
    print_sweep(model, cfg, args, [
        (f"t = {t:g}" + (f", {k} draws" if len(draws) > 1 else ""),
         dataclasses.replace(cfg.sample, onestep_t=t, onestep_draws=k)) for t in ts for k in draws])
    return 0
