"""Images for the tests: a synthetic fundus-like disc, PNGs written byte by byte (a header that
only claims a size, 16-bit RGB), the corpus of image files every reader must handle alike
(``image_corpus``) and the corpus of pictures that are not fundus photographs
(``not_fundus_corpus``).

    corpus = image_corpus(tmp_path / "corpus")       # name -> CorpusFile(path, expect | reason)
    for case in corpus.values():
        if case.reason:   ...refused: DataError matching case.reason, naming case.path
        else:             ...read: case.matches(rgb) (pixels of case.expect), mask case.mask

Everything is generated here at test time (never committed); no real photograph is copied.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw


def fundus(h=96, w=96) -> np.ndarray:
    """(h, w, 3) uint8: an orange disc on black, the shape the FOV detector accepts."""
    yy, xx = np.mgrid[:h, :w]
    img = np.zeros((h, w, 3), np.uint8)
    img[(yy - h / 2) ** 2 + (xx - w / 2) ** 2 < (0.45 * min(h, w)) ** 2] = (200, 100, 50)
    return img


def fundus_folder(root: Path, n: int = 3, size: int = 64, broken: bool = False) -> Path:
    """A ``--data folder`` of ``n`` ``fundus`` PNGs (``f0.png`` ...), plus ``broken.png`` (not an
    image) when ``broken``. Returns ``root``."""
    root = Path(root)
    root.mkdir(parents=True)
    for i in range(n):
        Image.fromarray(fundus(size, size)).save(root / f"f{i}.png")
    if broken:
        (root / "broken.png").write_text("not an image")
    return root


def _png(chunks: list[tuple[bytes, bytes]]) -> bytes:
    """A PNG file of (kind, data) chunks, each with its length and CRC."""
    return b"\x89PNG\r\n\x1a\n" + b"".join(
        struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        for kind, data in chunks)


def png_header_only(path, width: int, height: int) -> None:
    """A PNG whose header promises width x height RGB pixels, with almost no data."""
    Path(path).write_bytes(_png([(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)),
                                 (b"IDAT", zlib.compress(b"\x00" * 64)), (b"IEND", b"")]))


def write_png16(path: Path, rgb16: np.ndarray) -> Path:
    """A 16-bit RGB PNG (Pillow cannot write one): IHDR bit depth 16, colour type 2."""
    h, w, _ = rgb16.shape
    raw = b"".join(b"\x00" + rgb16[y].astype(">u2").tobytes() for y in range(h))
    Path(path).write_bytes(_png([(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)),
                                 (b"IDAT", zlib.compress(raw)), (b"IEND", b"")]))
    return Path(path)


def tiff_header_only(path: Path, width: int, height: int) -> None:
    """A float32 RGB TIFF (which Pillow cannot open: tifffile reads it) whose header promises
    width x height pixels: a small file written, then its two size tags patched."""
    import tifffile

    tifffile.imwrite(path, np.zeros((16, 16, 3), np.float32), photometric="rgb")
    data = bytearray(Path(path).read_bytes())
    with tifffile.TiffFile(path) as tif:
        tags = tif.pages.first.tags
        for tag, value in (("ImageWidth", width), ("ImageLength", height),
                           ("RowsPerStrip", height)):  # one strip, as the file has
            offset, fmt = tags[tag].valueoffset, "<I" if tags[tag].dtype == 4 else "<H"
            data[offset:offset + struct.calcsize(fmt)] = struct.pack(fmt, value)
    Path(path).write_bytes(bytes(data))


# ---------------------------------------------------------------------------------------------
# the image-file corpus (medq.data.imageio): every entry point reads it alike


CORPUS_SHAPE = (64, 80)
"""(H, W) of the corpus picture: not square, so that a missed EXIF turn shows in the shape."""


def corpus_picture(shape: tuple[int, int] = CORPUS_SHAPE) -> np.ndarray:
    """(H, W, 3) uint8: ``fundus``'s orange disc with a white square in its upper left part
    (asymmetric, so that every turn and flip is seen). Every value is far from the mask
    threshold (0 outside, >= 200 in its brightest channel inside)."""
    h, w = shape
    img = fundus(h, w)
    img[h // 4:h // 4 + 8, w // 2 - 14:w // 2 - 6] = 255
    return img


@dataclass(frozen=True)
class CorpusFile:
    """One file of ``image_corpus``: a conversion (``expect``: the RGB uint8 every reader must
    return, within ``tolerance`` mean absolute difference for lossy formats) or a refusal
    (``reason``: a regex of the ``DataError`` message, which also names ``path``)."""

    path: Path
    expect: np.ndarray | None = None
    reason: str | None = None
    tolerance: float = 0.0

    @property
    def mask(self) -> np.ndarray:
        """The field of view this file means read as a mask (``medq.data.imageio.load_mask``)."""
        return self.expect.max(axis=2) >= 128

    def matches(self, rgb: np.ndarray) -> bool:
        """``rgb`` is the picture this file holds (exactly, or within ``tolerance``)."""
        if rgb.shape != self.expect.shape or rgb.dtype != np.uint8:
            return False
        diff = np.abs(rgb.astype(np.int16) - self.expect)
        return bool(diff.max() == 0) if self.tolerance == 0 else diff.mean() <= self.tolerance


def _converted(d: Path, ref: np.ndarray) -> dict[str, CorpusFile]:
    """Files holding ``ref`` (or its grey version) in every encoding the readers convert."""
    import tifffile

    grey = ref.max(axis=2)
    grey3 = np.repeat(grey[:, :, None], 3, axis=2)
    out: dict[str, CorpusFile] = {}

    def pil(name: str, img: Image.Image, expect=ref, tolerance=0.0, **kw) -> None:
        img.save(d / name, **kw)
        out[name] = CorpusFile(d / name, expect, tolerance=tolerance)

    pil("rgb8.png", Image.fromarray(ref))
    pil("rgb_bmp.bmp", Image.fromarray(ref))
    pil("rgb_ppm.ppm", Image.fromarray(ref))
    pil("rgb_webp_lossless.webp", Image.fromarray(ref), lossless=True)
    pil("rgb_jpeg.jpg", Image.fromarray(ref), tolerance=3.0, quality=95)
    pil("grey8.png", Image.fromarray(grey), grey3)
    pil("grey16.png", Image.fromarray(grey.astype(np.uint16) * 257), grey3)
    pil("palette.png", Image.fromarray(ref).convert("P", palette=Image.ADAPTIVE, colors=8))
    pil("palette_gif.gif", Image.fromarray(ref).convert("P", palette=Image.ADAPTIVE, colors=8))
    clear = Image.fromarray(ref).convert("P", palette=Image.ADAPTIVE, colors=8)
    pil("palette_transparent.png", clear, transparency=clear.getpixel((0, 0)))
    rgba = np.dstack([ref, np.where(grey > 0, 255, 0).astype(np.uint8)])
    rgba[grey == 0, :3] = (255, 0, 255)              # hidden colour: composited on black
    pil("rgba.png", Image.fromarray(rgba, "RGBA"))
    pil("grey_alpha.png", Image.fromarray(np.dstack([grey, np.full_like(grey, 255)]), "LA"),
        grey3)
    pil("cmyk_tiff.tif", Image.fromarray(ref).convert("CMYK"))
    pil("cmyk_jpeg.jpg", Image.fromarray(ref).convert("CMYK"), tolerance=4.0, quality=95)
    exif = Image.Exif()
    exif[0x0112] = 6                                 # "turn 90 degrees clockwise to display"
    sideways = Image.fromarray(np.rot90(ref, 1).copy())   # stored turned the other way
    pil("exif_rotated.png", sideways, exif=exif.tobytes())
    pil("exif_rotated_jpeg.jpg", sideways, tolerance=3.0, exif=exif.tobytes(), quality=95)
    write_png16(d / "rgb16.png", ref.astype(np.uint16) * 257)
    out["rgb16.png"] = CorpusFile(d / "rgb16.png", ref)
    for name, array, expect in (("rgb16_tiff.tif", ref.astype(np.uint16) * 257, ref),
                                ("float01.tif", ref.astype(np.float32) / 255, ref),
                                ("float255.tif", ref.astype(np.float32), ref),
                                ("grey_float01.tif", grey.astype(np.float32) / 255, grey3)):
        tifffile.imwrite(d / name, array, photometric="rgb" if array.ndim == 3 else "minisblack")
        out[name] = CorpusFile(d / name, expect)
    return out


def _refused(d: Path, ref: np.ndarray) -> dict[str, CorpusFile]:
    """Files no reader may decode, each with the reason its refusal must give."""
    out: dict[str, CorpusFile] = {}

    def write(name: str, data: bytes, reason: str) -> None:
        (d / name).write_bytes(data)
        out[name] = CorpusFile(d / name, reason=reason)

    Image.fromarray(ref).save(d / "_whole.jpg", quality=95)
    Image.fromarray(ref).save(d / "_whole.png")
    write("empty.png", b"", r"empty file \(0 bytes\)")
    write("text.png", b"this is not a png", r"not an image Pillow can read")
    write("garbage.tif", bytes(range(256)) * 8, r"not an image Pillow or tifffile can read")
    write("truncated_jpeg.jpg", (d / "_whole.jpg").read_bytes()[:700], r"cannot decode")
    write("truncated_png.png", (d / "_whole.png").read_bytes()[:300], r"cannot decode")
    (d / "_whole.jpg").unlink()
    (d / "_whole.png").unlink()
    Image.fromarray(ref[:8, 30:38]).save(d / "tiny.png")
    out["tiny.png"] = CorpusFile(d / "tiny.png", reason=r"is 8x8 pixels, expected at least 16x16")
    for name, side in (("bomb.png", 12000), ("bomb_2x.png", 100000)):  # above, and twice above,
        png_header_only(d / name, side, side)                       # Pillow's limit
        out[name] = CorpusFile(d / name, reason=r"decompression bomb")
    tiff_header_only(d / "bomb_float.tif", 20000, 20000)
    out["bomb_float.tif"] = CorpusFile(d / "bomb_float.tif", reason=r"decompression bomb")
    return out


def image_corpus(directory: Path, shape: tuple[int, int] = CORPUS_SHAPE) -> dict[str, CorpusFile]:
    """Write the corpus into ``directory`` (created): every encoding of ``corpus_picture`` the
    readers convert (16-bit, float TIFF, palette with and without transparency, alpha, CMYK, EXIF
    orientation, lossless and lossy formats) and every file they refuse (empty, not an image,
    truncated, too small, decompression bombs by header in PNG and in a float TIFF), each under
    its own stem. Returns file name -> ``CorpusFile``. Image files and mask files are read
    alike, so the same corpus tests both (a mask means ``CorpusFile.mask``)."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    ref = corpus_picture(shape)
    corpus = {**_converted(d, ref), **_refused(d, ref)}
    # One stem per file: a folder of them is read as images, none as another's mask
    # (medq.data.readers pairs <stem>.* files in one folder).
    assert len({Path(n).stem for n in corpus}) == len(corpus)
    return corpus


# ---------------------------------------------------------------------------------------------
# pictures that are not fundus photographs (medq.data.fundus_check, the demo's uploads)


def _text_page(dark: bool) -> np.ndarray:
    page = Image.new("RGB", (800, 500), (30, 30, 30) if dark else "white")
    draw = ImageDraw.Draw(page)
    if dark:
        draw.rectangle((0, 0, 800, 40), fill=(60, 60, 200))
    for k in range(18):
        draw.text((20, 60 + k * 22), f"def f(x): return x * {k}  # a screenshot of code, line {k}",
                  fill=(220, 220, 100) if dark else "black")
    return np.asarray(page)


def not_fundus_corpus(tmp_path: Path) -> dict[str, Path]:
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
NOT_FUNDUS_REASON = {
    "noise.png": "no dark surround", "gauss_noise.png": "not a round disc",
    "orange_noise.png": "not a round disc", "cmyk_noise.jpg": "no dark surround",
    "exif_rotated_noise.jpg": "no dark surround", "white.png": "one flat white",
    "black.png": "one flat black", "grey.png": r"one flat colour \(RGB 128, 128, 128\)",
    "painted_disc.png": "no visible vessels", "text_page.png": "no dark surround",
    "dark_screenshot.png": "no bright round field of view",
    "strip_2000x40.png": "2000x40 image is 50.0 times longer", "gradient.png": "not a round disc",
}
