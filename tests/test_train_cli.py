"""``python -m train`` command line: dry run, sweeps, warnings, finished runs, subcommands."""

from __future__ import annotations

import json
import re

import pytest

from fakes.cli import refusal
from medq.checkpoint import write_run_json
from medq.config import load_config
from train.__main__ import main, split_values, start_warnings, sweep_overrides


def test_dry_run_prints_resolved_config_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "runs"
    rc = main(["--preset", "ssim_v3", "--set", f"run.out_dir={json.dumps(str(out))}",
               "--set", "loss.ssim_weight=0.2", "--dry-run"])
    assert rc == 0
    text = capsys.readouterr().out
    cfg = load_config(
        "ssim_v3", overrides=[f"run.out_dir={json.dumps(str(out))}", "loss.ssim_weight=0.2"]
    )
    assert f"sha256 {cfg.hash}" in text and "ssim_weight = 0.2" in text
    assert str(cfg.run_dir) in text
    assert not out.exists()


def test_sweep_runs_the_grid_each_with_its_own_run_dir(tmp_path, capsys):
    rc = main(
        ["--preset", "ssim_v3", "--set", f"run.out_dir={json.dumps(str(tmp_path))}", "--sweep",
         "loss.ssim_weight=0.1,0.2", "--sweep", "loss.ssim_max_t=0.1,0.15", "--dry-run"]
    )
    assert rc == 0
    text = capsys.readouterr().out
    dirs = {
        line.split(": ", 1)[1] for line in text.splitlines() if line.startswith("run directory: ")
    }
    assert len(dirs) == 4 and "== sweep 4/4" in text
    assert sweep_overrides(["a.b=1,2", "c.d=x"]) == [["a.b=1", "c.d=x"], ["a.b=2", "c.d=x"]]
    assert split_values('["sr4","sr2"],["enhance"]') == ['["sr4","sr2"]', '["enhance"]']


def test_v2_as_run_warns_loudly_and_v3_does_not(capsys):
    (warning,) = start_warnings(load_config("ssim_v2_as_run"))
    assert "WARNING" in warning and "RANDOM weights" in warning and warning.startswith("#####")
    assert start_warnings(load_config("ssim_v3")) == []
    assert (
        start_warnings(load_config("pretrain")) == []
    )  # scratch without an image loss is the base
    main(["--preset", "ssim_v2_as_run", "--dry-run"])
    assert "SSIM v2 accident" in capsys.readouterr().err


def test_finished_run_says_so_and_exits_0(tmp_path, capsys):
    override = f"run.out_dir={json.dumps(str(tmp_path))}"
    cfg = load_config("pixel", overrides=[override])
    write_run_json(cfg.run_dir, preset="pixel", hash_=cfg.hash, status="finished", step=300)
    assert main(["--preset", "pixel", "--set", override]) == 0
    assert "already finished at step 300" in capsys.readouterr().out



def test_a_finished_run_of_weights_rebuilt_since_is_an_error_not_a_success(tmp_path, capsys):
    """The config names ``init.from`` (a directory), not its contents: after ``make weights`` or a
    pulled base, a finished fine-tune of the old base must not pass for one of the new."""
    import torch
    from safetensors.torch import save_file

    from medq.checkpoint import fingerprint
    from medq.training.task import init_changed

    base = tmp_path / "base" / "ema.safetensors"
    base.parent.mkdir()
    old = {"w": torch.ones(3)}
    save_file(old, base)
    override = f"run.out_dir={json.dumps(str(tmp_path / 'runs'))}"
    cfg = load_config("pixel", overrides=[override])
    write_run_json(cfg.run_dir, preset="pixel", hash_=cfg.hash, status="finished", step=300)
    (cfg.run_dir / "init.json").write_text(json.dumps(
        {"scratch": False, "report": {"source": str(base), "fingerprint": fingerprint(old)}}))
    assert init_changed(cfg.run_dir) is None
    assert main(["--preset", "pixel", "--set", override]) == 0  # same weights: nothing to do
    assert "already finished" in capsys.readouterr().out
    save_file({"w": torch.zeros(3)}, base)  # the base was rebuilt
    assert "now holds other weights" in init_changed(cfg.run_dir)
    assert re.search(r"describe the old weights\. Move .*pixel-",
                     refusal(main, ["--preset", "pixel", "--set", override], capsys))
    base.unlink()
    assert "no longer exists" in init_changed(cfg.run_dir)
    assert init_changed(tmp_path) is None  # no init.json: nothing recorded, nothing claimed

def test_resume_without_checkpoint_is_an_error(tmp_path, capsys):
    override = f"run.out_dir={json.dumps(str(tmp_path))}"
    assert "no complete checkpoint to resume from" in refusal(
        main, ["--preset", "pixel", "--set", override, "--resume"], capsys)
    assert "no config.toml in that run directory" in refusal(
        main, ["--resume", str(tmp_path / "nothing")], capsys)


def test_bad_override_names_the_key(capsys):
    assert "loss.ssim_wieght" in refusal(
        main, ["--preset", "ssim_v3", "--set", "loss.ssim_wieght=0.2", "--dry-run"], capsys)


def test_help_lists_examples_and_presets(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    assert "--sweep loss.ssim_weight=0.1,0.2" in text and "ssim_v2_as_run" in text
    assert "torchrun" in text
