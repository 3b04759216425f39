"""python -m infer: bad input gives one clear message and exit 2; --model / --baseline end to
end."""

from __future__ import annotations

import json

import pytest
import torch

from infer.__main__ import main
from medq.config import Config, dump_toml, load_config
from medq.harness.load import load_class, parse_model_args
from medq.harness.text import InferError

torch.set_num_threads(1)


def err_of(capsys, argv) -> str:
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    return captured.err


def test_missing_run_and_checkpoint(tmp_path, capsys):
    assert f"--run {tmp_path / 'nope'}: no such directory" in err_of(
        capsys, ["--run", str(tmp_path / "nope")]
    )
    (tmp_path / "r" / "checkpoints" / "step_000100").mkdir(parents=True)
    err = err_of(capsys, ["--run", str(tmp_path / "r"), "--checkpoint", "step_5"])
    assert "step_000005" in err and "available: step_000100" in err
    err = err_of(capsys, ["--run", str(tmp_path / "r")])
    assert "cannot load ema weights" in err


def test_bad_model_specs(capsys):
    assert "cannot import module 'no_such_pkg.x'" in err_of(
        capsys, ["--model", "no_such_pkg.x:Model"]
    )
    err = err_of(capsys, ["--model", "medq.baselines:Nope"])
    assert "has no 'Nope'" in err and "Bicubic" in err
    err = err_of(capsys, ["--model", "medq.config:ModelConfig"])
    assert "does not satisfy medq.protocol.ImageTextModel" in err and "edit" in err
    assert "cannot construct" in err_of(capsys, ["--model", "medq.baselines:Bicubic",
                                                 "--model-arg", "steps=3"])
    assert "expected module:Class" in err_of(capsys, ["--model", "Bicubic"])


def test_model_args_are_typed():
    assert parse_model_args(["a=3", "b=0.5", "c=true", "d=hello", "e=[1, 2]", "f=\"x y\""]) == \
        {"a": 3, "b": 0.5, "c": True, "d": "hello", "e": [1, 2], "f": "x y"}
    with pytest.raises(InferError, match="expected key=value"):
        parse_model_args(["nokey"])
    assert load_class("medq.baselines:Lanczos").name == "lanczos"


def test_model_override_rejected_for_runs(tmp_path, capsys):
    (tmp_path / "r").mkdir()
    err = err_of(capsys, ["--run", str(tmp_path / "r"), "--set", "model.d_model=64"])
    assert "architecture of --run comes from its checkpoint" in err


def _fake_checkpoint(root, cfg_saved: Config, cfg_weights: Config):
    """A checkpoint whose config.toml says ``cfg_saved`` but whose weights are ``cfg_weights``'s."""
    import medq.models as M
    tok = M.Tokenizer(words=["quality good image"])
    ckpt = root / "checkpoints" / "step_000001"
    net = M.MiniBagel(cfg_weights.model, tok.vocab_size)
    M.save_model(net, tok, ckpt)
    M.save_model(net, tok, ckpt, filename="ema.safetensors")
    (ckpt / "config.toml").write_text(dump_toml(cfg_saved))
    (ckpt / "state.json").write_text(json.dumps({"step": 1}))
    return ckpt


def test_checkpoint_of_another_architecture(tmp_path, capsys):
    small = load_config(
        "control", overrides=["model.d_model=32", "model.n_layers=1", "model.n_heads=2"]
    )
    other = load_config(
        "control", overrides=["model.d_model=64", "model.n_layers=1", "model.n_heads=2"]
    )
    _fake_checkpoint(tmp_path / "run", other, small)
    err = err_of(capsys, ["--run", str(tmp_path / "run"), "--no-progress"])
    assert "CheckpointMismatchError" in err and "cannot load ema weights" in err
    assert not (tmp_path / "run" / "eval").exists()


def test_baseline_end_to_end_and_resume(tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["--baseline", "bicubic", "--set", f"run.out_dir={json.dumps(str(tmp_path))}", "--set",
            f"data.cache_dir={json.dumps(str(tmp_path / 'cache'))}", "--set", "data.num_images=12",
            "--set", "data.num_test_images=3", "--set", "model.tile_size=32", "--set",
            "data.image_size=32", "--tasks", "sr4",
            "--limit", "2", "--out", str(out), "--no-progress"]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "verdict HEALTHY" in text and "n/a" in text
    rows = [json.loads(x) for x in (out / "sr4" / "records.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(r["text"] is False for r in rows)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["text"] is None and summary["verdict"]["status"] == "healthy"
    before = (out / "sr4" / "records.jsonl").read_text()
    assert main(argv) == 0
    assert (out / "sr4" / "records.jsonl").read_text() == before


def test_random_weights_run_is_collapsed_through_the_cli(tmp_path, capsys):
    import medq.models as M
    vae_dir = tmp_path / "vae"
    cfg = load_config("control", overrides=[
        "model.d_model=32", "model.n_layers=1", "model.n_heads=2", "model.tile_size=32",
        "data.image_size=32",
        "sample.steps=2", "data.num_images=12", f"model.vae={json.dumps(str(vae_dir))}",
        f"data.cache_dir={json.dumps(str(tmp_path / 'cache'))}"])
    M.save_vae(M.build_vae(cfg.model), vae_dir)
    torch.manual_seed(0)
    tok = M.Tokenizer()
    ckpt = tmp_path / "run" / "checkpoints" / "step_000001"
    net = M.MiniBagel(cfg.model, tok.vocab_size)
    M.save_model(net, tok, ckpt)
    M.save_model(net, tok, ckpt, filename="ema.safetensors")
    (ckpt / "config.toml").write_text(dump_toml(cfg))
    (ckpt / "state.json").write_text(json.dumps({"step": 1}))
    argv = ["--run", str(tmp_path / "run"), "--tasks", "sr4", "--limit", "2", "--no-progress",
            "--fail-on-collapse"]
    assert main(argv) == 1
    out = tmp_path / "run" / "eval" / "step_000001-ema"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["verdict"]["status"] == "collapsed" and summary["load"]["weights"] == "ema"
    rows = [json.loads(x) for x in (out / "sr4" / "records.jsonl").read_text().splitlines()]
    assert rows[0]["checkpoint"] == "step_000001" and rows[0]["weights"] == "ema"
    assert rows[0]["settings"]["sample"]["steps"] == 2
    assert rows[0]["settings"]["sample"]["noise_temperature"] == 0.3
    assert "verdict COLLAPSED" in capsys.readouterr().out
    # --set sample.* reaches the sampler of a --run model: another output, recorded as such
    assert main(argv + ["--set", "sample.noise_temperature=1", "--out", str(tmp_path / "t1")]) == 1
    hot = [json.loads(x) for x in (tmp_path / "t1" / "sr4" / "records.jsonl").read_text()
           .splitlines()]
    assert hot[0]["settings"]["sample"]["noise_temperature"] == 1.0
    assert hot[0]["check"]["output_std"] != rows[0]["check"]["output_std"]


def test_own_model_class_end_to_end(tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["--model", "fakes.infer:TextBicubic", "--set", "data.num_images=12", "--set",
            "data.num_test_images=3", "--set", "model.tile_size=32", "--set",
            "data.image_size=32", "--set",
            f"data.cache_dir={json.dumps(str(tmp_path / 'c'))}", "--limit", "2", "--out", str(out),
            "--no-progress"]
    assert main(argv) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["model"] == "text-bicubic" and summary["text"]["undecodable_rate"] == 0
    for task in summary["tasks"]:
        rows = [json.loads(x) for x in (out / task / "records.jsonl").read_text().splitlines()]
        assert len(rows) == 2 and all(r["report_text"] == "quality good image" for r in rows)


def test_corrupt_image_is_a_clear_error(tmp_path, capsys):
    folder = tmp_path / "imgs"
    folder.mkdir()
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    out = tmp_path / "out"
    err = err_of(capsys, ["--baseline", "bicubic", "--data", "folder", "--root", str(folder),
                          "--set", f"data.cache_dir={json.dumps(str(tmp_path / 'c'))}",
                          "--out", str(out), "--no-progress"])
    assert "broken.png" in err
    assert not list(out.rglob("records.jsonl")) and not list(out.rglob("summary.json"))
