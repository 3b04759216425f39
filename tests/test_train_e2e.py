"""End to end on CPU with the real mini-BAGEL on a tiny config: base run from scratch, SSIM v3
fine-tune from its EMA (strict init, init.json), checkpoint files, exact resume, arch mismatch."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from safetensors.torch import load_file

from fakes.cli import refusal
from medq.checkpoint import latest_checkpoint
from medq.config import load_config
from medq.models import fingerprint
from medq.run_loading import load_for_inference
from train.__main__ import main
from train.logger import read_metrics

pytestmark = pytest.mark.slow  # every test here trains the real mini-BAGEL through the CLI

def sets(overrides: list[str]) -> list[str]:
    return [a for o in overrides for a in ("--set", o)]


# Fine-tunes start from the shipped weights/base by default; these tests fine-tune their own tiny
# pretrain run instead (init.from = a preset name: its newest finished run in run.out_dir).
FROM_TINY_BASE = ["--set", "init.from=pretrain"]


def test_base_then_ssim_v3_from_its_ema(tiny, capsys):
    assert main(["--preset", "pretrain", "--no-progress", *sets(tiny)]) == 0
    base = load_config("pretrain", overrides=tiny)
    ckpt = base.run_dir / "checkpoints" / "step_000004"
    assert (base.run_dir / "checkpoints" / "latest").read_text().strip() == ckpt.name
    assert {"model.safetensors", "ema.safetensors", "arch.json", "tokenizer.json", "optim.pt",
            "state.json", "config.toml"} <= {p.name for p in ckpt.iterdir()}
    assert json.loads((base.run_dir / "run.json").read_text())["status"] == "finished"
    assert json.loads((base.run_dir / "init.json").read_text())["scratch"] is True
    assert (
        (base.run_dir / "config.toml")
        .read_text()
        .startswith(f"# resolved config of run {base.run_name}")
    )
    metrics = read_metrics(base.run_dir / "logs" / "metrics.csv")
    for key in ("loss/ce", "loss/mse", "loss/total", "train/lr", "train/grad_norm", "val/total",
                "collapse/undecodable_rate", "collapse/psnr", "collapse/psnr_gap_db",
                "collapse/ssim_ratio", "collapse/output_std_ratio", "probe/hidden/ce/norm"):
        assert key in metrics, key
    # The same command again: finished, nothing to do.
    capsys.readouterr()
    assert main(["--preset", "pretrain", "--no-progress", *sets(tiny)]) == 0
    assert "already finished at step 4" in capsys.readouterr().out

    # ssim_v3: init.from = "pretrain" resolves to that run; EMA weights, verified and recorded.
    assert main(["--preset", "ssim_v3", "--no-progress", *sets(tiny), *FROM_TINY_BASE]) == 0
    v3 = load_config("ssim_v3", overrides=tiny + ["init.from=pretrain"])
    init = json.loads((v3.run_dir / "init.json").read_text())
    assert init["scratch"] is False and init["weights"] == "ema"
    assert Path(init["checkpoint"]) == ckpt
    assert init["fingerprint"] == fingerprint(load_file(str(ckpt / "ema.safetensors")))
    assert init["report"]["missing"] == init["report"]["unexpected"] == []
    metrics = read_metrics(v3.run_dir / "logs" / "metrics.csv")
    assert "loss/ssim" in metrics and "probe/x0_hat/ssim/norm" in metrics

    model, tokenizer, vae, report, info = load_for_inference(v3.run_dir, weights="ema")
    assert info["step"] == 4 and info["weights"] == "ema" and report.weights == "ema"
    assert report.fingerprint == fingerprint(load_file(str(info["checkpoint"] / "ema.safetensors")))
    assert not model.training and tokenizer.vocab_size > 0


def test_init_from_a_different_architecture_fails_naming_it(tiny, capsys):
    assert main(["--preset", "pretrain", "--no-progress", *sets(tiny)]) == 0
    assert re.search("CheckpointMismatchError.*d_model", refusal(
        main, ["--preset", "ssim_v3", "--no-progress", *sets(tiny), *FROM_TINY_BASE, "--set",
               "model.d_model=64", "--set", "model.n_heads=2"], capsys))


def test_missing_base_run_names_the_command(tiny, capsys):
    assert "python -m train --preset pretrain" in refusal(
        main, ["--preset", "pixel", "--no-progress", *sets(tiny), *FROM_TINY_BASE], capsys)


def test_resume_with_vae_in_graph_equals_uninterrupted(tiny, tmp_path, capsys):
    # Scratch + an image-space loss (the v2-as-run shape): the decoder is in the graph; every
    # sample is decoded (max_t = 1) so the resumed steps exercise it.
    extra = ["loss.ssim_weight=0.1", "loss.ssim_max_t=1.0", "optim.max_steps=6", "run.ckpt_every=3",
             "run.val_every=3", "run.probe_every=100"]
    a = [o.replace(str(tmp_path / "runs"), str(tmp_path / "a")) for o in tiny] + extra
    b = [o.replace(str(tmp_path / "runs"), str(tmp_path / "b")) for o in tiny] + extra
    assert main(["--preset", "pretrain", "--no-progress", *sets(a)]) == 0
    assert "WARNING" in capsys.readouterr().err  # scratch with an image-space loss: loud
    assert main(["--preset", "pretrain", "--no-progress", "--stop-at", "3", *sets(b)]) == 0
    cfg_b = load_config("pretrain", overrides=b)
    assert json.loads((cfg_b.run_dir / "run.json").read_text())["status"] == "running"
    assert latest_checkpoint(cfg_b.run_dir / "checkpoints").name == "step_000003"
    assert main(["--preset", "pretrain", "--no-progress", "--resume", *sets(b)]) == 0
    cfg_a = load_config("pretrain", overrides=a)
    ma = read_metrics(cfg_a.run_dir / "logs" / "metrics.csv")
    mb = read_metrics(cfg_b.run_dir / "logs" / "metrics.csv")
    for key in ("loss/total", "loss/ssim", "loss/ce", "loss/mse"):
        assert [ma[key][s] for s in range(1, 7)] == [mb[key][s] for s in range(1, 7)], key
    ema_a = load_file(str(cfg_a.run_dir / "checkpoints" / "step_000006" / "ema.safetensors"))
    ema_b = load_file(str(cfg_b.run_dir / "checkpoints" / "step_000006" / "ema.safetensors"))
    assert fingerprint(ema_a) == fingerprint(ema_b)


def test_probe_command_measures_each_term_and_writes_nothing(tiny, capsys):
    """``python -m train probe``: the measurement behind pixel_weight. Every image term is forced
    through its gate (max_t = 1), so each batch reports a pixel and an SSIM gradient next to
    MSE's."""
    assert main(["--preset", "pretrain", "--no-progress", *sets(tiny)]) == 0
    runs = sorted(p.name for p in Path(json.loads(tiny[-2].split("=", 1)[1])).iterdir())
    capsys.readouterr()
    probe = tiny + [
        "loss.pixel_weight=1.0",
        "loss.pixel_max_t=1.0",
        "loss.ssim_weight=1.0",
        "loss.ssim_max_t=1.0",
    ]
    assert (
        main(["probe", "--preset", "control", "--batches", "2", *sets(probe), *FROM_TINY_BASE]) == 0
    )
    out = capsys.readouterr().out
    rows = {line.split()[0]: line.split() for line in out.splitlines()
            if line.split() and line.split()[0] in ("mse", "pixel", "ssim")}
    assert rows["mse"][1] == rows["pixel"][1] == rows["ssim"][1] == "2/2"
    assert all(float(rows[k][2]) > 0 for k in rows)          # a gradient at v_hat from each
    assert "pixel_weight for equal pull" in out and "ssim_weight for equal pull" in out
    assert sorted(p.name for p in Path(json.loads(tiny[-2].split("=", 1)[1])).iterdir()) == runs


def test_probe_without_a_base_run_names_the_command(tiny, capsys):
    assert re.search("no finished run of preset 'pretrain'.*python -m train --preset pretrain",
                     refusal(main, ["probe", "--preset", "pixel", *sets(tiny), *FROM_TINY_BASE],
                             capsys))
    assert "--batches 0: must be >= 1" in refusal(
        main, ["probe", "--preset", "pixel", "--batches", "0", *sets(tiny), *FROM_TINY_BASE],
        capsys)


def test_the_trainer_warms_its_ema_up(tiny, tmp_path):
    """optim.ema_warmup (default): decay min(d, (1+n)/(10+n)), so after 4 steps the EMA is far
    closer to the trained weights than a plain 0.995-EMA, which still holds ~98 % of the start."""

    dist = {}
    for warm in (True, False):
        o = [x.replace(str(tmp_path / "runs"), str(tmp_path / f"w{warm}")) for x in tiny]
        o.append(f"optim.ema_warmup={str(warm).lower()}")
        assert main(["--preset", "pretrain", "--no-progress", *sets(o)]) == 0
        ckpt = load_config("pretrain", overrides=o).run_dir / "checkpoints" / "step_000004"
        model, ema = (
            load_file(str(ckpt / "model.safetensors")),
            load_file(str(ckpt / "ema.safetensors")),
        )
        dist[warm] = sum(float((model[k].float() - ema[k].float()).norm()) for k in ema)
    assert dist[True] < 0.5 * dist[False]
