"""What a generated report says, scored against the ground truth: DR grade, findings, quality.

    parsed = parse_report_fields("quality: good. ... diabetic retinopathy grade 2 (moderate).")
    parsed.dr_grade, parsed.findings, parsed.quality              # 2, {...} or None, 0
    scores = score_reports(predicted_texts, true_texts)   # {"dr_kappa": .., "dr_kappa_floor": ..}
    quadratic_weighted_kappa([0, 1, 2], [0, 2, 2], n_classes=5)

Each score sits beside its majority-class floor: what a model scores that writes the most common
ground-truth answer for every image (the constant report every model wrote in issue 14). A score
is ``None`` (n/a) when it is undefined, with the reason in ``reasons`` -- never 0.

- **DR grade**: quadratic-weighted Cohen's kappa, the standard agreement measure for DR grading
  (Kaggle/EyePACS, APTOS): 1 - sum(W * O) / sum(W * E) over the 5 x 5 confusion matrix O of
  (truth, prediction), with E the outer product of the two marginals (scaled to N) and
  W_ij = (i - j)^2 / (K - 1)^2. A constant prediction scores 0 whatever it is, so the floor is 0;
  undefined when E puts no weight off the diagonal (e.g. every truth and every prediction equal).
  Reports without a readable grade are left out of the kappa and counted in ``dr_parsed``.
- **Findings**: per-finding F1 (microaneurysms, haemorrhages, hard exudates, new vessels),
  presence in the report against presence in the truth; the floor predicts the finding's
  majority (present or absent) for every image. Undefined where neither truth nor prediction has
  a positive. Real data has no findings in its ground truth: n/a.
- **Quality word**: accuracy; the floor is the share of the most common true quality.
Implemented here (about 20 lines) rather than adding scikit-learn, which the project does not
otherwise need; ``tests/test_text_metrics.py`` checks kappa against its pairwise definition.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from medq.data.text import LESION_ORDER, parse_report

DR_CLASSES = 5
_GRADE_RE = re.compile(r"retinopathy grade ([0-4])\b")
_FINDINGS_RE = re.compile(r"findings:\s*([^.]*)\.")


@dataclass(frozen=True)
class ReportFields:
    quality: int | None
    """0 good, 1 usable, 2 reject; None when the report states none."""
    dr_grade: int | None
    """0-4; None when the report states none."""
    findings: frozenset[str] | None
    """Lesion names stated (empty for "no lesions seen"); None without a findings sentence."""


def parse_report_fields(text) -> ReportFields:
    """Quality, DR grade and findings stated in a report (``medq.data.text.report``'s format)."""
    if not isinstance(text, str):
        return ReportFields(None, None, None)
    low = text.lower()
    grade = _GRADE_RE.search(low)
    found = _FINDINGS_RE.search(low)
    findings = None if found is None else frozenset(x for x in LESION_ORDER if x in found.group(1))
    return ReportFields(parse_report(low), None if grade is None else int(grade.group(1)), findings)


def quadratic_weighted_kappa(y_true: Sequence[int], y_pred: Sequence[int],
                             n_classes: int = DR_CLASSES) -> float | None:
    """Quadratic-weighted Cohen's kappa of two label sequences (N,) in [0, n_classes); None when
    undefined (no pairs, or no expected disagreement)."""
    t, p = np.asarray(y_true, dtype=int), np.asarray(y_pred, dtype=int)
    if t.shape != p.shape:
        raise ValueError(f"kappa: {len(t)} true labels but {len(p)} predictions")
    if len(t) == 0:
        return None
    if t.min() < 0 or p.min() < 0 or max(t.max(), p.max()) >= n_classes:
        raise ValueError(f"kappa: labels must be in [0, {n_classes})")
    observed = np.zeros((n_classes, n_classes))
    np.add.at(observed, (t, p), 1)
    expected = np.outer(observed.sum(1), observed.sum(0)) / len(t)
    i, j = np.indices((n_classes, n_classes))
    weights = (i - j) ** 2 / (n_classes - 1) ** 2
    denom = float((weights * expected).sum())
    return None if denom == 0 else 1.0 - float((weights * observed).sum()) / denom


def f1(truth: Sequence[bool], pred: Sequence[bool]) -> float | None:
    """F1 of the positive class; None when neither side has a positive."""
    t, p = np.asarray(truth, dtype=bool), np.asarray(pred, dtype=bool)
    tp, fp, fn = int((t & p).sum()), int((~t & p).sum()), int((t & ~p).sum())
    return None if tp + fp + fn == 0 else 2 * tp / (2 * tp + fp + fn)


def _majority(values):
    counts = Counter(values)
    return max(sorted(counts), key=lambda v: counts[v]) if counts else None


def score_reports(predicted: Sequence, truth: Sequence) -> dict:
    """Score generated reports against ground-truth reports (texts, paired by position).

    -> {"n", "dr_kappa", "dr_kappa_floor", "dr_parsed", "quality_accuracy", "quality_floor",
    "quality_parsed", "findings_f1_<name>", "findings_f1_<name>_floor" for each finding with
    spaces as underscores, "findings_f1_macro", "findings_f1_macro_floor", "reasons": [str]}.
    Values are floats or None (n/a; its reason in "reasons")."""
    if len(predicted) != len(truth):
        raise ValueError(f"score_reports: {len(predicted)} reports but {len(truth)} truths")
    pred = [parse_report_fields(x) for x in predicted]
    true = [parse_report_fields(x) for x in truth]
    out: dict = {"n": len(pred), "reasons": []}
    # DR grade
    pairs = [(t.dr_grade, p.dr_grade) for t, p in zip(true, pred) if t.dr_grade is not None]
    graded = [(t, p) for t, p in pairs if p is not None]
    out["dr_parsed"] = len(graded) / len(pairs) if pairs else None
    out["dr_kappa"] = quadratic_weighted_kappa(*zip(*graded)) if graded else None
    majority = _majority([t for t, _ in pairs])
    truths = [t for t, _ in pairs]
    out["dr_kappa_floor"] = (quadratic_weighted_kappa(truths, [majority] * len(pairs))
                             if pairs else None)
    if not pairs:
        out["reasons"].append("DR kappa n/a: no ground-truth grade")
    elif out["dr_kappa"] is None:
        out["reasons"].append("DR kappa n/a: no readable grade in the reports" if not graded else
                              "DR kappa n/a: no expected disagreement (one grade on both sides)")
    # quality word
    q = [(t.quality, p.quality) for t, p in zip(true, pred) if t.quality is not None]
    out["quality_accuracy"] = sum(t == p for t, p in q) / len(q) if q else None
    out["quality_parsed"] = sum(p is not None for _, p in q) / len(q) if q else None
    qmaj = _majority([t for t, _ in q])
    out["quality_floor"] = sum(t == qmaj for t, _ in q) / len(q) if q else None
    if not q:
        out["reasons"].append("quality accuracy n/a: no ground-truth quality")
    # findings
    known = [(t.findings, p.findings or frozenset()) for t, p in zip(true, pred)
             if t.findings is not None]
    f1s, floors = [], []
    for name in LESION_ORDER:
        key = "findings_f1_" + name.replace(" ", "_")
        tv = [name in t for t, _ in known]
        value = f1(tv, [name in p for _, p in known]) if known else None
        floor = f1(tv, [_majority(tv)] * len(tv)) if known else None
        out[key], out[key + "_floor"] = value, floor
        if value is not None:
            f1s.append(value)
        if floor is not None:
            floors.append(floor)
    out["findings_f1_macro"] = float(np.mean(f1s)) if f1s else None
    out["findings_f1_macro_floor"] = float(np.mean(floors)) if floors else None
    if not known:
        out["reasons"].append("findings F1 n/a: the ground truth states no findings (real data)")
    return out


REPORT_SCORE_COLUMNS = ("dr_kappa", "dr_kappa_floor", "dr_parsed", "quality_accuracy",
                        "quality_floor", "findings_f1_macro", "findings_f1_macro_floor",
                        *(f"findings_f1_{n.replace(' ', '_')}{s}" for n in LESION_ORDER
                          for s in ("", "_floor")))
