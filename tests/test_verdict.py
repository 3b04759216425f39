"""The healthy / collapsed verdict and its thresholds."""

from __future__ import annotations

import math

from medq.verdict import (NONFINITE_FRAC_MAX, OUTPUT_STD_RATIO_MIN, PSNR_GAP_MIN_DB, SSIM_RATIO_MIN,
                          UNDECODABLE_RATE_MAX, verdict)


def test_sane_model_is_healthy():
    v = verdict(undecodable_rate=0.0, output_std_ratio=0.95, psnr_gap_db=-1.5, ssim_ratio=0.85,
                nonfinite_frac=0.0)
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
