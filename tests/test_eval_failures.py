"""bench eval never turns a failure into a green run and never mixes data sources (issue 18):
exit codes and one line per failure, reports published only from a complete scoring, outputs
keyed by data, aborted runs scored only on request."""

from __future__ import annotations

import argparse
import errno
import json
from pathlib import Path

import pytest

from bench import eval as E
from bench.eval_infer import EvalItems
from bench.eval_targets import ABORTED_SKIPPED, run_targets
from bench.publish import publish_reports
from fakes.images import fundus_folder
from medq import scoring as S
from medq.config import DataConfig
from medq.harness.records import (
    DataMismatchError,
    claim_eval_dir,
    data_key,
    eval_dir_name,
    keyed_eval_dir,
    read_jsonl,
)


def _folder(tmp_path: Path, bad: bool) -> Path:
    return fundus_folder(tmp_path / ("bad" if bad else "good"), broken=bad)


def _eval(tmp_path, *extra: str) -> int:
    from bench.__main__ import main

    return main(["eval", "--skip-train", "--runs-dir", str(tmp_path / "runs"),
                 "--out", str(tmp_path / "reports"), "--tasks", "sr4", "--no-text", "--no-plots",
                 "--no-progress", "--backbone", "randresnet18",
                 "--set", f"data.cache_dir={json.dumps(str(tmp_path / 'cache'))}", *extra])


@pytest.mark.slow  # runs two whole evaluations
def test_bad_data_source_is_one_line_naming_the_file_and_keeps_the_good_reports(tmp_path, capsys):
    good, bad = _folder(tmp_path, bad=False), _folder(tmp_path, bad=True)
    assert _eval(tmp_path, "--data", "folder", "--root", str(good), "--split", "all") == 0
    lb = tmp_path / "reports" / "leaderboard.csv"
    before = lb.read_bytes()
    assert b"bicubic" in before and b",ok," in before.replace(b"\n", b",")
    capsys.readouterr()
    assert _eval(tmp_path, "--data", "folder", "--root", str(bad), "--split", "all") == 2
    captured = capsys.readouterr()
    err = [line for line in captured.err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("error: ") and "broken.png" in err[0], err
    assert "Traceback" not in captured.out + captured.err
    assert "inference on" not in captured.out  # said before any model ran
    assert lb.read_bytes() == before  # the good report is untouched, nothing written beside it
    assert not (tmp_path / "reports" / "failed").exists()
    assert not list((tmp_path / "reports").glob(".tmp-*"))
    keyed = {p.name for p in (tmp_path / "runs" / "_baselines" / "bicubic").glob("eval-*")}
    assert len(keyed) == 1  # the good folder's outputs only: no directory for the bad one


@pytest.mark.slow  # two evaluations with Frechet distances: ~40 s on the shared machine
def test_folder_and_embedded_outputs_never_mix(tmp_path):
    good = _folder(tmp_path, bad=False)
    assert _eval(tmp_path, "--data", "folder", "--root", str(good), "--split", "all") == 0
    assert _eval(tmp_path, "--set", "data.num_images=12", "--set", "model.tile_size=32", "--set",
                 "data.image_size=32",
                 "--test-images", "2") == 0
    base = tmp_path / "runs" / "_baselines" / "bicubic"
    embedded = read_jsonl(base / "eval" / "sr4" / "records.jsonl")
    assert embedded and all(r["id"].startswith("syn") for r in embedded)
    folder_dirs = sorted(p.name for p in base.glob("eval-folder-all-*"))
    assert len(folder_dirs) == 1
    ids = {r["id"] for r in read_jsonl(base / folder_dirs[0] / "sr4" / "records.jsonl")}
    assert ids == {"f0", "f1", "f2"}
    key = json.loads((base / folder_dirs[0] / "data.json").read_text())
    assert key["source"] == "folder" and key["split"] == "all"
    assert key["root"] == str(good.resolve())


def test_data_key_names_and_claims(tmp_path):
    syn = DataConfig()
    k = data_key(syn, 64, "test")
    assert eval_dir_name(k) == "eval"
    assert eval_dir_name(data_key(syn, 64, "all")).startswith("eval-synthetic-all-")
    folder = data_key(DataConfig(source="folder", root=str(tmp_path)), 64, "all")
    other_size = data_key(DataConfig(source="folder", root=str(tmp_path)), 32, "all")
    assert eval_dir_name(folder) != eval_dir_name(other_size)
    assert keyed_eval_dir(Path("runs/r/eval/step_000010-ema"), folder) == \
        Path(f"runs/r/{eval_dir_name(folder)}/step_000010-ema")
    d = tmp_path / "out"
    (d / "sr4").mkdir(parents=True)
    (d / "sr4" / "records.jsonl").write_text('{"id": "x"}\n')
    with pytest.raises(DataMismatchError, match="written before outputs were keyed"):
        claim_eval_dir(d, folder, replace_stale=False)  # a directory the user named: refused
    claim_eval_dir(d, folder, replace_stale=True)      # a default one: cleared and claimed
    assert not (d / "sr4").exists() and json.loads((d / "data.json").read_text()) == folder
    claim_eval_dir(d, folder, replace_stale=False)     # same data: fine


def _aborted_run(tmp_path) -> Path:
    run = tmp_path / "runs" / "pixel-deadbeef"
    (run / "checkpoints").mkdir(parents=True)
    (run / "run.json").write_text(json.dumps({"preset": "pixel", "hash": "deadbeef" * 8,
                                              "status": "aborted", "step": 7}))
    return run


def test_aborted_run_is_a_failure_unless_asked_and_never_scores_a_bad_checkpoint(tmp_path):
    from medq.checkpoint import save_checkpoint

    run = _aborted_run(tmp_path)
    root = run / "checkpoints"
    save_checkpoint(root, 5, {}, {"good": False})
    args = argparse.Namespace(all_checkpoints=False, weights="ema", include_aborted=False)
    ctx = E.Context(args, [], ["sr4"], "cpu", EvalItems("test", ["sr4"], None))
    rows = [r for t in run_targets(run, ctx) for r in E.evaluate(t, ctx)[0]]
    assert rows[0]["status"] == ABORTED_SKIPPED
    lines = E.failures(rows, [])
    assert lines == [f"run pixel-deadbeef (sr4): {ABORTED_SKIPPED}"]
    # On request: only a good checkpoint is scored; here there is none.
    args.include_aborted = True
    rows = [r for t in run_targets(run, ctx) for r in E.evaluate(t, ctx)[0]]
    assert rows[0]["status"] == "aborted: no good checkpoint"
    assert S.row_ok({"status": "ok (aborted run, scored on request)"})


def test_publish_reports_atomic_failed_beside_and_stale_files_removed(tmp_path):
    out = tmp_path / "reports"

    def writer(files):
        def write(d):
            d.mkdir(parents=True, exist_ok=True)
            for name in files:
                (d / name).write_text(name)
            return {"files": [d / n for n in files]}
        return write

    got = publish_reports(out, writer(["leaderboard.csv", "bars_sr2.png"]))
    assert got["files"] == [out / "leaderboard.csv", out / "bars_sr2.png"]
    publish_reports(out, writer(["leaderboard.csv"]))
    assert not (out / "bars_sr2.png").exists()  # a plot of a task no longer scored
    publish_reports(out, writer(["leaderboard.csv", "x.png"]), failed=True)
    assert (out / "failed" / "x.png").is_file() and not (out / "x.png").exists()

    def full(d):
        d.mkdir(parents=True)
        (d / "leaderboard.csv").write_text("half")
        raise OSError(errno.ENOSPC, "No space left on device")

    (out / "leaderboard.csv").write_text("good")
    with pytest.raises(OSError):
        publish_reports(out, full)
    assert (out / "leaderboard.csv").read_text() == "good"
    assert not list(out.glob(".tmp-*"))


def test_infer_default_output_is_keyed_by_the_data(tmp_path):
    from infer.__main__ import main

    good = _folder(tmp_path, bad=False)
    sets = ["--set", f"run.out_dir={json.dumps(str(tmp_path / 'runs'))}",
            "--set", f"data.cache_dir={json.dumps(str(tmp_path / 'cache'))}"]
    assert main(["--baseline", "bicubic", "--data", "folder", "--root", str(good), "--split", "all",
                 "--tasks", "sr4", "--no-text", "--no-progress", *sets]) == 0
    base = tmp_path / "runs" / "_baselines" / "bicubic"
    assert not (base / "eval").exists()
    [keyed] = list(base.glob("eval-folder-all-*"))
    assert {r["id"] for r in read_jsonl(keyed / "sr4" / "records.jsonl")} == {"f0", "f1", "f2"}
    # An explicit --out that holds another data source's outputs is refused, not mixed.
    out = tmp_path / "mine"
    assert main(["--baseline", "bicubic", "--data", "folder", "--root", str(good), "--split", "all",
                 "--tasks", "sr4", "--no-text", "--no-progress", "--out", str(out), *sets]) == 0
    assert main(["--baseline", "bicubic", "--tasks", "sr4", "--no-text", "--no-progress",
                 "--out", str(out), "--limit", "1", *sets]) == 2


@pytest.mark.slow  # one whole evaluation (baselines only)
def test_an_eval_report_is_a_results_report_with_its_command(tmp_path):
    """`bench eval --out results/NAME` is all docs/RESULTS.md needs: meta.json names the title,
    the command as typed, the machine line and the date, and `bench results` renders it."""
    from bench.__main__ import main

    good = _folder(tmp_path, bad=False)
    results = tmp_path / "results"
    assert _eval(tmp_path, "--data", "folder", "--root", str(good), "--split", "all",
                 "--title", "Baselines on a folder", "--out", str(results / "folder")) == 0
    meta = json.loads((results / "folder" / "meta.json").read_text())
    assert meta["title"] == "Baselines on a folder"
    assert meta["command"].startswith("python -m bench eval --skip-train")
    assert "--title 'Baselines on a folder'" in meta["command"]
    assert meta["measured_on"] and meta["date"]
    page = tmp_path / "RESULTS.md"
    assert main(["results", "--results", str(results), "--out", str(page)]) == 0
    text = page.read_text()
    assert "Baselines on a folder" in text and "bicubic" in text and meta["command"] in text
