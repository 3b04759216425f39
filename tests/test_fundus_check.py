"""medq.data.fundus_check: real and synthetic fundus photographs pass, a corpus of things that are
not fundus photographs (noise, CMYK noise, an EXIF-rotated noise JPEG, flat images, a painted
disc, text and screenshots, a strip) is refused with the reason; 16-bit and float files of a real
photograph are read (medq.data.load_rgb) and accepted.

``bad_corpus(tmp_path)`` is shared with the demo tests (uploads)."""

from __future__ import annotations

import re
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from medq.data.fundus_check import NotFundus, check_fundus, require_fundus
from medq.data.imageio import load_rgb
from medq.data.synthetic import generate_fundus


def write_png16(path: Path, rgb16: np.ndarray) -> Path:
    """A 16-bit RGB PNG (Pillow cannot write one): IHDR bit depth 16, colour type 2."""
    h, w, _ = rgb16.shape
    raw = b"".join(b"\x00" + rgb16[y].astype(">u2").tobytes() for y in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    header = chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + header + chunk(b"IDAT", zlib.compress(raw))
                     + chunk(b"IEND", b""))
    return path


def _text_page(dark: bool) -> np.ndarray:
    page = Image.new("RGB", (800, 500), (30, 30, 30) if dark else "white")
    draw = ImageDraw.Draw(page)
    if dark:
        draw.rectangle((0, 0, 800, 40), fill=(60, 60, 200))
    for k in range(18):
        draw.text((20, 60 + k * 22), f"def f(x): return x * {k}  # a screenshot of code, line {k}",
                  fill=(220, 220, 100) if dark else "black")
    return np.asarray(page)


def bad_corpus(tmp_path: Path) -> dict[str, Path]:
    """name -> image file that is not a fundus photograph (each one a case the demo once accepted
    or could plausibly be given)."""
    rng = np.random.default_rng(0)
    out: dict[str, Path] = {}

    def save(name: str, arr: np.ndarray, **kw) -> None:
        out[name] = tmp_path / name
        Image.fromarray(arr).save(out[name], **kw)

    save("noise.png", rng.integers(0, 256, (300, 400, 3), dtype=np.uint8))
    save("gauss_noise.png", np.clip(rng.normal(128, 40, (300, 300, 3)), 0, 255).astype(np.uint8))
    save("orange_noise.png", (rng.random((300, 300, 1)) * [255, 120, 40]).astype(np.uint8))
    cmyk = Image.fromarray(rng.integers(0, 256, (300, 400, 4), dtype=np.uint8), "CMYK")
    out["cmyk_noise.jpg"] = tmp_path / "cmyk_noise.jpg"
    cmyk.save(out["cmyk_noise.jpg"])
    exif = Image.Exif()
    exif[0x0112] = 6                                           # orientation: rotate 90 degrees
    save("exif_rotated_noise.jpg", rng.integers(0, 256, (240, 320, 3), dtype=np.uint8),
         exif=exif.tobytes())
    for name, value in (("white.png", 255), ("black.png", 0), ("grey.png", 128)):
        save(name, np.full((200, 200, 3), value, np.uint8))
    yy, xx = np.mgrid[:200, :200]
    disc = np.zeros((200, 200, 3), np.uint8)
    disc[(yy - 100) ** 2 + (xx - 100) ** 2 < 90 ** 2] = [200, 90, 30]
    save("painted_disc.png", disc)
    save("text_page.png", _text_page(dark=False))
    save("dark_screenshot.png", _text_page(dark=True))
    save("strip_2000x40.png", np.tile(np.linspace(0, 255, 2000).astype(np.uint8)[None, :, None],
                                      (40, 1, 3)))
    grad = np.stack([*np.meshgrid(np.linspace(0, 255, 300), np.linspace(0, 255, 300)),
                     np.full((300, 300), 100.0)], -1)
    save("gradient.png", grad.astype(np.uint8))
    return out


# Which check each bad image is expected to fail (the reason's key words).
EXPECTED_REASON = {
    "noise.png": "no dark surround", "gauss_noise.png": "not a round disc",
    "orange_noise.png": "not a round disc", "cmyk_noise.jpg": "no dark surround",
    "exif_rotated_noise.jpg": "no dark surround", "white.png": "one flat white",
    "black.png": "one flat black", "grey.png": r"one flat colour \(RGB 128, 128, 128\)",
    "painted_disc.png": "no visible vessels", "text_page.png": "no dark surround",
    "dark_screenshot.png": "no bright round field of view",
    "strip_2000x40.png": "2000x40 image is 50.0 times longer", "gradient.png": "not a round disc",
}


def test_bad_corpus_is_refused_with_the_reason(tmp_path):
    corpus = bad_corpus(tmp_path)
    assert set(corpus) == set(EXPECTED_REASON)
    for name, path in corpus.items():
        check = check_fundus(load_rgb(path))
        assert not check.ok, (name, check.stats)
        assert re.search(EXPECTED_REASON[name], check.reason), (name, check.reason)
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
