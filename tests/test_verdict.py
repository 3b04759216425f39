"""The healthy / collapsed verdict and its thresholds."""

from __future__ import annotations

import math

import pytest

from medq.verdict import (
    NONFINITE_FRAC_MAX,
    OUTPUT_STD_RATIO_MIN,
    PSNR_GAP_MIN_DB,
    SSIM_RATIO_MIN,
    UNDECODABLE_RATE_MAX,
    verdict,
)


def test_sane_model_is_healthy():
    v = verdict(undecodable_rate=0.0, output_std_ratio=0.95, psnr_gap_db=-1.5, ssim_ratio=0.85,
                nonfinite_frac=0.0, input_dependence=0.3)
    assert v.status == "healthy" and v.reasons == []
    assert all(c["ok"] for c in v.checks.values())


def test_each_signal_alone_collapses_with_its_reason():
    cases = {
        "undecodable": dict(undecodable_rate=UNDECODABLE_RATE_MAX * 3),
        "near-constant": dict(output_std_ratio=OUTPUT_STD_RATIO_MIN / 2),
        "PSNR": dict(psnr_gap_db=PSNR_GAP_MIN_DB - 1),
        # v2-as-run on enhance: PSNR only 4 dB under identity, but the structure is gone
        "structure": dict(psnr_gap_db=-4.2, ssim_ratio=0.35),
        "non-finite": dict(nonfinite_frac=NONFINITE_FRAC_MAX + 1e-6),
    }
    for word, kw in cases.items():
        v = verdict(**kw)
        assert v.status == "collapsed" and len(v.reasons) == 1 and word in v.reasons[0], (word, v)
    assert verdict(ssim_ratio=SSIM_RATIO_MIN).status == "healthy"


def test_unmeasured_checks_neither_pass_nor_fail():
    assert verdict().status == "unknown"
    v = verdict(undecodable_rate=0.0)          # e.g. score-text: no images
    assert v.status == "healthy" and v.checks["psnr_gap_db"]["ok"] is None


def test_nan_statistic_fails():
    v = verdict(psnr_gap_db=math.nan)
    assert v.status == "collapsed"


def test_thresholds_at_the_boundary_pass():
    v = verdict(undecodable_rate=UNDECODABLE_RATE_MAX, output_std_ratio=OUTPUT_STD_RATIO_MIN,
                psnr_gap_db=PSNR_GAP_MIN_DB, ssim_ratio=SSIM_RATIO_MIN, nonfinite_frac=0.0)
    assert v.status == "healthy"


def _fundus_like(n=8, size=48, seed=0):
    """Distinct images black outside a disc, like fundus photographs."""
    import torch

    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 3, 6, 6, generator=g)
    img = torch.nn.functional.interpolate(low, size=(size, size), mode="bicubic",
                                          align_corners=False)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    r2 = (yy - size / 2 + 0.5) ** 2 + (xx - size / 2 + 0.5) ** 2
    mask = (r2 <= (size / 2 - 1) ** 2).float()
    mask = mask.expand(n, 1, size, size).clone()
    return img.clamp(0, 1) * mask, mask


def test_input_dependence_flags_a_constant_output_and_not_a_real_one():
    import torch

    from medq.verdict import INPUT_DEPENDENCE_MIN, input_dependence

    targets, masks = _fundus_like()
    constant = targets.mean(0, keepdim=True).expand_as(targets)
    noisy = (targets + 0.1 * torch.randn(targets.shape, generator=torch.Generator().manual_seed(1)))
    dep_const = input_dependence(constant, targets, masks)
    dep_real = input_dependence(noisy.clamp(0, 1) * masks, targets, masks)
    assert dep_const < INPUT_DEPENDENCE_MIN < dep_real
    v = verdict(output_std_ratio=1.0, psnr_gap_db=0.0, ssim_ratio=0.95, input_dependence=dep_const)
    assert v.status == "collapsed" and len(v.reasons) == 1 and "ignores its input" in v.reasons[0]
    assert verdict(input_dependence=dep_real).status == "healthy"
    assert input_dependence(targets[:1], targets[:1], masks[:1]) is None


def test_a_constant_output_scores_zero_input_dependence_even_when_a_few_targets_are_hard():
    # Most targets close to the constant, a few far from it: SSIM(constant, target_j) is skewed,
    # which pushed the old median-of-gaps to about +0.1 for an output that ignores its input.
    import torch

    from medq.verdict import INPUT_DEPENDENCE_MIN, input_dependence

    targets, masks = _fundus_like(n=12, seed=3)
    base = targets[:1].expand(12, -1, -1, -1)
    noise = 0.02 * torch.randn(targets.shape, generator=torch.Generator().manual_seed(4))
    skewed = (base + noise).clamp(0, 1) * masks
    skewed[9:] = targets[9:]
    constant = base.clone()
    own = torch.stack([_ssim_one(constant[i], skewed[i], masks[i]) for i in range(12)])
    assert own[:9].min() > own[9:].max() + 0.2  # the skew that broke the median
    assert abs(input_dependence(constant, skewed, masks)) < 1e-6 < INPUT_DEPENDENCE_MIN


def _ssim_one(output, target, mask):
    from medq.metrics import ssim

    return ssim(output[None], target[None], mask[None])[0]


def test_image_checks_ssim_inside_the_eroded_fov():

    from medq.metrics import ssim
    from medq.verdict import image_checks

    targets, masks = _fundus_like(n=2)
    out = targets[1]  # another image: garbage for target 0, with the same black rim
    c = image_checks(out, targets[0], targets[0], masks[0])
    assert c["ssim"] == float(ssim(out[None], targets[:1], masks[:1])[0])
    assert c["ssim"] < image_checks(out, targets[0], targets[0])["ssim"]  # the rim no longer helps
    assert c["ssim_reference"] == pytest.approx(1.0, abs=1e-6)
