"""medq.scoring + bench.report writing from fake records.jsonl and PNGs (no model, no data)."""

import argparse
import csv
import json
import math

import pytest
import torch

from bench import eval as E
from bench import report
from bench.eval_infer import EvalItems
from bench.eval_targets import init_targets, run_targets
from bench.eval_train import train_missing
from medq import scoring as S
from medq.data.imageio import save_png
from medq.harness.records import FIELDS
from medq.leaderboard import TIMING_COLUMNS

IDS = [f"img{k:02d}" for k in range(6)]


def _fake_eval(task_dir, noise, ids=IDS, seed=0, drop=()):
    """records.jsonl + PNGs like the harness writes; ``drop``: ids whose output PNG is missing."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for i in ids:
        tgt = torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(int(i[3:])))
        out = (tgt + noise * torch.randn(3, 32, 32, generator=g)).clamp(0, 1)
        mask = torch.zeros(1, 32, 32)
        mask[:, 4:28, 4:28] = 1
        paths = {k: f"images/{i}_{k}.png" for k in ("input", "output", "target", "mask")}
        for k, img in (("input", tgt), ("output", out), ("target", tgt), ("mask", mask)):
            if not (k == "output" and i in drop):
                save_png(task_dir / paths[k], img)
        row = {f: None for f in FIELDS}
        row.update(id=i, task=task_dir.name, run="x", seed=0, settings={}, seconds=0.01, text=False,
                   **paths)
        rows.append(row)
    (task_dir / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def _meta(name, kind="baseline", preset=""):
    return {"name": name, "kind": kind, "run": name, "preset": preset, "config_hash": "",
            "checkpoint": None, "step": None, "weights": None, "task": "sr4"}


def _score_all(tmp_path, feats=None):
    rows, per_image = [], []
    for name, noise, kind, preset in (
        ("bicubic", 0.2, "baseline", ""),
        ("pixel-1", 0.1, "run", "pixel"),
        ("ssim_v3-1", 0.05, "run", "ssim_v3"),
    ):
        d = tmp_path / name / "sr4"
        if not d.exists():
            _fake_eval(d, noise)
        row, pi = S.score_task_dir(d, IDS, _meta(name, kind, preset), channel="rgb", features=feats)
        rows.append(row)
        per_image += pi
    return rows, per_image


def test_scores_statuses_and_reports(tmp_path):
    rows, per_image = _score_all(tmp_path)
    by = {r["name"]: r for r in rows}
    assert all(r["status"] == "ok" and r["n_images"] == 6 for r in rows)
    assert by["ssim_v3-1"]["ssim_fov"] > by["pixel-1"]["ssim_fov"] > by["bicubic"]["ssim_fov"]
    assert by["bicubic"]["ssim_fov_lo"] <= by["bicubic"]["ssim_fov"] <= by["bicubic"]["ssim_fov_hi"]
    assert "MS-SSIM n/a" in by["bicubic"]["note"]
    comps = S.comparisons(rows, per_image)
    pairs = {(c["a"], c["b"], c["metric"]) for c in comps}
    assert ("ssim_v3-1", "pixel-1", "ssim_fov") in pairs and (
        "pixel-1",
        "bicubic",
        "psnr_fov",
    ) in pairs
    files = report.write_reports(rows, per_image, tmp_path / "reports", protocol={"seeds": "0"},
                                 comparisons=comps)
    md = files["markdown"].read_text()
    table = [line for line in md.splitlines()
             if line.startswith(("| ssim_v3-1", "| pixel-1", "| bicubic"))]
    assert [line.split("|")[1].strip() for line in table[:3]] == ["ssim_v3-1", "pixel-1", "bicubic"]
    assert "Wilcoxon" in md and "biased" in md and "n/a" in md
    assert files["bars"] and files["bars"][0].stat().st_size > 0
    with open(files["per_image_csv"]) as f:
        assert len(list(csv.DictReader(f))) == 18


def test_incomplete_and_empty_and_no_checkpoint(tmp_path):
    d = tmp_path / "r" / "sr4"
    _fake_eval(d, 0.1, drop={"img03"})
    row, pi = S.score_task_dir(d, IDS + ["img99"], _meta("r"), channel="rgb", features=None)
    assert (
        row["status"] == "incomplete: 5 of 7 scored" and len(pi) == 5 and "missing" in row["note"]
    )
    row, pi = S.score_task_dir(
        tmp_path / "none" / "sr4", [], _meta("e"), channel="rgb", features=None
    )
    assert row["status"].startswith("empty") and pi == []
    run = tmp_path / "runs" / "pixel-deadbeef"
    (run / "checkpoints").mkdir(parents=True)
    (run / "run.json").write_text(json.dumps({"preset": "pixel", "hash": "deadbeef" * 8,
                                              "status": "running", "step": 0}))
    args = argparse.Namespace(all_checkpoints=False, weights="ema")
    ctx = E.Context(args, [], ["sr4", "sr2"], "cpu", EvalItems("test", ["sr4", "sr2"], None))
    rows = [r for t in run_targets(run, ctx) for r in E.evaluate(t, ctx)[0]]
    assert [r["status"] for r in rows] == ["no checkpoint"] * 2 and rows[0][
        "config_hash"
    ] == "deadbeef"
    lb, _ = report.write_csvs(rows + [row], [], tmp_path / "rep")
    assert "no checkpoint" in lb.read_text()


def _repeat_identical(tmp_path, backbone):
    texts = []
    for k in range(2):
        rows, per_image = _score_all(tmp_path, backbone and S.FeatureCache(backbone))
        for r in rows:
            r["seconds_per_image"] = 0.1 * (k + 1)  # timing differs between repeats by design
        lb, pi = report.write_csvs(rows, per_image, tmp_path / f"rep{k}")
        with open(lb) as f:
            data = [
                {c: v for c, v in r.items() if c not in TIMING_COLUMNS}
                for r in csv.DictReader(f)
            ]
        texts.append((json.dumps(data), pi.read_bytes()))
    assert texts[0] == texts[1]
    return lb.read_text()


def test_leaderboard_csv_byte_identical_on_repeat(tmp_path):
    _repeat_identical(tmp_path, None)


@pytest.mark.slow
def test_leaderboard_with_features_byte_identical_on_repeat(tmp_path):
    text = _repeat_identical(tmp_path, S.M.feature_extractor("randresnet18"))
    assert "fd_randresnet18" in text.splitlines()[0] and "kid_randresnet18" in text.splitlines()[0]


@pytest.mark.slow
def test_kid_comparisons_pair_each_mode_with_the_reference(tmp_path):
    """With the feature cache, comparisons add KID a - KID b (paired over images) for every pair
    except those with the floor; its value is the difference of the two rows' KIDs."""
    feats = S.FeatureCache(S.M.feature_extractor("randresnet18"))
    rows, per_image = _score_all(tmp_path, feats)
    d = tmp_path / "constant" / "sr4"
    _fake_eval(d, 0.6)
    row, pi = S.score_task_dir(d, IDS, _meta("constant"), channel="rgb", features=feats)
    comps = S.comparisons(rows + [row], per_image + pi, features=feats)
    kid = {(c["a"], c["b"]): c for c in comps if c["metric"] == "kid_randresnet18"}
    assert set(kid) == {("ssim_v3-1", "pixel-1"), ("pixel-1", "bicubic"),
                        ("ssim_v3-1", "bicubic")}
    by = {r["name"]: r for r in rows}
    c = kid[("ssim_v3-1", "bicubic")]
    assert c["n"] == 6 and c["mean_diff"] == pytest.approx(
        by["ssim_v3-1"]["kid_randresnet18"] - by["bicubic"]["kid_randresnet18"], rel=1e-6)
    assert c["ci_low"] <= c["mean_diff"] <= c["ci_high"] and 0 < c["p_value"] <= 1
    assert not any(c["metric"] == "kid_randresnet18" for c in S.comparisons(rows, per_image))
    md = report.markdown(rows, comps, {"seeds": "0"})
    assert "| sr4 | ssim_v3-1 - bicubic | kid_randresnet18 | 6 |" in md


@pytest.mark.slow  # a whole evaluation (harness, scoring, FD features, reports) through the CLI
def test_own_model_lands_in_the_leaderboard_next_to_the_baselines(tmp_path, capsys):
    """Bring your own model: a protocol implementation written here (bicubic images, a fixed
    report) goes through harness + scoring + reports like a built-in run. It is bicubic, so its
    image metrics must equal the bicubic baseline's exactly."""
    from bench.__main__ import main

    argv = ["eval", "--skip-train", "--runs-dir", str(tmp_path / "runs"), "--out",
            str(tmp_path / "reports"), "--model", "fakes.infer:TextBicubic", "--tasks",
            "sr4,enhance", "--test-images", "12", "--set", "data.num_images=60", "--set",
            "data.num_test_images=12", "--set", "model.tile_size=32", "--set",
            "data.image_size=32", "--set",
            f"data.cache_dir={json.dumps(str(tmp_path / 'cache'))}", "--backbone", "randresnet18",
            "--no-progress", "--no-plots"]
    assert main(argv) == 0
    with open(tmp_path / "reports" / "leaderboard.csv") as f:
        rows = {(r["name"], r["task"]): r for r in csv.DictReader(f)}
    # each baseline only where it is the reference: upsampling for SR, the input for enhance
    assert {k for k in rows if k[0] in ("bicubic", "lanczos", "identity", "constant")} == {
        ("bicubic", "sr4"), ("lanczos", "sr4"), ("identity", "enhance"), ("constant", "sr4"),
        ("constant", "enhance")}
    # the floor ignores its input: the verdict says so (its input dependence is 0 by construction)
    assert rows[("constant", "sr4")]["verdict"] == "collapsed"
    assert abs(float(rows[("constant", "sr4")]["input_dependence"])) < 1e-3
    assert rows[("bicubic", "sr4")]["verdict"] == "healthy"
    assert float(rows[("bicubic", "sr4")]["input_dependence"]) > 0.02
    mine, ref = rows[("text-bicubic", "sr4")], rows[("bicubic", "sr4")]
    assert mine["kind"] == "model" and mine["status"] == "ok" and int(mine["n_images"]) == 12
    for metric in ("psnr", "psnr_fov", "ssim", "ssim_fov"):
        assert float(mine[metric]) == pytest.approx(float(ref[metric]), abs=1e-9), metric
    assert float(mine["undecodable_rate"]) == 0 and ref["undecodable_rate"] in ("", "n/a")
    assert (
        tmp_path / "runs" / "_models" / "text-bicubic" / "eval" / "sr4" / "records.jsonl"
    ).is_file()
    assert "text-bicubic" in (tmp_path / "reports" / "leaderboard.md").read_text()


@pytest.mark.slow  # runs the whole evaluation on the real DRIVE photographs
def test_eval_on_the_real_drive_samples(tmp_path, fundus_samples):
    """make eval DATA=folder-style on real photographs: every image of the folder (--split all),
    field-of-view masks from DRIVE, the baselines and a protocol model scored."""
    from bench.__main__ import main

    argv = ["eval", "--skip-train", "--runs-dir", str(tmp_path / "runs"), "--out",
            str(tmp_path / "reports"), "--data", "drive", "--root", str(fundus_samples / "drive"),
            "--split", "all", "--model", "fakes.infer:TextBicubic", "--tasks", "sr4,enhance",
            "--set", f"data.cache_dir={json.dumps(str(tmp_path / 'cache'))}", "--backbone",
            "randresnet18", "--no-progress", "--no-plots"]
    assert main(argv) == 0
    with open(tmp_path / "reports" / "leaderboard.csv") as f:
        rows = {(r["name"], r["task"]): r for r in csv.DictReader(f)}
    n_images = len(list((fundus_samples / "drive" / "images").iterdir()))
    for key in (
        ("bicubic", "sr4"),
        ("identity", "enhance"),
        ("text-bicubic", "sr4"),
        ("text-bicubic", "enhance"),
    ):
        assert rows[key]["status"] == "ok" and int(rows[key]["n_images"]) == n_images, key
        assert 0 < float(rows[key]["ssim_fov"]) < 1
    md = (tmp_path / "reports" / "leaderboard.md").read_text()
    assert "source drive" in md


def test_split_all_refuses_the_training_data(tmp_path, capsys):
    from bench.__main__ import main

    assert main(["eval", "--skip-train", "--split", "all", "--runs-dir", str(tmp_path / "runs"),
                 "--out", str(tmp_path / "reports")]) == 2
    assert "would score the training images" in capsys.readouterr().err
    assert not (tmp_path / "reports").exists()
    assert (
        main(
            ["eval", "--skip-train", "--model-arg", "steps=5", "--runs-dir", str(tmp_path / "runs"),
             "--out", str(tmp_path / "reports")]
        )
        == 2
    )
    assert "--model-arg 'steps=5' given without --model" in capsys.readouterr().err
    assert not (tmp_path / "reports").exists()


def test_step_plot_only_for_runs_with_several_checkpoints(tmp_path):
    rows = [{"task": "sr4", "kind": "run", "run": "ssim_v3-1", "weights": "ema", "step": s,
             "psnr_fov": 20 + s / 100, "ssim_fov": 0.5 + s / 1000} for s in (100, 200, 300)]
    rows += [{"task": "sr2", "kind": "run", "run": "pixel-1", "weights": "ema", "step": 300,
              "psnr_fov": 25.0, "ssim_fov": 0.7}]
    paths = report.plot_steps(rows, tmp_path)
    assert [p.name for p in paths] == ["steps_sr4.png"] and paths[0].stat().st_size > 5_000


def test_comparisons_against_the_no_image_loss_control(tmp_path):
    rows, per_image = _score_all(tmp_path)
    d = tmp_path / "control-1" / "sr4"
    _fake_eval(d, 0.05, seed=1)
    row, pi = S.score_task_dir(
        d, IDS, _meta("control-1", "run", "control"), channel="rgb", features=None
    )
    comps = S.comparisons(rows + [row], per_image + pi)
    pairs = {(c["a"], c["b"]) for c in comps}
    assert {("ssim_v3-1", "control-1"), ("pixel-1", "control-1"), ("ssim_v3-1", "pixel-1")} <= pairs
    assert ("control-1", "bicubic") in pairs
    assert not {("ssim_v3-1", "control-1")} <= {
        (c["a"], c["b"]) for c in S.comparisons(rows, per_image)
    }


def _seed_rows():
    rows = []
    for preset, base in (("pixel", 0.60), ("ssim_v3", 0.62)):
        for seed in (0, 1, 2):
            rows.append({"status": "ok", "name": f"{preset}-{seed}@step_000300/ema", "kind": "run",
                         "preset": preset, "seed": seed, "step": 300, "task": "sr4", "n_images": 6,
                         "ssim_fov": base + 0.001 * seed, "psnr_fov": 25.0 + seed,
                         "lr_psnr": float("nan"), "vessel_dice": 0.3})
    rows.append({"status": "ok", "name": "bicubic", "kind": "baseline", "task": "sr4",
                 "n_images": 6, "ssim_fov": 0.67, "psnr_fov": 25.0, "lr_psnr": 40.0,
                 "vessel_dice": 0.5})
    return rows


def test_seed_rows_and_comparisons_on_per_seed_means(tmp_path):
    rows = _seed_rows()
    srows, scomps = S.seed_summary(rows)
    by = {r["preset"]: r for r in srows}
    assert by["pixel"]["n_seeds"] == 3 and by["pixel"]["ssim_fov"] == pytest.approx(0.601)
    assert by["pixel"]["ssim_fov_seed_sd"] == pytest.approx(0.001)
    assert math.isnan(by["pixel"]["lr_psnr"])  # undefined stays n/a, never 0
    c = {(c["a"], c["b"], c["metric"]): c for c in scomps}
    v3 = c[("ssim_v3", "pixel", "ssim_fov")]
    assert v3["n_seeds"] == 3 and v3["mean_diff"] == pytest.approx(0.02) and v3["ci_low"] > 0
    assert c[("pixel", "bicubic", "ssim_fov")]["mean_diff"] == pytest.approx(0.601 - 0.67)
    md = report.markdown(rows + srows, [], {"x": "y"}, scomps)
    assert "+- 0.0010 (seeds)" in md and "paired t over 3 seeds" in md
    assert S.seed_summary([r for r in rows if r.get("seed") in (0, None)]) == ([], [])
    assert "One training seed per mode" in report.markdown(rows, [], {})


def test_seeds_flag_validated_and_missing_seeds_listed(tmp_path, capsys):
    from bench.__main__ import main
    from medq.config import dump_toml, load_config

    for bad in ("0", "x", "21"):
        with pytest.raises(SystemExit):
            main(["eval", "--seeds", bad, "--runs-dir", str(tmp_path / "runs")])
        assert "--seeds" in capsys.readouterr().err
    run = tmp_path / "runs" / "pixel-aaaa"
    run.mkdir(parents=True)
    (run / "config.toml").write_text(dump_toml(load_config("pixel", overrides=["run.seed=1"])))
    info = {"preset": "pixel", "hash": "a", "status": "finished"}
    (run / "run.json").write_text(json.dumps(info))
    args = argparse.Namespace(seeds=2, skip_train=True, overrides=[], runs_dir=tmp_path / "runs")
    assert train_missing(args, [run]) == []
    out = capsys.readouterr().out
    assert "no finished pixel seed 0 run" in out and "pixel seed 1" not in out
    assert "no finished ssim_v3 seed 1 run" in out


def test_extra_output_kind_is_a_row_of_its_own_and_compared(tmp_path):
    rows, per_image = _score_all(tmp_path)
    d = tmp_path / "ssim_v3-1" / "sr4"
    recs = [json.loads(line) for line in (d / "records.jsonl").read_text().splitlines()]
    for r in recs:  # a one-step output: the target itself (a perfect posterior mean)
        r["output_onestep"] = r["target"]
    (d / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    assert S.output_kinds(d) == ["onestep"]
    meta = {**_meta("ssim_v3-1/onestep", "run", "ssim_v3/onestep"), "output": "onestep"}
    row, pi = S.score_task_dir(d, IDS, meta, channel="rgb", features=None,
                               output_key="output_onestep")
    assert row["status"] == "ok" and row["output"] == "onestep"
    assert row["ssim_fov"] == pytest.approx(1.0)
    comps = S.comparisons(rows + [row], per_image + pi)
    assert ("ssim_v3-1/onestep", "bicubic") in {(c["a"], c["b"]) for c in comps}
    assert all(0 <= c["p_holm"] <= 1 and c["p_holm"] >= c["p_value"] for c in comps)


def test_perception_distortion_plot_has_every_mode(tmp_path):
    rows = [{"task": "sr4", "kind": k, "name": n, "psnr_eroded_fov": p, "kid_randresnet18": kd,
             "kid_randresnet18_lo": kd * 0.8, "kid_randresnet18_hi": kd * 1.2}
            for n, k, p, kd in (("bicubic", "baseline", 25.0, 0.02),
                                ("constant", "baseline", 23.4, 0.2),
                                ("ssim_v3", "run", 25.2, 0.05),
                                ("ssim_v3/onestep", "run", 26.0, 0.08))]
    # no KID: no plot
    rows.append({"task": "enhance", "kind": "run", "name": "x", "psnr_eroded_fov": 20.0})
    paths = report.plot_perception_distortion(rows, tmp_path)
    assert [p.name for p in paths] == ["pd_sr4.png"] and paths[0].stat().st_size > 5_000


def test_the_checkpoint_the_runs_started_from_is_scored_once_as_the_base_model(
    tmp_path, monkeypatch
):
    """bench eval scores the init checkpoint of the runs (e.g. the shipped weights/base) as the
    mode `pretrain`, once however many runs share it, and never a checkpoint that is itself a run
    of --runs-dir (that run is scored as a run); its outputs are laid out like a run's, so the
    keying by data renames their `eval` (the one-step output's included)."""
    import argparse

    shipped = tmp_path / "weights" / "base"
    shipped.mkdir(parents=True)
    (shipped / "state.json").write_text(json.dumps({"step": 3000}))
    (shipped / "config.toml").write_text("")
    runs_dir = tmp_path / "runs"
    own = runs_dir / "pretrain-1" / "checkpoints" / "step_000004"
    own.mkdir(parents=True)
    (own / "state.json").write_text(json.dumps({"step": 4}))
    runs = []
    for name, init in (("ssim_v3-a", shipped), ("pixel-b", shipped), ("mixed-c", own)):
        (runs_dir / name).mkdir(parents=True)
        (runs_dir / name / "init.json").write_text(json.dumps({"checkpoint": str(init)}))
        runs.append(runs_dir / name)
    monkeypatch.setattr("medq.config.load_config", lambda *a, **k: None)
    args = argparse.Namespace(runs_dir=runs_dir, weights="ema")
    ctx = E.Context(args, [], ["sr4"], "cpu", EvalItems("test", ["sr4"], None))
    targets = init_targets(runs, ctx)
    assert [t.meta["preset"] for t in targets] == ["pretrain", "pretrain/onestep"]
    meta = targets[0].meta
    assert meta["run"] == str(shipped) and meta["step"] == 3000 and meta["weights"] == "ema"
    dirs = [t.out_dir(None) for t in targets]
    assert [d.name for d in dirs] == ["step_003000-ema", "step_003000-ema-onestep"]
    assert all(d.parent.name == "eval" and d.parent.parent.parent == runs_dir / "_init"
               for d in dirs)


def test_missing_runs_train_side_by_side_and_a_failure_names_its_log(tmp_path, capsys):
    # Each child waits for the other's file: run one after the other, the first would time out.
    import sys

    from bench.train_jobs import TrainJob, run_jobs

    def waiter(me, other):
        code = (f"import pathlib, sys, time; d = pathlib.Path({str(tmp_path)!r}); "
                f"(d / '{me}').touch(); end = time.time() + 60\n"
                f"while not (d / '{other}').exists():\n"
                f"    time.sleep(0.05)\n"
                f"    if time.time() > end: sys.exit(7)\n")
        return [sys.executable, "-c", code]

    fail = [sys.executable, "-c", "import sys; print('bad value of optim.lr'); sys.exit(3)"]
    jobs = [TrainJob("pixel", waiter("a", "b")), TrainJob("mixed seed 1", waiter("b", "a")),
            TrainJob("ssim_v3", fail)]
    codes = run_jobs(jobs, 2, tmp_path / "logs")
    assert codes == {"pixel": 0, "mixed seed 1": 0, "ssim_v3": 3}
    out = capsys.readouterr().out
    assert "ssim_v3: training failed (exit 3)" in out and "bad value of optim.lr" in out
    assert (tmp_path / "logs" / "mixed-seed-1.log").exists()
    assert "bad value" in (tmp_path / "logs" / "ssim_v3.log").read_text()


def test_the_base_model_is_scored_on_the_runs_test_set_not_the_one_its_config_recorded(
    tmp_path
):
    """The shipped base's config.toml records the test-set size of the day it was built; bench
    eval scores it on the evaluated runs' test set, so that its rows and the fine-tunes' are
    means over the same images."""
    import argparse

    from medq.config import load_config

    shipped = tmp_path / "weights" / "base"
    shipped.mkdir(parents=True)
    (shipped / "state.json").write_text(json.dumps({"step": 3000}))
    (shipped / "config.toml").write_text("[data]\nnum_test_images = 24\ntest_seed = 5\n")
    runs_dir = tmp_path / "runs"
    (runs_dir / "pixel-b").mkdir(parents=True)
    (runs_dir / "pixel-b" / "init.json").write_text(json.dumps({"checkpoint": str(shipped)}))
    like = load_config("control", overrides=["data.num_test_images=7"])
    args = argparse.Namespace(runs_dir=runs_dir, weights="ema")
    ctx = E.Context(args, [], ["sr4"], "cpu", EvalItems("test", ["sr4"], None))
    own = init_targets([runs_dir / "pixel-b"], ctx)
    assert (own[0].cfg.data.num_test_images, own[0].cfg.data.test_seed) == (24, 5)
    shared = init_targets([runs_dir / "pixel-b"], ctx, like)
    assert all((t.cfg.data.num_test_images, t.cfg.data.test_seed) == (7, like.data.test_seed)
               for t in shared)
