"""``python -m train probe``: how hard each loss term pulls on the model at the start of a
fine-tune.

    python -m train probe --preset pixel                    # the measurement behind pixel_weight
    python -m train probe --preset ssim_v1 --batches 16     # v1's imbalance (original: 200-2000x)
    python -m train probe --preset mixed --set loss.pixel_kind=l1
    python -m train probe --preset ssim_matched --match ssim:pixel   # ssim_matched's grad scale

Loads the preset's init weights exactly as training would (strictly verified; the base model's EMA
for every fine-tune preset), runs ``--batches`` training batches without updating anything, and
prints, for every loss term at weight 1 (SSIM's grad scale and clamp included, they act in its
backward), the gradient norm it sends into ``v_hat`` (the predicted velocity: the one activation
every image term *and* the latent MSE reach, so their ratio is meaningful there) and into the
backbone's last hidden state (what v1's SSIM gradient corrupted). Medians over the batches in which
the term is active (an image term is gated by its ``max_t``, so some batches have none).

The last lines give the weight that makes each image term's median gradient at ``v_hat`` equal to
the latent MSE term's: how ``configs/pixel.toml``'s ``pixel_weight`` was chosen (docs/RESULTS.md).

``--match A:B`` (A an image term, B another term): measure A as the preset sets it beside B as the
reference preset sets it (``--reference``, default the preset named B, e.g. ``pixel``; for B =
mse the measured preset), both on the same forward passes
(``medq.pulls.loss_variant_norms``), and print the factor on A (its weight; for SSIM its grad
scale, at the preset's weight) that makes A's median pull at ``v_hat`` equal to B's at B's
weight: how ``configs/ssim_matched.toml``'s ``ssim_grad_scale`` is chosen. Nothing is written.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import statistics


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default="pixel", help="preset to measure (default pixel)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--with", dest="overlays", action="append", default=[], metavar="OVERLAY")
    p.add_argument(
        "--batches", type=int, default=24, help="training batches to measure (default 24, >= 1)"
    )
    p.add_argument("--match", metavar="A:B",
                   help="print the factor on image term A (ssim: its grad scale; pixel: its "
                        "weight) that equalises its pull at v_hat with term B's (pixel, ssim or "
                        "mse), e.g. ssim:pixel")
    p.add_argument("--reference", metavar="PRESET",
                   help="with --match: the preset whose B term (weight, gate, kind) is the "
                        "reference (default: the preset named B, or the measured one for mse)")


MATCH_TERMS = ("pixel", "ssim")
REFERENCE_TERMS = ("pixel", "ssim", "mse")


def parse_match(text: str) -> tuple[str, str]:
    """``"ssim:pixel"`` -> ("ssim", "pixel"); a one-line SystemExit naming what is expected."""
    a, sep, b = str(text).partition(":")
    if not sep or a not in MATCH_TERMS or b not in REFERENCE_TERMS or a == b:
        raise SystemExit(f"--match {text!r}: expected A:B with A one of {', '.join(MATCH_TERMS)} "
                         f"and B another of {', '.join(REFERENCE_TERMS)}, e.g. ssim:pixel")
    return a, b


def match_loss(loss, reference, a: str, b: str):
    """The loss config measured for ``--match a:b``: the preset's (with term ``a`` as set), with
    ``reference``'s settings of term ``b`` (weight, gate, kind)."""
    if getattr(loss, f"{a}_weight") <= 0:
        raise SystemExit(f"--match {a}:{b}: the preset has loss.{a}_weight = 0; nothing to match")
    if a == "ssim" and loss.ssim_grad_clamp > 0:
        raise SystemExit(f"--match {a}:{b}: loss.ssim_grad_clamp = {loss.ssim_grad_clamp} makes "
                         f"the pull non-linear in the grad scale; measure with the clamp at 0")
    if b == "mse":
        return loss
    keys = [f.name for f in dataclasses.fields(loss) if f.name.startswith(f"{b}_")]
    return dataclasses.replace(loss, **{k: getattr(reference, k) for k in keys})


def measure(task, batches: int, seed: int = 0, loss=None) -> dict[str, dict[str, list[float]]]:
    """{where: {term: [norm per batch where the term is active]}} at unit weights, of the task's
    loss config or ``loss`` (``medq.pulls.loss_variant_norms``)."""
    from medq.pulls import loss_variant_norms

    variant = {"measured": loss if loss is not None else task.cfg.loss}
    return loss_variant_norms(task, variant, batches, seed=seed,
                              wheres=("v_hat", "hidden"))["measured"]


def print_match(norms, loss, a: str, b: str, reference_name: str) -> None:
    """The factor on term ``a`` that equalises its median pull at v_hat with ``b``'s at ``b``'s
    weight in ``loss`` (``medq.pulls.equal_pull_factor``)."""
    from medq.pulls import equal_pull_factor

    for where in ("v_hat", "hidden"):
        got = norms.get(where, {})
        factor = equal_pull_factor(got.get(a, []), got.get(b, []), getattr(loss, f"{b}_weight"))
        ref = f"{b} at weight {getattr(loss, f'{b}_weight'):g} ({reference_name})"
        if math.isnan(factor):
            print(f"match at {where}: n/a ({a} or {b} never acted in the measured batches)")
        elif a == "ssim":
            scale = factor * loss.ssim_grad_scale / loss.ssim_weight
            print(f"match at {where}: ssim_grad_scale for equal pull with {ref}: {scale:.4g} at "
                  f"ssim_weight {loss.ssim_weight:g} (preset has {loss.ssim_grad_scale:g})")
        else:
            print(f"match at {where}: {a}_weight for equal pull with {ref}: "
                  f"{factor * getattr(loss, f'{a}_weight'):.4g} "
                  f"(preset has {getattr(loss, f'{a}_weight'):g})")


def main(args) -> int:
    from medq.config import ConfigError, load_config
    from medq.dist import pick_device
    from medq.models import CheckpointMismatchError
    from medq.training.task import MiniBagelTask

    if args.batches < 1:
        raise SystemExit(f"--batches {args.batches}: must be >= 1")
    match = parse_match(args.match) if args.match else None
    try:
        cfg = load_config(args.preset, overrides=args.overrides, overlays=args.overlays)
        if match:
            ref_name = args.reference or (args.preset if match[1] == "mse" else match[1])
            reference = load_config(ref_name).loss
            loss = match_loss(cfg.loss, reference, *match)
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
    measured = loss if match else cfg.loss
    norms = measure(task, args.batches, seed=cfg.run.seed, loss=measured)
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
                  f"(preset has {getattr(measured, k + '_weight')})")
    if match:
        print_match(norms, loss, *match, ref_name)
    return 0
