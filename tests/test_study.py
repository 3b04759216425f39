"""The SSIM-vs-pixel study (issue 28): where each preset's image terms can act (computed from the
code's own schedule and defaults), the pull-matched SSIM preset, the probe's --match, the study's
plan and job scheduling, its tables' contracts, the gradient-ratio measurement, and (slow) a study
on the tiny config killed halfway and resumed."""

from __future__ import annotations

import csv
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from bench.study_jobs import Job, run_jobs, simulate
from bench.study_plan import BudgetError, Point, load_budget, plan_runs, run_points
from bench.study_report import CURVE_COLUMNS, curve_rows, leaderboard, seed_comparison_rows
from medq.config import load_config
from medq.models.flow import sample_timesteps, sampling_schedule
from medq.study import gated_fraction, inference_timesteps, term_reach

REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------------------------
# where the terms act: from the code


def test_v3_gates_contain_no_timestep_any_scored_output_is_computed_at():
    """v3 (t <= 0.1) and relaxed v3 (t <= 0.15) against the sampler's evaluation points and the
    one-step read-out, from the defaults: inert by construction at inference, the gradient factor
    weight x grad scale 1e-3 / 2e-3, ~67 of a 300-step run's 4800 samples."""
    sample = load_config("ssim_v3").sample
    grid = sampling_schedule(sample.steps, sample.shift)
    smallest = float(grid[-2])  # the sampler never evaluates the model at its final t = 0
    assert inference_timesteps(sample)[-1] == pytest.approx(smallest)
    assert min(inference_timesteps(sample)) > 0.15 and sample.onestep_t > 0.15
    for preset, max_t, factor in (("ssim_v3", 0.1, 1e-3), ("ssim_v3_relaxed", 0.15, 2e-3)):
        reach = term_reach(load_config(preset), "ssim")
        assert reach.max_t == max_t and reach.max_t < smallest < reach.onestep_t
        assert reach.inference_ts_in_gate == 0 and not reach.covers_inference
        assert reach.gradient_factor == pytest.approx(factor)
    v3 = term_reach(load_config("ssim_v3"), "ssim")
    assert v3.samples_trained == 4800 and 60 < v3.samples_reached < 75


def test_gated_fraction_is_what_the_training_sampler_draws():
    t = sample_timesteps(400_000, 1.0, torch.Generator().manual_seed(0))
    t3 = sample_timesteps(400_000, 3.0, torch.Generator().manual_seed(1))
    for max_t in (0.1, 0.15, 0.3, 0.9):
        assert gated_fraction(max_t, 1.0) == pytest.approx(float((t <= max_t).float().mean()),
                                                           abs=2e-3)
        assert gated_fraction(max_t, 3.0) == pytest.approx(float((t3 <= max_t).float().mean()),
                                                           abs=2e-3)
    assert gated_fraction(1.0, 1.0) == 1.0


@pytest.mark.parametrize("sets", [[], ["sample.steps=50", "sample.shift=1.0"],
                                  ["sample.onestep_t=1.0"]])
def test_ssim_matched_gate_covers_every_inference_timestep(sets):
    cfg = load_config("ssim_matched", overrides=sets)
    reach = term_reach(cfg, "ssim")
    assert reach.covers_inference and reach.inference_ts_in_gate == len(
        inference_timesteps(cfg.sample))
    assert reach.gated_fraction == 1.0 and cfg.loss.ssim_weight > 0 and cfg.loss.pixel_weight == 0


def test_the_seed_presets_are_as_the_original_ran_them():
    expected = {"ssim_v1": (1.0, 0.3, 1.0), "ssim_v2": (0.1, 0.1, 0.1),
                "ssim_v2_as_run": (1.0, 0.3, 0.01), "ssim_v3": (0.1, 0.1, 0.01),
                "ssim_v3_relaxed": (0.2, 0.15, 0.01), "mixed": (0.1, 0.1, 0.01)}
    for preset, values in expected.items():
        loss = load_config(preset).loss
        assert (loss.ssim_weight, loss.ssim_max_t, loss.ssim_grad_scale) == values, preset
    for preset in ("pixel", "mixed"):
        loss = load_config(preset).loss
        assert (loss.pixel_weight, loss.pixel_kind, loss.pixel_max_t) == (100.0, "l2", 0.3)
    assert load_config("ssim_v2_as_run").init.scratch
    assert load_config("control").loss.ssim_weight == load_config("control").loss.pixel_weight == 0


def test_inert_command_prints_the_table(capsys):
    from bench.__main__ import main

    assert main(["study", "inert"]) == 0
    out = capsys.readouterr().out
    rows = {(line.split()[0], line.split()[1]): line for line in out.splitlines()
            if line.split()[:1] and line.split()[0] in ("ssim_v3", "ssim_v3_relaxed",
                                                        "ssim_matched", "pixel")}
    n = len(inference_timesteps(load_config("control").sample))
    assert f" 0 of {n} " in rows[("ssim_v3", "ssim")] and " 0.001 " in rows[("ssim_v3", "ssim")]
    assert f" 0 of {n} " in rows[("ssim_v3_relaxed", "ssim")]
    assert f" {n} of {n} " in rows[("ssim_matched", "ssim")]
    assert "67 of 4800" in rows[("ssim_v3", "ssim")]
    assert "(inert by construction at inference): ssim_v3, ssim_v3_relaxed" in out


# ---------------------------------------------------------------------------------------------
# pulls: the probe's --match, the gradient ratio


def _tiny_task(tiny, preset="ssim_matched", extra=()):
    from medq.training.task import MiniBagelTask

    cfg = load_config(preset, overrides=tiny + ['init.from=""', "init.scratch=true", *extra])
    return MiniBagelTask(cfg, torch.device("cpu"), write_init=False)


@pytest.mark.slow  # the real mini-BAGEL's forward and backward, SSIM compiled
def test_probe_match_prints_the_grad_scale_that_equalises_the_pulls(tiny, tmp_path, capsys):
    """The scale ``train probe --match ssim:pixel`` prints makes SSIM's median pull at v_hat
    equal to the reference's pixel term at its weight, measured again on the same batches."""
    import dataclasses

    from medq.pulls import loss_variant_norms, median_pull
    from train.__main__ import main

    reference = tmp_path / "ref.toml"  # the pixel preset's term, gated open for batches of 4
    reference.write_text('[loss]\npixel_weight = 100.0\npixel_kind = "l2"\npixel_max_t = 1.0\n')
    scratch = ['init.from=""', "init.scratch=true"]
    assert main(["probe", "--preset", "ssim_matched", "--match", "ssim:pixel", "--reference",
                 str(reference), "--batches", "3",
                 *[a for o in tiny + scratch for a in ("--set", o)]]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines()
                if x.startswith("match at v_hat"))
    scale = float(re.search(r"ssim_grad_scale for equal pull with .*: (\S+) at ssim_weight",
                            line).group(1))
    task = _tiny_task(tiny)
    loss = dataclasses.replace(task.cfg.loss, ssim_grad_scale=scale, pixel_weight=100.0,
                               pixel_kind="l2", pixel_max_t=1.0)
    norms = loss_variant_norms(task, {"m": loss}, 3, seed=task.cfg.run.seed)["m"]["v_hat"]
    assert len(norms["ssim"]) == len(norms["pixel"]) == 3
    assert median_pull(norms["ssim"]) * loss.ssim_weight == pytest.approx(
        100.0 * median_pull(norms["pixel"]), rel=1e-3)
    assert scale != task.cfg.loss.ssim_grad_scale


def test_probe_match_refuses_what_it_cannot_match(tiny, capsys):
    from fakes.cli import refusal
    from train.__main__ import main

    sets = [a for o in tiny for a in ("--set", o)]
    assert "expected A:B" in refusal(main, ["probe", "--match", "ssim", *sets], capsys)
    assert "non-linear in the grad scale" in refusal(
        main, ["probe", "--preset", "ssim_matched", "--match", "ssim:pixel", *sets, "--set",
               "loss.ssim_grad_clamp=0.001"], capsys)
    assert "nothing to match" in refusal(
        main, ["probe", "--preset", "control", "--match", "ssim:pixel", *sets], capsys)


@pytest.mark.slow  # the real mini-BAGEL's forward and backward, SSIM compiled
def test_gradient_ratio_measures_ssim_against_l2_with_and_without_the_clamp(tiny):
    from bench.study_score import gradient_ratio

    task = _tiny_task(tiny, "control")
    torch.manual_seed(0)
    with torch.no_grad():  # random weights leave the zero-initialised flow head at zero: no
        for p in task.model.parameters():  # gradient reaches the backbone through it
            p.add_(0.02 * torch.randn_like(p))
    g = gradient_ratio(task, ratio_max_t=1.0, clamp=1e-4, batches=2)
    for where in ("x0_hat", "hidden"):
        row = g[where]
        assert row["l2"] > 0 and row["ssim"] > 0 and 0 < row["ssim_clamped"] < row["ssim"]
        assert row["ssim_over_l2"] == pytest.approx(row["ssim"] / row["l2"])
        assert row["ssim_clamped_over_l2"] == pytest.approx(row["ssim_clamped"] / row["l2"])
    assert math.isnan(g["x0_hat"]["mse"]) and g["hidden"]["mse"] > 0  # MSE skips the decoder
    assert (g["batches"], g["max_t"], g["clamp"]) == (2, 1.0, 1e-4)


# ---------------------------------------------------------------------------------------------
# plan and jobs


def test_full_budget_plans_the_issue_runs_and_keeps_every_checkpoint(tmp_path):
    budget = load_budget("full")
    runs = plan_runs(budget)
    stages = [r.stage for r in runs]
    assert stages == sorted(stages, key=["seeds", "curve", "stability"].index)
    seeds = [r for r in runs if r.stage == "seeds"]
    assert {(r.preset, r.seed) for r in seeds} == {(p, s) for p in budget.presets
                                                   for s in (0, 1, 2)}
    assert all(r.steps == 300 and r.checkpoints == [300] for r in seeds)
    curve = [r for r in runs if r.stage == "curve"]
    assert {r.preset for r in curve} == {"control", "pixel", "ssim_v3", "ssim_v3_relaxed",
                                         "ssim_v1", "ssim_matched", "mixed"}
    assert all(r.checkpoints == list(range(500, 4001, 500)) for r in curve)
    stability = [r for r in runs if r.stage == "stability"]
    assert {r.preset for r in stability} == {"ssim_v3", "ssim_matched"}
    assert all(r.steps == 20000 and len(r.checkpoints) == 40 for r in stability)
    for r in runs:
        sets = dict(o.split("=", 1) for o in r.overrides(tmp_path))
        assert int(sets["run.keep_last"]) > len(r.checkpoints)  # retention keeps them all
        assert int(sets["run.ckpt_every"]) == r.every and int(sets["optim.max_steps"]) == r.steps
    pts = run_points("x", curve[0], budget)
    assert [(p.step, p.output) for p in pts] == [(s, "onestep") for s in curve[0].checkpoints] + [
        (4000, "sample")]
    assert load_budget("quick").presets == budget.presets


def test_a_run_two_stages_ask_for_is_planned_once(tmp_path):
    text = (REPO / "configs" / "study" / "full.toml").read_text()
    path = tmp_path / "b.toml"
    path.write_text(text.replace("steps = 300", "steps = 4000"))
    runs = plan_runs(load_budget(str(path)))
    seed0 = [r for r in runs if r.seed == 0 and r.steps == 4000]
    assert len(seed0) == 7 and all(r.every == 500 and r.stage == "curve" for r in seed0)


@pytest.mark.parametrize("edit, message", [
    (("steps = 4000", "steps = 0"), "curve.steps = 0: expected >= 1"),
    (("images = 24", "images = 1"), "score.images = 1"),
    (("\"mixed\"]", "\"mixd\"]"), "'mixd', which is no preset"),
    (("[score]", "[scor]"), "missing key 'score.images'"),
    (("seed = 0", "seed = \"0\""), "curve.seed = '0'"),
])
def test_a_bad_budget_is_one_line_naming_file_and_key(tmp_path, edit, message):
    path = tmp_path / "bad.toml"
    path.write_text((REPO / "configs" / "study" / "full.toml").read_text().replace(*edit, 1))
    with pytest.raises(BudgetError, match="bad.toml") as e:
        load_budget(str(path))
    assert message in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(BudgetError, match="budgets: full, quick"):
        load_budget("nonesuch")


def test_timing_counts_steps_validations_and_points_left():
    from bench.study_plan import RunSpec, Timing

    t = Timing(step_seconds={"pixel": 0.5}, validation_seconds=10.0,
               point_image_seconds={"onestep": 1.0, "sample": 3.0},
               point_fixed_seconds={"onestep": 7})
    spec = RunSpec("curve", "pixel", 0, 4000, 500)
    assert t.run_seconds(spec) == 4000 * 0.5 + 8 * 10.0
    assert t.run_seconds(spec, 2600) == 1400 * 0.5 + 3 * 10.0 and t.run_seconds(spec, 4000) == 0
    assert t.point_seconds(Point("run", "x", 500, "onestep"), 24, 3) == 7 + 72 * 1.0
    assert t.point_seconds(Point("run", "x", 4000, "sample"), 24, 3) == 72 * 3.0
    assert Timing.from_dict({**t.as_dict(), "unknown": 1}) == t


def test_simulate_follows_slots_dependencies_and_what_is_done():
    a, b = Job("a", [], 10.0), Job("b", [], 10.0)
    assert simulate([a, b], 2) == 10 and simulate([a, b], 1) == 20
    c = Job("c", [], 5.0, after=["a"])
    assert simulate([a, c], 2) == 15
    half = Job("h", [], 10.0, progress=lambda: 4.0)
    assert simulate([half], 1) == 6


def test_run_jobs_orders_by_dependency_and_stops_what_a_failure_blocks(tmp_path):
    log = tmp_path / "order.txt"

    def job(name, code=0, after=()):
        cmd = [sys.executable, "-c", f"open({str(log)!r}, 'a').write({name!r} + '\\n'); "
                                     f"raise SystemExit({code})"]
        return Job(name, cmd, 1.0, after=list(after))

    anyway = job("anyway", after=["bad"])
    anyway.needs_success = False  # e.g. scoring what a training that stopped early left
    codes = run_jobs([job("train"), job("score", after=["train"]), job("bad", code=3),
                      job("blocked", after=["bad"]), anyway], 2, tmp_path / "logs",
                     progress=False)
    assert codes == {"train": 0, "score": 0, "bad": 3, "blocked": -1, "anyway": 0}
    order = log.read_text().split()
    assert order.index("train") < order.index("score") and "blocked" not in order
    assert order.index("bad") < order.index("anyway")
    assert (tmp_path / "logs" / "bad.log").is_file()


# ---------------------------------------------------------------------------------------------
# tables from point records


def _record(run, preset, seed, steps, step, values, source="run", stage="seeds"):
    """A point record of the one-step output as ``bench.study_score.Scorer.score`` writes it,
    per-image values given."""
    output = "onestep"
    per_image, rows = [], []
    for task, by_id in values.items():
        per_image += [{"id": i, "task": task, "ssim_fov": v, "psnr_eroded_fov": 20 + v,
                       "vessel_dice": v / 2} for i, v in by_id.items()]
        mean = float(np.mean(list(by_id.values())))
        rows.append({"task": task, "n_images": len(by_id), "status": "ok", "ssim_fov": mean,
                     "psnr_eroded_fov": 20 + mean, "vessel_dice": mean / 2,
                     "kid_inception": 1 - mean, "dr_kappa": mean, "verdict": "healthy"})
    return {"key": f"{run}/step_{step:06d}-{output}", "source": source, "name": run,
            "step": step, "output": output, "final": True, "run": run, "preset": preset,
            "stage": stage, "seed": seed, "steps": steps, "rows": rows, "per_image": per_image}


def test_curve_rows_are_one_per_run_step_output_and_task():
    recs = [_record("a-1", "pixel", 0, 4, s, {"sr4": {"x": 0.5, "y": 0.6},
                                           "sr2": {"x": 0.7, "y": 0.8}})
            for s in (2, 4)]
    recs.append(_record("init", "init", None, 0, 0, {"sr4": {"x": 0.4, "y": 0.5}},
                        source="init", stage="init"))
    rows = curve_rows(recs)
    assert list(rows[0]) == list(CURVE_COLUMNS)
    keys = [(r["run"], r["step"], r["output"], r["task"]) for r in rows]
    assert len(keys) == len(set(keys)) == 5
    assert [r["step"] for r in rows if r["run"] == "a-1" and r["task"] == "sr4"] == [2, 4]


def test_seed_tables_average_seeds_and_give_intervals_over_images_and_seeds():
    from medq.stats import IMAGES_X_SEEDS, SEED_SPREAD

    rng = np.random.default_rng(0)
    finals = {}
    for preset, shift in (("pixel", 0.0), ("ssim_matched", 0.05)):
        for seed in (0, 1, 2):
            vals = {f"i{k}": 0.5 + shift + 0.01 * seed + float(rng.normal(0, 0.02))
                    for k in range(6)}
            finals.setdefault((preset, "onestep"), {})[seed] = _record(
                f"{preset}-{seed}", preset, seed, 300, 300, {"sr4": vals})
    board = leaderboard(finals, {}, ["sr4"], "@300")
    row = next(r for r in board if r["name"] == "ssim_matched/onestep @300")
    per_seed = [finals[("ssim_matched", "onestep")][s]["rows"][0]["ssim_fov"] for s in (0, 1, 2)]
    assert row["kind"] == "seeds" and row["n_seeds"] == 3
    assert row["ssim_fov"] == pytest.approx(np.mean(per_seed))
    assert row["ssim_fov_seed_sd"] == pytest.approx(np.std(per_seed, ddof=1))
    comps = seed_comparison_rows(finals, {}, ["sr4"], "@300")
    ssim = next(c for c in comps if c["metric"] == "ssim_fov")
    assert (ssim["a"], ssim["b"]) == ("ssim_matched/onestep @300", "pixel/onestep @300")
    assert ssim["interval"] == IMAGES_X_SEEDS and ssim["n_images"] == 6 and ssim["n_seeds"] == 3
    assert ssim["ci_low"] < ssim["mean_diff"] < ssim["ci_high"] and ssim["ci_low"] > 0
    kappa = next(c for c in comps if c["metric"] == "dr_kappa")
    assert kappa["interval"] == SEED_SPREAD


# ---------------------------------------------------------------------------------------------
# a tiny study, killed and resumed (slow)


TINY_BUDGET = """
presets = ["ssim_matched"]
[curve]
steps = 4
every = 2
seed = 0
[seeds]
steps = 4
seeds = [0]
[stability]
steps = 4
every = 2
presets = []
[score]
images = 3
sample = "final"
ratio_max_t = 1.0
clamp = 1e-3
probe_batches = 1
"""


def _study_cmd(tmp_path, tiny, base) -> list[str]:
    sets = tiny + ["data.val_fraction=0.25", 'data.tasks=["sr4"]',
                   f"init.from={json.dumps(str(base))}"]
    return [sys.executable, "-m", "bench", "study", "--budget", str(tmp_path / "budget.toml"),
            "--out", str(tmp_path / "study"), "--step-time", "0.05", "--image-time", "0.5",
            "--no-progress", *[a for o in sets for a in ("--set", o)]]


def _csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_a_killed_study_resumes_without_lost_or_duplicated_points(tmp_path, tiny):
    from train.__main__ import main as train_main

    assert train_main(["--preset", "pretrain", "--no-progress",  # no real photographs mixed in
                       *[a for o in tiny + ["data.mix_fraction=0.0"] for a in ("--set", o)]]) == 0
    base = next((tmp_path / "runs").glob("pretrain-*"))
    (tmp_path / "budget.toml").write_text(TINY_BUDGET)
    cmd, study = _study_cmd(tmp_path, tiny, base), tmp_path / "study"
    plan = subprocess.run(cmd + ["--plan"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert plan.returncode == 0, plan.stderr[-2000:]
    assert re.search(r"curve +ssim_matched +0 +4 +2 +3 +todo 0/4", plan.stdout)
    assert re.search(r"about [0-9.]+ h \([0-9]+ min\) on 2 cores", plan.stdout)
    assert not (study / "runs").exists() and not (study / "study.json").exists()
    proc = subprocess.Popen(cmd, cwd=REPO, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:  # kill the whole study (parent and children) once its first point is scored
        deadline = time.time() + 300
        while not list((study / "scores").rglob("*.json")) and time.time() < deadline:
            assert proc.poll() is None, "the study ended before it could be killed"
            time.sleep(0.5)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert not (study / "curves.csv").exists()  # nothing that looks complete
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]

    plan = json.loads((study / "plan.json").read_text())
    (run,) = plan["runs"]
    rows = _csv(study / "curves.csv")
    assert list(rows[0]) == list(CURVE_COLUMNS)
    keys = [(r["run"], r["step"], r["output"], r["task"]) for r in rows]
    assert len(keys) == len(set(keys))
    assert set(keys) == {(run["name"], "2", "onestep", "sr4"), (run["name"], "4", "onestep", "sr4"),
                         (run["name"], "4", "sample", "sr4"), ("init", "0", "onestep", "sr4"),
                         ("init", "0", "sample", "sr4"), ("bicubic", "", "sample", "sr4")}
    assert all(r["n_images"] == "3" and float(r["kid_inception"]) == float(r["kid_inception"])
               for r in rows)
    with open(study / "runs" / run["name"] / "logs" / "metrics.csv", newline="") as f:
        steps = [int(r["step"]) for r in csv.DictReader(f) if r["key"] == "loss/total"]
    assert steps == [1, 2, 3, 4]  # the trainer resumed without a lost or repeated step
    ratios = _csv(study / "gradient_ratios.csv")
    assert {(r["run"], r["step"], r["where"]) for r in ratios} == {
        (n, s, w) for n, s in ((run["name"], "2"), (run["name"], "4"), ("init", "0"))
        for w in ("x0_hat", "hidden")}
    assert all(0 < float(r["ssim_clamped"]) <= float(r["ssim"]) for r in ratios)
    norms = _csv(study / "grad_norms.csv")
    assert {"x0_hat", "hidden"} <= {r["where"] for r in norms if r["term"] == "ssim"}
    summary = json.loads((study / "summary.json").read_text())
    assert summary["points"] == {"done": plan["points"], "planned": plan["points"]} == {
        "done": 6, "planned": 6}
    assert {p.name for p in (study / "plots").iterdir()} >= {"curves_sr4.png", "pd_sr4.png",
                                                             "gradient_ratio.png"}

    again = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "started" not in again.stdout  # nothing left to do
    assert "0 jobs" in again.stdout

    from bench.__main__ import main as bench_main
    from bench.results import read_reports, render

    assert bench_main(["study", "export", "--out", str(study), "--results",
                       str(tmp_path / "results"), "--name", "tiny"]) == 0
    text = render(read_reports(tmp_path / "results"))
    assert "ssim_matched/onestep @4" in text and "(main budget)" in text
    assert Point("run", run["name"], 4, "sample").key in {
        json.loads(p.read_text())["key"] for p in (study / "scores").rglob("*.json")}
