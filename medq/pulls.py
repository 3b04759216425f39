"""How hard each loss term pulls on the model: gradient norms of the unweighted terms at the
activations they share, for several loss settings on the very same forward passes.

    norms = loss_variant_norms(task, {"as set": cfg.loss, "raw": raw_loss}, batches=8)
    norms["raw"]["x0_hat"]["ssim"]             # [|grad| per batch where the term is active]
    equal_pull_factor(norms["m"]["v_hat"]["ssim"], norms["m"]["v_hat"]["pixel"], 100.0)

Activations (``MiniBagelTask.losses`` names them): ``x0_hat``, the predicted clean latent, i.e.
the VAE decoder's input (every image-space term enters the model there; the latent MSE does not
pass through it); ``v_hat``, the predicted velocity (the one point every image term *and* the
latent MSE reach, so their ratios are comparable there); ``hidden``, the backbone's last hidden
state (what the original's SSIM v1 gradient corrupted).

Why variants on one forward: a ratio of two terms measured on different batches mixes the terms'
difference with the batches' (their timesteps decide which samples an image term's gate lets
through). Here every variant's terms are composed from the same ``training_forward`` output, so a
ratio compares the terms alone. Each term is measured at weight 1; SSIM's ``grad_scale`` and
``grad_clamp`` act inside its backward and are included.
"""

from __future__ import annotations

import statistics
from typing import Mapping, Sequence

import torch

from medq.config import LossConfig

WHERES = ("x0_hat", "v_hat", "hidden")

Norms = dict[str, dict[str, list[float]]]
"""{where: {term: [gradient norm per batch in which the term is active]}}."""


def loss_variant_norms(task, variants: Mapping[str, LossConfig], batches: int, *, seed: int = 0,
                       wheres: Sequence[str] = WHERES) -> dict[str, Norms]:
    """{variant: Norms} of every loss term of every ``variants`` entry (a ``LossConfig``), at
    weight 1, over the first ``batches`` training batches of ``task`` (``MiniBagelTask``: its
    model, VAE, tokenizer and ``train_batches``). Nothing is updated (parameters' ``.grad`` stay
    untouched). A term with zero gradient in a batch (an image term whose gate kept no sample) is
    left out of that batch's list, so each list holds the batches where the term acts."""
    from medq.losses import compose_losses, gradient_probe
    from medq.models import training_forward

    if batches < 1:
        raise ValueError(f"loss_variant_norms: batches = {batches}, expected >= 1")
    bad = [w for w in wheres if w not in WHERES]
    if bad:
        raise ValueError(f"loss_variant_norms: unknown activation {bad[0]!r}; expected {WHERES}")
    cfg = task.cfg
    decode = task.vae.decode
    gen = torch.Generator(device=task.device).manual_seed(seed)
    out: dict[str, Norms] = {name: {} for name in variants}
    task.model.train()
    for _, batch in zip(range(batches), task.train_batches(0)):
        fwd = training_forward(task.model, task.vae, task.tokenizer, batch,
                               timestep_shift=cfg.loss.timestep_shift, generator=gen,
                               instruction_dropout=cfg.loss.instruction_dropout,
                               with_render_offset=any(v.needs_vae for v in variants.values()))
        for name, loss_cfg in variants.items():
            terms = compose_losses(loss_cfg, fwd, batch, decode if loss_cfg.needs_vae else None)
            named = {k: v for k, v in terms.items() if k != "total" and v.requires_grad}
            acts = {"x0_hat": terms.x0_hat, "v_hat": fwd.v_hat, "hidden": fwd.hidden}
            for where in wheres:
                for term, s in gradient_probe(acts[where], named).items():
                    if float(s["norm"]) > 0:
                        out[name].setdefault(where, {}).setdefault(term, []).append(
                            float(s["norm"]))
        task.model.zero_grad(set_to_none=True)
    return out


def median_pull(norms: Sequence[float]) -> float:
    """The median of a term's per-batch norms (NaN when it never acted)."""
    return statistics.median(norms) if len(norms) else float("nan")


def equal_pull_factor(term: Sequence[float], reference: Sequence[float],
                      reference_weight: float) -> float:
    """The factor by which ``term``'s gradient must be multiplied so that its median pull equals
    ``reference``'s at ``reference_weight``: ``reference_weight * median(reference) /
    median(term)``. The gradient is linear in a term's weight and in SSIM's grad scale (not in
    its clamp), so the factor goes onto either. NaN when either never acted."""
    a, b = median_pull(term), median_pull(reference)
    if not (a > 0) or not (b == b):
        return float("nan")
    return float(reference_weight) * b / a
