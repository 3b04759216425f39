"""Distances between two sets of image features: Frechet distance (FID on Inception features) and
the kernel distance (KID), with intervals and a paired comparison of two modes.

    frechet_distance(f_pred, f_target)                        # clamped at 0
    kid_interval(f_pred, f_target, paired=True)               # (value, low, high)
    kid_difference(f_a, f_b, f_target)                        # (KID_a - KID_b, low, high, p)

KID is the squared MMD with clean-fid's cubic kernel k(a, b) = (a.b / D + 1)^3 (Binkowski et al.
2018). On the leaderboard each output is the output *of* its target image (row i of both sets is
one image), so the sets are paired: the classic estimator, which averages k(output_i, target_j)
over all pairs including i = j, then rewards an output for resembling its own target (a fidelity
term) and is biased low, even negative. The paired estimator is Gretton et al.'s (2012, Lemma 6)
U-statistic MMD^2_u, which leaves the i = j terms out everywhere and is unbiased for the distance
between the two distributions whatever the dependence within a pair.

Intervals and p-values come from the delete-one jackknife of the estimator (Arvesen 1969 for
U-statistics) with a normal approximation: deterministic, computed in O(N^2) from the kernel
matrices, and conservative in expectation (the jackknife variance is biased upwards, Efron &
Stein 1981): a p-value errs on the large side, and is never floored by a replicate count.
"""

from __future__ import annotations

import math

import numpy as np

from medq.stats import LEVEL, jackknife_se, normal_test


def frechet_distance(feats1: np.ndarray, feats2: np.ndarray) -> float:
    """Frechet distance between Gaussians fitted to (N1, D) and (N2, D) features:
    |mu1 - mu2|^2 + tr S1 + tr S2 - 2 tr sqrt(S1 S2) (FID on Inception features; the formula of
    clean-fid's ``frechet_distance``, which the tests compare with), clamped at 0; NaN when either
    set has fewer than 2 samples.

    tr sqrt(S1 S2) is computed exactly instead of by ``scipy.linalg.sqrtm`` of a D x D product:
    with S1 = A'A and S2 = B'B (A, B the centred features over sqrt(N - 1)), the eigenvalues of
    S1 S2 are the squared singular values of A B', so the trace is the nuclear norm of the
    N1 x N2 matrix A B' (when both sets are larger than D: the trace of the square root of
    S1^(1/2) S2 S1^(1/2), by symmetric eigendecompositions). sqrtm of the 2048 x 2048 product is
    a complex Schur decomposition per leaderboard row, slow on a CPU, and inexact for the
    singular covariances of test sets smaller than D."""
    x, y = np.asarray(feats1, np.float64), np.asarray(feats2, np.float64)
    if len(x) < 2 or len(y) < 2:
        return math.nan
    a = (x - x.mean(0)) / math.sqrt(len(x) - 1)
    b = (y - y.mean(0)) / math.sqrt(len(y) - 1)
    if min(len(x), len(y)) <= x.shape[1]:
        tr_sqrt = float(np.linalg.svd(a @ b.T, compute_uv=False).sum())
    else:
        w, v = np.linalg.eigh(a.T @ a)
        root = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
        tr_sqrt = float(np.sqrt(np.clip(np.linalg.eigvalsh(root @ (b.T @ b) @ root), 0,
                                        None)).sum())
    value = float(((x.mean(0) - y.mean(0)) ** 2).sum() + (a * a).sum() + (b * b).sum()
                  - 2 * tr_sqrt)
    return max(0.0, value)


def kid(feats1: np.ndarray, feats2: np.ndarray, *, seed: int = 0, num_subsets: int = 100,
        max_subset_size: int = 1000) -> float:
    """clean-fid's ``kernel_distance`` (unpaired KID averaged over random subsets) with its subset
    sampling seeded: the reference the unpaired ``kid_interval`` equals whenever both sets have
    the same size, at most ``max_subset_size``. NaN with fewer than 2 samples per side."""
    from cleanfid import fid

    if len(feats1) < 2 or len(feats2) < 2:
        return math.nan
    state = np.random.get_state()
    np.random.seed(seed)  # kernel_distance draws subsets from numpy's global generator
    try:
        return float(fid.kernel_distance(feats1, feats2, num_subsets=num_subsets,
                                         max_subset_size=max_subset_size))
    finally:
        np.random.set_state(state)


def _poly_kernel(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a @ b.T / a.shape[1] + 1.0) ** 3


def _off_diagonal_mean(h: np.ndarray) -> tuple[float, np.ndarray]:
    """Mean of the off-diagonal entries of a symmetric (N, N) kernel matrix, and the same mean
    with row/column i deleted for every i (the jackknife's leave-one-out values), N >= 3."""
    n = len(h)
    h = h.copy()
    np.fill_diagonal(h, 0.0)
    total, rows = h.sum(), h.sum(axis=1)
    return total / (n * (n - 1)), (total - 2 * rows) / ((n - 1) * (n - 2))


def _paired_kid(x: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
    kxy = _poly_kernel(x, y)
    return _off_diagonal_mean(_poly_kernel(x, x) + _poly_kernel(y, y) - kxy - kxy.T)


def _unpaired_kid(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """clean-fid's estimator (within-set terms off the diagonal, the cross term over all pairs) and
    its two-sample jackknife standard error."""
    n1, n2 = len(x), len(y)
    wx, loo_wx = _off_diagonal_mean(_poly_kernel(x, x))
    wy, loo_wy = _off_diagonal_mean(_poly_kernel(y, y))
    kxy = _poly_kernel(x, y)
    cross = kxy.mean()
    loo_x = loo_wx + wy - 2 * (kxy.sum() - kxy.sum(axis=1)) / ((n1 - 1) * n2)
    loo_y = wx + loo_wy - 2 * (kxy.sum() - kxy.sum(axis=0)) / (n1 * (n2 - 1))
    se = math.hypot(jackknife_se(loo_x), jackknife_se(loo_y))
    return wx + wy - 2 * cross, se


def kid_interval(feats1: np.ndarray, feats2: np.ndarray, *, paired: bool = False,
                 level: float = LEVEL) -> tuple[float, float, float]:
    """KID of (N1, D) features against (N2, D) features with a jackknife interval -> (value, low,
    high); NaNs with fewer than 3 samples on a side.

    ``paired=True`` (row i of both sets is one image, N1 = N2; the leaderboard's outputs against
    their targets): MMD^2_u with every i = j term left out. ``paired=False`` (independent sets):
    clean-fid's estimator over all cross pairs, equal to its ``kernel_distance`` when both sets
    have the same number of images, at most 1000 (its "subsets" are then all the whole set and
    carry no spread)."""
    x, y = np.asarray(feats1, np.float64), np.asarray(feats2, np.float64)
    if paired and len(x) != len(y):
        raise ValueError(f"paired KID: the sets have {len(x)} and {len(y)} rows; pairing needs "
                         f"one row per image on both sides")
    if len(x) < 3 or len(y) < 3:
        return math.nan, math.nan, math.nan
    if paired:
        value, loo = _paired_kid(x, y)
        se = jackknife_se(loo)
    else:
        value, se = _unpaired_kid(x, y)
    lo, hi, _ = normal_test(value, se, level)
    return float(value), lo, hi


def kid_difference(out_a: np.ndarray, out_b: np.ndarray, targets: np.ndarray, *,
                   level: float = LEVEL) -> tuple[float, float, float, float]:
    """KID(out_a, targets) - KID(out_b, targets), both paired (``kid_interval(paired=True)``), of
    two modes' outputs of the same images (row i of each (N, D) array is image i) -> (difference,
    low, high, p).

    The difference is itself a U-statistic over the image triples (a_i, b_i, target_i) (the
    targets' own term cancels); interval and two-sided p from its delete-one jackknife with a
    normal approximation (``medq.stats.normal_test``), so a large effect gets a small p, not a
    replicate-count floor. NaNs with fewer than 3 images or rows that do not line up."""
    n = len(targets)
    if n < 3 or len(out_a) != n or len(out_b) != n:
        return math.nan, math.nan, math.nan, math.nan
    a, b, y = (np.asarray(v, np.float64) for v in (out_a, out_b, targets))
    cross = _poly_kernel(a, y) - _poly_kernel(b, y)
    value, loo = _off_diagonal_mean(_poly_kernel(a, a) - _poly_kernel(b, b) - cross - cross.T)
    lo, hi, p = normal_test(value, jackknife_se(loo), level)
    return float(value), lo, hi, p


def distribution_protocol(backbones) -> str:
    """One line naming the features and estimators of the distribution columns of ``backbones``
    (a sequence of ``FeatureBackbone``; empty: "off")."""
    import cleanfid

    if not backbones:
        return "off"
    parts = [f"{bb.fd_column} / {bb.kid_column}: {bb.description}" for bb in backbones]
    return (f"clean-fid {getattr(cleanfid, '__version__', '0.1.35')} mode clean (PIL bicubic to "
            f"299 px); Frechet distance clamped at 0; KID: paired unbiased MMD^2_u (cubic kernel, "
            f"i = j pairs left out: each output is of its own target) with a 95 % jackknife "
            f"normal interval over images; " + "; ".join(parts))
