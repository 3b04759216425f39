"""Batching items of different sizes (docs/ARCHITECTURE.md, "Data items")."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _pad_stack(tensors: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """[(C, h_i, w_i)] -> (N, C, max h, max w) zero-padded bottom/right, sizes LongTensor (N, 2)."""
    h = max(t.shape[-2] for t in tensors)
    w = max(t.shape[-1] for t in tensors)
    out = torch.stack([F.pad(t, (0, w - t.shape[-1], 0, h - t.shape[-2])) for t in tensors])
    sizes = torch.tensor([[t.shape[-2], t.shape[-1]] for t in tensors], dtype=torch.long)
    return out, sizes


def collate(items: list[dict]) -> dict:
    """Batch of data items: ``input`` (N, 3, h, w), ``target`` (N, 3, H, W), ``mask`` (N, 1, H, W)
    padded with zeros, ``input_size`` / ``target_size`` LongTensor (N, 2) of true (h, w); ints ->
    LongTensor (N,), strings -> lists."""
    if not items:
        raise ValueError("collate: empty list of items")
    batch: dict = {}
    batch["input"], batch["input_size"] = _pad_stack([it["input"] for it in items])
    batch["target"], batch["target_size"] = _pad_stack([it["target"] for it in items])
    batch["mask"], _ = _pad_stack([it["mask"] for it in items])
    for key in items[0]:
        if key in ("input", "target", "mask"):
            continue
        values = [it[key] for it in items]
        if isinstance(values[0], torch.Tensor):  # e.g. report_input: one size for the batch
            batch[key] = torch.stack(values)
        else:
            batch[key] = (
                torch.tensor(values, dtype=torch.long) if isinstance(values[0], int) else values
            )
    return batch
