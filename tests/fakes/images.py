"""Images for the data tests: a synthetic fundus-like disc, and a PNG that only claims a size."""

from __future__ import annotations

import struct
import zlib

import numpy as np


def fundus(h=96, w=96) -> np.ndarray:
    """(h, w, 3) uint8: an orange disc on black, the shape the FOV detector accepts."""
    yy, xx = np.mgrid[:h, :w]
    img = np.zeros((h, w, 3), np.uint8)
    img[(yy - h / 2) ** 2 + (xx - w / 2) ** 2 < (0.45 * min(h, w)) ** 2] = (200, 100, 50)
    return img


def png_header_only(path, width: int, height: int) -> None:
    """A PNG whose header promises width x height RGB pixels, with almost no data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + crc
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
                     + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))
