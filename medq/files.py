"""Atomic files: written under a temporary sibling name, then renamed into place (``os.replace``).

A reader never sees a half-written file under its final name, and a crash leaves at most a
``.tmp-*`` file that no reader globs for. The one writer for every file of every stage (records,
reports, caches, checkpoints' small files, the demo's PNGs).

    write_text_atomic(path, text)                 # also write_bytes_atomic / _json / _jsonl
    with atomic_path(path) as tmp:                # anything that writes a file by name
        np.savez_compressed(tmp, a=a)
    with atomic_dir(out) as tmp:                  # a whole directory, replacing an old one
        save_vae(vae, tmp)

``fsync=True`` also flushes the file and its directory to disk before and after the rename (the
training checkpoints' pointers, where a power cut must not leave an empty file).

Also the one content hash of files (``sha256_file``: checkpoints, the shipped weights' manifest)
and the one description of the disk a failed write went to (``disk_note``).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

TMP_PREFIX = ".tmp-"


def temp_name(path: Path) -> Path:
    """A sibling temp path that no reader globs for (leading dot, pid)."""
    path = Path(path)
    return path.with_name(f"{TMP_PREFIX}{os.getpid()}-{path.name}")


def fsync_path(path: Path) -> None:
    """fsync a file or a directory (its entries) by path."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: Path, *, fsync: bool = False, suffix: str = "") -> Iterator[Path]:
    """Yield a temp path beside ``path`` (its parent is created); on success rename it to
    ``path``, on an exception remove it. ``suffix`` is appended to the temp name (for writers that
    add an extension, e.g. ``numpy.savez`` and ``.npz``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_name(path).with_name(temp_name(path).name + suffix)
    try:
        yield tmp
        if fsync:
            fsync_path(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if fsync:
        fsync_path(path.parent)


def write_bytes_atomic(path: Path, data: bytes, *, fsync: bool = False) -> Path:
    with atomic_path(path, fsync=fsync) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text_atomic(path: Path, text: str, *, fsync: bool = False) -> Path:
    return write_bytes_atomic(path, text.encode("utf-8"), fsync=fsync)


def write_json_atomic(path: Path, obj) -> Path:
    """``obj`` as indented JSON (sorted keys; anything else as ``str``)."""
    return write_text_atomic(path, json.dumps(obj, indent=1, sort_keys=True, default=str) + "\n")


def write_jsonl_atomic(path: Path, rows: Iterable[dict]) -> Path:
    """One JSON object per line (sorted keys), flushed to disk before the rename."""
    return write_text_atomic(path, "".join(json.dumps(row, sort_keys=True) + "\n" for row in rows),
                             fsync=True)


@contextmanager
def atomic_dir(path: Path) -> Iterator[Path]:
    """Yield an empty temp directory beside ``path``; on success replace ``path`` (removing an
    old one) with it, on an exception remove it."""
    path = Path(path)
    tmp = temp_name(path)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def mount_point(path: Path) -> Path:
    """The mount point of the file system that holds ``path`` (or would hold it: the nearest
    existing parent is asked)."""
    path = Path(os.path.abspath(path))
    while not path.exists() and path != path.parent:
        path = path.parent
    while not os.path.ismount(path):
        path = path.parent
    return path


def disk_note(path: Path) -> str:
    """'the disk of /mnt/data: 12.0 KiB free of 2.0 GiB' for the file system holding ``path``:
    what a one-line write error names, so that a full disk is told from a permission problem."""
    mount = mount_point(path)
    try:
        usage = shutil.disk_usage(mount)
    except OSError:
        return f"the disk of {mount}"
    return f"the disk of {mount}: {_size(usage.free)} free of {_size(usage.total)}"


def _size(n: float) -> str:
    if n < 1024:
        return f"{n:.0f} bytes"
    for unit in ("KiB", "MiB"):
        n /= 1024
        if n < 1024:
            return f"{n:.1f} {unit}"
    return f"{n / 1024:.1f} GiB"
