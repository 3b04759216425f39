"""The machine a ``bench perf`` table was measured on, its calibration, and shared flag checks.

Every table starts with ``machine_line()``: CPU model, torch threads, torch version, a ~1 s float32
1024x1024 matmul calibration in GFLOPS (at the table's thread count), a copy bandwidth (memory-
bound kernels scale with it, not with GFLOPS) and the load average. A time measured here scales to
another machine roughly by the ratio of the calibration figures; on a shared machine the figures
drop with the load, which is what makes numbers from different moments comparable.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass

MATMUL_N = 1024
CALIBRATION_SECONDS = 1.0


@dataclass(frozen=True)
class Machine:
    cpu: str
    threads: int
    torch_version: str
    gflops: float
    """float32 MATMUL_N x MATMUL_N matmul throughput at ``threads`` threads."""
    copy_gbs: float
    """bytes read + written per second by a 64 MiB tensor copy."""
    load: tuple[float, float, float]


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo on Linux), else platform.processor()."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def matmul_gflops(seconds: float = CALIBRATION_SECONDS * 0.7) -> float:
    """float32 MATMUL_N^3 matmul GFLOPS (2 n^3 flops per product), repeated for ``seconds``."""
    import torch

    a, b = torch.randn(MATMUL_N, MATMUL_N), torch.randn(MATMUL_N, MATMUL_N)
    out = torch.empty(MATMUL_N, MATMUL_N)
    torch.mm(a, b, out=out)  # warm-up: MKL / oneDNN initialisation
    count, t0 = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - t0) < seconds:
        torch.mm(a, b, out=out)
        count += 1
    return count * 2 * MATMUL_N ** 3 / elapsed / 1e9


def copy_gbs(seconds: float = CALIBRATION_SECONDS * 0.3) -> float:
    """GB/s (read + write) of a 64 MiB float32 tensor copy, repeated for ``seconds``."""
    import torch

    src = torch.ones(16 * 2 ** 20)
    dst = torch.empty_like(src)
    dst.copy_(src)
    count, t0 = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - t0) < seconds:
        dst.copy_(src)
        count += 1
    return count * 2 * src.numel() * 4 / elapsed / 1e9


def measure_machine() -> Machine:
    """Calibrate now (~1 s) at the current torch thread count."""
    import torch

    return Machine(cpu=cpu_model(), threads=torch.get_num_threads(),
                   torch_version=torch.__version__, gflops=matmul_gflops(), copy_gbs=copy_gbs(),
                   load=os.getloadavg() if hasattr(os, "getloadavg") else (0.0, 0.0, 0.0))


def machine_line(m: Machine) -> str:
    """One line naming the machine and its calibration, printed above every perf table."""
    return (f"machine: {m.cpu}, {m.threads} torch threads of {os.cpu_count()} CPUs, "
            f"torch {m.torch_version}; calibration {m.gflops:.1f} GFLOPS (float32 "
            f"{MATMUL_N}x{MATMUL_N} matmul), copy {m.copy_gbs:.1f} GB/s; load average "
            f"{m.load[0]:.2f} {m.load[1]:.2f} {m.load[2]:.2f}")


def print_machine(threads: int | None = None) -> Machine:
    """Set torch's thread count (if given), calibrate, print the machine line; return it."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    m = measure_machine()
    print(machine_line(m), flush=True)
    return m


# --- flag types: nonsense values fail in argparse with a one-line message naming the flag ------

def positive_int(limit: int | None = None, what: str = "a count"):
    """argparse type: an integer in [1, limit]."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer ({what})") from None
        if value < 1 or (limit is not None and value > limit):
            bound = f"1..{limit}" if limit is not None else ">= 1"
            raise argparse.ArgumentTypeError(f"{value} is out of range: {what} must be {bound}")
        return value
    return parse


def thread_count(text: str) -> int:
    """argparse type: torch threads, 1..os.cpu_count() (more only oversubscribes the cores)."""
    return positive_int(os.cpu_count() or 1, "torch threads (at most the CPU count)")(text)


# --- a busy core -------------------------------------------------------------------------------

BUSY_LOOP = "import time\nwhile True:\n    pass\n"


@contextlib.contextmanager
def busy_core(enabled: bool = True):
    """Keep one core busy with a spinning Python process for the duration (the 'under load'
    measurement); the process is ended (by its pid) on exit, also on errors or Ctrl-C."""
    if not enabled:
        yield None
        return
    proc = subprocess.Popen([sys.executable, "-c", BUSY_LOOP], stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.2)  # let it get scheduled before the calibration sees the machine
        yield proc
    finally:
        proc.kill()
        proc.wait()
