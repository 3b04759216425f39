"""Safe defaults of the page: login (throttled), upload limits and checks, what may be served.

The page binds 127.0.0.1 without a share link and serves no folder at all: every picture it shows
is written by the page itself (``imaging.PngStore``) and handed to Gradio, which serves only
those, so weights, caches and configs under ``runs/`` cannot be fetched by path. Every upload is
untrusted: size-limited by the server and here, its declared size checked before decoding, then
checked to be a colour fundus photograph before any model sees it.
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


def blocked_folders(runs: Path, reports: Path) -> list[str]:
    """Folders the server must never send files from (``launch(blocked_paths=...)``), even if a
    future Gradio allowed them by default (its working directory, say): runs and reports."""
    return [str(Path(runs).resolve()), str(Path(reports).resolve())]


def _mb(n: int) -> str:
    return f"{n / 2**20:.1f} MB"


def read_upload(path, max_side: int | None = None, *, check_fundus: bool = True) -> np.ndarray:
    """An uploaded file -> (H, W, 3) float32 RGB in [0, 1], or UploadError saying what is wrong.

    Order matters: the file size, then the size the header declares, are checked before any
    pixel is decoded (a 60000x60000 PNG of a few kB must not be expanded); decoding and every
    conversion (16-bit, float TIFF, CMYK, alpha) are ``medq.data.load_rgb``'s, the reader of the
    training data; then the image must look like a colour fundus photograph
    (``medq.data.fundus_check``). Messages name the file by its own name (never the server's
    temporary path) and give the real size. ``max_side``: shrink larger photographs while
    decoding (the models work at a few hundred pixels at most)."""
    from medq.data.fundus_check import check_fundus as fundus_check
    from medq.data.imageio import DataError, load_rgb

    path = Path(path)
    name = path.name
    try:
        size = path.stat().st_size
    except OSError as e:
        raise UploadError(f"{name}: cannot read the uploaded file ({e.strerror})") from e
    if size > MAX_UPLOAD_BYTES:
        raise UploadError(f"{name}: the file is {_mb(size)}, over the {_mb(MAX_UPLOAD_BYTES)} "
                          f"upload limit")
    if size == 0:
        raise UploadError(f"{name}: the file is empty (0 bytes); expected an image")
    try:
        with Image.open(path) as im:                   # reads the header only
            width, height = im.size
    except Image.DecompressionBombError as e:          # Pillow's own guard, far above ours
        import re

        n = re.search(r"\((\d+) pixels\)", str(e))
        declared = f"{int(n.group(1)) / 1e6:,.0f} Mpx" if n else "a huge number of pixels"
        raise UploadError(f"{name}: the image declares {declared}, over the limit of "
                          f"{MAX_PIXELS / 1e6:.0f} Mpx; it was not decoded") from e
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        if path.suffix.lower() not in (".tif", ".tiff"):    # float TIFFs: Pillow cannot open them
            kind = "damaged or truncated" if isinstance(e, (OSError, SyntaxError)) and not \
                isinstance(e, UnidentifiedImageError) else "not an image this page can read"
            raise UploadError(f"{name}: {kind} (expected a PNG, JPEG or TIFF fundus "
                              f"photograph)") from e
        width = height = None
    if width is not None and width * height > MAX_PIXELS:
        raise UploadError(f"{name}: the image declares {width}x{height} pixels "
                          f"({width * height / 1e6:.0f} Mpx), over the limit of "
                          f"{MAX_PIXELS / 1e6:.0f} Mpx; it was not decoded")
    if width is not None and min(width, height) < MIN_SIDE:
        raise UploadError(f"{name}: {width}x{height} pixels is too small; expected a fundus "
                          f"photograph at least {MIN_SIDE} pixels on each side")
    try:
        rgb = load_rgb(path)
    except DataError as e:
        reason = str(e).replace(str(path), name)
        if "cannot decode" in reason or "truncated" in reason:
            raise UploadError(f"{name}: the image file is damaged or truncated") from e
        raise UploadError(reason if reason.startswith(name) else f"{name}: {reason}") from e
    height, width = rgb.shape[:2]
    if min(width, height) < MIN_SIDE:
        raise UploadError(f"{name}: {width}x{height} pixels is too small; expected a fundus "
                          f"photograph at least {MIN_SIDE} pixels on each side")
    if check_fundus:
        check = fundus_check(rgb)
        if not check.ok:
            raise UploadError(f"{name} ({width}x{height}) is not a colour fundus photograph: "
                              f"{check.reason}")
    if max_side and max(rgb.shape[:2]) > max_side:
        im = Image.fromarray(rgb)
        im.thumbnail((max_side, max_side), Image.LANCZOS)
        rgb = np.asarray(im)
    return rgb.astype(np.float32) / 255.0


class LoginThrottle:
    """``launch(auth=...)`` as a callable that slows password guessing down.

    After ``free`` failed attempts for one user name, that name is locked for ``lock_seconds``,
    doubling with every further failure (capped at ``max_lock``); while locked every attempt,
    even with the right password, is refused without being checked, so guessing gains nothing.
    A success resets the count. Gradio's login form calls this in its event loop: it must not
    sleep, hence a lock rather than a delay. The cost (someone can lock a user out for a while)
    is the usual one of lockouts; the log names the user."""

    def __init__(self, pairs: list[tuple[str, str]], *, free: int = 5, lock_seconds: float = 30.0,
                 max_lock: float = 900.0, clock=None):
        import time

        self._passwords = dict(pairs)
        self.free, self.lock_seconds, self.max_lock = free, lock_seconds, max_lock
        self._clock = clock or time.monotonic
        self._failures: dict[str, int] = {}
        self._locked_until: dict[str, float] = {}

    def locked_for(self, user: str) -> float:
        """Seconds until ``user`` may try again (0 when not locked)."""
        return max(0.0, self._locked_until.get(user, 0.0) - self._clock())

    def __call__(self, user: str, password: str) -> bool:
        import hmac
        import logging

        if self.locked_for(user) > 0:
            return False
        good = user in self._passwords and hmac.compare_digest(
            password.encode(), self._passwords[user].encode())
        if good:
            self._failures.pop(user, None)
            return True
        n = self._failures[user] = self._failures.get(user, 0) + 1
        if n >= self.free:
            wait = min(self.max_lock, self.lock_seconds * 2 ** (n - self.free))
            self._locked_until[user] = self._clock() + wait
            logging.getLogger(__name__).warning("login: %d failed attempts for %r; locked for "
                                                "%.0f s", n, user, wait)
        return False
