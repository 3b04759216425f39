"""The generic training loop on a tiny module: exact resume, files, non-finite skips, retention,
schedule, EMA, logging. Independent of medq.models / medq.data (a fake task stands in)."""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from fakes.training import TinyTask, losses_by_step, tiny_cfg
from medq.checkpoint import fingerprint, latest_checkpoint, list_checkpoints, read_best
from medq.config import load_config
from medq.ema import EMA
from medq.schedule import warmup_cosine
from train.logger import read_metrics
from train.loop import train
from train.monitors import NonFiniteError


def test_resume_equals_uninterrupted_run(tmp_path):
    cfg_a = tiny_cfg(tmp_path / "a")
    full = train(cfg_a, TinyTask(), progress=False)
    assert full["status"] == "finished" and full["step"] == 6

    cfg_b = tiny_cfg(tmp_path / "b")
    first = train(cfg_b, TinyTask(), stop_at=3, progress=False)
    assert first["status"] == "running" and first["step"] == 3
    assert json.loads((cfg_b.run_dir / "run.json").read_text())["status"] == "running"
    # A fresh process state: new task, different global RNG; everything must come from the
    # checkpoint.
    torch.manual_seed(12345)
    task = TinyTask()
    second = train(cfg_b, task, progress=False)
    assert task.seen_steps[0] == 3  # data order continues where it stopped
    assert second["status"] == "finished"

    a, b = losses_by_step(cfg_a.run_dir), losses_by_step(cfg_b.run_dir)
    assert sorted(a) == sorted(b) == [1, 2, 3, 4, 5, 6]
    assert [a[s] for s in range(1, 7)] == [b[s] for s in range(1, 7)]  # exactly, not approximately
    assert full["fingerprint"] == second["fingerprint"]
    ema_a = load_file(str(latest_checkpoint(cfg_a.run_dir / "checkpoints") / "ema.safetensors"))
    ema_b = load_file(str(latest_checkpoint(cfg_b.run_dir / "checkpoints") / "ema.safetensors"))
    assert fingerprint(ema_a) == fingerprint(ema_b)


def test_checkpoint_layout_run_json_and_rerun(tmp_path):
    cfg = tiny_cfg(tmp_path)
    train(cfg, TinyTask(), progress=False)
    ckpts = cfg.run_dir / "checkpoints"
    assert (ckpts / "latest").read_text().strip() == "step_000006"
    files = {p.name for p in (ckpts / "step_000006").iterdir()}
    assert {
        "model.safetensors",
        "ema.safetensors",
        "optim.pt",
        "config.toml",
        "state.json",
    } <= files
    state = json.loads((ckpts / "step_000006" / "state.json").read_text())
    assert state["step"] == 6 and state["hash"] == cfg.hash and state["skipped"] == 0
    assert json.loads((cfg.run_dir / "run.json").read_text()) == {
        "preset": "pretrain", "hash": cfg.hash, "status": "finished", "step": 6}
    assert read_best(ckpts)["name"] in {"step_000003", "step_000006"}
    metrics = read_metrics(cfg.run_dir / "logs" / "metrics.csv")
    for key in ("loss/mse", "loss/total", "train/lr", "train/grad_norm", "train/skipped",
                "val/total"):
        assert key in metrics, key
    assert list((cfg.run_dir / "logs" / "tb").iterdir())
    # Running a finished run again trains nothing.
    task = TinyTask()
    again = train(cfg, task, progress=False)
    assert again["step"] == 6 and task.seen_steps == []


def test_nonfinite_step_is_skipped_and_counted(tmp_path):
    cfg = tiny_cfg(tmp_path, "optim.grad_clip=0.0")
    seen = {}

    class Spy(TinyTask):
        def losses(self, batch, generator):
            seen[batch["step"]] = fingerprint(self.model.state_dict())
            return super().losses(batch, generator)

    task = Spy(nan_steps={2})
    out = train(cfg, task, progress=False)
    assert out["status"] == "finished" and out["skipped"] == 1
    # Step 2 was skipped: the weights entering step 3 are those entering step 2.
    assert seen[2] == seen[3] and seen[1] != seen[2]
    metrics = read_metrics(cfg.run_dir / "logs" / "metrics.csv")
    assert metrics["train/skipped"][2] == 1 and metrics["train/skipped"][1] == 0


def test_too_many_nonfinite_steps_abort_and_keep_last_checkpoint(tmp_path):
    cfg = tiny_cfg(tmp_path, "run.max_nonfinite=2")
    with pytest.raises(NonFiniteError, match="2 consecutive steps.*run.max_nonfinite = 2"):
        train(cfg, TinyTask(nan_steps={4, 5}), progress=False)
    assert latest_checkpoint(cfg.run_dir / "checkpoints").name == "step_000003"


def test_retention_keeps_last_and_best(tmp_path):
    cfg = tiny_cfg(tmp_path, "optim.max_steps=8", "run.ckpt_every=1", "run.val_every=1",
                   "run.keep_last=2")
    train(cfg, TinyTask(), progress=False)
    root = cfg.run_dir / "checkpoints"
    names = [p.name for p in list_checkpoints(root)]
    best = read_best(root)["name"]
    assert names[-2:] == ["step_000007", "step_000008"]
    assert set(names) == {"step_000007", "step_000008", best}


def test_warmup_cosine_shape():
    f = partial(warmup_cosine, warmup_steps=4, max_steps=20)
    assert [f(s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    later = [f(s) for s in range(4, 20)]
    assert all(a >= b for a, b in zip(later, later[1:]))
    assert 0 < later[-1] < 0.05
    assert warmup_cosine(0, warmup_steps=0, max_steps=10) <= 1.0


def test_ema_tracks_trainable_weights_and_ties():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
    model[1].weight = model[0].weight  # tied
    model[0].bias.requires_grad_(False)
    ema = EMA(model, decay=0.5)
    before = model[0].weight.detach().clone()
    with torch.no_grad():
        model[0].weight.add_(1.0)
        model[0].bias.add_(1.0)
    ema.update(model)
    state = ema.state_dict(model)
    torch.testing.assert_close(state["0.weight"], before + 0.5)
    torch.testing.assert_close(state["1.weight"], before + 0.5)  # the tied key too
    torch.testing.assert_close(state["0.bias"], model[0].bias)  # frozen: copied as is
    assert set(state) == set(model.state_dict())
    restored = EMA(model, decay=0.5)
    restored.load_state_dict(state)
    torch.testing.assert_close(restored.state_dict(model)["0.weight"], state["0.weight"])


def test_collapse_monitor_warns_and_can_stop_early(tmp_path, caplog):
    class Collapsing(TinyTask):
        def validate(self, model):
            return {**super().validate(model), "collapse/undecodable_rate": 0.4,
                    "collapse/psnr_gap_db": -1.0, "collapse/ssim_ratio": 0.9,
                    "collapse/output_std_ratio": 0.95}

    cfg = tiny_cfg(tmp_path / "warn")
    with caplog.at_level("WARNING", logger="train"):
        out = train(cfg, Collapsing(), progress=False)
    assert out["status"] == "finished"  # collapse_stop off: warn only
    assert "undecodable-token rate 0.4 > 0.01" in caplog.text
    metrics = read_metrics(cfg.run_dir / "logs" / "metrics.csv")
    assert metrics["collapse/warning"] == {3: 1.0, 6: 1.0}

    cfg = tiny_cfg(tmp_path / "stop", "run.collapse_stop=true")
    out = train(cfg, Collapsing(), progress=False)
    assert out["status"] == "collapsed" and out["step"] == 3
    assert json.loads((cfg.run_dir / "run.json").read_text())["status"] == "collapsed"
    assert latest_checkpoint(cfg.run_dir / "checkpoints").name == "step_000003"


def test_gradient_probe_weights_terms_and_logs_ratios(tmp_path):
    from train.monitors import probe_gradients

    h = torch.randn(4, 8, requires_grad=True)
    w = torch.randn(8, requires_grad=True)
    x0 = h * w
    terms = {"mse": (x0 ** 2).mean(), "ssim": x0.sum(), "total": x0.sum()}
    cfg = load_config("ssim_v3")  # ssim_weight 0.1, mse_weight 1
    out = probe_gradients(terms, {"x0_hat": x0, "hidden": h}, cfg.loss)
    g_ssim = torch.full_like(x0, 0.1).norm()
    g_mse = (2 * x0.detach() / x0.numel()).norm()
    assert out["probe/x0_hat/ssim/norm"] == pytest.approx(float(g_ssim), rel=1e-5)
    assert out["probe/x0_hat/ssim/max"] == pytest.approx(0.1, rel=1e-5)
    assert out["probe/x0_hat/ssim_over_mse"] == pytest.approx(float(g_ssim / g_mse), rel=1e-5)
    assert "probe/hidden/ssim_over_mse" in out
    assert w.grad is None  # parameters untouched: the loop's backward comes after
    # In the loop: every run.probe_every steps, logged to the CSV.
    cfg = tiny_cfg(tmp_path, "run.probe_every=2")
    train(cfg, TinyTask(), progress=False)
    metrics = read_metrics(cfg.run_dir / "logs" / "metrics.csv")
    assert sorted(metrics["probe/hidden/mse/norm"]) == [2, 4, 6]


def test_crash_after_last_checkpoint_resumes_without_duplicate_rows(tmp_path):
    import shutil

    cfg = tiny_cfg(tmp_path)
    train(cfg, TinyTask(), progress=False)
    before = losses_by_step(cfg.run_dir)
    # As if the process died after logging steps 4-6 but before saving step 6.
    root = cfg.run_dir / "checkpoints"
    shutil.rmtree(root / "step_000006")
    (root / "latest").write_text("step_000003\n")
    out = train(cfg, TinyTask(), progress=False)
    assert out["step"] == 6
    rows = [
        line.split(",")[0]
        for line in (cfg.run_dir / "logs" / "metrics.csv").read_text().splitlines()
        if ",loss/total," in line
    ]
    assert rows == ["1", "2", "3", "4", "5", "6"]
    assert losses_by_step(cfg.run_dir) == before


def test_fsdp_in_a_single_process_is_ignored_with_a_warning(tmp_path, caplog):
    plain = train(tiny_cfg(tmp_path / "a"), TinyTask(), progress=False)
    with caplog.at_level("WARNING", logger="train"):
        fsdp = train(tiny_cfg(tmp_path / "b", "run.fsdp=true"), TinyTask(), progress=False)
    assert "run.fsdp = true ignored: a single process" in caplog.text
    assert fsdp["fingerprint"] == plain["fingerprint"]  # the same training, unsharded


def test_metrics_csv_survives_a_kill_at_any_byte(tmp_path):
    """A kill can cut metrics.csv after any byte (the first flush writes the header and the rows
    together). Whatever the cut, the resumed run's history reads back whole: every step once,
    with the uninterrupted values; a torn header is written whole again."""
    from train.logger import Logger

    def write(log_dir: Path, start: int, stop: int) -> None:
        logger = Logger(log_dir, start_step=start, tensorboard=False)
        for step in range(start + 1, stop + 1):
            logger.log_dict({"loss/total": step / 7, "train/lr": step / 3})
            logger.flush(step)
        logger.close()

    write(tmp_path / "full", 0, 6)
    data = (tmp_path / "full" / "metrics.csv").read_bytes()
    expected = read_metrics(tmp_path / "full" / "metrics.csv")
    for cut in range(len(data)):
        log_dir = tmp_path / f"cut{cut}"
        log_dir.mkdir()
        (log_dir / "metrics.csv").write_bytes(data[:cut])
        # The checkpoint such a kill leaves: the last even step whose rows all precede the cut.
        rows = data[:cut].decode().split("\r\n")[1:-1]
        done = [int(r.split(",")[0]) for r in rows]
        start = max([s for s in set(done) if s % 2 == 0 and done.count(s) == 2] or [0])
        write(log_dir, start, 6)
        assert read_metrics(log_dir / "metrics.csv") == expected, (cut, data[:cut])


def test_the_tiny_task_fakes_the_loops_task_protocol():
    """fakes.training.TinyTask has every attribute and method of ``train.loop.Task``, with the
    same parameters: a change of the contract breaks this test, not silently the fake."""
    import inspect

    from train.loop import Task

    task = TinyTask()
    for name in Task.__annotations__:
        assert hasattr(task, name), name
    methods = [n for n, v in vars(Task).items() if inspect.isfunction(v) and not n.startswith("_")]
    assert methods
    for name in methods:
        want = list(inspect.signature(getattr(Task, name)).parameters)
        assert list(inspect.signature(getattr(TinyTask, name)).parameters) == want, name
