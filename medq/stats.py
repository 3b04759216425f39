"""Confidence intervals and paired comparisons of per-image metric values.

    lo, hi = bootstrap_ci(values, seed=0)           # 95 % percentile interval of the mean
    c = paired_comparison(a_by_id, b_by_id, seed=0)             # a - b on the images both have
    c.mean_diff, c.ci_low, c.ci_high, c.p_value, c.n, c.n_nonzero, c.note
    holm([0.01, 0.04, 0.03])                                    # Holm-adjusted p-values, same order
    s = seed_image_comparison({0: {"img1": 0.71, ...}, 1: {...}}, {0: {...}, 1: {...}})
    s.ci_low, s.ci_high                  # over images and training seeds (crossed random effects)
    s.spread_low, s.spread_high          # seed spread on this fixed test set (t over seed means)
    lo, hi, p = normal_test(estimate, jackknife_se(leave_one_out))      # e.g. a KID difference

Everything is seeded (``numpy.random.default_rng(seed)``) or deterministic, so the same values
give the same intervals on every run. NaN values are left out; the number actually used is
returned.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass
from typing import Mapping, Sequence

import numpy as np

N_BOOT = 2000
LEVEL = 0.95
IMAGES_X_SEEDS = "images x seeds"
SEED_SPREAD = "seed spread (fixed test set)"


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
    """``a - b`` across training seeds (paired by seed)."""

    n_seeds: int
    mean_diff: float
    sd_diff: float
    """Standard deviation of the per-seed mean differences (ddof 1); NaN with one seed."""
    ci_low: float
    ci_high: float
    """The interval ``interval`` names; NaN with fewer than 2 seeds."""
    note: str = ""
    interval: str = SEED_SPREAD
    """What ``ci_low``/``ci_high`` cover: ``IMAGES_X_SEEDS`` (a new draw of test images and of
    training seeds) or ``SEED_SPREAD`` (training seeds only, on this fixed test set)."""
    n_images: int = 0
    """Images in every seed of both sides (0: only per-seed means were given)."""
    p_value: float = math.nan
    """Two-sided p of the ``IMAGES_X_SEEDS`` interval's t test; NaN for ``SEED_SPREAD``."""
    spread_low: float = math.nan
    spread_high: float = math.nan
    """The paired t interval over per-seed means: the seed spread on this fixed test set (narrower
    than ``IMAGES_X_SEEDS`` by the image-sampling variance every seed shares)."""

    def as_dict(self) -> dict:
        return asdict(self)


def seed_comparison(a: Mapping, b: Mapping, *, level: float = LEVEL) -> SeedResult:
    """Compare two modes by their per-seed means ({seed: mean over images}) on the seeds both
    have: the mean difference and a paired t interval over seeds, labelled ``SEED_SPREAD``.

    It is the seed spread on one fixed test set: every seed is scored on the same images, so the
    image-sampling variance they share is not in it (``seed_image_comparison`` has it). Why t and
    not Wilcoxon or a bootstrap: with 3 seeds the exact Wilcoxon test cannot go below p = 0.25
    and a bootstrap has 10 distinct resamples. With one seed it is n/a."""
    seeds = sorted(set(a) & set(b), key=str)
    d = np.asarray([float(a[k]) - float(b[k]) for k in seeds], dtype=np.float64)
    d = d[~np.isnan(d)]
    if len(d) == 0:
        return SeedResult(0, math.nan, math.nan, math.nan, math.nan, "no common seed")
    if len(d) == 1:
        return SeedResult(1, float(d[0]), math.nan, math.nan, math.nan,
                          "single seed: no seed interval (train with --seeds N)")
    lo, hi = _t_interval_over_seeds(d, level)
    return SeedResult(len(d), float(d.mean()), float(d.std(ddof=1)), lo, hi,
                      f"paired t over {len(d)} seeds: {SEED_SPREAD}", SEED_SPREAD,
                      spread_low=lo, spread_high=hi)


def _t_interval_over_seeds(d: np.ndarray, level: float) -> tuple[float, float]:
    from scipy.stats import t as student_t

    half = float(student_t.ppf(0.5 + level / 2, len(d) - 1)) * float(d.std(ddof=1)) / math.sqrt(
        len(d))
    return float(d.mean()) - half, float(d.mean()) + half


def crossed_mean_interval(d: np.ndarray, *, level: float = LEVEL) -> tuple[float, float, float,
                                                                           float]:
    """Interval of the grand mean of a (seeds, images) table ``d`` whose rows are training seeds
    and whose columns are the same test images for every seed -> (mean, low, high, p of mean = 0).

    Seeds and images are crossed random factors: d[s, i] = mu + u_s + v_i + e_si. A new study
    draws new seeds *and* new images, so Var(mean) = var_u / k + var_v / n + var_e / (k n). The
    components come from the two-way ANOVA mean squares (method of moments, negative estimates
    set to 0) and the interval is Student t with Satterthwaite's degrees of freedom (the
    subjects-x-items analysis of Clark 1973). Why not a two-level (pigeonhole) bootstrap: it
    resamples 3 seeds in only 10 ways and under-covers when seed variance dominates; the t
    interval keeps its level with 3 seeds (``tests/test_stats.py`` measures both situations).
    Needs at least 2 seeds and 2 images; NaNs otherwise."""
    from scipy.stats import t as student_t

    d = np.asarray(d, dtype=np.float64)
    if d.ndim != 2 or d.shape[0] < 2 or d.shape[1] < 2 or np.isnan(d).any():
        return math.nan, math.nan, math.nan, math.nan
    k, n = d.shape
    grand, seed_means, image_means = d.mean(), d.mean(axis=1), d.mean(axis=0)
    resid = d - seed_means[:, None] - image_means[None, :] + grand
    ms = np.asarray([n * ((seed_means - grand) ** 2).sum() / (k - 1),
                     k * ((image_means - grand) ** 2).sum() / (n - 1),
                     (resid ** 2).sum() / ((k - 1) * (n - 1))])
    dfs = np.asarray([k - 1, n - 1, (k - 1) * (n - 1)], dtype=np.float64)
    # Var(mean) * k n = c . ms, with a component left out when its estimate is negative
    c_seed, c_image = float(ms[0] > ms[2]), float(ms[1] > ms[2])
    coef = np.asarray([c_seed, c_image, 1.0 - c_seed - c_image])
    var_kn = float(coef @ ms)
    if var_kn <= 0:
        return float(grand), float(grand), float(grand), 1.0 if grand == 0 else 0.0
    df = var_kn ** 2 / float(((coef * ms) ** 2 / dfs).sum())
    se = math.sqrt(var_kn / (k * n))
    half = float(student_t.ppf(0.5 + level / 2, df)) * se
    p = float(2 * student_t.sf(abs(grand) / se, df))
    return float(grand), float(grand) - half, float(grand) + half, min(p, 1.0)


def seed_image_comparison(a: Mapping[object, Mapping[str, float]],
                          b: Mapping[object, Mapping[str, float]], *,
                          level: float = LEVEL) -> SeedResult:
    """``a - b`` over training seeds and test images: ``a``, ``b`` are {seed: {image id: value}}
    (for a baseline that does not depend on the seed, give its values under every seed of ``a``).
    Paired by seed and by image, on the seeds both have and the images every one of them scored
    (NaN-free). ``ci_low``/``ci_high``: ``crossed_mean_interval`` (``IMAGES_X_SEEDS``);
    ``spread_low``/``spread_high``: the t interval over the per-seed means of those images
    (``SEED_SPREAD``), for comparison."""
    seeds = sorted(set(a) & set(b), key=str)
    if not seeds:
        return SeedResult(0, math.nan, math.nan, math.nan, math.nan, "no common seed",
                          IMAGES_X_SEEDS)
    ids = set.intersection(*(set(a[s]) & set(b[s]) for s in seeds))
    ids = sorted(i for i in ids if all(not math.isnan(float(a[s][i])) and
                                       not math.isnan(float(b[s][i])) for s in seeds))
    d = np.asarray([[float(a[s][i]) - float(b[s][i]) for i in ids] for s in seeds],
                   dtype=np.float64).reshape(len(seeds), len(ids))
    if len(seeds) < 2 or len(ids) < 2:
        mean = float(d.mean()) if d.size else math.nan
        return SeedResult(len(seeds), mean, math.nan, math.nan, math.nan,
                          f"{len(seeds)} seed(s) x {len(ids)} image(s): no interval over images "
                          f"and seeds (needs 2 of each)", IMAGES_X_SEEDS, len(ids))
    mean, lo, hi, p = crossed_mean_interval(d, level=level)
    per_seed = d.mean(axis=1)
    s_lo, s_hi = _t_interval_over_seeds(per_seed, level)
    return SeedResult(len(seeds), mean, float(per_seed.std(ddof=1)), lo, hi,
                      f"{len(seeds)} seeds x {len(ids)} images, crossed random effects (t, "
                      f"Satterthwaite df)", IMAGES_X_SEEDS, len(ids), p, s_lo, s_hi)


def jackknife_se(leave_one_out: Sequence[float]) -> float:
    """Delete-one jackknife standard error of an estimator from its N leave-one-out values
    theta_(i): sqrt((N - 1) / N * sum (theta_(i) - mean)^2). For a U-statistic (KID) it is
    consistent and biased upwards (Efron & Stein 1981): tests built on it are conservative."""
    x = np.asarray(leave_one_out, dtype=np.float64)
    if len(x) < 2 or np.isnan(x).any():
        return math.nan
    return float(math.sqrt((len(x) - 1) / len(x) * ((x - x.mean()) ** 2).sum()))


def normal_test(estimate: float, se: float, level: float = LEVEL) -> tuple[float, float, float]:
    """Normal-approximation interval and two-sided p of ``estimate`` with standard error ``se``
    -> (low, high, p). p = 2 Phi(-|estimate| / se) is not bounded below by any replicate count.
    ``se`` 0 (every leave-one-out value equal): the interval is the point, p is 1 for a zero
    estimate and 0 otherwise. NaN in, NaNs out."""
    from scipy.stats import norm

    if not 0 < level < 1:
        raise ValueError(f"level = {level}: expected a number in (0, 1)")
    if math.isnan(estimate) or math.isnan(se):
        return math.nan, math.nan, math.nan
    if se == 0:
        return float(estimate), float(estimate), 1.0 if estimate == 0 else 0.0
    half = float(norm.ppf(0.5 + level / 2)) * se
    p = float(2 * norm.sf(abs(estimate) / se))
    return float(estimate) - half, float(estimate) + half, min(p, 1.0)
