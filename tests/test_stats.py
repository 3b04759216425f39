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
