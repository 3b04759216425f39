"""In-memory scores of a model on the first images of a split: the quick check behind
``train weights --check`` (the shipped base's recorded scores) and ``bench mmse-t``.

    scores = split_fov_scores(adapter, cfg.data, cfg.model.image_size, "val", n=8)
    scores["sr4"]  # {"psnr_fov": 26.8, "ssim_fov": 0.62, "ref_psnr_fov": ..., "ref_ssim_fov": ...}

Image ``i`` of a task gets seed ``i`` (the same output in any batch). Nothing is written: for the
leaderboard, ``run_harness`` + ``medq.scoring`` keep PNGs, records and intervals.
"""

from __future__ import annotations

import torch

from medq.data import build_dataset
from medq.metrics import psnr, ssim
from medq.models.forward import resize_bicubic


def split_fov_scores(model, data_cfg, image_size: int, split: str, n: int,
                     tasks=None) -> dict[str, dict[str, float]]:
    """{task: mean PSNR-fov and eroded SSIM-fov of ``model.edit`` and of the reference (bicubic
    for SR, the unchanged input for enhance) on the first ``n`` images of ``split``}.

    ``model``: an ``ImageTextModel``. Raises ValueError naming the task and split when the split
    holds no image, or when ``n < 1``."""
    if n < 1:
        raise ValueError(f"split_fov_scores: n = {n}; must be >= 1")
    out: dict[str, dict[str, float]] = {}
    for task in tasks or data_cfg.tasks:
        ds = build_dataset(data_cfg, image_size, split, tasks=[task])
        items = [ds[i] for i in range(min(n, len(ds)))]
        if not items:
            raise ValueError(f"task {task}: the {split} split of data.source = "
                             f"{data_cfg.source!r} holds no image")
        inputs = torch.stack([it["input"] for it in items])
        target = torch.stack([it["target"] for it in items])
        mask = torch.stack([it["mask"] for it in items])
        size = tuple(target.shape[-2:])
        pred = model.edit(inputs, [it["instruction"] for it in items], [task] * len(items), size,
                          seed=list(range(len(items))))
        ref = resize_bicubic(inputs, size).clamp(0, 1)
        out[task] = {"psnr_fov": float(psnr(pred, target, mask).mean()),
                     "ssim_fov": float(ssim(pred, target, mask).mean()),
                     "ref_psnr_fov": float(psnr(ref, target, mask).mean()),
                     "ref_ssim_fov": float(ssim(ref, target, mask).mean())}
    return out
