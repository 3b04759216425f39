"""Image files in and out: the one reader and the one writer of every stage.

The data readers, the inference harness, ``bench score`` and the demo all read image files through
``load_rgb`` / ``load_mask`` and write them through ``save_png``, so a file means the same picture
everywhere (a 16-bit target once scored as a different image than the pipeline had read it).

    rgb = load_rgb(path)                       # uint8 (H, W, 3), or a DataError naming the file
    inside = load_mask(mask_path, rgb.shape[:2])   # bool (H, W), resized to the image
    save_png(out, tensor_or_array)             # float in [0, 1] or uint8; atomic

Images and masks go through one decoder (``decode``), so every rule below holds for both.

Conversions (never rejections): grayscale and 16-bit (``I;16``, ``I``) are scaled to 8 bits
(65535 -> 255, i.e. divided by 257) and replicated to RGB; RGBA / LA / palette with transparency
are composited on black (the fundus surround is black); CMYK goes through Pillow's JPEG-aware
conversion; an EXIF orientation tag is applied (a phone or camera JPEG stored sideways is turned
upright); float TIFFs, which Pillow cannot open, are read with tifffile (values in [0, 1] are
scaled by 255, larger ones taken as 0-255 or, above 255, as 16-bit).

Rejections name the file and the reason: no such file, empty file, not an image, truncated data,
smaller than ``MIN_SIDE`` pixels, more pixels than ``Image.MAX_IMAGE_PIXELS`` (a decompression
bomb: the header promises a huge image from a small file; checked from the header, before any
pixel is decoded, for Pillow's formats and for TIFFs read by tifffile alike).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from medq.files import atomic_path

MIN_SIDE = 16
"""Images smaller than this on either side cannot hold a usable field of view."""
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".gif", ".ppm", ".webp")
MASK_THRESHOLD = 128
"""A mask pixel is inside the field of view when its brightest channel, in 8 bits after the
conversions above, is at least half of full scale (>= 128 of 255). The harness writes masks as
0/255 PNGs and DRIVE ships 0/255 GIFs, on which every threshold agrees; half scale is the one that
also holds for a mask stored lossily or resized with interpolation (JPEG ringing and blurred rims
leave small values outside the disc, which ``> 0`` counted as inside), and it is the ``>= 0.5``
of a mask read as a float image. A 0/1 label image is refused with that reason, not read as
empty."""
MASK_ASPECT_TOLERANCE = 0.02
"""A mask may be resized to its image (the image may be shrunk on load), but not stretched: aspect
ratios further apart than this (relative) are two different pictures (e.g. the image turned by its
EXIF tag and the mask not)."""

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


def _refuse_bomb(width: int, height: int, path: Path) -> None:
    limit = Image.MAX_IMAGE_PIXELS
    if limit and width * height > limit:
        raise DataError(f"{path}: header says {width}x{height} = {width * height} pixels, more "
                        f"than the {limit} Pillow accepts (a decompression bomb or a corrupt "
                        f"header); downscale the image if it is genuine")


def check_pixels(img: Image.Image, path: Path) -> None:
    """Refuse an image whose header promises more than ``Image.MAX_IMAGE_PIXELS`` pixels before
    decoding it (Pillow only warns below twice that limit, and would allocate it)."""
    _refuse_bomb(*img.size, path)


def upright(img: Image.Image) -> Image.Image:
    """``img`` turned as its EXIF orientation tag says (unchanged without one)."""
    try:
        return ImageOps.exif_transpose(img) or img
    except (OSError, ValueError, SyntaxError, TypeError, KeyError):
        return img  # an unreadable EXIF block: the pixels as stored


def _tiff_rgb(path: Path) -> np.ndarray:
    """A TIFF Pillow cannot open (float32/float64 samples, e.g. from scientific tools) -> RGB
    uint8 (H, W, 3); raises ``DataError`` when tifffile cannot read it either, or when its header
    promises a decompression bomb."""
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            page = tif.pages.first
            _refuse_bomb(int(page.imagewidth), int(page.imagelength), path)
            a = np.asarray(page.asarray())
    except DataError:
        raise
    except Exception as e:  # noqa: BLE001 - tifffile raises many types for foreign data
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


def _pillow_rgb(path: Path, max_side: int | None, min_side: int, what: str) -> np.ndarray:
    with warnings.catch_warnings():  # a bomb is refused just below, with the file's name
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        img = Image.open(path)
    with img:
        check_pixels(img, path)
        # The file's own size (a shrink on load below would report a smaller one).
        _check_min_side(path, img.size[0], img.size[1], min_side, what)
        if max_side is not None and img.format == "JPEG" and max(img.size) > 2 * max_side:
            img.draft("RGB", (max_side, max_side))
        img.load()
        if max_side is not None and max(img.size) >= 2 * max_side:
            img = img.reduce(max(img.size) // max_side)
        return _to_rgb(upright(img))


def decode(path: str | Path, max_side: int | None = None, what: str = "image", *,
           min_side: int = MIN_SIDE) -> np.ndarray:
    """Read ``path`` as RGB uint8 (H, W, 3) with every conversion and rejection of this module;
    raises ``DataError`` naming the file (``what`` says which kind, e.g. "mask"). ``max_side``:
    shrink large images on load (JPEG draft mode, then ``reduce``) so that the longer side stays
    >= max_side; the exact size is not kept. ``min_side``: the smallest side accepted
    (``MIN_SIDE`` for a photograph, which must hold a field of view; the scorer reading back the
    pipeline's own low-resolution inputs, a quarter of the working size, passes 1)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: {what} file not found")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: empty file (0 bytes)")
    try:
        rgb = _pillow_rgb(path, max_side, min_side, what)
    except DataError:
        raise
    except Image.DecompressionBombError as e:
        raise DataError(f"{path}: refused as a decompression bomb ({e})") from None
    except UnidentifiedImageError as e:
        if path.suffix.lower() not in (".tif", ".tiff"):
            raise DataError(f"{path}: not an image Pillow can read (unknown or corrupt "
                            f"format)") from e
        rgb = _tiff_rgb(path)
    except (OSError, SyntaxError, ValueError) as e:
        raise DataError(f"{path}: cannot decode {what} ({e})") from e
    _check_min_side(path, rgb.shape[1], rgb.shape[0], min_side, what)
    return rgb


def _check_min_side(path: Path, width: int, height: int, min_side: int, what: str) -> None:
    if min(width, height) < min_side:
        raise DataError(f"{path}: {what} is {width}x{height} pixels, expected at least "
                        f"{min_side}x{min_side}")


def load_rgb(path: str | Path, max_side: int | None = None, *,
             min_side: int = MIN_SIDE) -> np.ndarray:
    """Read an image file as RGB uint8 (H, W, 3) (``decode``). Raises ``DataError`` naming the
    file and the reason."""
    return decode(path, max_side, min_side=min_side)


def load_mask(path: str | Path, shape: tuple[int, int] | None = None) -> np.ndarray:
    """A field-of-view mask file -> bool (H, W): inside where the brightest channel is at least
    ``MASK_THRESHOLD``. Read by the image decoder (16-bit, float, palette, EXIF, bombs alike).
    ``shape`` (H, W): resized (nearest neighbour) to it, refused when its aspect ratio differs.
    Raises ``DataError`` naming the file."""
    path = Path(path)
    grey = decode(path, what="mask").max(axis=2)
    if grey.any() and grey.max() <= 1:
        raise DataError(f"{path}: mask holds only the values 0 and 1 (a label image); expected 0 "
                        f"outside and 255 inside the field of view (multiply it by 255)")
    inside = grey >= MASK_THRESHOLD
    if shape is None or inside.shape == tuple(shape):
        return inside
    (h, w), (mh, mw) = shape, inside.shape
    if abs((mw / mh) / (w / h) - 1) > MASK_ASPECT_TOLERANCE:
        raise DataError(f"{path}: mask is {mw}x{mh} pixels, its image {w}x{h} (another aspect "
                        f"ratio: a different picture, or one of them turned by its EXIF tag)")
    resized = Image.fromarray(inside.astype(np.uint8) * 255).resize((w, h), Image.NEAREST)
    return np.asarray(resized) >= MASK_THRESHOLD


def to_uint8(image) -> np.ndarray:
    """A float image in [0, 1] -> uint8, the one quantisation of every written image: NaN -> 0,
    +inf -> 255, clamped, rounded half to even.

    A torch tensor (C, H, W) becomes (H, W, C), or (H, W) for one channel; a numpy array keeps its
    layout ((H, W) or (H, W, C)); a uint8 array is returned as it is."""
    if hasattr(image, "detach"):  # torch, imported lazily: numpy callers need not load it
        import torch

        x = torch.nan_to_num(image.detach().float().cpu(), nan=0.0, posinf=1.0, neginf=0.0)
        arr = (x.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
        return arr[..., 0] if arr.shape[-1] == 1 else arr
    arr = np.asarray(image)
    if arr.dtype == np.uint8:
        return arr
    x = np.nan_to_num(arr.astype(np.float32), nan=0.0, posinf=1.0, neginf=0.0)
    return np.round(np.clip(x, 0.0, 1.0) * np.float32(255)).astype(np.uint8)


def save_png(path: str | Path, image) -> Path:
    """Write ``image`` (``to_uint8``'s inputs: a float tensor (C, H, W) or array in [0, 1], or a
    uint8 array (H, W[, 3])) as PNG via a temp file and a rename; returns the path."""
    path = Path(path)
    arr = to_uint8(image)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    with atomic_path(path) as tmp:
        Image.fromarray(arr).save(tmp, format="PNG")
    return path
