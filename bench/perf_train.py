"""``python -m bench perf train``: training step time per preset, peak memory per decode chunk.

    python -m bench perf train                                # tiny config, pixel / ssim_v3 / mixed
    python -m bench perf train --steps 10 --presets pixel,ssim_v3,mixed,ssim_v1
    python -m bench perf train --full                         # the presets' own model size
    python -m bench perf train --chunks 1,2,4,8 --set optim.batch_size=8
    python -m bench perf train --full --presets pixel,ssim_v3 --chunks ''   # FLOPs, utilisation

Step = the loop's step (losses under autocast, backward, clip, AdamW), median over ``--steps``
after one warm-up step, weights random (init does not change the cost). Target: an ssim_v3 step
costs at most 1.15x a pixel step. The memory table decodes every sample (max_t = 1) so the chunk
size matters: CUDA peak allocated memory, or on CPU the peak of live tensor bytes from the
profiler's allocation and free events during one step.

FLOPs and utilisation: one more step of each preset (as set) runs under
``torch.utils.flop_counter.FlopCounterMode``, which counts matmuls, convolutions and attention,
forward and backward, per module: the transformer (the model), VAE encode and VAE decode. The SSIM
loss is elementwise work the counter does not see, so it is counted analytically
(``SSIM_FLOPS_PER_PIXEL`` per input pixel of every SSIM call in that step). Utilisation = FLOPs per
step / median step time / the calibration GFLOPS (a float32 1024x1024 matmul at the same thread
count, printed in the first line): the fraction of a large matmul's speed the step achieves.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

TARGET_RATIO = 1.15
TARGET_UTILISATION = 0.30
SSIM_FLOPS_PER_PIXEL = 2 * 11 * 2 * 5 + 2 * 11 * 2 * 3 + 3 + 40
"""Our SSIM loss per input pixel (window 11): 5 filtered moments x 2 separable passes x 11 taps
x (mul + add), the backward's 3 derivative maps through the adjoint filter, 3 products, ~40
pointwise for S and its derivatives."""
TINY = ["model.d_model=32", "model.n_layers=1", "model.n_heads=2", "model.tile_size=32",
        "data.image_size=64",
        "model.vae_downsample=4", "model.patch_size=2", "data.num_images=24", "optim.batch_size=4",
        "optim.warmup_steps=0", "optim.max_steps=100"]
SCRATCH = ['init.from=""', "init.scratch=true"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from bench.perf_machine import positive_int, thread_count

    parser.add_argument("--presets", default="pixel,ssim_v3,mixed", help="comma-separated presets")
    parser.add_argument("--steps", type=positive_int(1000, "--steps"), default=5,
                        help="timed steps per preset (after 1 warm-up)")
    parser.add_argument(
        "--chunks",
        default="1,2,4",
        help="loss.decode_chunk values of the memory table ('' skips it)",
    )
    parser.add_argument("--mem-batch", type=positive_int(4096, "--mem-batch"), default=16,
                        help="optim.batch_size of the memory table")
    parser.add_argument(
        "--full", action="store_true", help="the presets' model size, not the tiny one"
    )
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--out-dir", default=None, help="scratch directory (default: a temp dir)")
    parser.add_argument("--threads", type=thread_count, default=None,
                        help="torch threads (default: torch's default)")
    parser.add_argument("--no-flops", action="store_true",
                        help="skip the FLOPs / utilisation table")


def _config(preset: str, args, out_dir: Path, extra=()):
    from medq.config import load_config

    base = [] if args.full else TINY
    overrides = base + SCRATCH + [f"run.out_dir={json.dumps(str(out_dir))}",
                                  f"data.cache_dir={json.dumps(str(out_dir / '_cache'))}"]
    cfg = load_config(preset, overrides=overrides + list(args.overrides) + list(extra))
    return cfg


def ensure_vae(cfg, out_dir: Path) -> list[str]:
    """Overrides pointing model.vae at a usable VAE: the configured one if it exists, else an
    untrained one of the configured shape saved under ``out_dir`` (timing needs no trained VAE)."""
    if Path(cfg.model.vae).exists():
        return []
    from medq.models import build_vae, save_vae

    path = out_dir / "vae"
    if not path.exists():
        save_vae(build_vae(cfg.model), path)
    return [f"model.vae={json.dumps(str(path))}"]


def time_steps(cfg, steps: int, device, *, measure_memory: bool = False,
               count_flops: bool = False):
    """Seconds of each timed training step of ``cfg`` (the loop's step, without bookkeeping); with
    ``measure_memory``, ``(times, peak MiB allocated during one more step)``; with
    ``count_flops``, ``(times, step_flops(...) of one more step)``."""
    import math

    import torch

    from medq.dist import autocast
    from medq.training.task import MiniBagelTask

    torch.manual_seed(cfg.run.seed)
    task = MiniBagelTask(cfg, device)
    params = [p for p in task.model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.optim.lr)
    gen = torch.Generator(device=device).manual_seed(0)
    batches = task.train_batches(0)

    def step():
        with autocast(cfg.optim.amp, device):
            terms, _ = task.losses(next(batches), gen)
        opt.zero_grad(set_to_none=True)
        terms["total"].backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.optim.grad_clip or math.inf)
        opt.step()

    times = []
    for i in range(steps + 1):
        _sync(device)
        t0 = time.perf_counter()
        step()
        _sync(device)
        if i:  # the first step pays one-off allocation and kernel selection
            times.append(time.perf_counter() - t0)
    if measure_memory:
        return times, peak_step_memory(step, device)
    if count_flops:
        return times, step_flops(step, task, min(steps, 3))
    return times


def step_flops(step, task, steps: int = 1) -> dict[str, float]:
    """FLOPs per call of ``step()`` (mean over ``steps`` calls: the max_t gates vary per step) by
    component: {"transformer", "vae encode", "vae decode", "loss (ssim)", "other", "total"};
    forward and backward, see the module docstring."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    import medq.losses.image_space as image_space

    class _Named(torch.nn.Module):  # FlopCounterMode names top-level modules by their class
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, *args, **kwargs):
            return self.inner(*args, **kwargs)

    wrapped = {}
    vae = task.vae
    for attr, label in (("encoder", "vae encode"), ("decoder", "vae decode")):
        inner = getattr(vae, attr, None)
        if isinstance(inner, torch.nn.Module):
            wrapped[attr] = inner
            setattr(vae, attr, type(label.replace(" ", "_"), (_Named,), {})(inner))
    ssim_pixels = []
    real_ssim_loss = image_space.ssim_loss

    def counting_ssim_loss(x, y, **kwargs):
        ssim_pixels.append(x.numel())
        return real_ssim_loss(x, y, **kwargs)

    image_space.ssim_loss = counting_ssim_loss
    try:
        with FlopCounterMode(display=False) as counter:
            for _ in range(steps):
                step()
    finally:
        image_space.ssim_loss = real_ssim_loss
        for attr, inner in wrapped.items():
            setattr(vae, attr, inner)
    counts = {name: sum(ops.values()) / steps for name, ops in counter.get_flop_counts().items()}
    out = {"transformer": counts.get(type(task.model).__name__, 0.0),
           "vae encode": counts.get("vae_encode", 0.0),
           "vae decode": counts.get("vae_decode", 0.0),
           "loss (ssim)": SSIM_FLOPS_PER_PIXEL * sum(ssim_pixels) / steps}
    counted = counts.get("Global", 0.0)
    out["other"] = max(0.0, counted - out["transformer"] - out["vae encode"] - out["vae decode"])
    out["total"] = counted + out["loss (ssim)"]
    return out


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def peak_step_memory(step, device) -> float:
    """Peak MiB allocated by tensors during ``step()`` above what was live before it: CUDA's
    allocator statistics, or on CPU the running sum of the profiler's allocation / free events."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    if device.type == "cuda":
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        step()
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    events = sorted((e.time_range.start, e.self_cpu_memory_usage) for e in prof.events()
                    if e.self_cpu_memory_usage)
    live = peak = 0
    for _, delta in events:
        live += delta
        peak = max(peak, live)
    return peak / 2**20


def _step_times(presets, args, out_dir, vae, device) -> tuple[list[tuple], dict]:
    """(preset, VAE in graph, ms as set, ms all decoded) per preset, and FLOPs per preset."""
    all_decoded = ["loss.pixel_max_t=1.0", "loss.ssim_max_t=1.0"]
    rows, flops = [], {}
    for preset in presets:
        cfg = _config(preset, args, out_dir, vae)
        if args.no_flops:
            t = statistics.median(time_steps(cfg, args.steps, device)) * 1e3
        else:
            times, flops[preset] = time_steps(cfg, args.steps, device, count_flops=True)
            t = statistics.median(times) * 1e3
        t_all = statistics.median(time_steps(_config(preset, args, out_dir, vae + all_decoded),
                                             args.steps, device)) * 1e3
        rows.append((preset, cfg.loss.needs_vae, t, t_all))
    return rows, flops


def _print_step_times(rows, first, args, device) -> None:
    import torch

    base = {r[0]: r for r in rows}.get("pixel")
    size = "full" if args.full else "tiny"
    print(
        f"\nTraining step time ({size} config: d_model={first.model.d_model}, n_layers="
        f"{first.model.n_layers}, tile {first.model.tile_size}px of {first.data.image_size}px "
        f"images, batch "
        f"{first.optim.batch_size}; {device}, {torch.get_num_threads()} threads, median of "
        f"{args.steps} steps). 'as set': the "
        f"preset's max_t gates; 'all decoded': max_t = 1, every sample through the VAE decoder"
    )
    print(f"{'preset':<18}{'VAE in graph':>14}{'ms as set':>11}{'x pixel':>9}{'ms all decoded':>16}"
          f"{'x pixel':>9}")
    for preset, needs_vae, t, t_all in rows:
        r1 = f"{t / base[2]:.2f}" if base else "-"
        r2 = f"{t_all / base[3]:.2f}" if base else "-"
        print(f"{preset:<18}{str(needs_vae):>14}{t:>11.1f}{r1:>9}{t_all:>16.1f}{r2:>9}")
    v3 = {r[0]: r for r in rows}.get("ssim_v3")
    if base and v3:
        for label, i in (("as set", 2), ("all decoded", 3)):
            ratio = v3[i] / base[i]
            verdict = "meets" if ratio <= TARGET_RATIO else "MISSES"
            print(
                f"ssim_v3 / pixel ({label}) = {ratio:.2f}: {verdict} the target <= {TARGET_RATIO}"
            )


def _print_flops(rows, flops, machine, args) -> None:
    print(
        f"\nModel FLOPs per training step (as set, mean of up to 3 steps; forward + backward; "
        f"GFLOP) and utilisation = FLOPs / step time / {machine.gflops:.1f} calibration GFLOPS"
    )
    parts = ("transformer", "vae encode", "vae decode", "loss (ssim)", "other")
    print(f"{'preset':<18}" + "".join(f"{p:>13}" for p in parts)
          + f"{'total':>10}{'ms/step':>9}{'GFLOPS':>8}{'util.':>7}")
    for preset, _needs_vae, t, _ in rows:
        f = flops[preset]
        achieved = f["total"] / (t / 1e3) / 1e9
        print(f"{preset:<18}" + "".join(f"{f[p] / 1e9:>13.3f}" for p in parts)
              + f"{f['total'] / 1e9:>10.3f}{t:>9.1f}{achieved:>8.2f}"
              + f"{achieved / machine.gflops:>6.1%}")
    default = flops.get("ssim_v3") and {r[0]: r for r in rows}["ssim_v3"]
    if default and args.full:
        util = flops["ssim_v3"]["total"] / (default[2] / 1e3) / 1e9 / machine.gflops
        verdict = "meets" if util >= TARGET_UTILISATION else "MISSES"
        print(f"ssim_v3 utilisation {util:.1%}: {verdict} the target >= "
              f"{TARGET_UTILISATION:.0%}")


def _print_memory(chunks, args, out_dir, vae, device) -> None:
    kind = "CUDA allocated" if device.type == "cuda" else "CPU, profiler allocation events"
    print(
        f"\nPeak memory of one step against loss.decode_chunk (ssim_v3, batch "
        f"{args.mem_batch}, "
        f"ssim_max_t = 1: every sample decoded; {kind})"
    )
    print(f"{'decode_chunk':>12}{'peak MiB':>12}{'ms/step':>10}")
    for chunk in chunks:
        extra = vae + [f"loss.decode_chunk={chunk}", "loss.ssim_max_t=1.0",
                       f"optim.batch_size={args.mem_batch}",
                       f"data.num_images={max(24, 2 * args.mem_batch)}"]
        times, peak = time_steps(_config("ssim_v3", args, out_dir, extra), 2, device,
                                 measure_memory=True)
        print(f"{chunk:>12}{peak:>12.1f}{statistics.median(times) * 1e3:>10.1f}")


def main(args) -> int:
    from bench.perf_machine import print_machine
    from medq.dist import pick_device

    machine = print_machine(args.threads)
    tmp = tempfile.TemporaryDirectory(prefix="perf-train-") if args.out_dir is None else None
    out_dir = Path(args.out_dir or tmp.name)
    presets = [p for p in args.presets.split(",") if p]
    first = _config(presets[0], args, out_dir)
    vae = ensure_vae(first, out_dir)
    device = pick_device(first.run.device)
    rows, flops = _step_times(presets, args, out_dir, vae, device)
    _print_step_times(rows, first, args, device)
    if flops:
        _print_flops(rows, flops, machine, args)
    chunks = [int(c) for c in args.chunks.split(",") if c]
    if chunks:
        _print_memory(chunks, args, out_dir, vae, device)
    if tmp is not None:
        tmp.cleanup()
    return 0
