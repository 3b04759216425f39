"""Text reports on the page: the reference report of a test image, and each finding of a model's
report marked as agreeing with it or not.

Reports follow ``medq.data.text.report``: ``quality: usable. findings: a few microaneurysms and
hard exudates. diabetic retinopathy grade 2 (moderate).``; the findings sentence is absent for
real data, whose lesions are unknown. ``findings(text)`` reads one back into
{"quality", "dr_grade", "lesions"}; ``compare_findings`` lines a model's report up with the
reference, finding by finding.

The reference of a test image is the report ``medq.data`` trained and scored against: the
records row's ``reference_report`` when the eval wrote one, else the item of the run's own data
config (``build_dataset(cfg.data, size, "all")``), used only when its pixels hash to the row's
``data_sha256`` (so a changed data config can never attach another image's report).
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from medq.data.text import DR_NAMES, LESION_ORDER, QUALITY_WORDS, parse_report

log = logging.getLogger(__name__)

_GRADE_RE = re.compile(r"grade\s+([0-4])\b")
REFERENCE_FIELDS = ("reference_report", "report_reference", "reference")


def findings(text: str | None) -> dict:
    """{"quality": 0-2 | None, "dr_grade": 0-4 | None, "lesions": set of LESION_ORDER names, or
    None when the report states no findings sentence} of a templated report."""
    if not isinstance(text, str):
        return {"quality": None, "dr_grade": None, "lesions": None}
    low = text.lower()
    grade = _GRADE_RE.search(low)
    lesions = None
    if "findings:" in low:
        part = low.split("findings:", 1)[1].split(".", 1)[0]
        lesions = {name for name in LESION_ORDER if name in part}
    return {"quality": parse_report(text), "dr_grade": int(grade.group(1)) if grade else None,
            "lesions": lesions}


def quality_only(text: str | None) -> str:
    """A report reduced to the image quality it states, rebuilt from the parsed word rather than
    cut out of the model's text, so no grade or lesion in whatever form the model wrote it can
    slip through: what the page shows of a report whose grade is withheld."""
    q = findings(text)["quality"]
    return "(no image quality stated)" if q is None else f"quality: {QUALITY_WORDS[q]}."


def _quality(q) -> str:
    return "not stated" if q is None else QUALITY_WORDS[q]


def _grade(g) -> str:
    return "not stated" if g is None else f"{g} ({DR_NAMES[g]})"


def compare_findings(model_text: str | None, reference_text: str | None) -> list[dict]:
    """One row per finding the reference states: {"finding", "model", "reference", "agree"}.
    Image quality, DR grade, then each lesion type (present / absent) when the reference lists
    findings. ``agree`` is True / False."""
    got, ref = findings(model_text), findings(reference_text)
    rows = []
    if ref["quality"] is not None:
        rows.append({"finding": "image quality", "model": _quality(got["quality"]),
                     "reference": _quality(ref["quality"]),
                     "agree": got["quality"] == ref["quality"]})
    if ref["dr_grade"] is not None:
        rows.append({"finding": "diabetic retinopathy grade", "model": _grade(got["dr_grade"]),
                     "reference": _grade(ref["dr_grade"]),
                     "agree": got["dr_grade"] == ref["dr_grade"]})
    if ref["lesions"] is not None:
        for name in LESION_ORDER:
            want = name in ref["lesions"]
            have = None if got["lesions"] is None else name in got["lesions"]
            rows.append({"finding": name,
                         "model": "not stated" if have is None else "present" if have else "absent",
                         "reference": "present" if want else "absent", "agree": have == want})
    return rows


class ReferenceReports:
    """Reference reports of evaluated test images, looked up by (task, id, records row).

    ``config_paths``: saved run configs (``runs/<run>/config.toml``) whose data section may have
    produced the test images; datasets are built on first use and kept."""

    def __init__(self, config_paths: list[Path]):
        self.config_paths = [Path(p) for p in config_paths]
        self._datasets: dict[str, object] = {}
        self._failed: set[str] = set()

    def _dataset(self, path: Path, task: str):
        key = f"{path}|{task}"
        if key in self._datasets or key in self._failed:
            return self._datasets.get(key)
        try:
            from medq.config import load_config
            from medq.data import build_dataset

            cfg = load_config(str(path))
            self._datasets[key] = build_dataset(cfg.data, "all", tasks=[task])
        except Exception as e:  # noqa: BLE001 - a run from another version must not stop the page
            log.warning("%s: cannot rebuild its test data for reference reports (%s)", path, e)
            self._failed.add(key)
        return self._datasets.get(key)

    def get(self, task: str, sample_id: str, row: dict | None) -> str | None:
        """The reference report of test image ``sample_id`` on ``task``, or None if unknown."""
        for field in REFERENCE_FIELDS:
            if row and isinstance(row.get(field), str):
                return row[field]
        from medq.harness import data_fingerprint

        want = (row or {}).get("data_sha256")
        for path in self.config_paths:
            ds = self._dataset(path, task)
            if ds is None or sample_id not in ds.ids:
                continue
            item = ds[ds.ids.index(sample_id)]
            if want is None or data_fingerprint(item) == want:
                return item["report"]
        return None
