"""The shipped pretrained weights (``weights/``): they load strictly, score what their manifest
records, and a missing, truncated or foreign file is an error naming it and the rebuild command,
never a silent fresh start (the SSIM v2 accident)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from medq.config import load_config
from medq.models import CheckpointMismatchError
from medq.training.task import init_model, shipped_weights_hint
from train.weights_cmd import MANIFEST, SHIPPED_FILES, check, is_shipped

REPO = Path(__file__).resolve().parents[1]
WEIGHTS = REPO / "weights"


@pytest.fixture
def in_repo(monkeypatch):
    """Run from the checkout root: model.vae and init.from are relative to it, as in `make`."""
    monkeypatch.chdir(REPO)


@pytest.fixture
def copy_of_weights(tmp_path) -> Path:
    out = tmp_path / "weights"
    shutil.copytree(WEIGHTS, out)
    cfg = out / "base" / "config.toml"
    # The copy's base must find the copy's VAE, wherever the copy is.
    assert 'vae = "weights/vae"' in cfg.read_text()
    cfg.write_text(cfg.read_text().replace('vae = "weights/vae"', f'vae = "{out / "vae"}"'))
    manifest = json.loads((out / "base" / MANIFEST).read_text())
    manifest["sha256"].pop("config.toml")
    (out / "base" / MANIFEST).write_text(json.dumps(manifest))
    return out


def test_the_presets_fine_tune_the_shipped_weights():
    for preset in ("pixel", "ssim_v3", "mixed", "ssim_v1", "ssim_v3_relaxed", "control"):
        cfg = load_config(preset)
        assert cfg.init.from_ == "weights/base" and cfg.model.vae == "weights/vae", preset
        assert is_shipped(cfg.init.from_) and is_shipped(cfg.model.vae)
    assert not is_shipped("pretrain") and not is_shipped("runs/pretrain-1234abcd")


def test_manifest_lists_every_shipped_file_with_its_digest():
    manifest = json.loads((WEIGHTS / "base" / MANIFEST).read_text())
    assert set(manifest["sha256"]) == set(SHIPPED_FILES)
    assert manifest["rebuild"].startswith("make weights")
    assert set(manifest["scores"]) == {"sr4", "sr2", "enhance"}
    size = sum(p.stat().st_size for p in WEIGHTS.rglob("*") if p.is_file())
    assert size <= 20 * 2 ** 20, f"shipped weights are {size / 2 ** 20:.1f} MiB (limit 20)"


@pytest.mark.xfail(strict=True, reason=(
    "known regression of the full-size base (issue 27/30 notes): reports are written from the "
    "whole input shrunk to one 64-px tile, where the 256-px generator's lesions are a fraction of "
    "a pixel; the recorded kappa is near 0 until the report condition is enlarged and the base "
    "rebuilt. strict: this test fails the suite as soon as a base grades again, so the mark goes"))
def test_the_shipped_base_reads_the_dr_grade_from_the_image():
    """Issue 14, item 3: the greedy reports' DR grade agrees with the truth at kappa >= 0.4 on sr2
    and enhance, above the majority-class floor (0: every report the same grade). The recorded
    values are what `--check` (the slow test below) reproduces from the weights."""
    manifest = json.loads((WEIGHTS / "base" / MANIFEST).read_text())
    assert manifest["report_images"] >= 60
    for task in ("sr2", "enhance"):
        assert manifest["report_kappa"][task] >= 0.4, (task, manifest["report_kappa"])


@pytest.mark.slow
def test_shipped_weights_load_strictly_and_score_what_is_recorded(in_repo, capsys):
    assert check(WEIGHTS / "base") == 0
    assert "strict load ok" in capsys.readouterr().out


@pytest.mark.slow
def test_the_default_fine_tune_initialises_from_the_shipped_ema(in_repo):
    cfg = load_config("ssim_v3")
    model, _, info = init_model(cfg, device="cpu")
    assert info["weights"] == "ema" and info["report"]["missing"] == []
    assert info["report"]["unexpected"] == [] and info["report"]["mismatched"] == []
    assert Path(info["checkpoint"]).resolve() == (WEIGHTS / "base").resolve()


def test_truncated_weights_name_the_file_and_the_rebuild_command(copy_of_weights, capsys):
    ema = copy_of_weights / "base" / "ema.safetensors"
    ema.write_bytes(ema.read_bytes()[:1000])
    assert check(copy_of_weights / "base") == 1
    err = capsys.readouterr().err
    assert str(ema) in err and "make weights" in err
    cfg = load_config("ssim_v3", overrides=[f'init.from="{copy_of_weights / "base"}"'])
    with pytest.raises(
        CheckpointMismatchError,
        match=r"ema\.safetensors: not a readable safetensors"
        r"(.|\n)*make weights",
    ):
        with shipped_weights_hint(cfg.init.from_):
            init_model(cfg, device="cpu")


def test_a_corrupt_manifest_is_named_not_a_traceback(copy_of_weights, capsys):
    manifest = copy_of_weights / "base" / MANIFEST
    manifest.write_text("{not json")
    assert check(copy_of_weights / "base") == 1
    err = capsys.readouterr().err
    assert str(manifest) in err and "make weights" in err


def test_missing_or_foreign_weights_name_the_rebuild_command(copy_of_weights):
    base = copy_of_weights / "base"
    arch = json.loads((base / "arch.json").read_text())
    (base / "arch.json").write_text(json.dumps({**arch, "d_model": arch["d_model"] * 2}))
    cfg = load_config("ssim_v3", overrides=[f'init.from="{base}"'])
    with pytest.raises(CheckpointMismatchError, match=r"d_model(.|\n)*make weights"):
        with shipped_weights_hint(cfg.init.from_):
            init_model(cfg, device="cpu")
    shutil.rmtree(base)
    with pytest.raises(FileNotFoundError, match=r"no such checkpoint(.|\n)*make weights"):
        with shipped_weights_hint(cfg.init.from_):
            init_model(cfg, device="cpu")


def test_other_init_errors_are_not_blamed_on_the_shipped_weights(tmp_path):
    cfg = load_config("ssim_v3", overrides=[f'init.from="{tmp_path / "nowhere"}"'])
    with pytest.raises(FileNotFoundError) as e:
        with shipped_weights_hint(cfg.init.from_):
            init_model(cfg, device="cpu")
    assert "make weights" not in str(e.value)


@pytest.mark.slow
def test_the_rebuild_command_writes_weights_that_pass_their_check(tmp_path, monkeypatch, capsys):
    """`python -m train weights` end to end on a tiny model: data -> VAE -> base -> export."""
    from train.__main__ import main

    monkeypatch.chdir(tmp_path)
    tiny = ["model.d_model=32", "model.n_layers=1", "model.n_heads=2", "data.num_images=40",
            "optim.batch_size=4", "optim.warmup_steps=1", "run.val_every=2", "run.ckpt_every=2",
            "run.probe_every=2", "sample.max_new_tokens=4", "run.threads=1",
            "data.mix_fraction=0",  # no real photographs: CI has no ../shared
            f'data.cache_dir="{tmp_path / "cache"}"']
    args = ["weights", "--out", str(tmp_path / "w"), "--vae-steps", "3", "--base-steps", "2",
            "--no-progress"] + [a for o in tiny for a in ("--set", o)]
    import train.weights_cmd as weights_cmd

    def interrupted(*a):  # the build trained, then stopped before shipping (a killed session)
        raise SystemExit("interrupted")

    monkeypatch.setattr(weights_cmd, "export", interrupted)
    assert main(args) == 2
    assert not (tmp_path / "w" / "base").exists() and (tmp_path / "w" / ".build").is_dir()
    monkeypatch.undo()
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    assert main(args) == 0  # the same command picks the finished build up instead of retraining
    assert "is already finished at step 2" in capsys.readouterr().out
    base = tmp_path / "w" / "base"
    assert sorted(p.name for p in base.iterdir()) == sorted([*SHIPPED_FILES, MANIFEST])
    manifest = json.loads((base / MANIFEST).read_text())
    assert manifest["step"] == 2 and manifest["vae"]["steps"] == 3
    assert not (tmp_path / "w" / ".build").exists()
    assert main(["weights", "--check", "--out", str(tmp_path / "w")]) == 0
