"""Exponential moving average of a model's trainable weights (the weights fine-tunes start from).

    ema = EMA(model, decay=0.995, warmup=True)
    ema.update(model)            # after each optimizer step that was taken
    ema.state_dict()             # a full state dict of the model, EMA values for trainable tensors
    ema.num_updates = step       # after a resume (with warm-up): where the warm-up stands

Warm-up (``warmup=True``): update n (0-based) uses decay ``min(decay, (1 + n) / (10 + n))``
(the schedule of TensorFlow's ExponentialMovingAverage ``num_updates`` and timm's ModelEmaV2), so
the shadow forgets the starting weights quickly: without it, after 300 updates at 0.995 the
scored weights are still 22 % (0.995^300) the initial ones; with it, under 1e-4 %.
``warmup_weight_of_start(300, 0.995)`` computes that share. The count is not part of
``state_dict`` (which keeps the model's exact keys): a trainer that resumes sets
``num_updates`` to the step it resumes at; without that, a restored shadow is treated as past
its warm-up.

``state_dict()`` holds every key of ``model.state_dict()`` (frozen parameters and buffers copied
as they are), so an EMA snapshot loads with the same strict key check as the raw weights.

Under FSDP (``run.fsdp``) the parameters are sharded DTensors and so is the shadow: each rank
averages its own shard. ``state_dict()`` then returns DTensors (the trainer gathers them into full
tensors before writing), and ``load_state_dict`` takes full tensors and keeps this rank's shard.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.distributed.tensor import DTensor, distribute_tensor

WARMUP_DONE = 10**9
"""``num_updates`` of a shadow whose warm-up is over (a restored one, by default)."""


def warmup_decay(decay: float, num_updates: int) -> float:
    """Decay of update ``num_updates`` (0-based) with warm-up: min(decay, (1 + n) / (10 + n))."""
    return min(decay, (1.0 + num_updates) / (10.0 + num_updates))


def warmup_weight_of_start(steps: int, decay: float, warmup: bool = True) -> float:
    """Share of the starting weights left in the shadow after ``steps`` updates: the product of
    the decays (0.995^300 = 0.22 without warm-up)."""
    w = 1.0
    for n in range(steps):
        w *= warmup_decay(decay, n) if warmup else decay
    return w


class EMA:
    """shadow = decay * shadow + (1 - decay) * param, for parameters with ``requires_grad``.

    The shadow is kept in float32 whatever the parameter dtype: with decay 0.9999 a bf16 shadow
    would round every update away."""

    def __init__(self, model: nn.Module, decay: float, warmup: bool = False):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay = {decay!r}: must be in [0, 1)")
        self.decay = decay
        self.warmup = warmup
        self.num_updates = 0
        self.trainable = [n for n, p in model.named_parameters() if p.requires_grad]
        self.shadow = {n: p.detach().float().clone() for n, p in model.named_parameters()
                       if p.requires_grad}
        # Tied weights (one parameter under two state-dict keys) share one shadow.
        canonical = {id(p): n for n, p in model.named_parameters()}
        self.alias = {n: canonical[id(p)] for n, p in model.named_parameters(remove_duplicate=False)
                      if canonical[id(p)] in self.shadow}

    def current_decay(self) -> float:
        """The decay the next ``update`` uses: ``decay``, or its warm-up value."""
        return warmup_decay(self.decay, self.num_updates) if self.warmup else self.decay

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        params = dict(model.named_parameters())
        shadow = [self.shadow[n] for n in self.trainable]
        current = [params[n].detach().float() for n in self.trainable]
        torch._foreach_lerp_(shadow, current, 1.0 - self.current_decay())
        self.num_updates += 1

    def state_dict(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """Full state dict of ``model`` with the EMA values (cast to the model's dtypes)."""
        out = {}
        for k, v in model.state_dict().items():
            # A copy per key: safetensors refuses tensors that share memory.
            out[k] = (
                self.shadow[self.alias[k]].to(v.dtype).clone()
                if k in self.alias
                else v.detach().clone()
            )
        return out

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore the shadow from an ``ema.safetensors`` state (missing trainable keys raise)."""
        # A restored shadow is past its warm-up unless the caller says where it stands.
        self.num_updates = max(self.num_updates, WARMUP_DONE)
        missing = [n for n in self.trainable if n not in state]
        if missing:
            raise KeyError(f"EMA state lacks trainable keys: {missing[:10]}"
                           f"{' ...' if len(missing) > 10 else ''}")
        for n in self.trainable:
            if state[n].shape != self.shadow[n].shape:
                raise ValueError(f"EMA key {n}: shape {tuple(state[n].shape)} in the checkpoint, "
                                 f"{tuple(self.shadow[n].shape)} in the model")
            value = state[n].float()
            shadow = self.shadow[n]
            if isinstance(shadow, DTensor):
                # Sharded shadow (FSDP): every rank read the same full tensor, so each cuts out its
                # own shard locally (src_data_rank=None: no communication).
                value = distribute_tensor(value.to(shadow.device), shadow.device_mesh,
                                          shadow.placements, src_data_rank=None)
            shadow.copy_(value)

