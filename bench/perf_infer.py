"""``python -m bench perf infer``: the inference harness's images per second and its utilisation.

    python -m bench perf infer                          # default config, random weights, 16 images
    python -m bench perf infer --run runs/ssim_v3-ab12cd34 --images 32 --batch-size 8
    python -m bench perf infer --no-text --threads 1 --tiny   # image editing only, a smoke run
    python -m bench perf infer --run weights/base --size 512 --images 2 --batch-size 1 \
        --output onestep                                 # one 512-px image's one-step estimate

The harness (``medq.harness.run_harness``, as ``bench eval`` calls it: batches of
``--batch-size``, per-image seeds, PNGs and records written) runs over ``--images`` test-split
samples into a scratch directory, once as a warm-up on one batch, then timed. Without ``--run``
the model is the default config (``configs/ssim_v3.toml``) with random weights and an untrained
VAE of the configured shape: the cost of sampling does not depend on the weights (the report's
length is capped by ``sample.max_new_tokens``; random weights rarely stop earlier).
FLOPs per image: one more batch under ``torch.utils.flop_counter.FlopCounterMode`` (matmuls,
convolutions, attention; Euler steps, VAE encode / decode, report tokens). Utilisation = FLOPs per
image x images per second / the calibration GFLOPS of the first line.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from bench.perf_machine import positive_int, print_machine, thread_count


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", type=Path, default=None,
                        help="a run directory to load (default: random weights, default config)")
    parser.add_argument("--images", type=positive_int(10000, "--images"), default=16,
                        help="timed test samples (default 16)")
    parser.add_argument("--batch-size", type=positive_int(1024, "--batch-size"), default=8,
                        help="harness batch size (default 8, as bench eval)")
    parser.add_argument("--no-text", action="store_true", help="skip report generation")
    parser.add_argument("--tiny", action="store_true",
                        help="the tiny test model of bench perf train (a smoke run)")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="config override (without --run)")
    parser.add_argument("--size", type=positive_int(4096, "--size"), default=None,
                        help="working size in px (data.image_size; default: the config's); "
                             "images are sampled tile by tile at this size")
    parser.add_argument("--output", choices=["sample", "onestep"], default="sample",
                        help="the Euler sample (default) or the one-step estimate")
    parser.add_argument("--threads", type=thread_count, default=None,
                        help="torch threads (default: torch's default)")


def _model_and_config(args, scratch: Path):
    """(ImageTextModel, Config) of ``--run``, or the default config with random weights."""
    if args.run is not None:
        from medq.harness.load import load_run

        model, _, info = load_run(args.run, output=args.output, overrides=_size(args))
        return model, info["config"]
    import torch

    from bench.perf_train import SCRATCH, TINY, ensure_vae
    from medq.config import load_config
    from medq.models import MiniBagelAdapter
    from medq.training.task import MiniBagelTask

    base = (TINY if args.tiny else []) + SCRATCH + [
        f"run.out_dir={json.dumps(str(scratch))}",
        f"data.cache_dir={json.dumps(str(scratch / '_cache'))}"] + list(args.overrides) \
        + _size(args)
    cfg = load_config("ssim_v3", overrides=base)
    cfg = load_config("ssim_v3", overrides=base + ensure_vae(cfg, scratch))
    torch.manual_seed(0)
    task = MiniBagelTask(cfg, torch.device("cpu"), write_init=False)
    model = MiniBagelAdapter(task.model.eval(), task.vae, task.tokenizer, cfg.sample,
                             name="random-weights", output=args.output)
    return model, cfg


def _size(args) -> list[str]:
    return [] if args.size is None else [f"data.image_size={args.size}"]


def _items(cfg, n: int) -> list[dict]:
    from medq.data import build_dataset

    ds = build_dataset(cfg.data, "test")
    if len(ds) == 0:
        raise SystemExit("bench perf infer: the test split is empty (data.num_images too small?)")
    return [ds[i % len(ds)] | {"id": f"{i}"} for i in range(n)]


def main(args) -> int:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from medq.harness import run_harness

    machine = print_machine(args.threads)
    if args.run is not None and not args.run.is_dir():
        print(f"bench perf infer: --run {args.run} is not a directory", flush=True)
        return 2
    if args.run is not None and args.overrides:
        print("bench perf infer: --set applies to the random-weights model only; the run's "
              "config is used with --run", flush=True)
        return 2
    with tempfile.TemporaryDirectory(prefix="perf-infer-") as tmp:
        scratch = Path(tmp)
        model, cfg = _model_and_config(args, scratch)
        items = _items(cfg, args.images + args.batch_size)
        timed, extra = items[:args.images], items[args.images:]

        def harness(batch, name):
            run_harness(model, batch, scratch / name, seed=cfg.sample.seed,
                        batch_size=args.batch_size, text=not args.no_text, progress=False)

        with torch.inference_mode():
            harness(extra, "warmup")
            t0 = time.perf_counter()
            harness(timed, "timed")
            seconds = time.perf_counter() - t0
            with FlopCounterMode(display=False) as counter:
                harness(extra, "flops")
    per_image = counter.get_total_flops() / len(extra)
    rate = len(timed) / seconds
    achieved = per_image * rate / 1e9
    text = "no text" if args.no_text else f"reports up to {cfg.sample.max_new_tokens} tokens"
    how = (f"{cfg.sample.steps} Euler steps" if args.output == "sample" else
           f"one-step estimate, {cfg.sample.onestep_draws} draws")
    print(f"Inference harness ({model.name}; image {cfg.data.image_size}px, tile "
          f"{cfg.model.tile_size}px, d_model "
          f"{cfg.model.d_model}, {cfg.model.n_layers} layers; {how}, "
          f"{text}; batch {args.batch_size}; {len(timed)} images)")
    print(f"{'images/s':>9}{'s/image':>9}{'GFLOP/image':>13}{'GFLOPS':>8}{'util.':>7}")
    print(f"{rate:>9.2f}{1 / rate:>9.3f}{per_image / 1e9:>13.3f}{achieved:>8.2f}"
          f"{achieved / machine.gflops:>7.1%}")
    return 0
