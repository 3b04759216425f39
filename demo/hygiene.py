"""Where the page keeps patients' pictures, and when they go (issue 30 item 6).

Everything the page receives or writes lives in one private folder per server process
(``temp_root``, mode 0700 under the system temp dir): Gradio is pointed at it
(``GRADIO_TEMP_DIR``), so uploads land there, and the pictures the page shows are written there,
where Gradio serves them without copying; the harness's scratch files of a test image go there
too (``scratch_dir``). The folder is removed when the server stops (``remove_temp_root``, called
by ``python -m demo`` once the server is closed, on Ctrl-C or SIGTERM) and swept once more at
interpreter exit, for a request that was still running at the stop. Nothing re-creates it: the
page's picture stores create only their own folder, never the folders above it
(``imaging.PngStore``), so a late request fails instead of writing a patient's picture into a
folder nobody will delete.

``python -m demo`` makes that folder the server process's temp folder (``own_temp_folder``:
``tempfile`` and ``TMPDIR``), so whatever any library writes to "the temp folder" goes with it
at the stop too; torch.compile (the per-image SSIM is compiled) puts its precompiled header
there, and its kernel cache did too. The kernel cache (compiled code, no image data) is kept
between runs instead, so that a restart does not compile again: ``keep_compiler_cache_out_of_temp``
moves it to the user's cache folder.

Per browser session (``Sessions``): the uploads it sent and the pictures written for it are
deleted when the session ends (Gradio's ``unload`` event: the tab closed or reloaded), and its
last comparison, kept on the server for the zoom and slider, is dropped. Kept comparisons are
bounded in bytes as well as in number (``MAX_KEPT_BYTES``, ``max_sessions``; least recently used
first out): a comparison's size grows with the photograph's side and the number of modes, so a
count alone let memory grow with every new session up to many times the budget, and sessions
that are never closed (a tab left open, an API client) never give theirs back.

Memory a comparison frees (model activations, full-size metrics, PNG buffers: hundreds of MB at
an upload's own size) goes back to glibc's allocator, which keeps most of it for reuse instead
of returning it to the system: the server's resident memory then creeps up with every upload,
although nothing is still in use. ``release_memory`` (glibc's ``malloc_trim``) returns it after
every comparison and session end, so resident memory follows what the server actually holds.
"""

from __future__ import annotations

import atexit
import ctypes
import functools
import hashlib
import os
import shutil
import tempfile
import threading
from collections import OrderedDict
from pathlib import Path

TEMP_ENV = "GRADIO_TEMP_DIR"
COMPILER_CACHE_ENV = "TORCHINDUCTOR_CACHE_DIR"
MAX_KEPT_BYTES = 128 * 2**20
"""Bytes of kept comparisons (their pictures) across all sessions: room for several comparisons
of full-size photographs with a few modes each, the pictures stored as the page shows them
(uint8, ``demo.handlers.kept``). The most recent comparison is always kept, whatever its size,
so the person who just pressed Compare can zoom."""
DROPPED_KEYS = 1024
"""Sessions remembered (by key only) as having had their comparison dropped."""
_root: Path | None = None
_removed: list[Path] = []          # folders removed at a stop: swept again at exit
_at_exit = False                   # remove_temp_root registered with atexit
_system_temp: str | None = None    # the system temp folder, once own_temp_folder replaced it
_lock = threading.Lock()


def temp_root() -> Path:
    """This process's private folder, created on first use (a new one after a stop removed the
    last); Gradio's uploads go there too (``GRADIO_TEMP_DIR`` is set here: call it before
    Gradio is imported, whose own default folders are fixed at import)."""
    global _root, _at_exit
    with _lock:
        if _root is None or not _root.is_dir():
            if _root is not None:
                _removed.append(_root)
            _root = Path(tempfile.mkdtemp(prefix="medq-demo-", dir=_system_temp))
            os.environ[TEMP_ENV] = str(_root)
            if not _at_exit:
                atexit.register(remove_temp_root)
                _at_exit = True
        return _root


def own_temp_folder() -> Path:
    """Make the private folder this process's temp folder (``tempfile.tempdir``, and ``TMPDIR``
    for the processes it starts) and return it: files libraries write to the temp folder on their
    own are then removed with it at the stop. Call before importing Gradio and torch, whose
    folders are fixed at import."""
    global _system_temp
    if _system_temp is None:
        _system_temp = tempfile.gettempdir()
    root = temp_root()
    tempfile.tempdir = str(root)
    os.environ["TMPDIR"] = str(root)
    return root


def scratch_dir() -> str | None:
    """Where code run for the page puts its temporary files (``tempfile``'s ``dir=``): the
    private folder when the page has one, so they are swept with it; None (the system temp
    folder) otherwise. Never creates the folder."""
    return str(_root) if _root is not None and _root.is_dir() else None


def remove_temp_root() -> None:
    """Delete the process's folder with every upload and picture in it (server stop), and again
    every folder an earlier call removed: anything a request still running wrote there after
    the stop goes too (this also runs at interpreter exit). The folder is not re-created."""
    global _root
    with _lock:
        if _root is not None:
            _removed.append(_root)
            _root = None
        for folder in _removed:
            shutil.rmtree(folder, ignore_errors=True)


@functools.lru_cache(maxsize=1)
def _libc():
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.malloc_trim.argtypes = [ctypes.c_size_t]
        return libc
    except (OSError, AttributeError):      # not glibc (macOS, musl): nothing to release
        return None


def can_release_memory() -> bool:
    """Whether ``release_memory`` can hand memory back here (the C library is glibc)."""
    return _libc() is not None


def release_memory() -> bool:
    """Return the memory this process has freed to the system (glibc's ``malloc_trim(0)``:
    free pages in every arena, not only at the top of the heap). True when some was returned;
    False when none was, or the C library is not glibc."""
    libc = _libc()
    return bool(libc.malloc_trim(0)) if libc is not None else False


def user_cache_dir() -> Path:
    """The user's cache folder (``XDG_CACHE_HOME``, else ``~/.cache``) for medq."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "medq"


def keep_compiler_cache_out_of_temp() -> None:
    """Point torch.compile's kernel cache (``TORCHINDUCTOR_CACHE_DIR``) at the user's cache
    folder unless it is set already: by default it lands in the system temp folder and outlives
    the server there. Call before the first compile (inductor reads the variable then)."""
    if not os.environ.get(COMPILER_CACHE_ENV):
        os.environ[COMPILER_CACHE_ENV] = str(user_cache_dir() / "torchinductor")


def _inside(path: Path, folder: Path) -> bool:
    try:
        Path(path).resolve().relative_to(folder.resolve())
        return True
    except (ValueError, OSError):
        return False


def nbytes(obj) -> int:
    """Bytes of the numpy arrays in ``obj`` (nested dicts, lists and tuples)."""
    if hasattr(obj, "nbytes") and hasattr(obj, "dtype"):
        return int(obj.nbytes)
    if isinstance(obj, dict):
        return sum(nbytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(nbytes(v) for v in obj)
    return 0


class Sessions:
    """Per-session state of one page: its last comparison, its uploads and its pictures
    (``folder(session)``). Thread-safe: Gradio runs handlers in worker threads."""

    def __init__(self, root: Path, max_sessions: int = 32, max_bytes: int = MAX_KEPT_BYTES):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.max_sessions = max_sessions
        self.max_bytes = max_bytes
        self._comparisons: OrderedDict[str, tuple[dict, int]] = OrderedDict()
        self._dropped: OrderedDict[str, None] = OrderedDict()   # keys only, bounded
        self._uploads: dict[str, set[Path]] = {}
        self._lock = threading.Lock()

    @staticmethod
    def key(session: str | None) -> str:
        """A folder name for a session hash sent by the browser (never the raw string)."""
        return hashlib.sha256(str(session).encode()).hexdigest()[:20]

    def folder(self, session: str | None) -> Path:
        return self.root / self.key(session)

    def remember(self, session: str | None, comparison: dict) -> None:
        """Keep ``comparison`` as the session's last one, then drop the least recently used
        others while over ``max_sessions`` or ``max_bytes`` (never the one just kept)."""
        key = self.key(session)
        with self._lock:
            self._comparisons[key] = (comparison, nbytes(comparison))
            self._comparisons.move_to_end(key)
            self._dropped.pop(key, None)
            while len(self._comparisons) > 1 and (len(self._comparisons) > self.max_sessions
                                                  or self._bytes() > self.max_bytes):
                gone, _ = self._comparisons.popitem(last=False)
                self._dropped[gone] = None
                while len(self._dropped) > DROPPED_KEYS:
                    self._dropped.popitem(last=False)

    def _bytes(self) -> int:
        return sum(size for _, size in self._comparisons.values())

    def kept_bytes(self) -> int:
        """Bytes of the comparisons kept now."""
        with self._lock:
            return self._bytes()

    def __len__(self) -> int:
        return len(self._comparisons)

    def dropped(self, session: str | None) -> bool:
        """Whether the session's last comparison was dropped to stay within the bounds (the page
        then asks for Compare again instead of showing an empty zoom)."""
        with self._lock:
            return self.key(session) in self._dropped

    def comparison(self, session: str | None) -> dict | None:
        with self._lock:
            found = self._comparisons.get(self.key(session))
            if found is not None:
                self._comparisons.move_to_end(self.key(session))
            return None if found is None else found[0]

    def add_upload(self, session: str | None, path) -> None:
        """Note an uploaded file of ``session`` (only files inside the temp root are ever
        deleted)."""
        with self._lock:
            self._uploads.setdefault(self.key(session), set()).add(Path(path))

    def end(self, session: str | None) -> list[Path]:
        """The session is over: delete its uploads (and their now empty folders) and pictures,
        forget its comparison. Returns what was deleted."""
        key = self.key(session)
        with self._lock:
            self._comparisons.pop(key, None)
            self._dropped.pop(key, None)
            uploads = self._uploads.pop(key, set())
        gone = []
        base = Path(os.environ.get(TEMP_ENV) or self.root)
        for path in uploads:
            if _inside(path, base) and path.is_file():
                path.unlink(missing_ok=True)
                gone.append(path)
                try:
                    path.parent.rmdir()           # Gradio's per-upload folder, when empty
                except OSError:
                    pass
        folder = self.folder(session)
        if folder.is_dir():
            gone += [p for p in folder.rglob("*") if p.is_file()]
            shutil.rmtree(folder, ignore_errors=True)
        return gone
