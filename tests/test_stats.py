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
    assert wilcoxon_p([0.1, -0.2, 0.3])[1].startswith("only 3")
