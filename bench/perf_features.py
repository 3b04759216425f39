"""``python -m bench perf features``: images per second of the FID/KID feature backbones on CPU,
at each torch thread count, so the evaluation budget can be planned.

    python -m bench perf features                          # 1 and 2 threads, 32 images
    python -m bench perf features --threads 2 --images 64 --backbones inception

Each thread count starts with the machine line and its calibration (``bench/perf_machine.py``).
Rows: ``resize`` is clean-fid's "clean" decode + PIL bicubic to 299 px of a 256 px PNG (done once
per image for every backbone); each backbone's row is its forward passes of ``FEATURE_BATCH``
images at 299 px (the first pass, which loads and warms up, is not timed).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    from bench.perf_machine import positive_int, thread_count

    p.add_argument("--threads", type=thread_count, nargs="+", default=[1, 2],
                   help="torch thread counts to measure (default 1 2)")
    p.add_argument("--images", type=positive_int(4096, "--images"), default=32,
                   help="images embedded per backbone and thread count (default 32)")
    p.add_argument("--backbones", nargs="+", choices=["inception", "randresnet18"],
                   default=["inception", "randresnet18"])


def _pngs(folder: Path, count: int, size: int = 256) -> list[Path]:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    paths = []
    for i in range(count):
        p = folder / f"{i:04d}.png"
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(p)
        paths.append(p)
    return paths


def _rate(fn, count: int) -> tuple[float, float]:
    t0 = time.perf_counter()
    fn()
    dt = time.perf_counter() - t0
    return dt, count / dt


def main(args) -> int:
    import torch
    from cleanfid.utils import ResizeDataset

    from bench.perf_machine import print_machine
    from medq.metrics import FEATURE_BATCH, feature_extractor

    backbones = {name: feature_extractor(name) for name in args.backbones}
    passes = -(-args.images // FEATURE_BATCH)
    with tempfile.TemporaryDirectory() as tmp:
        paths = _pngs(Path(tmp), args.images)
        for threads in args.threads:
            print_machine(threads)
            print(f"{'what':>14} {'threads':>7} {'images':>7} {'s':>8} {'img/s':>8}")
            dataset = ResizeDataset([str(p) for p in paths], mode="clean")
            dt, rate = _rate(lambda d=dataset: [d[i] for i in range(len(d))], len(paths))
            print(f"{'resize':>14} {threads:>7} {len(paths):>7} {dt:>8.2f} {rate:>8.2f}")
            x = torch.rand(FEATURE_BATCH, 3, 299, 299, generator=torch.Generator().manual_seed(0))
            x = x * 255
            for name, bb in backbones.items():
                bb(x)  # warm-up: first-call allocation and oneDNN primitive choice
                dt, rate = _rate(lambda b=bb, x=x: [b(x) for _ in range(passes)],
                                 passes * FEATURE_BATCH)
                print(f"{name:>14} {threads:>7} {passes * FEATURE_BATCH:>7} {dt:>8.2f} "
                      f"{rate:>8.2f}")
    return 0
