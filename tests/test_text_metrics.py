"""Report scoring: DR-grade kappa, per-finding F1 and quality accuracy beside their floors."""

import itertools

import numpy as np
import pytest

from medq.data.text import report
from medq.text_metrics import f1, parse_report_fields, quadratic_weighted_kappa, score_reports


def _kappa_pairwise(t, p, k=5):
    """Its definition, independently: 1 - mean w(t_i, p_i) / mean over all (i, j) of w(t_i, p_j)."""
    w = lambda a, b: (a - b) ** 2 / (k - 1) ** 2  # noqa: E731
    obs = np.mean([w(a, b) for a, b in zip(t, p)])
    exp = np.mean([w(a, b) for a, b in itertools.product(t, p)])
    return 1 - obs / exp


def test_kappa_matches_its_pairwise_definition():
    rng = np.random.default_rng(0)
    for _ in range(5):
        t, p = rng.integers(0, 5, 40), rng.integers(0, 5, 40)
        p[:20] = t[:20]
        assert quadratic_weighted_kappa(t, p) == pytest.approx(_kappa_pairwise(t, p), abs=1e-12)
    assert quadratic_weighted_kappa([0, 1, 2, 3, 4], [0, 1, 2, 3, 4]) == pytest.approx(1.0)
    assert quadratic_weighted_kappa([0, 1, 2, 3], [3, 3, 3, 3]) == pytest.approx(0.0)  # constant
    assert quadratic_weighted_kappa([2, 2], [2, 2]) is None
    assert quadratic_weighted_kappa([], []) is None
    with pytest.raises(ValueError, match=r"\[0, 5\)"):
        quadratic_weighted_kappa([5], [0])


def test_parse_report_fields():
    r = parse_report_fields(report(1, 3, ["microaneurysms", "hard exudates"]))
    assert (r.quality, r.dr_grade) == (1, 3)
    assert r.findings == frozenset({"microaneurysms", "hard exudates"})
    r = parse_report_fields(report(0, 0, []))
    assert r.findings == frozenset() and r.dr_grade == 0
    assert parse_report_fields(report(2, 4)).findings is None  # real data: no findings sentence
    assert parse_report_fields(None) == parse_report_fields("garbage")


def test_constant_report_scores_its_floor_and_a_reader_beats_it():
    truth = [report(q, g, ["microaneurysms"] if g else []) for q, g in
             [(0, 0), (0, 0), (0, 1), (0, 2), (0, 3), (0, 0), (1, 4), (0, 2)]]
    constant = [report(0, 3, ["microaneurysms"])] * len(truth)  # issue 14: one report for all
    s = score_reports(constant, truth)
    assert s["dr_kappa"] == pytest.approx(0.0) and s["dr_kappa_floor"] == pytest.approx(0.0)
    assert s["quality_accuracy"] == s["quality_floor"] == pytest.approx(7 / 8)
    perfect = score_reports(truth, truth)
    assert perfect["dr_kappa"] == pytest.approx(1.0)
    assert perfect["findings_f1_microaneurysms"] == 1.0
    assert perfect["findings_f1_haemorrhages"] is None  # no positive anywhere: n/a, not 0
    assert perfect["dr_parsed"] == 1.0 and score_reports(["??"] * 8, truth)["dr_parsed"] == 0.0
    real = score_reports([report(0, 2)] * 3, [report(0, 0), report(0, 2), report(0, 4)])
    assert real["findings_f1_macro"] is None and any("findings" in r for r in real["reasons"])


def test_f1():
    assert f1([1, 1, 0, 0], [1, 0, 1, 0]) == pytest.approx(0.5)
    assert f1([0, 0], [0, 0]) is None
