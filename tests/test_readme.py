"""The README is a manual (issue 29): short, no measured number, commit hash or date typed into it
or into the user docs it sends readers to, and every doc section it names exists. (That its
commands parse: tests/test_cli.py.)"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
# The user docs: measured numbers live in docs/RESULTS.md (generated) and docs/HISTORY.md only.
USER_DOCS = ("README.md", "docs/METRICS.md", "docs/BRING_YOUR_OWN_MODEL.md", "docs/DEMO.md")
MAX_LINES = 250
MAIN_JOB_TIME = 'Measured: see docs/RESULTS.md, "Main job time".'
COMMIT = re.compile(r"\b(?=[0-9a-f]*\d)(?=[0-9a-f]*[a-f])[0-9a-f]{7,40}\b")
DATE = re.compile(r"\b(19|20)\d\d-\d\d-\d\d\b")
# a number with the unit of a measurement (times, speeds, sizes in memory, decibels)
MEASURED = re.compile(r"\b\d+(\.\d+)?\s?(dB|ms|s|min|h|GFLOPS|GFLOP|GB/s|MB|GB|img/s|images/s)\b")
SECTION_REF = re.compile(r"(docs/[A-Z_]+\.md),\s+\"([^\"]+)\"")


def _text(name: str) -> str:
    return (REPO / name).read_text(encoding="utf-8")


def test_the_readme_is_short():
    n = len(_text("README.md").splitlines())
    assert n < MAX_LINES, f"README.md has {n} lines: move detail into docs/ (issue 29)"


def test_the_main_job_time_is_a_pointer_not_a_number():
    assert _text("README.md").count(MAIN_JOB_TIME) == 1


@pytest.mark.parametrize("name", USER_DOCS)
def test_no_hash_date_or_measured_number_in_the_user_docs(name):
    """No commit hash or date in any user doc; in the README, not even a threshold with a unit
    (the docs state settings such as METRICS.md's 100 dB PSNR cap, which the unit pattern cannot
    tell from a measurement)."""
    lines = _text(name).splitlines()
    found = [f"{name}:{i}: {line.strip()}" for i, line in enumerate(lines, 1)
             if COMMIT.search(line) or DATE.search(line)
             or (name == "README.md" and MEASURED.search(line))]
    assert not found, ("measurements go to docs/RESULTS.md (bench results) or docs/HISTORY.md:\n"
                       + "\n".join(found))


@pytest.mark.parametrize("name", USER_DOCS)
def test_the_docs_and_sections_named_exist(name):
    """Every docs/X.md named exists (docs/RESULTS.md once a report is committed: it is generated
    from results/), and every section named as `docs/X.md, "Heading"` is a heading of that file."""
    text = _text(name)
    for doc in sorted(set(re.findall(r"docs/[A-Z_]+\.md", text))):
        if doc == "docs/RESULTS.md" and not (REPO / "results").is_dir():
            continue
        assert (REPO / doc).is_file(), f"{name} names {doc}, which does not exist"
    for doc, section in SECTION_REF.findall(text):
        section, path = " ".join(section.split()), REPO / doc   # a name may wrap across lines
        if doc == "docs/RESULTS.md" and not path.is_file():
            continue
        headings = [h for h in path.read_text(encoding="utf-8").splitlines() if h.startswith("#")]
        assert any(section in h for h in headings), f'{name}: {doc} has no section "{section}"'
