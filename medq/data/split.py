"""Deterministic train/val/test split by hashing image ids."""

from __future__ import annotations

import hashlib
import math


def _key(image_id: str) -> str:
    return hashlib.sha256(image_id.encode()).hexdigest()


def split_ids(ids, val_fraction: float, test_fraction: float) -> dict[str, list[str]]:
    """{'train', 'val', 'test'} -> ids, each id in exactly one split.

    Ids are ordered by their sha256; the first ceil(n * test_fraction) are test, the next
    ceil(n * val_fraction) val, the rest train. Rounding up keeps val and test non-empty for tiny
    sets (n >= 3). The order depends on the id alone, so the same image set always splits the same
    way, whatever order the files were listed in."""
    ids = sorted(set(ids), key=_key)
    n = len(ids)
    n_test = min(n, math.ceil(n * test_fraction))
    n_val = min(n - n_test, math.ceil(n * val_fraction))
    while n >= 3 and n_test + n_val >= n:  # keep at least one training image
        if n_val >= n_test:
            n_val -= 1
        else:
            n_test -= 1
    return {"test": ids[:n_test], "val": ids[n_test:n_test + n_val], "train": ids[n_test + n_val:]}
