"""``python -m bench sample-temperature``: the sample at several noise temperatures
(``sample.noise_temperature``).

    python -m bench sample-temperature                      # the shipped base model, val split
    python -m bench sample-temperature --run runs/ssim_v3-bd6ce668 --tau 1,0.3 --split test

For each task and each tau, the Euler sample (``MiniBagelAdapter(output="sample")``, started from
tau times the seeded noise) of the first ``--images`` images of the split, scored inside the
field of view (mean PSNR-fov, mean eroded SSIM-fov), beside the reference (bicubic for sr2/sr4,
the unchanged input for enhance). tau = 1 samples the model's own distribution; lower trades
texture and diversity for fidelity. The default was chosen from this table on the validation
split; choose on ``val``, report on ``test``.
"""

from __future__ import annotations

import dataclasses
import math

from tqdm import tqdm

from bench.mmse_t import cell, parse_list
from medq.harness.load import InferError, load_run
from medq.harness.split_scores import split_fov_scores


def add_arguments(p) -> None:
    p.add_argument("--run", default="weights/base",
                   help="run directory or checkpoint (default: the shipped base model)")
    p.add_argument("--tau", default="1,0.7,0.5,0.3",
                   help="comma-separated noise temperatures in (0, 2] (default: %(default)s)")
    p.add_argument("--split", choices=("val", "test"), default="val")
    p.add_argument("--images", type=int, default=62, help="at most N images per task")
    p.add_argument("--no-progress", action="store_true")


def parse_taus(text: str) -> list[float]:
    """``"1,0.3"`` -> [1.0, 0.3]; SystemExit naming a bad value."""
    return parse_list(text, "--tau", float, "a number",
                       lambda t: math.isfinite(t) and 0 < t <= 2, "(0, 2]")


def main(args) -> int:
    taus = parse_taus(args.tau)
    if args.images < 1:
        raise SystemExit(f"--images {args.images}: must be >= 1")
    try:
        model, _, info = load_run(args.run, output="sample")
    except InferError as e:
        raise SystemExit(f"error: {e}") from None
    cfg = info["config"]
    print(f"Sample of {args.run} ({info['checkpoint']}, {cfg.sample.steps} Euler steps) on the "
          f"first {args.images} {args.split} images per task (PSNR-fov dB / eroded SSIM-fov); "
          f"sample.noise_temperature of this run: {cfg.sample.noise_temperature}")
    print("| task | reference | " + " | ".join(f"tau = {t:g}" for t in taus) + " |")
    print("|---|---|" + "---|" * len(taus))
    for task in cfg.data.tasks:
        cells = []
        for tau in tqdm(taus, desc=task, disable=args.no_progress):
            model.sample_cfg = dataclasses.replace(cfg.sample, noise_temperature=tau)
            try:
                s = split_fov_scores(model, cfg.data, cfg.model.image_size, args.split,
                                     args.images, tasks=[task])[task]
            except ValueError as e:
                raise SystemExit(f"error: {e}") from None
            cells.append(cell(s["psnr_fov"], s["ssim_fov"]))
        print(f"| {task} | {cell(s['ref_psnr_fov'], s['ref_ssim_fov'])} | " + " | ".join(cells)
              + " |", flush=True)
    return 0
