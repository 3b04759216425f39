"""The report out-of-distribution check (``medq.report_ood``, issue 30 item 1): the committed
calibration separates the development photographs from the synthetic test images, whatever it
says; the command that writes it; the pieces it is made of."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from demo.calibrate_ood import DEFAULT_OUT, photo_tensor
from medq.report_ood import (
    FEATURES,
    Calibration,
    analysis_image,
    fit_reference,
    image_features,
    synthetic_image,
    synthetic_split,
)

REPO = Path(__file__).resolve().parents[1]


def committed() -> Calibration:
    return Calibration.from_dict(json.loads(DEFAULT_OUT.read_text(encoding="utf-8")))


def base_data_cfg():
    from medq.config import load_config

    return load_config(str(REPO / committed().meta["data"]["config"])).data


def test_the_committed_calibration_is_current():
    cal = committed()
    assert cal.stale_reason() is None, (f"{DEFAULT_OUT} is stale: {cal.stale_reason()}; run "
                                        "python -m demo calibrate-ood")
    assert cal.meta["command"].startswith("python -m demo calibrate-ood")
    for size, ref in cal.references.items():
        held = cal.meta["sizes"][str(size)]["held_out_synthetic"]
        assert ref.threshold >= held["max"]          # no held-out training-like image above it


def test_synthetic_test_images_are_below_the_threshold_at_every_size():
    """Noise-free synthetic test images (targets of the base config's test split, never used by
    the calibration) are like the training images."""
    cal, data_cfg = committed(), base_data_cfg()
    test = synthetic_split(data_cfg, "test")
    assert len(test) >= 20
    for size, ref in cal.references.items():
        d = np.array([cal.assess(synthetic_image(seed, i, size)).distance for seed, i in test])
        assert all(cal.assess(synthetic_image(seed, i, size)).size == size
                   for seed, i in test[:2])
        assert (d < ref.threshold).all(), (size, ref.threshold, np.sort(d)[-5:])


def test_the_drive_development_photographs_are_above_the_threshold(fundus_samples):
    """Real photographs from a camera the report model never saw are unlike its training
    images: at full size (judged at the largest calibrated size) and at each smaller one."""
    cal = committed()
    photos = sorted((fundus_samples / "drive-train" / "images").glob("*.tif"))
    assert len(photos) == 20
    for path in photos:
        img = photo_tensor(path)
        verdict = cal.assess(img, name=path.name)
        assert verdict.size == max(cal.references) and verdict.unlike, (path.name, verdict)
        for size, ref in cal.references.items():
            small = torch.nn.functional.interpolate(img[None], size=(size, size), mode="area")[0]
            got = cal.assess(small, name=path.name)
            assert got.size == size and got.distance > ref.threshold, (path.name, size, got)


def test_features_see_texture_that_colour_alone_misses():
    """The same synthetic image smoothed (as a camera's optics smooth a retina) moves far from
    the training images, though its colour statistics barely change."""
    img = synthetic_image(0, 3, 128)
    sharp = image_features(*analysis_image(img, 128))
    blurred = torch.nn.functional.avg_pool2d(img[None], 3, 1, 1, count_include_pad=False)[0]
    soft = image_features(*analysis_image(blurred, 128))
    assert sharp.shape == (len(FEATURES),)
    colour, texture = slice(0, 3), FEATURES.index("highpass_0.7")
    assert np.allclose(sharp[colour], soft[colour], rtol=0.03)
    assert soft[texture] < 0.7 * sharp[texture]


def test_fit_reference_distance_and_round_trip():
    rng = np.random.default_rng(0)
    feats = np.exp(rng.normal(0, 0.1, (200, len(FEATURES))) + 1.0)
    ref = fit_reference(feats, 64, shrinkage=0.1)
    d = ref.distance(feats)
    assert d.shape == (200,) and np.isfinite(d).all()
    assert float(ref.distance(np.exp(ref.mean))) == pytest.approx(0.0, abs=1e-9)
    assert float(ref.distance(feats[0] * 3.0)) > d.max()      # far from the cloud
    ref.threshold = 5.0
    cal = Calibration({64: ref, 256: ref}, generator_version=3)
    back = Calibration.from_dict(json.loads(json.dumps(cal.to_dict())))
    assert np.allclose(back.references[64].distance(feats), d)
    assert [cal.size_for(s) for s in (32, 64, 200, 256, 999)] == [64, 64, 64, 256, 256]
    with pytest.raises(ValueError, match="missing or malformed key 'references'"):
        Calibration.from_dict({"feature_version": 1})
    with pytest.raises(ValueError, match="at least 34"):
        fit_reference(feats[:10], 64)


def test_an_unmeasurable_image_counts_as_unlike():
    cal = committed()
    black_ring = torch.zeros(3, 64, 64)
    black_ring[:, 30:34, 30:34] = 0.8                # a field of view too small to measure
    verdict = cal.assess(black_ring)
    assert verdict.unlike and np.isnan(verdict.distance)


def test_calibrate_command_writes_the_json_and_refuses_a_measure_that_does_not_separate(
        tmp_path, fundus_samples):
    dev = tmp_path / "dev" / "images"
    dev.mkdir(parents=True)
    src = sorted((fundus_samples / "drive-train" / "images").glob("*.tif"))[:3]
    for p in src:
        (dev / p.name).symlink_to(p)
    out = tmp_path / "ood.json"
    cmd = [sys.executable, "-m", "demo", "calibrate-ood", "--development", str(dev.parent),
           "--sizes", "64", "--reference", "60", "--held-out", "20", "--out", str(out)]
    res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert "min/threshold" in res.stdout and "wrote" in res.stdout
    cal = Calibration.from_dict(json.loads(out.read_text()))
    assert list(cal.references) == [64] and cal.stale_reason() is None
    assert cal.meta["data"]["reference"] == "the first 60 training-split images"
    assert cal.meta["sizes"]["64"]["development"]["n"] == 3
    # A margin so large that real photographs fall below the threshold: refused, nothing written.
    out.unlink()
    res = subprocess.run(cmd + ["--margin", "50"], cwd=REPO, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 1 and not out.exists()
    assert "FAILED 64 px: development photographs at or below the threshold" in res.stderr
    assert src[0].name in res.stderr
