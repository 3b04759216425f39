"""Monitors the loop calls in one line each: gradient probe, non-finite guard, collapse check.

The collapse thresholds are ``medq.verdict``'s (one place for the harness and the trainer); a
warning names the value and the limit.
"""

from __future__ import annotations

import logging

import torch

log = logging.getLogger("train")

# The probed terms whose ratio tells whether an image-space loss dominates (the original saw
# SSIM/pixel and SSIM/MSE gradients of 200-2000x at x0_hat).
RATIOS = (("ssim", "pixel"), ("ssim", "mse"), ("pixel", "mse"))


class NonFiniteError(RuntimeError):
    """Too many consecutive steps with a non-finite loss or gradient (``step``: where it
    stopped)."""

    def __init__(self, message: str, step: int):
        super().__init__(message)
        self.step = step


def probe_gradients(terms: dict[str, torch.Tensor], activations: dict[str, torch.Tensor],
                    loss_cfg=None) -> dict[str, float]:
    """Per-loss gradient norm and max |element| at each activation (x0_hat, hidden), and ratios.

    Each term is multiplied by its weight in ``loss_cfg`` (``<name>_weight``) first: the probe
    measures the gradient a term really sends in training (SSIM's grad_scale, applied in its
    backward, is included). Must run before ``backward`` (it differentiates each term separately,
    keeping the graph). Returns flat log keys ``probe/<where>/<term>/norm``, ``.../max`` and
    ``probe/<where>/<a>_over_<b>`` (ratio of norms)."""
    from medq.losses import gradient_probe

    named = {k: v * float(getattr(loss_cfg, f"{k}_weight", 1.0)) for k, v in terms.items()
             if k != "total" and v.requires_grad}
    out: dict[str, float] = {}
    for where, act in activations.items():
        if act is None or not act.requires_grad or not named:
            continue
        stats = gradient_probe(act, named)
        for name, s in stats.items():
            out[f"probe/{where}/{name}/norm"] = float(s["norm"])
            out[f"probe/{where}/{name}/max"] = float(s["max"])
        for a, b in RATIOS:
            if a in stats and b in stats and float(stats[b]["norm"]) > 0:
                out[f"probe/{where}/{a}_over_{b}"] = float(stats[a]["norm"]) / float(
                    stats[b]["norm"]
                )
    return out


class NonFiniteGuard:
    """Counts skipped steps; raises NonFiniteError after ``limit`` consecutive ones."""

    def __init__(self, limit: int, skipped: int = 0, in_a_row: int = 0):
        self.limit, self.skipped, self.in_a_row = limit, skipped, in_a_row

    def __call__(self, finite: bool, step: int, loss: float, grad_norm: float) -> bool:
        """Record one step; True when the update may be applied."""
        if finite:
            self.in_a_row = 0
            return True
        self.skipped += 1
        self.in_a_row += 1
        log.warning("step %d: non-finite loss %.4g or grad norm %.4g: update skipped (%d in a row, "
                    "%d in total)", step, loss, grad_norm, self.in_a_row, self.skipped)
        if self.in_a_row >= self.limit:
            raise NonFiniteError(
                f"step {step}: {self.in_a_row} consecutive steps with a non-finite loss or "
                f"gradient (run.max_nonfinite = {self.limit}); training stopped. The last "
                f"complete checkpoint "
                f"is kept; lower optim.lr, or the image-space loss weights / loss.ssim_grad_scale",
                step,
            )
        return False

    def state(self) -> dict:
        return {"skipped": self.skipped, "nonfinite_in_a_row": self.in_a_row}


def collapse_warnings(metrics: dict[str, float]) -> list[str]:
    """The ``medq.verdict`` reasons for the collapse signals in the validation ``metrics``
    (``collapse/*`` keys of ``MiniBagelTask.collapse_probe``); empty = healthy. The thresholds
    are the verdict's, so a run the monitor lets through is one the harness calls healthy."""
    from medq.verdict import verdict

    return verdict(**{k: metrics.get(f"collapse/{k}") for k in
                      ("undecodable_rate", "output_std_ratio", "psnr_gap_db", "ssim_ratio",
                       "nonfinite_frac")}).reasons
