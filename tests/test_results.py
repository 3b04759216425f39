"""bench results: docs/RESULTS.md generated from committed reports, and --check (issue 29)."""

import json
from pathlib import Path

import pytest

from bench import report
from bench.__main__ import main
from bench.results import write_comparison_csvs
from medq.stats import paired_comparison, seed_image_comparison

REPO = Path(__file__).resolve().parents[1]
META = {"title": "Main job, embedded test split", "command": "make train-v3 && make eval",
        "measured_on": "machine: Test CPU, 2 torch threads; calibration 50.0 GFLOPS",
        "date": "2026-12-07"}


def _row(name, kind, ssim, lo, hi, **extra):
    return {"status": "ok", "name": name, "kind": kind, "task": "sr4", "n_images": 3,
            "ssim_fov": ssim, "ssim_fov_lo": lo, "ssim_fov_hi": hi,
            "psnr_eroded_fov": 25.0 + ssim, "psnr_eroded_fov_lo": 24.5,
            "psnr_eroded_fov_hi": 26.5, **extra}


def _report(folder: Path, meta=META) -> Path:
    """A tiny report as bench eval writes it (its CSV writers), plus meta.json."""
    folder.mkdir(parents=True)
    rows = [_row("ssim_v3", "run", 0.7012, 0.69, 0.71, kid_inception=0.0123,
                 kid_inception_lo=0.01, kid_inception_hi=0.015),
            _row("constant", "baseline", 0.3, 0.29, 0.31),
            _row("bicubic", "baseline", 0.65, 0.64, 0.66),
            {**_row("pixel (mean of 3 seeds)", "seeds", 0.6, 0.0, 0.0), "n_seeds": 3,
             "ssim_fov_seed_sd": 0.002},
            {"status": "error: it broke", "name": "broken", "kind": "model", "task": "sr4"}]
    report.write_csvs(rows, [], folder)
    a, b = {"x": 0.7, "y": 0.71, "z": 0.69}, {"x": 0.65, "y": 0.66, "z": 0.64}
    comps = [{"task": "sr4", "a": "ssim_v3", "b": "bicubic", "metric": "ssim_fov",
              **paired_comparison(a, b).as_dict(), "p_holm": 0.25}]
    seeds = [{"task": "sr4", "a": "pixel", "b": "bicubic", "metric": "ssim_fov",
              **seed_image_comparison({s: {k: v - 0.01 * s for k, v in a.items()}
                                       for s in range(3)}, {s: b for s in range(3)}).as_dict()}]
    write_comparison_csvs(folder, comps, seeds)
    (folder / "meta.json").write_text(json.dumps(meta))
    return folder


def test_results_page_is_generated_from_the_reports_and_checked(tmp_path, capsys):
    results, out = tmp_path / "results", tmp_path / "RESULTS.md"
    _report(results / "main")
    args = ["results", "--results", str(results), "--out", str(out)]
    assert main(args + ["--check"]) == 1
    assert "missing" in capsys.readouterr().err
    assert main(args) == 0
    text = out.read_text()
    assert text.count("Measured on:") == 1 and "`make train-v3 && make eval`" in text
    assert "2026-12-07" in text and "calibration 50.0 GFLOPS" in text
    table = [line for line in text.splitlines() if line.startswith("| ")]
    assert table[0].startswith("| mode | role | n | SSIM fov | PSNR eroded fov (dB) | KID")
    names = [line.split(" | ")[0][2:] for line in table[1:5]]
    assert names == ["bicubic", "constant", "pixel (mean of 3 seeds)", "ssim_v3"]
    assert "| bicubic | reference | 3 | 0.6500 [0.6400, 0.6600] |" in text
    assert "| constant | floor |" in text and "0.6000 +- 0.0020 (3 seeds)" in text
    assert "0.0123 [0.01, 0.015]" in text and "- not scored: broken (error: it broke)" in text
    assert "| sr4 | ssim_v3 - bicubic | ssim_fov | 3 | +0.05 |" in text and "| 0.25 |" in text
    assert "| sr4 | pixel - bicubic | ssim_fov | 3 | 3 |" in text and "images x seeds" in text
    assert main(args + ["--check"]) == 0
    out.write_text(text.replace("0.6500", "0.6510"))  # a hand edit
    assert main(args + ["--check"]) == 1
    err = capsys.readouterr().err
    assert "out of date" in err and "line " in err and "0.6510" in err


@pytest.mark.parametrize("breakage,message", [
    (lambda d: (d / "meta.json").unlink(), "meta.json: missing"),
    (lambda d: (d / "meta.json").write_text('{"title": "x"}'), "key 'command' missing"),
    (lambda d: (d / "meta.json").write_text("{nope"), "meta.json: not JSON"),
    (lambda d: (d / "leaderboard.csv").unlink(), "leaderboard.csv: missing"),
    (lambda d: (d / "meta.json").write_text(json.dumps({**META, "columns": ["fid_x"]})),
     "column 'fid_x' is not in leaderboard.csv"),
])
def test_a_bad_report_is_one_line_and_writes_nothing(tmp_path, capsys, breakage, message):
    results, out = tmp_path / "results", tmp_path / "RESULTS.md"
    breakage(_report(results / "main"))
    assert main(["results", "--results", str(results), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err and not out.exists()


def test_the_committed_results_page_is_up_to_date():
    """Once reports are committed, docs/RESULTS.md must be their rendering."""
    if not (REPO / "results").is_dir():
        pytest.skip("no results/ committed yet")
    assert main(["results", "--results", str(REPO / "results"),
                 "--out", str(REPO / "docs" / "RESULTS.md"), "--check"]) == 0


def test_record_keeps_what_a_command_printed_and_results_shows_it_verbatim(tmp_path, capsys):
    """bench record runs a command, keeps its standard output as results/<name>/table.md with
    the command, machine and date; a failing command records nothing; bench results renders the
    table as printed, under its command."""
    results, page = tmp_path / "results", tmp_path / "RESULTS.md"
    table = "| a | b |\n|---|---|\n| 1 | 2 |"
    argv = ["record", "demo-table", "--title", "A printed table", "--results", str(results),
            "--", "python", "-c", f"print({table!r})"]
    assert main(argv) == 0
    meta = json.loads((results / "demo-table" / "meta.json").read_text())
    assert meta["title"] == "A printed table" and "GFLOPS" in meta["measured_on"]
    assert meta["command"].startswith("python -c")
    assert (results / "demo-table" / "table.md").read_text().strip() == table
    failing = ["record", "broken", "--title", "x", "--results", str(results), "--", "python",
               "-c", "import sys; print('half'); sys.exit(3)"]
    assert main(failing) == 1 and not (results / "broken").exists()
    assert main(["results", "--results", str(results), "--out", str(page)]) == 0
    text = page.read_text()
    assert "## A printed table" in text and table in text and meta["command"] in text
    assert main(["results", "--results", str(results), "--out", str(page), "--check"]) == 0
