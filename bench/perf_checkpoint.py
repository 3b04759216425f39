"""``python -m bench perf checkpoint``: what the per-file sha256 of a training checkpoint costs.

    python -m bench perf checkpoint                        # 3, 14 and 300 MB checkpoints
    python -m bench perf checkpoint --sizes-mb 14 --repeats 9 --dir /data/runs

A checkpoint of each size is written with ``medq.checkpoint.save_checkpoint`` in the proportions of
a real one (model and EMA weights a quarter each, ``optim.pt``'s two Adam moments half; the default
model's checkpoint is ~14 MB) into a temporary directory under ``--dir`` (the file system the runs
live on matters). Columns, median of ``--repeats`` in ms: the whole save and, of it, hashing every
file (the files were just written, so they are read from the page cache); the whole
``verify_checkpoint`` (structure, then content) and, of it, the content hashes. A resume after a
reboot reads the files from disk instead: add the file size over the disk's read speed.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    from bench.perf_machine import positive_int

    p.add_argument("--sizes-mb", type=positive_int(4096, "--sizes-mb"), nargs="+",
                   default=[3, 14, 300], help="checkpoint sizes in MB")
    p.add_argument("--repeats", type=positive_int(100, "--repeats"), default=5)
    p.add_argument("--dir", type=Path, default=None,
                   help="where the temporary checkpoints go (default: the system temp dir)")


def _writers(size_mb: int) -> dict:
    import torch
    from safetensors.torch import save_file

    quarter = max(1, size_mb * 2 ** 20 // 16)  # float32 elements in a quarter of the size
    weights = {"w": torch.randn(quarter)}
    moments = {"exp_avg": torch.randn(quarter), "exp_avg_sq": torch.rand(quarter)}
    return {"model": lambda d: save_file(weights, str(d / "model.safetensors")),
            "ema": lambda d: save_file(weights, str(d / "ema.safetensors")),
            "optim": lambda d: torch.save(moments, d / "optim.pt")}


def _ms(seconds: list[float]) -> float:
    return 1000 * statistics.median(seconds)


def measure(root: Path, size_mb: int, repeats: int) -> dict[str, float]:
    """Median ms of a save, its hashing, a verify and its content pass for one size."""
    from medq.checkpoint import recorded_hashes, save_checkpoint, verify_checkpoint
    from medq.files import sha256_file

    writers, times = _writers(size_mb), {"save": [], "hash": [], "verify": [], "content": []}
    for k in range(repeats):
        t = time.perf_counter()
        ckpt = save_checkpoint(root, k, writers, {})
        times["save"].append(time.perf_counter() - t)
        t = time.perf_counter()
        digests = {p.name: sha256_file(p) for p in ckpt.iterdir()}
        times["hash"].append(time.perf_counter() - t)
        t = time.perf_counter()
        verify_checkpoint(ckpt)
        times["verify"].append(time.perf_counter() - t)
        t = time.perf_counter()
        assert all(sha256_file(ckpt / n) == d for n, d in recorded_hashes(ckpt).items())
        times["content"].append(time.perf_counter() - t)
        assert digests
    size = sum(p.stat().st_size for p in ckpt.iterdir()) / 2 ** 20
    return {"MiB": size, **{k: _ms(v) for k, v in times.items()}}


def main(args) -> int:
    from bench.perf_machine import print_machine

    print_machine(1)
    print(f"{'size MiB':>9} {'save ms':>8} {'of it hash':>11} {'verify ms':>10} "
          f"{'of it content':>14}")
    for size_mb in args.sizes_mb:
        with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
            r = measure(Path(tmp), size_mb, args.repeats)
        print(f"{r['MiB']:>9.1f} {r['save']:>8.1f} {r['hash']:>11.1f} {r['verify']:>10.1f} "
              f"{r['content']:>14.1f}")
    return 0
