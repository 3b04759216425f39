"""Training our ``SmallVAE`` on the embedded images, and measuring it.

    vae = build_vae(cfg.model)
    metrics = train_vae(vae, train_images, val_images, steps=600, on_step=bar.update)

Objective: MSE in [0, 1] pixel space + ``kl_weight`` * KL(q(z|x) || N(0, I)) with a reparameterised
sample (the tiny KL keeps the latent space smooth for the flow without costing reconstruction).
After training, ``calibrate`` sets the scale/shift buffers so that encoded latents have zero mean
and unit variance over the training images (FLUX's ``scaling_factor``/``shift_factor``).
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F

from medq.metrics import psnr
from medq.models.vae import SmallVAE


@torch.no_grad()
def reconstruction_psnr(vae, images: torch.Tensor, batch_size: int = 32) -> float:
    """Mean per-image PSNR (dB) of ``decode(encode(x))`` clamped to [0, 1]."""
    vals = []
    for i in range(0, images.shape[0], batch_size):
        x = images[i:i + batch_size]
        vals.append(psnr(vae.decode(vae.encode(x)).clamp(0, 1), x))
    return float(torch.cat(vals).mean())


@torch.no_grad()
def calibrate(vae: SmallVAE, images: torch.Tensor, batch_size: int = 64) -> tuple[float, float]:
    """Set ``shift_factor`` = mean and ``scaling_factor`` = 1 / std of the raw latent means over
    ``images``; returns (scale, shift)."""
    means = torch.cat(
        [vae.moments(images[i : i + batch_size])[0] for i in range(0, len(images), batch_size)]
    )
    shift, std = means.mean(), means.std().clamp_min(1e-6)
    vae.shift_factor.fill_(float(shift))
    vae.scaling_factor.fill_(float(1.0 / std))
    return float(1.0 / std), float(shift)


# Keyword options with defaults (train vae's flags).
def train_vae(  # noqa: PLR0913
    vae: SmallVAE,
    train_images: torch.Tensor,
    val_images: torch.Tensor,
    *,
    steps: int = 600,
    batch_size: int = 16,
    lr: float = 2e-3,
    kl_weight: float = 1e-6,
    seed: int = 0,
    on_step: Callable[[int, float], None] | None = None,
) -> dict:
    """Train ``vae`` in place on ``train_images`` (N, 3, H, W) in [0, 1] with random flips,
    AdamW and a cosine learning-rate decay; calibrate; return metrics
    {"psnr_val", "psnr_train", "scaling_factor", "shift_factor", "steps", "final_loss"}."""
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0, betas=(0.9, 0.99))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: min(1.0, (s + 1) / 20) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)),
    )
    vae.train()
    loss_val = float("nan")
    for step in range(steps):
        idx = torch.randint(0, train_images.shape[0], (batch_size,), generator=g)
        x = train_images[idx]
        if torch.rand((), generator=g) < 0.5:
            x = x.flip(-1)
        mean, logvar = vae.moments(x)
        z = mean + torch.exp(0.5 * logvar) * torch.randn(mean.shape, generator=g)
        rec = F.mse_loss(vae.decode_raw(z), x)
        kl = 0.5 * (mean.square() + logvar.exp() - 1 - logvar).mean()
        loss = rec + kl_weight * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        loss_val = float(rec.detach())
        if on_step is not None:
            on_step(step, loss_val)
    vae.eval()
    scale, shift = calibrate(vae, train_images)
    return {"psnr_val": reconstruction_psnr(vae, val_images),
            "psnr_train": reconstruction_psnr(vae, train_images[:64]),
            "scaling_factor": scale, "shift_factor": shift, "steps": steps, "final_loss": loss_val}


def smooth_random_images(n: int, size: int, seed: int = 0) -> torch.Tensor:
    """(n, 3, size, size) smooth random images in [0, 1] (low-frequency noise upsampled), for
    tests and for developing without ``medq.data``."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 3, max(2, size // 8), max(2, size // 8), generator=g)
    return F.interpolate(low, size=(size, size), mode="bicubic", align_corners=False).clamp(0, 1)
