"""``python -m bench perf data``: synthetic fundus images per second on one core (target >= 20 at
256).

    python -m bench perf data                   # sizes 64 128 256, 20 images each
    python -m bench perf data --sizes 256 --images 40

Prints wall-clock and CPU-time rates: on a shared machine the CPU-time rate (process time of this
single-threaded process) is the one-core figure; the wall rate includes waiting for the core.
"""

from __future__ import annotations

import argparse
import time


def add_arguments(p: argparse.ArgumentParser) -> None:
    from bench.perf_machine import positive_int

    p.add_argument("--sizes", type=positive_int(4096, "--sizes"), nargs="+", default=[64, 128, 256])
    p.add_argument("--images", type=positive_int(100000, "--images"), default=20,
                   help="images generated per size")


def main(args) -> int:
    from bench.perf_machine import print_machine
    from medq.data import generate_fundus

    print_machine(1)  # the generator is single-threaded: calibrate one thread
    print(
        f"{'size':>6} {'images':>7} {'wall s':>8} {'cpu s':>8} {'img/s wall':>11} {'img/s cpu':>10}"
    )
    for size in args.sizes:
        generate_fundus(0, size)  # warm-up (grid cache, imports)
        t, c = time.perf_counter(), time.process_time()
        for i in range(args.images):
            generate_fundus(1000 + i, size)
        dt, dc = time.perf_counter() - t, time.process_time() - c
        print(
            f"{size:>6} {args.images:>7} {dt:>8.2f} {dc:>8.2f} {args.images / dt:>11.1f} "
            f"{args.images / dc:>10.1f}"
        )
    return 0
