"""One process per directory: an advisory lock file holding the owner's PID.

``train()`` holds ``<run_dir>/run.lock`` for a whole run (``python -m train`` takes it before its
first write); a second process stops at once with ``RunLockedError`` naming the holder's PID. The
lock is ``fcntl.flock`` (exclusive, non-blocking): the kernel drops it when its holder dies, so a
SIGKILLed run never leaves a lock that needs removing by hand, and the PID it left in the file is
reported as taken over. Any directory can be locked the same way under another file name
(``lock_file``), e.g. a runs directory that one evaluation at a time may write.

    with run_lock(run_dir):               # re-entrant within a process
        ...
"""

from __future__ import annotations

import fcntl
import logging
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

log = logging.getLogger(__name__)

LOCK_FILE = "run.lock"

_HELD_LOCKS: dict[Path, int] = {}


class RunLockedError(RuntimeError):
    """Another live process holds the directory's lock; the message names its PID."""


def _lock_holder(fd: int) -> str:
    text = os.pread(fd, 64, 0).decode("ascii", "replace").strip()
    return text if text.isdigit() else ""


def acquire_run_lock(run_dir: Path, lock_file: str = LOCK_FILE) -> bool:
    """Take the advisory lock ``<run_dir>/<lock_file>`` (``fcntl.flock``, exclusive,
    non-blocking) and write this PID into it; False when this process holds it already (nested
    use).

    Raises RunLockedError naming the holder's PID when another live process holds it. A lock
    file naming another PID that no longer holds the lock (a killed process: the kernel drops
    its flock) is taken over with a warning."""
    run_dir = Path(run_dir).resolve()
    path = run_dir / lock_file
    if path in _HELD_LOCKS:
        return False
    run_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _lock_holder(fd) or "unknown"
        os.close(fd)
        raise RunLockedError(f"{run_dir} is in use by process {holder} (lock {path}); wait for it "
                             f"to finish or stop it, then run again") from None
    previous = _lock_holder(fd)
    if previous and int(previous) != os.getpid():
        log.warning("%s: lock left by process %s, which no longer holds it (killed?); taken over",
                    path, previous)
    os.ftruncate(fd, 0)
    # No fsync: the PID only informs a message; the kernel's flock is the lock.
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    _HELD_LOCKS[path] = fd
    return True


def release_run_lock(run_dir: Path, lock_file: str = LOCK_FILE) -> None:
    """Empty the lock file (a clean exit leaves no holder to take over) and release the lock."""
    fd = _HELD_LOCKS.pop(Path(run_dir).resolve() / lock_file, None)
    if fd is None:
        return
    try:
        os.ftruncate(fd, 0)
        fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


@contextmanager
def run_lock(run_dir: Path, lock_file: str = LOCK_FILE) -> Iterator[None]:
    """``with run_lock(run_dir):`` the directory belongs to this process (re-entrant)."""
    taken = acquire_run_lock(run_dir, lock_file)
    try:
        yield
    finally:
        if taken:
            release_run_lock(run_dir, lock_file)
