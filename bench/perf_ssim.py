"""``python -m bench perf ssim``: our SSIM loss against the reference libraries.

    python -m bench perf ssim                # shapes (8,3,256,256), (4,3,512,512), (1,3,1024,1024)
    python -m bench perf ssim --busy-core    # the same, one core kept busy by a spinning process
    python -m bench perf ssim --quick        # smaller shapes, fewer repeats (a smoke run)
    python -m bench perf ssim --shapes 2x3x128x128,1x1x300x200 --repeats 5 --threads 1

The table starts with the machine and its calibration (see bench/perf_machine.py): scale times to
another machine by the ratio of the calibration figures. Time: median over ``--repeats`` of one
forward + backward of ``1 - SSIM`` (gradient w.r.t. x); repeats are interleaved between the
implementations (in a rotating order), so a load spike hits them all; one warm-up call each first
(our loss compiles its kernels on its first call in a process). float32 CPU, identical inputs and
settings (window 11, sigma 1.5, data_range 1, valid windows where the library has them).
Peak memory: the rise of peak RSS (VmHWM, reset through /proc/self/clear_refs) over the RSS before
one forward + backward (after a warm-up at the same shape), each implementation in a fresh
subprocess with MALLOC_MMAP_THRESHOLD_=65536, so that freed tensors go back to the OS and the peak
is the real allocator peak, not a heap that never shrinks. Linux only (prints "n/a" elsewhere).
Deviation: max |SSIM - skimage.metrics.structural_similarity(gaussian_weights=True, sigma=1.5,
use_sample_covariance=False, data_range=1, channel_axis=0)| over the images of the shape.
Memory-bound floor: the bytes that any implementation must move (read x and y, write the gradient:
3 x N*C*H*W float32) at the calibration's copy bandwidth.
A library that is not installed gets a row "not installed".
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time

import numpy as np
import torch

from bench.perf_machine import busy_core, positive_int, print_machine, thread_count

SHAPES = [(8, 3, 256, 256), (4, 3, 512, 512), (1, 3, 1024, 1024)]
QUICK_SHAPES = [(4, 3, 128, 128), (1, 3, 256, 256)]


IMPLS = ("medq", "pytorch-msssim", "piq", "kornia", "monai", "torchmetrics")
ANCHORS = ("pytorch-msssim", "piq", "kornia", "monai")
"""The libraries the speed target compares against (torchmetrics computes a different map)."""
TARGET_SPEEDUP = 1.5
MAX_ELEMENTS = 1 << 26
"""Largest N*C*H*W accepted (256 MiB per float32 image tensor; the anchors need ~10 of those)."""


def _impl(name: str):
    """(x, y) -> per-image SSIM (N,) of one implementation, all on identical settings."""
    if name == "medq":
        from medq.losses import ssim
        return lambda x, y: ssim(x, y, reduction="none")
    if name == "pytorch-msssim":
        import pytorch_msssim  # its default data_range is 255
        return lambda x, y: pytorch_msssim.ssim(x, y, data_range=1.0, size_average=False)
    if name == "piq":
        import piq  # downsamples images over 256 px unless told not to
        return lambda x, y: piq.ssim(x, y, data_range=1.0, downsample=False, reduction="none")
    if name == "kornia":
        import kornia  # valid windows via padding="valid"; its loss would be (1 - SSIM) / 2
        return lambda x, y: kornia.metrics.ssim(x, y, 11, max_val=1.0,
                                                padding="valid").mean(dim=(1, 2, 3))
    if name == "monai":
        from monai.losses import SSIMLoss  # valid 11x11 (non-separable) grouped convolution
        loss = SSIMLoss(spatial_dims=2, data_range=1.0, win_size=11, kernel_sigma=1.5,
                        reduction="none")
        return lambda x, y: 1 - loss(x, y).view(-1)
    if name == "torchmetrics":
        # Reflect padding and the full map: no valid-window option, hence its deviation column.
        from torchmetrics.functional.image import structural_similarity_index_measure as tm
        return lambda x, y: tm(x, y, data_range=1.0, gaussian_kernel=True, sigma=1.5,
                               kernel_size=11, reduction="none")
    raise ValueError(f"unknown implementation {name!r}; known: {IMPLS}")


def _impls(names) -> tuple[dict, list[str]]:
    """The importable implementations of ``names`` and the names that are not installed."""
    out, missing = {}, []
    for name in names:
        try:
            out[name] = _impl(name)
        except ImportError:
            missing.append(name)
    return out, missing


def _inputs(shape, seed=0) -> tuple[torch.Tensor, torch.Tensor]:
    """A smooth random image (structure at several scales) and a noisy, blurred copy, in [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    n, c, h, w = shape
    x = torch.zeros(shape)
    for s in (4, 16, 64):
        x += torch.nn.functional.interpolate(torch.rand(n, c, max(h // s, 2), max(w // s, 2),
                                                        generator=g), size=(h, w),
                                             mode="bilinear", align_corners=False)
    x = (x / 3).clamp(0, 1)
    y = (torch.nn.functional.avg_pool2d(x, 3, 1, 1) + 0.05 * torch.randn(shape, generator=g))
    return x.contiguous(), y.clamp(0, 1).contiguous()


def _step(fn, x, y) -> None:
    xr = x.detach().requires_grad_(True)
    (1 - fn(xr, y).mean()).backward()


def _skimage(x, y) -> np.ndarray:
    from skimage.metrics import structural_similarity
    return np.array([structural_similarity(a, b, gaussian_weights=True, sigma=1.5,
                                           use_sample_covariance=False, data_range=1.0,
                                           channel_axis=0)
                     for a, b in zip(x.double().numpy(), y.double().numpy())])


def _status_kb(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


def _child_peak(name: str, shape) -> float:
    """Run in a fresh process: MB of peak RSS above the RSS before one forward + backward."""
    fn = _impl(name)
    x, y = _inputs(shape)
    _step(fn, x, y)  # lazy initialisation and compilation outside the measurement
    before = _status_kb("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    _step(fn, x, y)
    return (_status_kb("VmHWM") - before) / 1024


def _peak_mb(name: str, shape, threads: int) -> float | None:
    if not os.path.exists("/proc/self/clear_refs"):
        return None
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
    cmd = [sys.executable, "-m", "bench.perf_ssim", "--threads", str(threads), "--child", name,
           json.dumps(list(shape))]
    try:
        res = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True, timeout=600)
        return float(res.stdout.strip().splitlines()[-1])
    except (subprocess.SubprocessError, ValueError, OSError):
        return None


def parse_shapes(text: str) -> list[tuple[int, int, int, int]]:
    """argparse type: comma-separated NxCxHxW shapes, each image at least one 11 px window."""
    shapes = []
    for item in text.split(","):
        parts = item.strip().lower().split("x")
        try:
            shape = tuple(int(p) for p in parts)
        except ValueError:
            shape = ()
        if len(shape) != 4 or min(shape) < 1:
            raise argparse.ArgumentTypeError(
                f"shape {item.strip()!r} is not NxCxHxW with 4 positive integers "
                f"(e.g. 8x3x256x256)")
        if min(shape[2:]) < 11:
            raise argparse.ArgumentTypeError(
                f"shape {item.strip()!r}: H and W must be >= 11 (one SSIM window)")
        if math.prod(shape) > MAX_ELEMENTS:
            raise argparse.ArgumentTypeError(
                f"shape {item.strip()!r} has {math.prod(shape)} elements; at most {MAX_ELEMENTS}")
        shapes.append(shape)
    return shapes


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--shapes", type=parse_shapes, default=None, metavar="NxCxHxW,...",
                        help="image batch shapes (default: the three of the issue)")
    parser.add_argument("--quick", action="store_true",
                        help="smaller shapes and 3 repeats (a smoke run)")
    parser.add_argument("--repeats", type=positive_int(1000, "--repeats"), default=None,
                        help="timed forward+backward runs per implementation and shape "
                             "(default 7, 3 with --quick)")
    parser.add_argument("--threads", type=thread_count, default=None,
                        help="torch threads (default: min(2, CPU count))")
    parser.add_argument("--impls", default=",".join(IMPLS),
                        help=f"comma-separated implementations (default: {', '.join(IMPLS)})")
    parser.add_argument("--busy-core", action="store_true",
                        help="keep one core busy with a spinning process during the measurement")
    parser.add_argument("--no-memory", action="store_true",
                        help="skip the peak-memory subprocesses")
    parser.add_argument("--child", nargs=2, metavar=("IMPL", "SHAPE"), help=argparse.SUPPRESS)


def _measure(impls: dict, shape, repeats: int) -> dict[str, list[float]]:
    """Seconds of each forward+backward, repeats interleaved in a rotating order."""
    x, y = _inputs(shape)
    for fn in impls.values():  # warm-up (our kernels compile here on the first shape)
        _step(fn, x, y)
    names = list(impls)
    times = {name: [] for name in names}
    for r in range(repeats):
        for name in names[r % len(names):] + names[:r % len(names)]:
            t0 = time.perf_counter()
            _step(impls[name], x, y)
            times[name].append(time.perf_counter() - t0)
    return times


def main(args) -> int:
    if args.child:
        torch.set_num_threads(args.threads or min(2, os.cpu_count() or 1))
        print(_child_peak(args.child[0], tuple(json.loads(args.child[1]))))
        return 0
    names = [n.strip() for n in args.impls.split(",") if n.strip()]
    unknown = [n for n in names if n not in IMPLS]
    if unknown or "medq" not in names:
        print(f"bench perf ssim: --impls {args.impls!r}: "
              + (f"unknown {unknown}" if unknown else "must include medq")
              + f"; known: {', '.join(IMPLS)}", file=sys.stderr)
        return 2
    threads = args.threads or min(2, os.cpu_count() or 1)
    shapes = args.shapes or (QUICK_SHAPES if args.quick else SHAPES)
    repeats = args.repeats or (3 if args.quick else 7)
    impls, missing = _impls(names)
    with busy_core(args.busy_core):
        machine = print_machine(threads)
        print(f"repeats {repeats} (interleaved), float32 CPU; time = median forward+backward of "
              f"1 - SSIM" + ("; one core kept busy by a spinning process" if args.busy_core
                             else ""))
        header = (f"{'shape':<18} {'impl':<15} {'ms':>9} {'vs medq':>8} {'peak MB':>8} "
                  f"{'max|d| vs skimage':>18}")
        print(header)
        print("-" * len(header))
        for shape in shapes:
            times = _measure(impls, shape, repeats)
            x, y = _inputs(shape)
            ref = _skimage(x, y)
            ms = {name: statistics.median(t) * 1000 for name, t in times.items()}
            for name in names:
                if name in missing:
                    print(f"{str(shape):<18} {name:<15} {'not installed':>9}", flush=True)
                    continue
                with torch.no_grad():
                    dev = float(np.abs(impls[name](x, y).double().numpy() - ref).max())
                peak = None if args.no_memory else _peak_mb(name, shape, threads)
                peak_s = "n/a" if peak is None else f"{peak:.0f}"
                print(f"{str(shape):<18} {name:<15} {ms[name]:>9.1f} "
                      f"{ms[name] / ms['medq']:>7.2f}x {peak_s:>8} {dev:>18.2e}", flush=True)
            anchors = {n: ms[n] for n in ANCHORS if n in ms}
            floor_ms = 3 * math.prod(shape) * 4 / (machine.copy_gbs * 1e9) * 1000
            line = (f"  memory-bound floor {floor_ms:.1f} ms (3 x N*C*H*W float32 at "
                    f"{machine.copy_gbs:.1f} GB/s): medq at {ms['medq'] / floor_ms:.1f}x the floor")
            if anchors:
                best = min(anchors, key=anchors.get)
                speedup = anchors[best] / ms["medq"]
                verdict = "meets" if speedup >= TARGET_SPEEDUP else "MISSES"
                line = (f"  medq vs fastest anchor ({best}): {speedup:.2f}x, {verdict} the target "
                        f">= {TARGET_SPEEDUP}x\n" + line)
            print(line, flush=True)
        print(f"after: load average {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    p = argparse.ArgumentParser(prog="python -m bench.perf_ssim", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    sys.exit(main(p.parse_args()))
