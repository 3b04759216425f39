"""Safe defaults of the page: login (throttled), upload limits and checks, what may be served.

The page binds 127.0.0.1 without a share link and serves no folder at all: every picture it shows
is written by the page itself (``imaging.PngStore``) and handed to Gradio, which serves only
those, so weights, caches and configs under ``runs/`` cannot be fetched by path. Every upload is
untrusted: size-limited by the server and here, its declared size checked before decoding, then
checked to be a colour fundus photograph before any model sees it.
"""

from __future__ import annotations

import contextvars
import os
from dataclasses import dataclass
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


@dataclass(frozen=True)
class UploadInfo:
    """What an upload's header says before any pixel is decoded: its size in pixels (the page
    names a photograph by it, even when it is decoded reduced)."""

    width: int
    height: int

    @property
    def size(self) -> str:
        return f"{self.width}x{self.height}"


def _tiff_header(path: Path, name: str) -> UploadInfo:
    """The size of a TIFF Pillow cannot open (float samples), from tifffile's header."""
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            page = tif.pages.first
            return UploadInfo(int(page.imagewidth), int(page.imagelength))
    except Exception as e:  # noqa: BLE001 - tifffile raises many types for foreign data
        raise UploadError(f"{name}: not an image this page can read (expected a PNG, JPEG or "
                          f"TIFF fundus photograph)") from e


def upload_info(path) -> UploadInfo:
    """The header of an uploaded file (nothing decoded), or UploadError saying what is wrong:
    unreadable, empty, over ``MAX_UPLOAD_BYTES``, not an image, damaged, over ``MAX_PIXELS``
    (a decompression bomb must not be expanded), under ``MIN_SIDE``."""
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
            info = UploadInfo(*im.size)
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
        info = _tiff_header(path, name)
    if info.width * info.height > MAX_PIXELS:
        raise UploadError(f"{name}: the image declares {info.size} pixels "
                          f"({info.width * info.height / 1e6:.0f} Mpx), over the limit of "
                          f"{MAX_PIXELS / 1e6:.0f} Mpx; it was not decoded")
    if min(info.width, info.height) < MIN_SIDE:
        raise UploadError(f"{name}: {info.size} pixels is too small; expected a fundus "
                          f"photograph at least {MIN_SIDE} pixels on each side")
    return info


def read_upload(path, max_side: int | None = None, *, check_fundus: bool = True) -> np.ndarray:
    """An uploaded file -> (H, W, 3) float32 RGB in [0, 1], or UploadError saying what is wrong.

    Order matters: the file size, then the size the header declares (``upload_info``), are
    checked before any pixel is decoded (a 60000x60000 PNG of a few kB must not be expanded);
    decoding and every conversion (16-bit, float TIFF, CMYK, alpha) are ``medq.data.load_rgb``'s,
    the reader of the training data; then the image must look like a colour fundus photograph
    (``medq.data.fundus_check``). Messages name the file by its own name (never the server's
    temporary path) and give its size as uploaded. ``max_side``: photographs larger than that
    are shrunk to it (a JPEG already while decoding, ``load_rgb``'s draft mode, then Lanczos)."""
    from medq.data.fundus_check import check_fundus as fundus_check
    from medq.data.imageio import DataError, load_rgb

    path = Path(path)
    name = path.name
    info = upload_info(path)
    try:
        rgb = load_rgb(path, max_side=max_side)
    except DataError as e:
        reason = str(e).replace(str(path), name)
        if "cannot decode" in reason or "truncated" in reason:
            raise UploadError(f"{name}: the image file is damaged or truncated") from e
        raise UploadError(reason if reason.startswith(name) else f"{name}: {reason}") from e
    if check_fundus:
        check = fundus_check(rgb)
        if not check.ok:
            raise UploadError(f"{name} ({info.size}) is not a colour fundus photograph: "
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


LOGIN_POLICY = ("Research demo, not for diagnosis. After 5 wrong passwords a user name is locked "
                "for 30 s, then twice as long after each further one (at most 15 min).")
"""The login page's message (``launch(auth_message=...)``); it must match ``LoginThrottle``'s
defaults, which ``launch`` uses."""
LOCK_COOKIE = "medq-login-locked"
_LOCK_NOTICE = contextvars.ContextVar("medq_lock_notice", default="")
"""The lock notice of the request being served (set by ``LockNotice``, read by
``login_message``)."""


def login_message(policy: str | None) -> str | None:
    """The login page's message for the current request: ``policy`` and, when this browser's
    last attempt hit a locked user name, that it is locked and for how long."""
    import html

    notice = _LOCK_NOTICE.get()
    parts = ([f"<p><strong>{html.escape(notice)}</strong></p>"] if notice else []) + \
        ([f"<p>{html.escape(policy)}</p>"] if policy else [])
    return "".join(parts) or None


def _wait_text(seconds: float) -> str:
    seconds = int(seconds + 0.999)
    return f"{seconds} s" if seconds < 120 else f"{seconds // 60} min {seconds % 60:02d} s"


class LockNotice:
    """ASGI middleware telling a locked-out user so (Gradio's login form says "incorrect
    credentials" to every refusal and shows only a fixed message).

    A login attempt (POST .../login) for a user name that is locked, or that this attempt locks,
    is answered with a redirect to the page (303; the form then reloads it) and a short-lived
    cookie naming the user; any page request carrying the cookie gets, in the login page's
    message, "User ... is locked after too many wrong passwords: try again in N s" (through a
    context variable that ``login_message`` reads). Any other request passes untouched."""

    def __init__(self, app, throttle: "LoginThrottle"):
        self.app, self.throttle = app, throttle

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or self.throttle is None:
            return await self.app(scope, receive, send)
        if scope["method"] == "POST" and scope["path"].rstrip("/").endswith("/login"):
            return await self._login(scope, receive, send)
        token = _LOCK_NOTICE.set(self._notice(scope))
        try:
            return await self.app(scope, receive, send)
        finally:
            _LOCK_NOTICE.reset(token)

    def _notice(self, scope) -> str:
        from http.cookies import SimpleCookie
        from urllib.parse import unquote

        raw = dict(scope.get("headers") or []).get(b"cookie", b"").decode("latin-1")
        morsel = SimpleCookie(raw).get(LOCK_COOKIE) if raw else None
        user = unquote(morsel.value) if morsel is not None else ""
        wait = self.throttle.locked_for(user) if user else 0.0
        return (f"User {user} is locked after too many wrong passwords: try again in "
                f"{_wait_text(wait)}." if wait > 0 else "")

    async def _login(self, scope, receive, send):
        from starlette.requests import Request

        chunks, more = [], True
        while more:
            message = await receive()
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        body = b"".join(chunks)

        def replay():
            sent = False

            async def receive_again():
                nonlocal sent
                if sent:
                    return {"type": "http.disconnect"}
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return receive_again

        form = await Request(scope, receive=replay()).form()
        user = str(form.get("username") or "").strip()
        if self.throttle.locked_for(user) > 0:
            return await self._see_page(send, user)
        held: dict = {}

        async def watch(message):
            if message["type"] == "http.response.start" and message["status"] == 400 \
                    and self.throttle.locked_for(user) > 0:
                held["locked"] = True                  # this attempt locked the user
                return
            if held.get("locked"):
                if message["type"] == "http.response.body" and not message.get("more_body"):
                    await self._see_page(send, user)
                return
            await send(message)

        await self.app(scope, replay(), watch)

    async def _see_page(self, send, user: str) -> None:
        from urllib.parse import quote

        wait = int(self.throttle.locked_for(user) + 1)
        cookie = f"{LOCK_COOKIE}={quote(user)}; Max-Age={wait}; Path=/; HttpOnly; SameSite=Strict"
        await send({"type": "http.response.start", "status": 303,
                    "headers": [(b"location", b"./"), (b"set-cookie", cookie.encode("latin-1")),
                                (b"content-length", b"0")]})
        await send({"type": "http.response.body", "body": b""})
