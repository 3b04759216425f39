"""bench score: name matching, unmatched files, size mismatches, merge into an existing
leaderboard."""

import argparse
import csv

import pytest
import torch

from bench import report
from bench import score as S
from medq.data.imageio import save_png


def _img(seed, size=32):
    return torch.rand(3, size, size, generator=torch.Generator().manual_seed(seed))


def _args(tmp_path, **kw):
    """``bench score``'s parsed arguments: the parser's defaults, these folders, ``kw``."""
    parser = argparse.ArgumentParser()
    S.add_arguments(parser)
    args = parser.parse_args(["--pred", str(tmp_path / "pred"), "--target", str(tmp_path / "tgt"),
                              "--name", "ext", "--backbone", "none", "--no-plots",
                              "--out", str(tmp_path / "reports")])
    return argparse.Namespace(**{**vars(args), **kw})


def _setup(tmp_path):
    for k in range(4):
        save_png(tmp_path / "tgt" / f"{k}_left.png", _img(k))
    save_png(tmp_path / "pred" / "0_left_pred.png", _img(0))                 # exact copy
    save_png(tmp_path / "pred" / "1_left_output.png", (_img(1) * 0.9))
    save_png(tmp_path / "pred" / "2_left.png", _img(2, size=16))              # wrong size
    save_png(tmp_path / "pred" / "9_right_pred.png", _img(9))                 # no target
    (tmp_path / "pred" / "3_left.png").write_bytes(b"not a png")              # unreadable


def test_match_rule(tmp_path):
    _setup(tmp_path)
    m = S.match(tmp_path / "pred", tmp_path / "tgt")
    assert [p[0] for p in m["pairs"]] == ["0_left", "1_left", "2_left", "3_left"]
    assert [p.name for p in m["unmatched_pred"]] == ["9_right_pred.png"] and m[
        "unmatched_target"
    ] == []


def test_score_reports_problems_and_scores_the_rest(tmp_path, capsys):
    _setup(tmp_path)
    out = S.run_score(_args(tmp_path))
    row = out["row"]
    assert row["n_images"] == 2 and row["status"] == "incomplete: 2 of 5 scored"
    errors = {p["id"]: p["error"] for p in out["problems"]}
    assert "size mismatch" in errors["2_left"] and "2_left.png" in errors["2_left"]
    assert "unreadable" in errors["3_left"]
    assert "9_right_pred.png" in capsys.readouterr().out
    per = {r["id"]: r for r in out["per_image"]}
    assert per["0_left"]["psnr"] == 100.0 and per["1_left"]["psnr"] < 40
    # --resize scores the mismatched one too
    out = S.run_score(_args(tmp_path, resize="pred-to-target"))
    assert out["row"]["n_images"] == 3


def test_score_replaces_same_name_task_and_keeps_others(tmp_path):
    _setup(tmp_path)
    existing = [
        {"status": "ok", "name": "bicubic", "kind": "baseline", "task": "sr4", "ssim_fov": "0.5"},
        {"status": "ok", "name": "ext", "kind": "external", "task": "sr4", "ssim_fov": "0.1"},
    ]
    report.write_csvs(existing, [], tmp_path / "reports")
    S.run_score(_args(tmp_path))
    S.run_score(_args(tmp_path))
    with open(tmp_path / "reports" / "leaderboard.csv") as f:
        rows = list(csv.DictReader(f))
    assert sorted(r["name"] for r in rows) == ["bicubic", "ext"]
    assert float([r for r in rows if r["name"] == "ext"][0]["ssim_fov"]) > 0.1
    with open(tmp_path / "reports" / "per_image.csv") as f:
        assert len(list(csv.DictReader(f))) == 2
    assert "ext" in (tmp_path / "reports" / "leaderboard.md").read_text()


@pytest.mark.slow  # scores the real DRIVE photographs (FID features)
def test_score_real_drive_images_with_masks(tmp_path, fundus_samples):
    """Real DRIVE photographs (565 x 584, MS-SSIM defined) against their bicubic 4x round trip."""
    import numpy as np
    from PIL import Image

    from medq.baselines import bicubic

    drive = fundus_samples / "drive"
    for tif in sorted((drive / "images").glob("*.tif")):
        t = (
            torch.from_numpy(np.asarray(Image.open(tif).convert("RGB")).copy())
            .permute(2, 0, 1)
            .float()
            / 255
        )
        h, w = t.shape[-2:]
        save_png(tmp_path / "pred" / f"{tif.stem}_pred.png",
                 bicubic(bicubic(t[None], (h // 4, w // 4)), (h, w))[0])
    out = S.run_score(_args(tmp_path, target=drive / "images", mask=drive / "mask"))
    row = out["row"]
    assert row["status"] == "ok" and row["n_images"] == len(list((drive / "images").glob("*.tif")))
    assert 0.3 < row["ms_ssim"] < 1 and 0.3 < row["ms_ssim_fov"] < 1 and row["psnr_fov"] > 15


# ---------------------------------------------------------------------------------------------
# issue 18: no crash on bombs and tiny images, no silent "ok" over a subset, no silent success


def test_bomb_and_too_small_images_are_problems_not_crashes(tmp_path):
    from fakes.images import png_header_only

    save_png(tmp_path / "tgt" / "a.png", _img(0))
    save_png(tmp_path / "pred" / "a.png", _img(0))
    save_png(tmp_path / "tgt" / "bomb.png", _img(1))
    png_header_only(tmp_path / "pred" / "bomb.png", 100000, 100000)
    save_png(tmp_path / "tgt" / "tiny.png", _img(2, size=8))
    save_png(tmp_path / "pred" / "tiny.png", _img(2, size=8))
    out = S.run_score(_args(tmp_path))
    errors = {p["id"]: p["error"] for p in out["problems"]}
    assert "decompression bomb" in errors["bomb"] and "bomb.png" in errors["bomb"]
    assert "8x8 pixels, below the 11x11 SSIM window" in errors["tiny"]
    assert out["row"]["n_images"] == 1


def test_nothing_scored_exits_1_and_keeps_the_leaderboard(tmp_path, capsys):
    existing = [{"status": "ok", "name": "bicubic", "kind": "baseline", "task": "sr4"}]
    report.write_csvs(existing, [], tmp_path / "reports")
    before = (tmp_path / "reports" / "leaderboard.csv").read_bytes()
    save_png(tmp_path / "tgt" / "a.png", _img(0))
    (tmp_path / "pred").mkdir()
    (tmp_path / "pred" / "a.png").write_bytes(b"garbage")
    assert S.main(_args(tmp_path)) == 1
    assert "nothing scored for ext sr4" in capsys.readouterr().err
    assert (tmp_path / "reports" / "leaderboard.csv").read_bytes() == before


def test_fov_metric_over_a_subset_says_partial_with_n_and_why(tmp_path, capsys):
    for k in range(3):
        save_png(tmp_path / "tgt" / f"{k}.png", _img(k) * 0.5 + 0.25)
        save_png(tmp_path / "pred" / f"{k}.png", _img(k + 10) * 0.5 + 0.25)
    save_png(tmp_path / "tgt" / "white.png", torch.ones(3, 32, 32))
    save_png(tmp_path / "pred" / "white.png", _img(7))
    assert S.main(_args(tmp_path)) == 0
    out = capsys.readouterr().out
    row = [r for r in csv.DictReader(open(tmp_path / "reports" / "leaderboard.csv"))][0]
    assert row["status"].startswith("partial: ") and "ssim_fov" in row["status"]
    assert "ssim_fov on 3 of 4 (target without a field of view: white (the image is all white" \
        in row["note"]
    assert "(n=3)" in out and row["n_images"] == "4"


def test_unwritable_or_full_out_is_one_line_and_leaves_no_temp_file(tmp_path, capsys, monkeypatch):
    import errno

    _setup(tmp_path)
    (tmp_path / "file").write_text("x")
    assert S.main(_args(tmp_path, out=tmp_path / "file" / "reports")) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: cannot write the reports to") and err.count("\n") == 1

    def full(text_path, text):  # the disk fills while the CSV is written
        tmp = text_path.with_name(f".tmp-{__import__('os').getpid()}-{text_path.name}")
        tmp.write_text(text[:10])
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp))

    monkeypatch.setattr(report, "write_text_atomic", full)
    assert S.main(_args(tmp_path)) == 2
    assert "No space left on device" in capsys.readouterr().err
    assert not list((tmp_path / "reports").glob(".tmp-*"))
