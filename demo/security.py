"""Safe defaults of the page: login, upload limits and checks, which folders may be served.

The page binds 127.0.0.1 without a share link, serves files only from the run and report
folders, and treats every upload as untrusted: size-limited by the server, then opened here with
Pillow's decompression-bomb guard and checked before any model sees it.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

MAX_UPLOAD = "25mb"            # launch(max_file_size=...): the server refuses larger uploads
MAX_UPLOAD_BYTES = 25 * 1024 * 1024
MAX_PIXELS = 40_000_000        # a 3504x2336 EyePACS photograph is 8.2 Mpx
MIN_SIDE = 32
AUTH_ENV, AUTH_FILE_ENV = "MEDQ_DEMO_AUTH", "MEDQ_DEMO_AUTH_FILE"


class UploadError(ValueError):
    """An upload that is not a usable image; the message is shown in the page."""


def _pairs(lines: list[str], where: str) -> list[tuple[str, str]]:
    out = []
    for n, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        user, sep, password = line.partition(":")
        if not sep or not user or not password:
            raise ValueError(f"{where} line {n}: expected user:password")
        out.append((user, password))
    return out


def auth_from_env(environ=None) -> list[tuple[str, str]] | None:
    """Logins for ``launch(auth=...)`` from MEDQ_DEMO_AUTH=user:password or MEDQ_DEMO_AUTH_FILE
    (one user:password per line, # comments); None (no login) when neither is set."""
    env = os.environ if environ is None else environ
    pairs: list[tuple[str, str]] = []
    if env.get(AUTH_ENV):
        pairs += _pairs([env[AUTH_ENV]], AUTH_ENV)
    if env.get(AUTH_FILE_ENV):
        path = Path(env[AUTH_FILE_ENV])
        if not path.is_file():
            raise ValueError(f"{AUTH_FILE_ENV}={path}: no such file")
        pairs += _pairs(path.read_text().splitlines(), f"{AUTH_FILE_ENV}={path}")
        if not pairs:
            raise ValueError(f"{AUTH_FILE_ENV}={path}: no user:password line")
    return pairs or None


def served_folders(runs: Path, reports: Path) -> list[str]:
    """The only folders the server may send files from (``launch(allowed_paths=...)``)."""
    return [str(Path(runs).resolve()), str(Path(reports).resolve())]


def read_upload(path, max_side: int | None = None) -> np.ndarray:
    """An uploaded file -> (H, W, 3) float32 RGB in [0, 1], or UploadError saying what is wrong.

    ``max_side``: shrink larger photographs (Lanczos, aspect kept) while decoding; the models work
    at a few hundred pixels at most, and a full 3504x2336 photograph takes seconds to crop."""
    path = Path(path)
    name = path.name
    try:
        size = path.stat().st_size
    except OSError as e:
        raise UploadError(f"{name}: cannot read the uploaded file ({e.strerror})") from e
    if size > MAX_UPLOAD_BYTES:
        raise UploadError(f"{name}: {size / 2**20:.1f} MB is over the {MAX_UPLOAD} limit")
    try:
        with Image.open(path) as im:
            im.verify()
        with Image.open(path) as im:
            if im.width * im.height > MAX_PIXELS:
                raise UploadError(f"{name}: {im.width}x{im.height} pixels is over the limit of "
                                  f"{MAX_PIXELS:,} pixels")
            im = im.convert("RGB")
            if max_side and max(im.size) > max_side:
                im.thumbnail((max_side, max_side), Image.LANCZOS)
            rgb = np.asarray(im, dtype=np.float32) / 255.0
    except UploadError:
        raise
    except (UnidentifiedImageError, Image.DecompressionBombError) as e:
        raise UploadError(f"{name}: not an image this page can read (PNG, JPEG, TIFF, ...): "
                          f"{e}") from e
    except (OSError, SyntaxError, ValueError) as e:
        raise UploadError(f"{name}: the image file is damaged or truncated ({e})") from e
    if min(rgb.shape[:2]) < MIN_SIDE:
        raise UploadError(f"{name}: {rgb.shape[1]}x{rgb.shape[0]} pixels is too small; expected a "
                          f"fundus photograph at least {MIN_SIDE} pixels on each side")
    return rgb
