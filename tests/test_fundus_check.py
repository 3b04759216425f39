"""medq.data.fundus_check: real and synthetic fundus photographs pass, a corpus of things that are
not fundus photographs (noise, CMYK noise, an EXIF-rotated noise JPEG, flat images, a painted
disc, text and screenshots, a strip) is refused with the reason; 16-bit and float files of a real
photograph are read (medq.data.load_rgb) and accepted.

``not_fundus_corpus(tmp_path)`` is shared with the demo tests (uploads)."""

from __future__ import annotations

import re

import numpy as np
import pytest

from fakes.images import NOT_FUNDUS_REASON, not_fundus_corpus, write_png16
from medq.data.fundus_check import NotFundus, check_fundus, require_fundus
from medq.data.imageio import load_rgb
from medq.data.synthetic import generate_fundus


def test_not_fundus_corpus_is_refused_with_the_reason(tmp_path):
    corpus = not_fundus_corpus(tmp_path)
    assert set(corpus) == set(NOT_FUNDUS_REASON)
    for name, path in corpus.items():
        check = check_fundus(load_rgb(path))
        assert not check.ok, (name, check.stats)
        assert re.search(NOT_FUNDUS_REASON[name], check.reason), (name, check.reason)
        with pytest.raises(NotFundus, match=f"^{name}: not a colour fundus photograph: "):
            require_fundus(load_rgb(path), name)


def test_synthetic_fundus_images_pass_at_every_working_size():
    for seed in range(6):
        for size in (64, 128, 256):
            check = check_fundus(generate_fundus(seed, size).image)
            assert check.ok, (seed, size, check.reason)


def test_each_property_is_needed():
    """Remove one property from a good synthetic photograph at a time: that check fails."""
    good = generate_fundus(3, 256)
    img, mask = good.image, good.mask
    assert check_fundus(img).ok
    grey = np.repeat(img.mean(axis=2, keepdims=True), 3, axis=2).astype(np.uint8)
    assert "greyscale" in check_fundus(grey).reason
    blue = img[..., ::-1].copy()
    assert "not reddish" in check_fundus(blue).reason
    lit = img.copy()
    lit[~mask] = 200                                       # corners as bright as the retina
    assert not check_fundus(lit).ok
    flat = img.copy()
    flat[mask] = img[mask].mean(axis=0).astype(np.uint8)
    assert "no visible vessels" in check_fundus(flat).reason
    noisy = img.astype(np.int16) + np.random.default_rng(1).integers(-120, 120, img.shape)
    noisy[~mask] = 0
    assert not check_fundus(np.clip(noisy, 0, 255).astype(np.uint8)).ok
    with pytest.raises(ValueError, match="expected uint8 RGB"):
        check_fundus(img.astype(np.float32))


def test_all_20_drive_training_photographs_pass(fundus_samples):
    paths = sorted((fundus_samples / "drive-train" / "images").glob("*"))
    assert len(paths) == 20
    for path in paths:
        check = check_fundus(load_rgb(path))
        assert check.ok, (path.name, check.reason, check.stats)
        assert check.stats["disc_iou"] >= 0.95 and check.stats["surround_ratio"] <= 0.15


def test_other_real_samples_pass(fundus_samples):
    paths = sorted((fundus_samples / "drive" / "images").glob("*")) + sorted(
        (fundus_samples / "eyeq" / "original_img").glob("*"))
    assert paths
    for path in paths:
        check = check_fundus(load_rgb(path, max_side=512))
        assert check.ok, (path.name, check.reason, check.stats)


def test_16_bit_and_float_files_are_converted_and_accepted(fundus_samples, tmp_path):
    """A DRIVE photograph saved as 16-bit PNG, 16-bit TIFF, float TIFF in [0, 1] and in [0, 255]
    reads back as the same 8-bit picture (not clipped to black) and passes."""
    import tifffile

    src = sorted((fundus_samples / "drive-train" / "images").glob("*"))[0]
    rgb = load_rgb(src)
    files = [write_png16(tmp_path / "d16.png", rgb.astype(np.uint16) * 257)]
    tifffile.imwrite(tmp_path / "d16.tif", rgb.astype(np.uint16) * 257)
    tifffile.imwrite(tmp_path / "float01.tif", rgb.astype(np.float32) / 255)
    tifffile.imwrite(tmp_path / "float255.tif", rgb.astype(np.float32))
    files += [tmp_path / n for n in ("d16.tif", "float01.tif", "float255.tif")]
    for path in files:
        got = load_rgb(path)
        assert np.abs(got.astype(int) - rgb).max() <= 1, path.name
        assert check_fundus(got).ok, path.name
