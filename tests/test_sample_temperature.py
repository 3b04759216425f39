"""``python -m bench sample-temperature``: the table that chose ``sample.noise_temperature``."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from bench import sample_temperature as st

REPO = Path(__file__).resolve().parents[1]


def _args(**kw) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    st.add_arguments(p)
    return p.parse_args([f"--{k.replace('_', '-')}={v}" for k, v in kw.items()] + ["--no-progress"])


@pytest.mark.slow  # runs the shipped base model's sampler on 6 images per task
def test_lower_temperature_moves_the_sample_toward_fidelity(capsys, monkeypatch):
    monkeypatch.chdir(REPO)  # the shipped weights and the data cache are found from the repo root
    assert st.main(_args(run="weights/base", tau="1,0.3", images=6)) == 0
    out = capsys.readouterr().out
    assert "| task | reference | tau = 1 | tau = 0.3 |" in out
    rows = [line.split("|")[1:-1] for line in out.splitlines()
            if line.startswith("| ") and not line.startswith("| task")]
    assert {r[0].strip() for r in rows} == {"sr4", "sr2", "enhance"}
    for task, _, at_one, at_03 in rows:
        ssim_one, ssim_03 = float(at_one.split("/")[1]), float(at_03.split("/")[1])
        assert ssim_03 > ssim_one, task  # less texture noise: closer to the target


@pytest.mark.parametrize("text, message", [("1,x", "'x' is not a number"),
                                           ("0", "'0' must be in"), ("3", "'3' must be in")])
def test_bad_temperatures_are_named(text, message):
    with pytest.raises(SystemExit, match=message):
        st.parse_taus(text)


def test_a_missing_run_and_a_zero_count_are_one_line_errors(tmp_path):
    with pytest.raises(SystemExit, match="no such directory"):
        st.main(_args(run=str(tmp_path / "nope")))
    with pytest.raises(SystemExit, match="--images 0: must be >= 1"):
        st.main(_args(images=0))
