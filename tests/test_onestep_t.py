"""``python -m bench onestep-t``: the table that chose ``sample.onestep_t``, checked against an
independent computation of its t = 1 column (the shipped base model's x0 prediction from pure
noise on the first 8 val images per task, ``medq.harness.split_scores``)."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from bench import onestep_t

REPO = Path(__file__).resolve().parents[1]


def _args(**kw) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    onestep_t.add_arguments(p)
    return p.parse_args([f"--{k.replace('_', '-')}={v}" for k, v in kw.items()] + ["--no-progress"])


@pytest.mark.slow  # runs the shipped base model on 62 images per task
def test_t_1_column_reproduces_the_recorded_base_scores(capsys, monkeypatch):
    monkeypatch.chdir(REPO)  # the shipped weights and the data cache are found from the repo root
    assert onestep_t.main(_args(run="weights/base", t="1,0.9", images=8, draws=1)) == 0
    out = capsys.readouterr().out
    from medq.harness.load import load_run
    from medq.harness.split_scores import split_fov_scores

    model, _, info = load_run("weights/base", output="onestep")
    scores = split_fov_scores(model.with_sample(onestep_t=1.0, onestep_draws=1),
                              info["config"].data, "val", 8)
    recorded = {task: s["psnr_fov_eroded"] for task, s in scores.items()}
    rows = {line.split("|")[1].strip(): line.split("|")[2:-1] for line in out.splitlines()
            if line.startswith("| ") and not line.startswith("| task")}
    assert set(rows) == set(recorded)
    for task, cells in rows.items():
        psnr_t1 = float(cells[1].split("/")[0])
        assert psnr_t1 == pytest.approx(recorded[task], abs=0.01), task
        assert float(cells[2].split("/")[0]) != psnr_t1  # t = 0.9 is another prediction
    assert onestep_t.main(_args(run="weights/base", t="0.9", images=4, draws="1,4")) == 0
    out = capsys.readouterr().out
    assert "| t = 0.9, 1 draws | t = 0.9, 4 draws |" in out
    sr2 = next(line for line in out.splitlines() if line.startswith("| sr2 "))
    one, four = sr2.split("|")[3:5]
    assert one != four  # four draws average four x0 predictions


@pytest.mark.parametrize("text, message", [("1,x", "'x' is not a number"),
                                           ("0", "'0' must be in (0, 1]"),
                                           ("1.5", "'1.5' must be in (0, 1]")])
def test_bad_t_values_are_named(text, message):
    with pytest.raises(SystemExit, match=message.replace("(", r"\(").replace(")", r"\)")):
        onestep_t.parse_ts(text)


@pytest.mark.parametrize("text, message", [("1,x", "'x' is not an integer"),
                                           ("0", "'0' must be in 1..64")])
def test_bad_draw_counts_are_named(text, message):
    with pytest.raises(SystemExit, match=message):
        onestep_t.parse_draws(text)


def test_a_missing_run_and_a_zero_count_are_one_line_errors(tmp_path):
    from medq.harness.split_scores import split_fov_scores

    with pytest.raises(SystemExit, match="no such directory"):
        onestep_t.main(_args(run=str(tmp_path / "nope")))
    with pytest.raises(SystemExit, match="--images 0: must be >= 1"):
        onestep_t.main(_args(images=0))
    with pytest.raises(ValueError, match="n = 0"):
        split_fov_scores(None, None, "val", 0)


def test_set_changes_the_images_scored_and_nothing_else(monkeypatch):
    """--set chooses a setting on another source's val split (the development photographs); the
    model's own settings stay the columns, so a model.* / sample.* override is refused."""
    from bench import sweep

    monkeypatch.chdir(REPO)
    _, info = sweep.load(_args(set="data.image_size=96"), "onestep")
    assert info["config"].data.image_size == 96
    with pytest.raises(SystemExit, match="only data.\\* settings"):
        sweep.load(_args(set="sample.onestep_t=0.5"), "onestep")
    with pytest.raises(SystemExit, match="expected data.KEY=VALUE"):
        sweep.load(_args(set="data"), "onestep")
    with pytest.raises(SystemExit, match="unknown key 'data.nokey'"):
        sweep.load(_args(set="data.nokey=1"), "onestep")
    with pytest.raises(SystemExit, match="data.image_size"):
        sweep.load(_args(set="data.image_size=-3"), "onestep")
