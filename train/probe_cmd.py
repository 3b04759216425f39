"""``python -m train probe``: how hard each loss term pulls on the model at the start of a
fine-tune.

    python -m train probe --preset pixel                    # the measurement behind pixel_weight
    python -m train probe --preset ssim_v1 --batches 16     # v1's imbalance (original: 200-2000x)
    python -m train probe --preset mixed --set loss.pixel_kind=l1

Loads the preset's init weights exactly as training would (strictly verified; the base model's EMA
for every fine-tune preset), runs ``--batches`` training batches without updating anything, and
prints, for every loss term at weight 1 (SSIM's grad scale and clamp included, they act in its
backward), the gradient norm it sends into ``v_hat`` (the predicted velocity: the one activation
every image term *and* the latent MSE reach, so their ratio is meaningful there) and into the
backbone's last hidden state (what v1's SSIM gradient corrupted). Medians over the batches in which
the term is active (an image term is gated by its ``max_t``, so some batches have none).

The last lines give the weight that makes each image term's median gradient at ``v_hat`` equal to
the latent MSE term's: how ``configs/pixel.toml``'s ``pixel_weight`` was chosen (README).
Nothing is written.
"""

from __future__ import annotations

import argparse
import math
import statistics

import torch


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default="pixel", help="preset to measure (default pixel)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--with", dest="overlays", action="append", default=[], metavar="OVERLAY")
    p.add_argument(
        "--batches", type=int, default=24, help="training batches to measure (default 24, >= 1)"
    )


def measure(task, batches: int, seed: int = 0) -> dict[str, dict[str, list[float]]]:
    """{where: {term: [norm per batch where the term is active]}} at unit weights."""
    from medq.losses import gradient_probe

    gen = torch.Generator(device=task.device).manual_seed(seed)
    task.model.train()
    out: dict[str, dict[str, list[float]]] = {}
    for _, batch in zip(range(batches), task.train_batches(0)):
        terms, acts = task.losses(batch, gen)
        named = {k: v for k, v in terms.items() if k != "total" and v.requires_grad}
        for where in ("v_hat", "hidden"):
            stats = gradient_probe(acts[where], named)
            for name, s in stats.items():
                if float(s["norm"]) > 0:
                    out.setdefault(where, {}).setdefault(name, []).append(float(s["norm"]))
        task.model.zero_grad(set_to_none=True)
    return out


def main(args) -> int:
    from medq.config import ConfigError, load_config
    from medq.dist import pick_device
    from medq.models import CheckpointMismatchError
    from medq.training.task import MiniBagelTask

    if args.batches < 1:
        raise SystemExit(f"--batches {args.batches}: must be >= 1")
    try:
        cfg = load_config(args.preset, overrides=args.overrides, overlays=args.overlays)
    except ConfigError as e:
        raise SystemExit(f"config error: {e}") from None
    if cfg.init.scratch:
        print(f"note: preset {args.preset!r} starts from random weights (init.scratch)")
    try:
        device = pick_device(cfg.run.device)
    except ValueError as e:  # medq.dist.DeviceError: cuda without a GPU
        raise SystemExit(f"error: {e}") from None
    try:  # the init weights and the VAE, as training would load them
        task = MiniBagelTask(cfg, device, write_init=False)
    except (FileNotFoundError, CheckpointMismatchError) as e:
        raise SystemExit(f"error: {e}") from None
    print(f"init: {task.init_info['weights']} weights"
          + ("" if cfg.init.scratch else f" of {task.init_info['checkpoint']}")
          + f"; {args.batches} batches of {cfg.optim.batch_size}; norms at weight 1 (medians)")
    norms = measure(task, args.batches, seed=cfg.run.seed)
    med = {w: {k: statistics.median(v) for k, v in terms.items()} for w, terms in norms.items()}
    names = sorted({k for terms in norms.values() for k in terms})
    print(f"{'term':8s} {'active':>7s} {'|grad| at v_hat':>16s} {'|grad| at hidden':>17s}")
    for k in names:
        n = len(norms.get("v_hat", {}).get(k, []))
        v = med.get("v_hat", {}).get(k, math.nan)
        h = med.get("hidden", {}).get(k, math.nan)
        print(f"{k:8s} {n:4d}/{args.batches:<2d} {v:16.4g} {h:17.4g}")
    mse = med.get("v_hat", {}).get("mse")
    for k in ("pixel", "ssim"):
        if mse and k in med.get("v_hat", {}):
            ratio = med["v_hat"][k] / mse
            print(f"{k}/mse at v_hat: {ratio:.4g} -> {k}_weight for equal pull: {1 / ratio:.4g} "
                  f"(preset has {getattr(cfg.loss, k + '_weight')})")
    return 0
