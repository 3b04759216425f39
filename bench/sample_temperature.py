"""``python -m bench sample-temperature``: the sample at several noise temperatures
(``sample.noise_temperature``).

    python -m bench sample-temperature                      # the shipped base model, val split
    python -m bench sample-temperature --run runs/ssim_v3-bd6ce668 --tau 1,0.3 --split test

For each task and each tau, the Euler sample (``MiniBagelAdapter(output="sample")``, started from
tau times the seeded noise) of the first ``--images`` images of the split, scored inside the
field of view (mean PSNR and SSIM over the eroded FOV), beside the reference (bicubic for sr2/sr4,
the unchanged input for enhance). tau = 1 samples the model's own distribution; lower trades
texture and diversity for fidelity. The default was chosen from this table on the validation
split; choose on ``val``, report on ``test``.
"""

from __future__ import annotations

import dataclasses
import math

from bench.sweep import add_common_arguments, load, parse_list, print_sweep


def add_arguments(p) -> None:
    add_common_arguments(p)
    p.add_argument("--tau", default="1,0.7,0.5,0.3",
                   help="comma-separated noise temperatures in (0, 2] (default: %(default)s)")


def parse_taus(text: str) -> list[float]:
    """``"1,0.3"`` -> [1.0, 0.3]; SystemExit naming a bad value."""
    return parse_list(text, "--tau", float, "a number",
                      lambda t: math.isfinite(t) and 0 < t <= 2, "(0, 2]")


def main(args) -> int:
    taus = parse_taus(args.tau)
    model, info = load(args, "sample")
    cfg = info["config"]
    print(f"Sample of {args.run} ({info['checkpoint']}, {cfg.sample.steps} Euler steps) on the "
          f"first {args.images} {args.split} images per task (PSNR dB / SSIM over the eroded FOV); "
          f"sample.noise_temperature of this run: {cfg.sample.noise_temperature}")
    print_sweep(model, cfg, args, [(f"tau = {t:g}", dataclasses.replace(
        cfg.sample, noise_temperature=t)) for t in taus])
    return 0
