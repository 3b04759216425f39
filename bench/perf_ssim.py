"""``python -m bench perf ssim [--quick] [--repeats N]``: our SSIM loss against the reference libraries.

    python -m bench perf ssim            # shapes (8,3,256,256), (4,3,512,512), (1,3,1024,1024)
    python -m bench perf ssim --quick    # smaller shapes, fewer repeats (a smoke run)
    python -m bench.perf_ssim --quick    # the same, without the other bench targets

Time: median over ``--repeats`` of one forward + backward of ``1 - SSIM`` (gradient w.r.t. x),
implementations interleaved in one process, ``torch.set_num_threads(2)``, float32 CPU, identical
inputs and settings (window 11, sigma 1.5, data_range 1, valid windows where the library has them).
Peak memory: the rise of peak RSS (VmHWM, reset through /proc/self/clear_refs) over the RSS before
one forward + backward, each implementation in a fresh subprocess with
MALLOC_MMAP_THRESHOLD_=65536, so that freed tensors go back to the OS and the peak is the real
allocator peak, not a heap that never shrinks. Linux only (prints "n/a" elsewhere).
Deviation: max |SSIM - skimage.metrics.structural_similarity(gaussian_weights=True, sigma=1.5,
use_sample_covariance=False, data_range=1, channel_axis=0)| over the images of the shape.
The machine may be shared: numbers are indicative; the ratio column is what matters.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np
import torch

SHAPES = [(8, 3, 256, 256), (4, 3, 512, 512), (1, 3, 1024, 1024)]
QUICK_SHAPES = [(4, 3, 128, 128), (1, 3, 256, 256)]


IMPLS = ("medq", "pytorch-msssim", "piq", "kornia", "torchmetrics")


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
    if name == "torchmetrics":
        # Reflect padding and the full map: no valid-window option, hence its deviation column.
        from torchmetrics.functional.image import structural_similarity_index_measure as tm
        return lambda x, y: tm(x, y, data_range=1.0, gaussian_kernel=True, sigma=1.5,
                               kernel_size=11, reduction="none")
    raise ValueError(f"unknown implementation {name!r}; known: {IMPLS}")


def _impls() -> dict:
    out = {}
    for name in IMPLS:
        try:
            out[name] = _impl(name)
        except ImportError:
            pass
    return out


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
    torch.set_num_threads(2)
    fn = _impl(name)
    _step(fn, *_inputs((1, shape[1], 64, 64)))  # lazy initialisation outside the measurement
    x, y = _inputs(shape)
    before = _status_kb("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    _step(fn, x, y)
    return (_status_kb("VmHWM") - before) / 1024


def _peak_mb(name: str, shape) -> float | None:
    if not os.path.exists("/proc/self/clear_refs"):
        return None
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
    cmd = [sys.executable, "-m", "bench.perf_ssim", "--child", name, json.dumps(list(shape))]
    try:
        res = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True, timeout=600)
        return float(res.stdout.strip().splitlines()[-1])
    except (subprocess.SubprocessError, ValueError, OSError):
        return None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true",
                        help="smaller shapes and 3 repeats (a smoke run, ~1 min)")
    parser.add_argument("--repeats", type=int, default=None,
                        help="timed forward+backward runs per implementation and shape "
                             "(default 7, 3 with --quick)")
    parser.add_argument("--no-memory", action="store_true",
                        help="skip the peak-memory subprocesses")
    parser.add_argument("--child", nargs=2, metavar=("IMPL", "SHAPE"), help=argparse.SUPPRESS)


def main(args) -> int:
    if args.child:
        print(_child_peak(args.child[0], tuple(json.loads(args.child[1]))))
        return 0
    torch.set_num_threads(2)
    shapes = QUICK_SHAPES if args.quick else SHAPES
    repeats = args.repeats or (3 if args.quick else 7)
    impls = _impls()
    print(f"torch {torch.__version__}, threads 2, repeats {repeats}, float32 CPU; "
          f"time = median forward+backward of 1 - SSIM")
    header = f"{'shape':<18} {'impl':<15} {'ms':>9} {'vs medq':>8} {'peak MB':>8} {'max|d| vs skimage':>18}"
    print(header)
    print("-" * len(header))
    for shape in shapes:
        x, y = _inputs(shape)
        for fn in impls.values():  # warm-up
            _step(fn, x, y)
        times = {name: [] for name in impls}
        for _ in range(repeats):
            for name, fn in impls.items():
                t0 = time.perf_counter()
                _step(fn, x, y)
                times[name].append(time.perf_counter() - t0)
        ref = _skimage(x, y)
        ours = statistics.median(times["medq"])
        for name, fn in impls.items():
            ms = statistics.median(times[name]) * 1000
            with torch.no_grad():
                dev = float(np.abs(fn(x, y).double().numpy() - ref).max())
            peak = None if args.no_memory else _peak_mb(name, shape)
            peak_s = "n/a" if peak is None else f"{peak:.0f}"
            print(f"{str(shape):<18} {name:<15} {ms:>9.1f} {ms / 1000 / ours:>7.2f}x "
                  f"{peak_s:>8} {dev:>18.2e}", flush=True)
    return 0


if __name__ == "__main__":
    p = argparse.ArgumentParser(prog="python -m bench.perf_ssim", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    sys.exit(main(p.parse_args()))
