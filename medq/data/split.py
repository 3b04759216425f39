"""Deterministic train/val/test split by hashing image ids, with both eyes of a patient together."""

from __future__ import annotations

import hashlib
import math
import re

# EyeQ (and the Kaggle EyePACS set it comes from) names images <patient>_<left|right>: the two
# eyes of one patient are strongly correlated (same camera session, usually the same DR stage),
# so they must fall into the same split or the test set leaks the training set.
_EYE_RE = re.compile(r"^(?P<patient>.+)_(?:left|right)$", re.IGNORECASE)


def _key(image_id: str) -> str:
    return hashlib.sha256(image_id.encode()).hexdigest()


def patient_of(image_id: str) -> str:
    """The patient an image belongs to: ``10_left`` and ``10_right`` -> ``10``; any other id is
    its own patient."""
    m = _EYE_RE.match(image_id)
    return m.group("patient") if m else image_id


def split_ids(ids, val_fraction: float, test_fraction: float) -> dict[str, list[str]]:
    """{'train', 'val', 'test'} -> ids, each id in exactly one split, both eyes of a patient
    (``patient_of``) in the same one.

    Patients are ordered by the sha256 of their id; whole patients go to test until it holds
    ceil(n * test_fraction) images, then to val until ceil(n * val_fraction), the rest to train
    (a two-eyed patient may overshoot a split by one image). Rounding up keeps val and test
    non-empty for tiny sets (n >= 3). The order depends on the ids alone, so the same image set
    always splits the same way, whatever order the files were listed in; ids without an eye
    suffix split exactly as they did before patients were grouped."""
    ids = sorted(set(ids), key=_key)
    n = len(ids)
    n_test = min(n, math.ceil(n * test_fraction))
    n_val = min(n - n_test, math.ceil(n * val_fraction))
    while n >= 3 and n_test + n_val >= n:  # keep at least one training image
        if n_val >= n_test:
            n_val -= 1
        else:
            n_test -= 1
    groups: dict[str, list[str]] = {}
    for i in ids:
        groups.setdefault(patient_of(i), []).append(i)
    out = {"test": [], "val": [], "train": []}
    for patient in sorted(groups, key=lambda p: _key(groups[p][0] if len(groups[p]) == 1 else p)):
        members = sorted(groups[patient], key=_key)
        if len(out["test"]) < n_test:
            out["test"] += members
        elif len(out["val"]) < n_val:
            out["val"] += members
        else:
            out["train"] += members
    return out
