"""The loss composer: weights the named terms of the training objective.

    total = ce_weight * ce + mse_weight * mse + prior_weight * prior
            + pixel_weight * pixel + ssim_weight * ssim

``prior`` (only for a model with a prior net, ``model.prior_conv_channels``): the latent MSE of
the sharpened condition against the target latent, the regression loss of ResDiff's prior.

A term whose weight is 0 is neither computed nor returned (so no VAE decode happens unless
``LossConfig.needs_vae``); every returned term is unweighted and 0-dim, ready to log.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from medq.config import LossConfig
from medq.losses.image_space import Decode, ImageTerm, image_space_loss_from_x0

RELATIVE_FLOOR = 1e-3
"""Smallest condition error (latent MSE) a relative prior error is divided by."""


class LossTerms(dict):
    """``dict[str, Tensor]`` of 0-dim terms (``ce``, ``mse``, ``prior``, ``pixel``, ``ssim``,
    ``total``) plus the attribute ``x0_hat`` (N, C, h, w): the shared activation of the image-space
    terms, for ``gradient_probe``. Kept out of the dict so that every value is a loggable scalar."""

    x0_hat: torch.Tensor


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean token cross-entropy in float32; logits (B, T, V), targets (B, T), -100 = ignore.
    With no target token at all it is an exact zero connected to ``logits`` (never NaN)."""
    if logits.shape[:2] != targets.shape:
        raise ValueError(f"cross_entropy: text_logits {tuple(logits.shape)} and text_targets "
                         f"{tuple(targets.shape)} disagree on (B, T)")
    flat = targets.reshape(-1)
    count = (flat != -100).sum()
    total = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), flat,
                            ignore_index=-100, reduction="sum")
    return total / count.clamp_min(1).to(total.dtype)


def compose_losses(loss_cfg: LossConfig, fwd: Any, batch: dict, decode: Decode | None
                   ) -> LossTerms:
    """Named loss terms of one training step.

    ``fwd``: text_logits (B, T, V), text_targets (B, T), v_hat, v_target, x_t (N, C, h, w) latents,
    t (N,). ``batch``: "target" (N, 3, H, W) in [0, 1], "mask" (N, 1, H, W) (used by SSIM when
    ``ssim_masked``), "target_size" LongTensor (N, 2). ``decode``: latents (K, C, h, w) -> images
    (K, 3, H, W), required when ``loss_cfg.needs_vae``. MSE is the mean over latent elements
    (float32);
    pixel and SSIM follow ``image_space_loss_from_x0`` (mean over kept samples).
    """
    terms = LossTerms()
    x0_hat = fwd.x_t - fwd.t.to(fwd.x_t.dtype).view(-1, 1, 1, 1) * fwd.v_hat
    terms.x0_hat = x0_hat
    weighted = []
    if loss_cfg.ce_weight > 0:
        terms["ce"] = cross_entropy(fwd.text_logits, fwd.text_targets)
        weighted.append(loss_cfg.ce_weight * terms["ce"])
    if loss_cfg.mse_weight > 0:
        terms["mse"] = F.mse_loss(fwd.v_hat.float(), fwd.v_target.float())
        weighted.append(loss_cfg.mse_weight * terms["mse"])
    prior = getattr(fwd, "prior", None)
    if loss_cfg.prior_weight > 0 and prior is not None:
        err = (prior.float() - fwd.x0.float()).pow(2).flatten(1).mean(1)
        if loss_cfg.prior_relative:
            # Each sample's error relative to the condition's own: sr2's small residual counts as
            # much as enhance's large colour correction. The floor keeps a tile with almost
            # nothing to correct (the black surround) from outweighing the rest of the batch.
            base = (fwd.cond.float() - fwd.x0.float()).pow(2).flatten(1).mean(1)
            err = err / base.clamp_min(RELATIVE_FLOOR)
        terms["prior"] = err.mean()
        weighted.append(loss_cfg.prior_weight * terms["prior"])
    if loss_cfg.needs_vae:
        if decode is None:
            raise ValueError(
                f"compose_losses: pixel_weight = {loss_cfg.pixel_weight} / ssim_weight "
                f"= {loss_cfg.ssim_weight} need a VAE decode function, got None"
            )
        for key in ("target", "target_size"):
            if key not in batch:
                raise KeyError(f"compose_losses: batch has no {key!r} (keys: {sorted(batch)})")
        # The rendered image: decode(x0_hat) + the pixel-residual offset when the forward has one.
        common = {"target_size": batch["target_size"],
                  "offset": getattr(fwd, "render_offset", None)}
        if loss_cfg.pixel_weight > 0:
            pixel = ImageTerm(loss_cfg.pixel_kind, loss_cfg.pixel_max_t, loss_cfg.decode_chunk)
            terms["pixel"] = image_space_loss_from_x0(x0_hat, fwd.t, batch["target"], decode,
                                                      pixel, **common)
            weighted.append(loss_cfg.pixel_weight * terms["pixel"])
        if loss_cfg.ssim_weight > 0:
            mask = None
            if loss_cfg.ssim_masked:
                if "mask" not in batch:
                    raise KeyError("compose_losses: loss.ssim_masked = true but the batch has no "
                                   "'mask' (set loss.ssim_masked = false to average the full map)")
                mask = batch["mask"]
            ssim = ImageTerm("ssim", loss_cfg.ssim_max_t, loss_cfg.decode_chunk,
                             grad_scale=loss_cfg.ssim_grad_scale,
                             grad_clamp=loss_cfg.ssim_grad_clamp,
                             ssim_window=loss_cfg.ssim_window, ssim_sigma=loss_cfg.ssim_sigma)
            terms["ssim"] = image_space_loss_from_x0(x0_hat, fwd.t, batch["target"], decode,
                                                     ssim, mask=mask, **common)
            weighted.append(loss_cfg.ssim_weight * terms["ssim"])
    if weighted:
        terms["total"] = torch.stack([w.float() for w in weighted]).sum()
    else:
        terms["total"] = fwd.v_hat.float()[:0].sum()
    return terms
