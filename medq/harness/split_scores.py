"""In-memory scores of a model on the first images of a split: the quick check behind
``train weights --check`` (the shipped base's recorded scores) and ``bench onestep-t``.

    scores = split_fov_scores(adapter, cfg.data, "val", n=8)
    scores["sr4"]  # {"psnr_fov": 26.8, "ssim_fov": 0.62, "ref_psnr_fov": ..., "ref_ssim_fov": ...}
    kappa = split_report_scores(adapter, cfg.data, "val", n=62)
    kappa["sr2"]   # {"dr_kappa": 0.9, "dr_kappa_floor": 0.0, "quality_accuracy": 1.0, ...}

Image ``i`` of a task gets seed ``i`` (the same output in any batch). Nothing is written: for the
leaderboard, ``run_harness`` + ``medq.scoring`` keep PNGs, records and intervals.
"""

from __future__ import annotations

import torch

from medq.data import REPORT_PROMPT, build_dataset
from medq.harness.text import generate_reports
from medq.metrics import eroded_fov, psnr, ssim
from medq.models.forward import resize_bicubic
from medq.text_metrics import score_reports


def _check_n(n: int) -> None:
    if n < 1:
        raise ValueError(f"split scores: n = {n}; must be >= 1")


def _first_items(data_cfg, split: str, n: int, task: str) -> list[dict]:
    ds = build_dataset(data_cfg, split, tasks=[task])
    items = [ds[i] for i in range(min(n, len(ds)))]
    if not items:
        raise ValueError(f"task {task}: the {split} split of data.source = "
                         f"{data_cfg.source!r} holds no image")
    return items


def split_fov_scores(model, data_cfg, split: str, n: int,
                     tasks=None) -> dict[str, dict[str, float]]:
    """{task: mean PSNR-fov, PSNR over the eroded FOV (``psnr_fov_eroded``: the pixels whose SSIM
    window lies inside the disc) and SSIM-fov of ``model.edit`` and of the reference (bicubic for
    SR, the unchanged input for enhance; keys ``ref_*``) on the first ``n`` images of ``split``}
    at the working size ``data_cfg.image_size``.

    ``model``: an ``ImageTextModel``. Raises ValueError naming the task and split when the split
    holds no image, or when ``n < 1``."""
    _check_n(n)
    out: dict[str, dict[str, float]] = {}
    for task in tasks or data_cfg.tasks:
        items = _first_items(data_cfg, split, n, task)
        inputs = torch.stack([it["input"] for it in items])
        target = torch.stack([it["target"] for it in items])
        mask = torch.stack([it["mask"] for it in items])
        size = tuple(target.shape[-2:])
        pred = model.edit(inputs, [it["instruction"] for it in items], [task] * len(items), size,
                          seed=list(range(len(items))))
        ref = resize_bicubic(inputs, size).clamp(0, 1)
        inner = eroded_fov(mask)
        out[task] = {}
        for prefix, img in (("", pred), ("ref_", ref)):
            out[task].update({f"{prefix}psnr_fov": float(psnr(img, target, mask).mean()),
                              f"{prefix}psnr_fov_eroded": float(psnr(img, target, inner).mean()),
                              f"{prefix}ssim_fov": float(ssim(img, target, mask).mean())})
    return out


def split_report_scores(model, data_cfg, split: str, n: int,
                        tasks=None) -> dict[str, dict]:
    """{task: ``medq.text_metrics.score_reports`` of the model's reports (``REPORT_PROMPT``, image
    i with seed i; greedy unless the model's settings say otherwise) of the first ``n`` images of
    ``split`` against their ground-truth reports}: DR kappa and its majority-class floor, quality
    accuracy, findings F1. Same errors as ``split_fov_scores``."""
    _check_n(n)
    out: dict[str, dict] = {}
    for task in tasks or data_cfg.tasks:
        items = _first_items(data_cfg, split, n, task)
        results = generate_reports(model, torch.stack([it["input"] for it in items]),
                                   REPORT_PROMPT, list(range(len(items))))
        out[task] = score_reports([r.text for r in results], [it["report"] for it in items])
    return out
