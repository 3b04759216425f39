"""Learning-rate schedule: linear warm-up, then cosine decay to zero at ``max_steps``.

    sched = torch.optim.lr_scheduler.LambdaLR(opt, partial(warmup_cosine, warmup_steps=20,
                                                           max_steps=300))
"""

from __future__ import annotations

import math


def warmup_cosine(step: int, *, warmup_steps: int, max_steps: int) -> float:
    """Multiplier of the base learning rate at optimizer step ``step`` (0-based).

    Warm-up: (step + 1) / warmup_steps for step < warmup_steps (never 0, so the first step
    already moves the weights). Then 0.5 * (1 + cos(pi * p)), p = progress from the end of the
    warm-up to ``max_steps``, so the last step runs at a small but non-zero rate."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    span = max(1, max_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps + 1) / (span + 1))
    return 0.5 * (1.0 + math.cos(math.pi * progress))
