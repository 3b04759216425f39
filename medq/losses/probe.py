"""Gradient probe: how hard each loss term pulls on a shared activation."""

from __future__ import annotations

import torch


def gradient_probe(activation: torch.Tensor, named_losses: dict[str, torch.Tensor]
                   ) -> dict[str, dict]:
    """For each 0-dim loss, the gradient it sends into ``activation`` (any shape, e.g. x0_hat
    (N, C, h, w) or the backbone's last hidden state): ``{"norm": L2 norm, "max": max |element|}``
    as 0-dim float32 tensors. A term not connected to ``activation`` reports zeros.

    Uses ``torch.autograd.grad(..., retain_graph=True)``: parameters' ``.grad`` are untouched and
    the graph stays usable for the caller's ``backward``. Call it before ``backward``.
    """
    out: dict[str, dict] = {}
    for name, loss in named_losses.items():
        if loss.dim() != 0:
            raise ValueError(f"gradient_probe: loss {name!r} has shape {tuple(loss.shape)}, "
                             f"expected a 0-dim tensor")
        grad = None
        if loss.requires_grad:
            (grad,) = torch.autograd.grad(loss, activation, retain_graph=True, allow_unused=True)
        if grad is None:
            zero = torch.zeros((), dtype=torch.float32)
            out[name] = {"norm": zero, "max": zero.clone()}
            continue
        g = grad.detach().float()
        out[name] = {"norm": g.norm(), "max": g.abs().max() if g.numel() else g.new_zeros(())}
    return out
