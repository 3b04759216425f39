"""medq.stats: bootstrap intervals and paired Wilcoxon comparisons on known data."""

import math

import numpy as np
import pytest
from scipy.stats import wilcoxon

from medq.stats import bootstrap_ci, paired_comparison, wilcoxon_p


def test_bootstrap_ci_contains_mean_and_is_seeded():
    x = np.random.default_rng(1).normal(loc=3.0, size=200)
    lo, hi = bootstrap_ci(x, seed=0)
    assert lo < x.mean() < hi and hi - lo < 0.5
    assert (lo, hi) == bootstrap_ci(x, seed=0)
    assert bootstrap_ci([float("nan")]) != bootstrap_ci([1.0]) and bootstrap_ci([2.0]) == (2.0, 2.0)
    assert all(math.isnan(v) for v in bootstrap_ci([]))


def test_paired_comparison_known_shift():
    ids = [f"i{k}" for k in range(30)]
    b = {i: float(k) for k, i in enumerate(ids)}
    a = {i: v + 0.5 + 0.01 * (k % 3) for k, (i, v) in enumerate(b.items())}
    a["only_a"] = 99.0
    c = paired_comparison(a, b, seed=0)
    assert c.n == 30 and c.wins == 30 and c.losses == 0
    assert c.ci_low <= c.mean_diff <= c.ci_high and c.mean_diff == pytest.approx(0.51, abs=0.01)
    d = np.array([a[i] - b[i] for i in sorted(ids)])
    assert c.p_value == pytest.approx(wilcoxon(d).pvalue)
    assert c.p_value < 1e-5


def test_all_zero_differences_and_empty():
    same = {"a": 0.5, "b": 0.7, "c": 0.9}
    c = paired_comparison(same, dict(same))
    assert c.p_value == 1.0 and c.ties == 3 and c.mean_diff == 0 and "zero" in c.note
    assert math.isnan(paired_comparison({"a": 1.0}, {"b": 1.0}).p_value)
    assert wilcoxon_p([0.1, -0.2, 0.3])[1].startswith("only 3 non-zero")


def test_wilcoxon_counts_nonzero_and_flags_its_floor():
    ids = [f"i{k}" for k in range(39)]
    b = {i: 0.5 + 0.001 * k for k, i in enumerate(ids)}
    darker = {i: v * 0.99 for i, v in b.items()}  # a 1 %-darker copy: every difference one sign
    c = paired_comparison(darker, b)
    assert c.n == 39 and c.n_nonzero == 39 and c.p_value < 1e-10 and "floor" in c.note
    few = {i: (b[i] + (0.01 if k < 4 else 0.0)) for k, i in enumerate(ids)}
    c = paired_comparison(few, b)
    assert c.n == 39 and c.n_nonzero == 4 and "only 4 non-zero" in c.note


def test_holm():
    from medq.stats import holm

    adj = holm([0.01, 0.04, float("nan"), 0.03])
    assert adj[0] == pytest.approx(0.03) and adj[3] == pytest.approx(0.06)
    assert adj[1] == pytest.approx(0.06) and math.isnan(adj[2])  # monotone: max(0.06, 0.04)


def test_seed_comparison():
    from medq.stats import seed_comparison

    s = seed_comparison({0: 0.71, 1: 0.70, 2: 0.72}, {0: 0.69, 1: 0.69, 2: 0.70})
    assert s.n_seeds == 3 and s.mean_diff == pytest.approx(0.05 / 3)
    assert s.ci_low < s.mean_diff < s.ci_high and "t over 3 seeds" in s.note
    one = seed_comparison({0: 0.7}, {0: 0.6})
    assert one.n_seeds == 1 and math.isnan(one.ci_low) and "single seed" in one.note


def _crossed(rng, k, n, sd_seed, sd_image, sd_noise=0.5):
    """d[s, i] = u_s + v_i + e_si with population mean 0: seeds and images both random."""
    return (sd_seed * rng.normal(size=(k, 1)) + sd_image * rng.normal(size=(1, n))
            + sd_noise * rng.normal(size=(k, n)))


@pytest.mark.parametrize("sd_seed,sd_image,sd_noise", [(1.0, 0.2, 0.5), (0.05, 1.0, 0.3)],
                         ids=["seed-dominated", "image-dominated"])
def test_images_x_seeds_interval_covers_with_three_seeds(sd_seed, sd_image, sd_noise):
    """Coverage of the true mean (0) by the 95 % interval over images and seeds, 3 seeds x 40
    images, whichever factor dominates. The two one-level intervals each fail one of the cases:
    the seed spread (t over per-seed means on the fixed images) when images dominate, an interval
    over images alone when seeds dominate."""
    from scipy.stats import t as student_t

    from medq.stats import crossed_mean_interval

    rng = np.random.default_rng(7)
    hits = {"crossed": 0, "seeds only": 0, "images only": 0}
    runs = 300
    for _ in range(runs):
        d = _crossed(rng, 3, 40, sd_seed, sd_image, sd_noise)
        _, lo, hi, _ = crossed_mean_interval(d)
        hits["crossed"] += lo <= 0 <= hi
        for name, means in (("seeds only", d.mean(axis=1)), ("images only", d.mean(axis=0))):
            half = student_t.ppf(0.975, len(means) - 1) * means.std(ddof=1) / np.sqrt(len(means))
            hits[name] += abs(means.mean()) <= half
    cover = {k: v / runs for k, v in hits.items()}
    assert 0.9 <= cover["crossed"] <= 0.995, cover
    one_level = "images only" if sd_seed > sd_image else "seeds only"
    assert cover[one_level] < 0.8, cover


def test_seed_image_comparison_pairs_by_seed_and_image_and_labels_its_intervals():
    from medq.stats import IMAGES_X_SEEDS, SEED_SPREAD, crossed_mean_interval, seed_image_comparison

    rng = np.random.default_rng(0)
    d = _crossed(rng, 3, 30, 0.2, 1.0) + 0.3
    base = {f"i{k}": float(v) for k, v in enumerate(rng.normal(size=30))}
    a = {s: {i: base[i] + d[s, k] for k, i in enumerate(base)} for s in range(3)}
    b = {s: dict(base) for s in range(3)}  # a baseline: the same values under every seed
    a[1]["i5"] = float("nan")  # dropped for every seed
    a[2]["extra"] = 1.0        # not in every seed: dropped
    c = seed_image_comparison(a, b)
    keep = [k for k in range(30) if k != 5]
    mean, lo, hi, p = crossed_mean_interval(d[:, keep])
    assert (c.n_seeds, c.n_images, c.interval) == (3, 29, IMAGES_X_SEEDS)
    assert (c.mean_diff, c.ci_low, c.ci_high, c.p_value) == pytest.approx((mean, lo, hi, p))
    # the seed spread shares the images' draw: narrower than the interval over images and seeds
    assert c.spread_high - c.spread_low < c.ci_high - c.ci_low
    assert c.sd_diff == pytest.approx(d[:, keep].mean(axis=1).std(ddof=1))
    few = seed_image_comparison({0: {"x": 1.0, "y": 2.0}}, {0: {"x": 0.0, "y": 0.0}})
    assert math.isnan(few.ci_low) and "needs 2 of each" in few.note
    assert seed_comparison_label() == SEED_SPREAD


def seed_comparison_label():
    from medq.stats import seed_comparison

    return seed_comparison({0: 0.71, 1: 0.70}, {0: 0.69, 1: 0.69}).interval


def test_crossed_interval_degenerate_tables():
    from medq.stats import crossed_mean_interval

    same = np.full((3, 5), 0.25)
    assert crossed_mean_interval(same) == (0.25, 0.25, 0.25, 0.0)
    assert crossed_mean_interval(np.zeros((2, 4)))[3] == 1.0
    assert all(math.isnan(v) for v in crossed_mean_interval(np.ones((1, 5))))
    assert all(math.isnan(v) for v in crossed_mean_interval(np.array([[1.0, np.nan], [2, 3]])))


def test_jackknife_se_of_the_mean_is_the_standard_error_and_normal_test():
    from scipy.stats import norm

    from medq.stats import jackknife_se, normal_test

    x = np.random.default_rng(1).normal(size=50)
    loo = (x.sum() - x) / (len(x) - 1)
    assert jackknife_se(loo) == pytest.approx(x.std(ddof=1) / np.sqrt(len(x)), rel=1e-12)
    lo, hi, p = normal_test(1.0, 0.5)
    assert (lo, hi) == pytest.approx((1 - 1.959964 * 0.5, 1 + 1.959964 * 0.5), abs=1e-6)
    assert p == pytest.approx(2 * norm.sf(2.0))
    assert normal_test(40.0, 1.0)[2] < 1e-300 or normal_test(40.0, 1.0)[2] == 0.0
    assert normal_test(0.0, 0.0) == (0.0, 0.0, 1.0) and normal_test(0.1, 0.0)[2] == 0.0
    assert all(math.isnan(v) for v in normal_test(float("nan"), 1.0))
    assert math.isnan(jackknife_se([1.0]))
