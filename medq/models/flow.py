"""Rectified flow in BAGEL's convention: t = 0 is clean data, t = 1 is pure noise.

    x_t = (1 - t) * x0 + t * eps          v = eps - x0          x0_hat = x_t - t * v_hat

Training timesteps are ``sigmoid(n)``, ``n ~ N(0, 1)`` (logit-normal), then shifted by
``t = s t / (1 + (s - 1) t)``; ``s > 1`` moves mass towards noise. Sampling integrates
``dx/dt = v`` with Euler steps from t = 1 down to t = 0 on a shifted grid (BAGEL: shift 3.0).
"""

from __future__ import annotations

from typing import Callable

import torch

Velocity = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""(x_t (N, C, h, w), t (N,)) -> v_hat (N, C, h, w)."""


def shift_timesteps(t: torch.Tensor, shift: float) -> torch.Tensor:
    """``s t / (1 + (s - 1) t)``: a monotone map of [0, 1] onto itself; shift 1 is the identity."""
    if shift <= 0:
        raise ValueError(f"timestep shift = {shift}: must be > 0")
    return shift * t / (1 + (shift - 1) * t)


def sample_timesteps(n: int, shift: float = 1.0, generator: torch.Generator | None = None,
                     device: torch.device | str = "cpu") -> torch.Tensor:
    """Training timesteps (n,) float32 in (0, 1): logit-normal, then shifted."""
    z = torch.randn(n, generator=generator, device=device)
    return shift_timesteps(torch.sigmoid(z), shift)


def add_noise(
    x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """x0, eps (N, ...), t (N,) -> (x_t, v_target) with x_t = (1 - t) x0 + t eps, v = eps - x0."""
    tt = t.to(x0.dtype).view(-1, *([1] * (x0.dim() - 1)))
    return (1 - tt) * x0 + tt * eps, eps - x0


def sampling_schedule(steps: int, shift: float) -> torch.Tensor:
    """(steps + 1,) timesteps from 1 to 0: a uniform grid mapped by the shift (BAGEL's schedule)."""
    if steps < 1:
        raise ValueError(f"sampling steps = {steps}: must be >= 1")
    return shift_timesteps(torch.linspace(1.0, 0.0, steps + 1), shift)


def euler_sample(velocity: Velocity, noise: torch.Tensor, *, steps: int, shift: float,
                 uncond_velocity: Velocity | None = None, guidance: float = 1.0,
                 guidance_interval: tuple[float, float] = (0.4, 1.0),
                 renorm: bool = True) -> torch.Tensor:
    """Integrate from x_1 = ``noise`` (N, C, h, w) to x_0 with Euler steps; returns x_0.

    With ``guidance > 1`` and ``uncond_velocity`` (the same model with the instruction dropped),
    classifier-free guidance ``v = v_u + g (v_c - v_u)`` is applied for t in ``guidance_interval``
    (BAGEL: (0.4, 1.0]) and, with ``renorm``, rescaled per sample to the conditional velocity's norm
    (BAGEL's "global" cfg renorm) so that large scales do not blow up the latents."""
    ts = sampling_schedule(steps, shift).to(noise.device)
    x = noise
    for i in range(steps):
        t, t_next = ts[i], ts[i + 1]
        tb = t.expand(x.shape[0]).to(x.dtype)
        v = velocity(x, tb)
        lo, hi = guidance_interval
        if guidance > 1.0 and uncond_velocity is not None and lo < float(t) <= hi:
            vu = uncond_velocity(x, tb)
            vg = vu + guidance * (v - vu)
            if renorm:
                dims = tuple(range(1, v.dim()))
                norm_c = torch.linalg.vector_norm(v, dim=dims, keepdim=True)
                norm_g = torch.linalg.vector_norm(vg, dim=dims, keepdim=True).clamp_min(1e-8)
                scale = norm_c / norm_g
                vg = vg * scale.clamp(max=1.0)
            v = vg
        x = x + (t_next - t).to(x.dtype) * v
    return x
