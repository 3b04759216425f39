"""Pixel work for the page: PNG reading, nearest-neighbour zoom, SSIM error maps, per-image metrics.

Arrays here are numpy ``(H, W, 3)`` float32 RGB in [0, 1] (masks ``(H, W)`` bool); uint8 only when
handing images to Gradio. The numbers on the page are ``medq.metrics``' per-image functions, the
very definitions of ``reports/leaderboard.csv`` and ``per_image.csv``, so a clinician can find the
same value in both. The error *maps* are scikit-image's ``structural_similarity`` maps (Gaussian
window sigma 1.5, population covariance, data range 1): the reference picture of where structure
is lost.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image
from skimage.metrics import structural_similarity

from medq.data.imageio import to_uint8

SSIM_SETTINGS = dict(gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1.0)
# Images smaller than this (an SR input, a small upload) are enlarged by whole pixels for the
# panels, so that what the browser scales to fit was not interpolated first.
DISPLAY_MIN_SIDE = 256
BOX_COLOUR = np.array([1.0, 0.85, 0.0], dtype=np.float32)


def load_rgb(path: Path) -> np.ndarray:
    """An image file -> (H, W, 3) float32 in [0, 1], read by ``medq.data.imageio.load_rgb`` (the
    one reader of every stage: 16-bit, float TIFF, EXIF orientation and bombs handled there)."""
    from medq.data.imageio import load_rgb as read

    return read(path).astype(np.float32) / 255.0


def load_mask(path: Path | None, shape: tuple[int, int]) -> np.ndarray:
    """Field-of-view mask file -> (H, W) bool (``medq.data.imageio.load_mask``); everything is
    inside when there is no mask file."""
    from medq.data.imageio import load_mask as read

    if path is None or not Path(path).is_file():
        return np.ones(shape, dtype=bool)
    return read(path, shape)


def shrink(img: np.ndarray, max_side: int) -> np.ndarray:
    """(H, W, 3) float in [0, 1] with its longer side reduced to ``max_side`` (Lanczos, aspect
    kept); unchanged when already small enough."""
    if max(img.shape[:2]) <= max_side:
        return img
    im = Image.fromarray(to_uint8(img))
    im.thumbnail((max_side, max_side), Image.LANCZOS)
    return np.asarray(im, dtype=np.float32) / 255.0


def resize_nearest(img: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of (H, W[, C]) to size (H', W'): each source pixel stays a block."""
    h, w = img.shape[:2]
    rows = (np.arange(size[0]) * h // size[0]).clip(0, h - 1)
    cols = (np.arange(size[1]) * w // size[1]).clip(0, w - 1)
    return img[rows][:, cols]


def display_factor(side: int) -> int:
    """Whole-pixel enlargement that brings a ``side``-pixel image to at least DISPLAY_MIN_SIDE."""
    return max(1, math.ceil(DISPLAY_MIN_SIDE / max(side, 1)))


def enlarge(img: np.ndarray, factor: int) -> np.ndarray:
    return img if factor == 1 else np.repeat(np.repeat(img, factor, axis=0), factor, axis=1)


def crop_box(shape: tuple[int, int], cx: float, cy: float,
             side: int) -> tuple[int, int, int, int]:
    """Square box (y0, y1, x0, x1) of ``side`` pixels (at most the image's shorter side) centred on
    the fractions (cx, cy) of the width and height, shifted inside the image."""
    h, w = shape
    side = min(max(1, int(side)), h, w)
    x0 = int(round(cx * w - side / 2))
    y0 = int(round(cy * h - side / 2))
    x0, y0 = min(max(x0, 0), w - side), min(max(y0, 0), h - side)
    return y0, y0 + side, x0, x0 + side


def zoom_crop(img: np.ndarray, box: tuple[int, int, int, int], factor: int) -> np.ndarray:
    """The box of ``img`` with each pixel enlarged to a ``factor`` x ``factor`` block (1: the
    image's own pixels): the page shows it without any further scaling."""
    y0, y1, x0, x1 = box
    return enlarge(img[y0:y1, x0:x1], max(1, int(factor)))


def draw_box(img: np.ndarray, box: tuple[int, int, int, int], thickness: int = 1) -> np.ndarray:
    """A copy of ``img`` (H, W, 3), float in [0, 1] or uint8, with the outline of ``box`` in
    yellow (the same pixels either way, once the float image is made uint8)."""
    out = img.copy()
    colour = to_uint8(BOX_COLOUR) if out.dtype == np.uint8 else BOX_COLOUR
    y0, y1, x0, x1 = box
    t = thickness
    out[y0:min(y0 + t, y1), x0:x1] = colour
    out[max(y1 - t, y0):y1, x0:x1] = colour
    out[y0:y1, x0:min(x0 + t, x1)] = colour
    out[y0:y1, max(x1 - t, x0):x1] = colour
    return out


def ssim_map(output: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Per-pixel SSIM (H, W) of two (H, W, 3) images, averaged over the colour channels."""
    if output.shape != target.shape:
        raise ValueError(f"output {output.shape} and target {target.shape} differ in shape")
    _, full = structural_similarity(output, target, channel_axis=-1, full=True, **SSIM_SETTINGS)
    return full.mean(axis=-1)


def nearly_identical(a: np.ndarray, b: np.ndarray, max_levels: int, min_ssim: float) -> bool:
    """Whether two (H, W, 3) images in [0, 1] are one picture for a reader: no 8-bit pixel
    differs by more than ``max_levels``, or their SSIM (scikit-image, ``SSIM_SETTINGS``) is at
    least ``min_ssim``. SSIM is computed only when the mean difference is under one level, the
    only case in which it can reach 0.999."""
    if a.shape != b.shape:
        return False
    diff = np.abs(to_uint8(a).astype(np.int16) - to_uint8(b).astype(np.int16))
    if int(diff.max()) <= max_levels:
        return True
    if diff.mean() >= 1.0:
        return False
    return structural_similarity(a, b, channel_axis=-1, **SSIM_SETTINGS) >= min_ssim


def image_metrics(output: np.ndarray, target: np.ndarray, mask: np.ndarray) -> dict:
    """PSNR (dB) and SSIM of one output against its target, over the whole image and inside the
    field of view: the functions of ``medq.metrics`` behind the leaderboard's per-image columns
    of the same names, called one by one rather than through ``medq.metrics.image_metrics``,
    which also computes MS-SSIM; the page does not show it, and at an upload's own size (up to
    1024 px) it would cost several times the rest, once per mode."""
    import torch

    from medq import metrics

    def chw(img: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(img, dtype=np.float32)).permute(2, 0, 1)[None]

    out, ref = chw(output).clamp(0, 1), chw(target).clamp(0, 1)
    fov = torch.from_numpy(np.asarray(mask, dtype=np.float32))[None, None]
    with torch.no_grad():
        values = {"psnr": metrics.psnr(out, ref), "psnr_fov": metrics.psnr(out, ref, fov),
                  "psnr_eroded_fov": metrics.psnr_eroded_fov(out, ref, fov),
                  "ssim": metrics.ssim(out, ref), "ssim_fov": metrics.ssim(out, ref, fov)}
    return {k: float(v[0]) for k, v in values.items()}


def error_heatmap(error: np.ndarray, mask: np.ndarray, vmax: float,
                  cmap: str = "inferno") -> np.ndarray:
    """1 - SSIM (H, W) -> (H, W, 3) colours on the scale [0, vmax]; outside the field of view the
    colours are dimmed, since errors on the black border are not clinically meaningful."""
    import matplotlib

    scaled = np.clip(error / max(vmax, 1e-6), 0.0, 1.0)
    rgb = matplotlib.colormaps[cmap](scaled)[..., :3].astype(np.float32)
    rgb[~mask] *= 0.3
    return rgb



class PngStore:
    """Writes uint8 images as PNG files named by their content hash and returns the paths.

    Gradio rewrites its cached copy of a returned array on every response, in place; when the
    same picture is sent again while the browser is still fetching it, the download breaks
    (``Too much data for declared Content-Length``). Gradio copies returned *files* into its cache
    only once, atomically, so the page hands it files: written once, under a temporary name, then
    renamed. Without a ``root`` the store's own folder is removed when the process exits.

    A store creates its own folder, never the folders above it (``root``'s parent must exist):
    a request still running when the server removed its temp folder at the stop
    (``demo.hygiene``) then fails instead of re-creating that folder with a patient's picture in
    it, where nothing would delete it."""

    def __init__(self, root: Path | None = None):
        import atexit
        import shutil
        import tempfile

        self.root = Path(root) if root is not None else Path(tempfile.mkdtemp(prefix="medq-demo-"))
        self.root.mkdir(exist_ok=True)
        if root is None:
            atexit.register(shutil.rmtree, self.root, True)

    def __call__(self, image: np.ndarray) -> str:
        import hashlib
        import io

        from medq.files import write_bytes_atomic

        buf = io.BytesIO()
        Image.fromarray(image).save(buf, format="PNG")
        data = buf.getvalue()
        path = self.root / f"{hashlib.sha256(data).hexdigest()[:32]}.png"
        if not path.exists():
            self.root.mkdir(exist_ok=True)
            write_bytes_atomic(path, data)
        return str(path)

    def copy(self, source: Path) -> str:
        """A copy of ``source`` (e.g. the leaderboard to download) under this store, with its
        own name, so it is served without serving the folder it comes from."""
        from medq.files import write_bytes_atomic

        data = Path(source).read_bytes()
        path = self.root / Path(source).name
        if not path.is_file() or path.read_bytes() != data:
            self.root.mkdir(exist_ok=True)
            write_bytes_atomic(path, data)
        return str(path)


def colour_bar(vmin: float = 0.0, vmax: float = 1.0, cmap: str = "inferno", width: int = 512,
               label: str = "1 - SSIM (0 = structure kept, 1 = structure lost)") -> np.ndarray:
    """A horizontal colour bar (uint8 (h, width, 3)) with ticks, for the error maps' fixed scale.
    Drawn with matplotlib's object API (no pyplot, no global backend)."""
    import io

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width / 100, 0.9), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0.03, 0.55, 0.94, 0.3))
    bar = fig.colorbar(ScalarMappable(Normalize(vmin, vmax), cmap), cax=ax,
                       orientation="horizontal")
    bar.set_ticks(np.linspace(vmin, vmax, 5))
    bar.ax.tick_params(labelsize=8)
    bar.set_label(label, fontsize=8)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", facecolor="white")
    with Image.open(io.BytesIO(buf.getvalue())) as im:
        return np.asarray(im.convert("RGB"))
