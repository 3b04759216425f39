"""medq.leaderboard: the one schema of the leaderboard, which bench writes from and the demo
reads through."""

from __future__ import annotations

import math

import pytest

from medq import leaderboard as L
from medq.metrics import SCORED_METRICS
from medq.text_metrics import REPORT_SCORE_COLUMNS


def _rows():
    run = {"name": "ssim_v3-1@step_000300/ema/onestep", "kind": "run", "preset": "ssim_v3/onestep",
           "task": "sr4", "ssim_fov": 0.8, "ssim_fov_lo": 0.7, "ssim_fov_hi": 0.9,
           "fid_inception": 40.0, "kid_inception": 0.01, "kid_inception_lo": 0.0,
           "kid_inception_hi": 0.02, "dr_kappa": 0.4, "dr_kappa_floor": 0.0}
    seeds = {"name": "ssim_v3 (mean of 3 seeds)", "kind": "seeds", "preset": "ssim_v3",
             "task": "sr4", "n_seeds": 3, "ssim_fov_seed_sd": 0.01, "fd_randresnet18": 3.0}
    base = {"name": "bicubic", "kind": "baseline", "preset": "", "task": "sr4", "ssim_fov": ""}
    return [run, seeds, base]


def test_every_column_the_leaderboard_writes_is_described():
    cols = L.leaderboard_columns(_rows())
    assert cols[:len(L.ID_COLUMNS)] == L.ID_COLUMNS and cols[-len(L.TAIL_COLUMNS):] == \
        L.TAIL_COLUMNS
    for c in cols + list(L.PER_IMAGE_COLUMNS[3:-2]):
        col = L.column(c)
        assert col.name == c and col.role in L.ROLES and col.meaning and col.header, c
    assert {"fid_inception", "kid_inception_hi", "n_seeds", "ssim_fov_seed_sd",
            "fd_randresnet18"} <= set(cols)


def test_every_scored_metric_is_main_or_secondary_and_higher_is_better():
    assert set(L.MAIN_METRICS) | set(L.SECONDARY_METRICS) == set(SCORED_METRICS)
    assert not set(L.MAIN_METRICS) & set(L.SECONDARY_METRICS)
    assert L.MAIN_METRIC in L.MAIN_METRICS
    for m in SCORED_METRICS:
        assert L.column(m).higher_is_better is True
        assert L.column(m).role == ("main" if m in L.MAIN_METRICS else "secondary")
        assert L.column(f"{m}_lo").role == "interval" and L.column(f"{m}_hi").role == "interval"


def test_directions_roles_and_floors_of_the_other_columns():
    assert L.column("kid_inception").higher_is_better is False
    assert L.column("fid_inception").role == "distribution"
    assert L.column("kid_randresnet18_lo").role == "interval"
    assert L.column("undecodable_rate").higher_is_better is False
    assert L.column("seconds_per_image").higher_is_better is False
    assert L.column("status").higher_is_better is None and L.column("status").role == "id"
    for c in REPORT_SCORE_COLUMNS:
        col = L.column(c)
        floor = L.floor_of(c)
        if col.role == "report":
            assert col.higher_is_better is True
            assert floor is None or (floor in REPORT_SCORE_COLUMNS
                                     and L.column(floor).role == "floor"), c
        else:
            assert col.role == "floor" and col.higher_is_better is None, c
    assert L.floor_of("quality_accuracy") == "quality_floor"
    assert L.floor_of("dr_parsed") is None
    with pytest.raises(KeyError, match="mode"):
        L.column("mode")  # the demo once guessed this column; the leaderboard never wrote it


def test_mode_interval_present_and_reading(tmp_path):
    run, seeds, base = _rows()
    assert L.mode_of(run) == "ssim_v3/onestep" and L.mode_of(base) == "bicubic"
    assert L.interval(run, "ssim_fov") == (0.8, 0.7, 0.9)
    assert all(math.isnan(v) for v in L.interval(base, "ssim_fov"))
    assert L.present(_rows(), "distribution") == ["fd_randresnet18", "fid_inception",
                                                  "kid_inception"]
    assert L.present(_rows(), "main") == ["ssim_fov"]
    with pytest.raises(ValueError, match="role"):
        L.present(_rows(), "mains")
    assert L.read_leaderboard(tmp_path) == []
    (tmp_path / "leaderboard.csv").write_text("status,name,ssim_fov\nok,bicubic,0.5\n")
    assert L.read_leaderboard(tmp_path) == [{"status": "ok", "name": "bicubic", "ssim_fov": "0.5"}]
