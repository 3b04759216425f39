"""Where a loss term can act, read from the code: the timesteps inference evaluates the model at,
which of them a loss term's gate lets through, how much of training it reaches, and how strongly
its gradient is scaled.

    inference_timesteps(cfg.sample)        # the sampler's evaluation points and the one-step
    read-out term_reach(cfg, "ssim")                # TermReach: gate vs those timesteps, gated
    fraction, ...

Why it exists: an image-space loss (``medq.losses.image_space``) acts only on training samples
whose timestep is at most its ``max_t``, and only through ``weight x grad_scale``. A gate below
every timestep at which a scored output is computed (the Euler sampler's steps,
``medq.models.flow.sampling_schedule``, and the one-step output's ``sample.onestep_t``) cannot shape
those outputs except through what the shared network generalises from the few samples it sees;
that is a property of the configuration, not a measurement, so it is computed here from the same
functions training and inference use.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from medq.config import Config, SampleConfig
from medq.models.flow import sampling_schedule

SAME_T = 1e-6
"""Timesteps closer than this are one (float32 rounding of the sampler's grid)."""
IMAGE_TERMS = ("pixel", "ssim")
"""The image-space loss terms of ``medq.losses.compose_losses``, each with ``<term>_weight`` and
``<term>_max_t`` in ``LossConfig`` (SSIM also ``ssim_grad_scale``)."""


def sampler_timesteps(sample: SampleConfig) -> list[float]:
    """The timesteps at which the Euler sampler evaluates the velocity, largest first: every point
    of ``sampling_schedule(steps, shift)`` but its final 0 (``euler_sample`` steps from ``ts[i]``
    to ``ts[i + 1]`` and never evaluates the model at t = 0)."""
    return [float(t) for t in sampling_schedule(sample.steps, sample.shift)[:-1]]


def inference_timesteps(sample: SampleConfig) -> list[float]:
    """Every timestep at which a scored output evaluates the model, largest first, without
    repeats: the sampler's (``sampler_timesteps``) and the one-step output's ``onestep_t``. The
    sampler's grid is float32, so a value within ``SAME_T`` of another is the same timestep."""
    out: list[float] = []
    for t in sorted([*sampler_timesteps(sample), float(sample.onestep_t)], reverse=True):
        if not out or out[-1] - t > SAME_T:
            out.append(t)
    return out



def gated_fraction(max_t: float, timestep_shift: float) -> float:
    """Probability that a training timestep passes the gate ``t <= max_t``. Training draws
    ``t = shift(sigmoid(z))`` with ``z ~ N(0, 1)`` (``medq.models.flow.sample_timesteps``); the
    shift ``s u / (1 + (s - 1) u)`` is monotone with inverse ``u = t / (s - (s - 1) t)``, so the
    probability is ``Phi(logit(u))``, exactly."""
    if max_t >= 1:
        return 1.0
    if max_t <= 0:
        return 0.0
    s = float(timestep_shift)
    u = max_t / (s - (s - 1) * max_t)
    return 0.5 * math.erfc(-math.log(u / (1 - u)) / math.sqrt(2))


@dataclass(frozen=True)
class TermReach:
    """How far one image-space term of a config reaches (``term_reach``)."""

    term: str
    weight: float
    grad_scale: float
    """The factor SSIM's backward multiplies its gradient by at x0_hat (1 for the pixel term)."""
    gradient_factor: float
    """weight x grad_scale: what the term's gradient is multiplied by before it reaches the
    model (without ``ssim_grad_clamp``, which caps elements instead of scaling them)."""
    max_t: float
    smallest_sampler_t: float
    """The smallest timestep at which the Euler sampler evaluates the model."""
    onestep_t: float
    inference_ts_in_gate: int
    """How many of ``inference_timesteps`` the gate lets through (0: none of the points at which
    a scored output is computed is ever trained by this term)."""
    inference_ts: int
    gated_fraction: float
    """Share of training samples the gate lets through (``gated_fraction``)."""
    samples_reached: float
    """Expected training samples that receive the term's gradient over the run:
    gated_fraction x optim.batch_size x optim.max_steps."""
    samples_trained: int

    @property
    def active(self) -> bool:
        return self.weight > 0

    @property
    def covers_inference(self) -> bool:
        """The gate lets through every timestep at which a scored output is computed."""
        return self.inference_ts_in_gate == self.inference_ts

    def as_dict(self) -> dict:
        return {**asdict(self), "covers_inference": self.covers_inference}


def term_reach(cfg: Config, term: str) -> TermReach:
    """``TermReach`` of the image-space ``term`` ("pixel" or "ssim") of ``cfg``: its gate against
    the timesteps inference uses (``cfg.sample``), its gradient factor and its share of the
    training samples (``cfg.loss.timestep_shift``, ``cfg.optim``)."""
    if term not in IMAGE_TERMS:
        raise ValueError(f"term_reach: term = {term!r}, expected one of {IMAGE_TERMS}")
    loss = cfg.loss
    weight = float(getattr(loss, f"{term}_weight"))
    max_t = float(getattr(loss, f"{term}_max_t"))
    scale = float(loss.ssim_grad_scale) if term == "ssim" else 1.0
    ts = inference_timesteps(cfg.sample)
    fraction = gated_fraction(max_t, loss.timestep_shift)
    trained = cfg.optim.batch_size * cfg.optim.max_steps
    return TermReach(term=term, weight=weight, grad_scale=scale, gradient_factor=weight * scale,
                     max_t=max_t, smallest_sampler_t=min(sampler_timesteps(cfg.sample)),
                     onestep_t=float(cfg.sample.onestep_t),
                     inference_ts_in_gate=sum(t <= max_t for t in ts), inference_ts=len(ts),
                     gated_fraction=fraction, samples_reached=fraction * trained,
                     samples_trained=trained)
