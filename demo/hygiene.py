"""Where the page keeps patients' pictures, and when they go (issue 30 item 6).

Everything the page receives or writes lives in one private folder per server process
(``temp_root``, mode 0700 under the system temp dir): Gradio is pointed at it
(``GRADIO_TEMP_DIR``), so uploads land there, and the pictures the page shows are written there,
where Gradio serves them without copying. The folder is removed when the server stops
(``remove_temp_root``, called by ``python -m demo`` on exit, Ctrl-C or SIGTERM, and at interpreter
exit).

Per browser session (``Sessions``): the uploads it sent and the pictures written for it are
deleted when the session ends (Gradio's ``unload`` event: the tab closed or reloaded), and its
last comparison, kept on the server for the zoom and slider, is dropped. At most
``max_sessions`` comparisons are kept (least recently used first out), so memory stays bounded
however many people use the page or never close their tab.
"""

from __future__ import annotations

import atexit
import hashlib
import os
import shutil
import tempfile
import threading
from collections import OrderedDict
from pathlib import Path

TEMP_ENV = "GRADIO_TEMP_DIR"
_root: Path | None = None
_lock = threading.Lock()


def temp_root() -> Path:
    """This process's private folder, created on first use; Gradio's uploads go there too
    (``GRADIO_TEMP_DIR`` is set before any Gradio component or server reads it)."""
    global _root
    with _lock:
        if _root is None or not _root.is_dir():
            _root = Path(tempfile.mkdtemp(prefix="medq-demo-"))
            os.environ[TEMP_ENV] = str(_root)
            atexit.register(remove_temp_root)
        return _root


def remove_temp_root() -> None:
    """Delete the process's folder with every upload and picture in it (server stop)."""
    global _root
    with _lock:
        if _root is not None:
            shutil.rmtree(_root, ignore_errors=True)
            _root = None


def _inside(path: Path, folder: Path) -> bool:
    try:
        Path(path).resolve().relative_to(folder.resolve())
        return True
    except (ValueError, OSError):
        return False


class Sessions:
    """Per-session state of one page: its last comparison, its uploads and its pictures
    (``folder(session)``). Thread-safe: Gradio runs handlers in worker threads."""

    def __init__(self, root: Path, max_sessions: int = 32):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.max_sessions = max_sessions
        self._comparisons: OrderedDict[str, dict] = OrderedDict()
        self._uploads: dict[str, set[Path]] = {}
        self._lock = threading.Lock()

    @staticmethod
    def key(session: str | None) -> str:
        """A folder name for a session hash sent by the browser (never the raw string)."""
        return hashlib.sha256(str(session).encode()).hexdigest()[:20]

    def folder(self, session: str | None) -> Path:
        return self.root / self.key(session)

    def remember(self, session: str | None, comparison: dict) -> None:
        with self._lock:
            self._comparisons[self.key(session)] = comparison
            self._comparisons.move_to_end(self.key(session))
            while len(self._comparisons) > self.max_sessions:
                self._comparisons.popitem(last=False)

    def comparison(self, session: str | None) -> dict | None:
        with self._lock:
            found = self._comparisons.get(self.key(session))
            if found is not None:
                self._comparisons.move_to_end(self.key(session))
            return found

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
