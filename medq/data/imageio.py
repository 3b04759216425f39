"""Robust image loading: any file a user may hand us becomes RGB uint8 (H, W, 3) or a ``DataError``.

Conversions (never rejections): grayscale and 16-bit (``I;16``, ``I``) are scaled to 8 bits
(65535 -> 255, i.e. divided by 257) and replicated to RGB; RGBA / LA / palette with transparency
are composited on black (the fundus surround is black); CMYK goes through Pillow's JPEG-aware
conversion; an EXIF orientation tag is applied (a phone or camera JPEG stored sideways is turned
upright); float TIFFs, which Pillow cannot open, are read with tifffile (values in [0, 1] are
scaled by 255, larger ones taken as 0-255 or, above 255, as 16-bit). Rejections name the file and
the reason: empty file, not an image, truncated data, smaller than ``MIN_SIDE`` pixels, more
pixels than ``Image.MAX_IMAGE_PIXELS`` (a decompression bomb: the header promises a huge image
from a small file).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

MIN_SIDE = 16
"""Images smaller than this on either side cannot hold a usable field of view."""
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".gif", ".ppm", ".webp")

# A truncated JPEG must fail loudly, not decode with a grey bottom half.
ImageFile.LOAD_TRUNCATED_IMAGES = False


class DataError(ValueError):
    """Bad input data; the message names the file (or CSV row / key) and what was expected."""


def _to_rgb(img: Image.Image) -> np.ndarray:
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        a = np.asarray(img, dtype=np.float64)
        # "I" holds 16-bit PNGs too; 8-bit data opened as "I" stays <= 255.
        if mode != "I" or a.max() > 255:
            a = a / 257.0
        g = np.clip(np.round(a), 0, 255).astype(np.uint8)
        return np.repeat(g[:, :, None], 3, axis=2)
    if mode == "F":
        a = np.asarray(img, dtype=np.float64)
        scale = 255.0 if a.max() <= 1.0 else 1.0
        g = np.clip(np.round(a * scale), 0, 255).astype(np.uint8)
        return np.repeat(g[:, :, None], 3, axis=2)
    if mode == "P" and "transparency" in img.info:
        img, mode = img.convert("RGBA"), "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = np.asarray(img.convert("RGBA"), dtype=np.uint16)
        return ((rgba[:, :, :3] * rgba[:, :, 3:] + 127) // 255).astype(np.uint8)
    return np.asarray(img.convert("RGB"), dtype=np.uint8).copy()


def check_pixels(img: Image.Image, path: Path) -> None:
    """Refuse an image whose header promises more than ``Image.MAX_IMAGE_PIXELS`` pixels before
    decoding it (Pillow only warns below twice that limit, and would allocate it)."""
    limit = Image.MAX_IMAGE_PIXELS
    w, h = img.size
    if limit and w * h > limit:
        raise DataError(f"{path}: header says {w}x{h} = {w * h} pixels, more than the "
                        f"{limit} Pillow accepts (a decompression bomb or a corrupt header); "
                        f"downscale the image if it is genuine")


def upright(img: Image.Image) -> Image.Image:
    """``img`` turned as its EXIF orientation tag says (unchanged without one)."""
    try:
        return ImageOps.exif_transpose(img) or img
    except (OSError, ValueError, SyntaxError, TypeError, KeyError):
        return img  # an unreadable EXIF block: the pixels as stored


def _tiff_rgb(path: Path) -> np.ndarray:
    """A TIFF Pillow cannot open (float32/float64 samples, e.g. from scientific tools) -> RGB
    uint8 (H, W, 3); raises ``DataError`` when tifffile cannot read it either."""
    import tifffile

    try:
        a = np.asarray(tifffile.imread(path))
    except Exception as e:  # tifffile raises many types for foreign data
        raise DataError(f"{path}: not an image Pillow or tifffile can read ({e})") from e
    if a.ndim == 3 and a.shape[0] in (3, 4) and a.shape[2] not in (3, 4):
        a = np.moveaxis(a, 0, -1)                     # planar (C, H, W) storage
    if a.ndim == 2:
        a = a[:, :, None]
    if a.ndim != 3 or a.shape[2] not in (1, 3, 4):
        raise DataError(f"{path}: TIFF of shape {a.shape}, expected an RGB or grey image")
    a = np.nan_to_num(a[:, :, :3].astype(np.float64))
    top = float(a.max()) if a.size else 0.0
    scale = 255.0 if top <= 1.0 else 1.0 if top <= 255.0 else 1.0 / 257.0
    g = np.clip(np.round(a * scale), 0, 255).astype(np.uint8)
    return np.repeat(g, 3, axis=2) if g.shape[2] == 1 else g


def load_rgb(path: str | Path, max_side: int | None = None) -> np.ndarray:
    """Read ``path`` as RGB uint8 (H, W, 3). ``max_side``: shrink large images on load (JPEG draft
    mode, then ``reduce``) so that the longer side stays >= max_side; exact size is not kept.
    Raises ``DataError`` naming the file and the reason."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: empty file (0 bytes)")
    try:
        with warnings.catch_warnings():  # a bomb is refused just below, with the file's name
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(path)
        with img:
            check_pixels(img, path)
            if max_side is not None and img.format == "JPEG" and max(img.size) > 2 * max_side:
                img.draft("RGB", (max_side, max_side))
            img.load()
            if max_side is not None and max(img.size) >= 2 * max_side:
                img = img.reduce(max(img.size) // max_side)
            if min(img.size) < MIN_SIDE:
                raise DataError(f"{path}: image is {img.size[0]}x{img.size[1]} pixels, expected at "
                                f"least {MIN_SIDE}x{MIN_SIDE}")
            return _to_rgb(upright(img))
    except DataError:
        raise
    except Image.DecompressionBombError as e:
        raise DataError(f"{path}: refused as a decompression bomb ({e})") from None
    except UnidentifiedImageError as e:
        if path.suffix.lower() in (".tif", ".tiff"):
            rgb = _tiff_rgb(path)
            if min(rgb.shape[:2]) < MIN_SIDE:
                raise DataError(f"{path}: image is {rgb.shape[1]}x{rgb.shape[0]} pixels, expected "
                                f"at least {MIN_SIDE}x{MIN_SIDE}") from e
            return rgb
        raise DataError(f"{path}: not an image Pillow can read (unknown or corrupt format)") from e
    except (OSError, SyntaxError, ValueError) as e:
        raise DataError(f"{path}: cannot decode image ({e})") from e


def load_mask(path: str | Path, shape: tuple[int, int]) -> np.ndarray:
    """A field-of-view mask file (any nonzero pixel is inside) resized to ``shape`` (H, W) ->
    bool."""
    path = Path(path)
    try:
        with Image.open(path) as img:
            m = img.convert("L")
            if m.size != (shape[1], shape[0]):
                m = m.resize((shape[1], shape[0]), Image.NEAREST)
            return np.asarray(m) > 0
    except (OSError, SyntaxError, ValueError) as e:
        raise DataError(f"{path}: cannot read mask ({e})") from e


def save_png(path: str | Path, image: np.ndarray) -> None:
    """uint8 (H, W, 3) or (H, W) -> PNG."""
    Image.fromarray(image).save(path)
