"""Confidence intervals and paired comparisons of per-image metric values.

    lo, hi = bootstrap_ci(values, seed=0)           # 95 % percentile interval of the mean
    c = paired_comparison(a_by_id, b_by_id, seed=0)             # a - b on the images both have
    c.mean_diff, c.ci_low, c.ci_high, c.p_value, c.n, c.n_nonzero, c.note
    holm([0.01, 0.04, 0.03])                                    # Holm-adjusted p-values, same order
    s = seed_comparison({0: 0.71, 1: 0.70, 2: 0.72}, {0: 0.69, 1: 0.69, 2: 0.70})  # per-seed means

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
    n_nonzero: int = 0
    """Pairs with a non-zero difference: what the Wilcoxon test uses (ties are dropped)."""
    p_holm: float = math.nan
    """``p_value`` Holm-adjusted over every test of one report (filled by ``holm``)."""

    def as_dict(self) -> dict:
        return asdict(self)


def wilcoxon_p(diffs: Sequence[float]) -> tuple[float, str]:
    """Two-sided Wilcoxon signed-rank p-value of paired differences -> (p, note).

    All differences zero (e.g. two identical models): p = 1.0, since nothing differs, with a note;
    scipy would warn and return NaN. No differences: NaN. Zero differences are dropped
    (``zero_method="wilcox"``), so the low-power note counts the non-zero ones; when every
    non-zero difference has the same sign the p-value sits at its floor for that count (exact:
    2 / 2^n, e.g. 4e-12 at n = 39) and the note says so: a 1 %-darker copy reaches it too, so it
    measures consistency of sign, not size."""
    from scipy.stats import wilcoxon

    d = _clean(diffs)
    if len(d) == 0:
        return math.nan, "no paired images"
    if np.all(d == 0):
        return 1.0, "all differences are zero"
    nz = d[d != 0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # small-sample / ties warnings: the note below says so
        p = float(wilcoxon(d, zero_method="wilcox", alternative="two-sided").pvalue)
    notes = []
    if len(nz) < 6:
        notes.append(f"only {len(nz)} non-zero differences: low power")
    if len(nz) >= 6 and (np.all(nz > 0) or np.all(nz < 0)):
        notes.append(f"p at its floor: all {len(nz)} non-zero differences have one sign")
    return p, "; ".join(notes)


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
                        int((d == 0).sum()), note, int((d != 0).sum()))


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (same order; NaN stays NaN and is not counted): the
    family-wise error over every test of one report stays at the nominal level."""
    idx = [i for i, p in enumerate(p_values) if not math.isnan(float(p))]
    order = sorted(idx, key=lambda i: float(p_values[i]))
    m, out, running = len(order), [math.nan] * len(p_values), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * float(p_values[i])))
        out[i] = running
    return out


@dataclass
class SeedResult:
    """``a - b`` on per-seed means (paired by training seed)."""

    n_seeds: int
    mean_diff: float
    sd_diff: float
    """Standard deviation of the per-seed differences (ddof 1); NaN with one seed."""
    ci_low: float
    ci_high: float
    """Paired t interval over seeds; NaN with fewer than 2 seeds."""
    note: str = ""

    def as_dict(self) -> dict:
        return asdict(self)


def seed_comparison(a: Mapping, b: Mapping, *, level: float = LEVEL) -> SeedResult:
    """Compare two modes by their per-seed means ({seed: mean over images}) on the seeds both
    have: the mean difference and a paired t interval over seeds.

    Why t and not Wilcoxon or a bootstrap: with 3 seeds the exact Wilcoxon test cannot go below
    p = 0.25 and a bootstrap has 10 distinct resamples; the t interval is the one that says
    anything, at the price of assuming roughly normal seed-to-seed differences. With one seed it
    is n/a: the image-level interval says nothing about training-seed variance."""
    from scipy.stats import t as student_t

    seeds = sorted(set(a) & set(b), key=str)
    d = np.asarray([float(a[k]) - float(b[k]) for k in seeds], dtype=np.float64)
    d = d[~np.isnan(d)]
    if len(d) == 0:
        return SeedResult(0, math.nan, math.nan, math.nan, math.nan, "no common seed")
    if len(d) == 1:
        return SeedResult(1, float(d[0]), math.nan, math.nan, math.nan,
                          "single seed: no seed interval (train with --seeds N)")
    sd = float(d.std(ddof=1))
    half = float(student_t.ppf(0.5 + level / 2, len(d) - 1)) * sd / math.sqrt(len(d))
    return SeedResult(len(d), float(d.mean()), sd, float(d.mean()) - half, float(d.mean()) + half,
                      f"paired t over {len(d)} seeds")
