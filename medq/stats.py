"""Confidence intervals and paired comparisons of per-image metric values.

    lo, hi = bootstrap_ci(values, seed=0)                       # 95 % percentile interval of the mean
    c = paired_comparison(a_by_id, b_by_id, seed=0)             # a - b on the images both have
    c.mean_diff, c.ci_low, c.ci_high, c.p_value, c.n, c.note

Everything is seeded (``numpy.random.default_rng(seed)``), so the same values give the same
intervals on every run. NaN values are left out; the number actually used is returned.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass
from typing import Mapping, Sequence

import numpy as np

N_BOOT = 2000
LEVEL = 0.95


def _clean(values: Sequence[float]) -> np.ndarray:
    arr = np.asarray([float(v) for v in values], dtype=np.float64)
    return arr[~np.isnan(arr)]


def bootstrap_ci(values: Sequence[float], *, n_boot: int = N_BOOT, level: float = LEVEL,
                 seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values`` (N,) -> (low, high).

    NaN values are dropped; with no value the interval is (NaN, NaN), with one it is (v, v)."""
    if not 0 < level < 1:
        raise ValueError(f"level = {level}: expected a number in (0, 1)")
    x = _clean(values)
    if len(x) == 0:
        return math.nan, math.nan
    if len(x) == 1:
        return float(x[0]), float(x[0])
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(x), size=(n_boot, len(x)))
    means = x[idx].mean(axis=1)
    alpha = (1 - level) / 2
    lo, hi = np.quantile(means, [alpha, 1 - alpha])
    return float(lo), float(hi)


@dataclass
class PairedResult:
    """``a - b`` over the images both sides scored (matched by id)."""

    n: int
    mean_diff: float
    ci_low: float
    ci_high: float
    p_value: float
    """Two-sided Wilcoxon signed-rank p-value (NaN when n == 0)."""
    wins: int
    """Images where a > b."""
    losses: int
    ties: int
    note: str = ""

    def as_dict(self) -> dict:
        return asdict(self)


def wilcoxon_p(diffs: Sequence[float]) -> tuple[float, str]:
    """Two-sided Wilcoxon signed-rank p-value of paired differences -> (p, note).

    All differences zero (e.g. two identical models): p = 1.0, since nothing differs, with a note;
    scipy would warn and return NaN. No differences: NaN."""
    from scipy.stats import wilcoxon

    d = _clean(diffs)
    if len(d) == 0:
        return math.nan, "no paired images"
    if np.all(d == 0):
        return 1.0, "all differences are zero"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # small-sample / ties warnings: the note below says so
        p = float(wilcoxon(d, zero_method="wilcox", alternative="two-sided").pvalue)
    note = f"only {len(d)} pairs: low power" if len(d) < 6 else ""
    return p, note


def paired_comparison(a: Mapping[str, float], b: Mapping[str, float], *, n_boot: int = N_BOOT,
                      level: float = LEVEL, seed: int = 0) -> PairedResult:
    """Compare per-image values ``a`` and ``b`` ({image id: value}) on their common ids (sorted,
    NaN pairs dropped): mean of a - b, its bootstrap interval, the Wilcoxon p-value, and counts."""
    ids = sorted(i for i in set(a) & set(b)
                 if not (math.isnan(float(a[i])) or math.isnan(float(b[i]))))
    d = np.asarray([float(a[i]) - float(b[i]) for i in ids], dtype=np.float64)
    if len(d) == 0:
        return PairedResult(0, math.nan, math.nan, math.nan, math.nan, 0, 0, 0, "no paired images")
    lo, hi = bootstrap_ci(d, n_boot=n_boot, level=level, seed=seed)
    p, note = wilcoxon_p(d)
    return PairedResult(len(d), float(d.mean()), lo, hi, p, int((d > 0).sum()), int((d < 0).sum()),
                        int((d == 0).sum()), note)
