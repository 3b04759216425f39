"""Faults of a run directory (issue 18): the lock, corrupt checkpoints and their fallback, no
silent restart, good checkpoints under a non-finite streak, rename-then-delete retention, and the
CLI's one-line errors. Uses the tiny task of test_train_loop (no medq.models)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from fakes.cli import refusal
from fakes.training import TinyTask, losses_by_step, tiny_cfg, write_file
from medq.checkpoint import (
    CheckpointError,
    apply_retention,
    clean_temp,
    is_good,
    last_good_checkpoint,
    latest_checkpoint,
    list_checkpoints,
    save_checkpoint,
    set_aside_newer,
    usable_checkpoint,
    verify_checkpoint,
)
from medq.run_lock import RunLockedError, acquire_run_lock, release_run_lock, run_lock
from train.loop import train
from train.monitors import NonFiniteError

REPO = Path(__file__).resolve().parents[1]


def _hold_lock_in_child(run_dir: Path) -> subprocess.Popen:
    script = textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {str(REPO)!r})
        from medq.run_lock import acquire_run_lock
        acquire_run_lock({str(run_dir)!r})
        print("locked", flush=True)
        time.sleep(60)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_second_process_stops_naming_the_holder_and_a_stale_lock_is_taken_over(tmp_path, caplog):
    run_dir = tmp_path / "run"
    holder = _hold_lock_in_child(run_dir)
    try:
        t0 = time.perf_counter()
        with pytest.raises(RunLockedError, match=f"in use by process {holder.pid} "):
            acquire_run_lock(run_dir)
        assert time.perf_counter() - t0 < 1.0  # at once, not after a timeout
    finally:
        holder.kill()
        holder.wait()
    # Killed: the kernel dropped its flock; its PID is still in the file -> taken over, warned.
    with caplog.at_level("WARNING"):
        assert acquire_run_lock(run_dir)
    assert f"lock left by process {holder.pid}" in caplog.text
    assert (run_dir / "run.lock").read_text().strip() == str(os.getpid())
    assert not acquire_run_lock(run_dir)  # re-entrant within a process
    release_run_lock(run_dir)
    assert (run_dir / "run.lock").read_text() == ""  # a clean exit leaves no holder behind
    caplog.clear()
    with caplog.at_level("WARNING"), run_lock(run_dir):
        pass
    assert "taken over" not in caplog.text


@pytest.mark.slow  # starts python -m train in a subprocess (a torch import each)
def test_train_refuses_a_locked_run_directory(tmp_path):
    cfg = tiny_cfg(tmp_path)
    holder = _hold_lock_in_child(cfg.run_dir)
    try:
        with pytest.raises(RunLockedError, match=str(holder.pid)):
            train(cfg, TinyTask(), progress=False)
    finally:
        holder.kill()
        holder.wait()
    assert not (cfg.run_dir / "checkpoints").exists() and not (cfg.run_dir / "logs").exists()


def _finished_run(tmp_path, *extra):
    cfg = tiny_cfg(tmp_path, "run.keep_last=3", *extra)
    out = train(cfg, TinyTask(), stop_at=6, progress=False)
    return cfg, out


@pytest.mark.parametrize("damage", ["truncate model", "empty ema", "garbage optim",
                                    "malformed state", "garbage latest"])
def test_corrupt_newest_checkpoint_falls_back_to_the_previous_one(tmp_path, caplog, damage):
    cfg, _ = _finished_run(tmp_path / "run", "optim.max_steps=9")
    root = cfg.run_dir / "checkpoints"
    newest = root / "step_000006"
    what, name = damage.split()
    file = {"model": "model.safetensors", "ema": "ema.safetensors", "optim": "optim.pt",
            "state": "state.json", "latest": None}[name]
    if what == "truncate":
        data = (newest / file).read_bytes()
        (newest / file).write_bytes(data[: len(data) // 2])
    elif what == "empty":
        (newest / file).write_bytes(b"")
    elif what == "garbage" and file:
        (newest / file).write_bytes(os.urandom(256))
    elif what == "malformed":
        (newest / file).write_text('{"step": 6, ')
    else:
        (root / "latest").write_bytes(b"\xff\xfe\x00garbage\x81")
    with caplog.at_level("WARNING"):
        out = train(cfg, TinyTask(), progress=False)
    if file is None:  # a garbage pointer: the newest complete checkpoint is intact and used
        assert "does not hold a checkpoint name" in caplog.text
    else:
        assert f"{newest / file}" in caplog.text and "falling back" in caplog.text
        assert (root / "broken-step_000006").is_dir()
    assert out["status"] == "finished" and out["step"] == 9
    # The fallback resumed exactly: the same weights as the reference run of 9 steps.
    ref9 = train(tiny_cfg(tmp_path / "ref9", "optim.max_steps=9"), TinyTask(), progress=False)
    assert out["fingerprint"] == ref9["fingerprint"]
    assert sorted(losses_by_step(cfg.run_dir)) == list(range(1, 10))


def test_no_checkpoint_left_is_an_error_not_a_silent_restart(tmp_path):

    cfg, _ = _finished_run(tmp_path, "optim.max_steps=9")
    metrics = (cfg.run_dir / "logs" / "metrics.csv").read_text()
    root = cfg.run_dir / "checkpoints"
    for ckpt in list_checkpoints(root):
        shutil.rmtree(ckpt)
    with pytest.raises(CheckpointError, match="reached step 6 but no usable checkpoint is left"):
        train(cfg, TinyTask(), progress=False)
    assert (cfg.run_dir / "logs" / "metrics.csv").read_text() == metrics  # history untouched
    # Every checkpoint broken: also an error, naming the last broken file.
    cfg2, _ = _finished_run(tmp_path / "b", "optim.max_steps=9")
    for ckpt in list_checkpoints(cfg2.run_dir / "checkpoints"):
        (ckpt / "optim.pt").write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"optim\.pt: unreadable"):
        train(cfg2, TinyTask(), progress=False)


def test_verify_checkpoint_names_the_file(tmp_path):
    cfg, _ = _finished_run(tmp_path)
    ckpt = cfg.run_dir / "checkpoints" / "step_000006"
    verify_checkpoint(ckpt, ("model.safetensors", "ema.safetensors", "optim.pt"))
    (ckpt / "ema.safetensors").unlink()
    with pytest.raises(CheckpointError, match="ema.safetensors: missing"):
        verify_checkpoint(ckpt, ("ema.safetensors",))


def test_nonfinite_streak_keeps_the_last_good_checkpoint_and_latest_names_it(tmp_path):
    # Saves every step, keeps 1: the streak (steps 4-6) saves bad checkpoints 4 and 5, retention
    # must still keep good step 3, and the abort points latest at it.
    cfg = tiny_cfg(tmp_path, "run.max_nonfinite=3", "run.ckpt_every=1", "run.keep_last=1",
                   "run.val_every=100", "optim.max_steps=8")
    with pytest.raises(NonFiniteError):
        train(cfg, TinyTask(nan_steps={4, 5, 6}), progress=False)
    root = cfg.run_dir / "checkpoints"
    names = [p.name for p in list_checkpoints(root)]
    assert "step_000003" in names and "step_000005" in names
    assert is_good(root / "step_000003") and not is_good(root / "step_000005")
    assert last_good_checkpoint(root).name == "step_000003"
    assert latest_checkpoint(root).name == "step_000003"


def test_nan_weights_after_a_finite_step_are_not_good(tmp_path):
    class Blowup(TinyTask):
        def losses(self, batch, generator):
            terms, act = super().losses(batch, generator)
            if batch["step"] == 2:  # a finite step whose update makes the weights NaN
                with torch.no_grad():
                    self.model[0].weight.fill_(float("nan"))
            return terms, act

    cfg = tiny_cfg(tmp_path, "run.ckpt_every=2", "run.max_nonfinite=1", "optim.max_steps=4")
    with pytest.raises(NonFiniteError):
        train(cfg, Blowup(), progress=False)
    root = cfg.run_dir / "checkpoints"
    assert not is_good(root / "step_000002")
    assert last_good_checkpoint(root) is None  # bench eval has nothing good to score


def test_retention_renames_before_deleting(tmp_path, monkeypatch):

    root = tmp_path / "checkpoints"
    for step in (1, 2, 3):
        save_checkpoint(root, step, {}, {"good": True})
    seen = []
    real = shutil.rmtree

    def spy(path, *a, **k):
        seen.append(Path(path).name)
        raise KeyboardInterrupt  # as if killed here: after the rename, before the delete

    monkeypatch.setattr(shutil, "rmtree", spy)
    with pytest.raises(KeyboardInterrupt):
        apply_retention(root, keep_last=1)
    monkeypatch.setattr(shutil, "rmtree", real)
    assert seen[0].startswith(".tmp-del-step_000001")
    assert [p.name for p in list_checkpoints(root)] == ["step_000002", "step_000003"]
    assert not (root / "step_000001").exists()  # never half-deleted under its own name
    clean_temp(root)
    assert not list(root.glob(".tmp-*"))


def test_usable_checkpoint_of_an_empty_root(tmp_path):
    assert usable_checkpoint(tmp_path / "none") == (None, [])


def test_fallback_never_goes_past_latest(tmp_path, caplog):
    """A checkpoint newer than ``latest`` (a save killed between its rename and the pointer
    update) is not a candidate, even when ``latest`` itself is broken: resuming from it would skip
    the metrics rows the run rewrote after ``latest``."""
    root = tmp_path / "checkpoints"
    for step in (2, 4, 6):
        save_checkpoint(root, step, {"a": write_file("a.txt", str(step))}, {})
    (root / "latest").write_text("step_000004\n")
    assert usable_checkpoint(root)[0].name == "step_000004"
    (root / "step_000004" / "state.json").write_text("{")
    with caplog.at_level("WARNING"):
        ckpt, broken = usable_checkpoint(root)
    assert ckpt.name == "step_000002" and len(broken) == 1
    assert (root / "step_000006").is_dir()  # left alone here; set_aside_newer moves it on resume
    moved = set_aside_newer(root, ckpt)
    assert [p.name for p in moved] == ["stale-step_000006"]
    assert [p.name for p in list_checkpoints(root)] == ["step_000002"]
    assert "newer than step_000002" in caplog.text


def test_resume_after_an_unpointed_save_a_crash_and_a_corrupt_latest_keeps_every_row(tmp_path):
    """The chaos test's rare lost row, made deterministic: a save killed after its rename but
    before ``latest`` moved (step 6 complete, latest -> 4); the next process resumes from 4,
    rewrites the rows after 4 and crashes computing step 6; ``latest`` (4) is then corrupted. The
    resume must fall back to 2, never to the orphaned 6, so every step has its row."""
    extra = ("optim.max_steps=8", "run.ckpt_every=2", "run.val_every=2", "run.keep_last=10")
    reference = train(tiny_cfg(tmp_path / "ref", *extra), TinyTask(), progress=False)
    ref = losses_by_step(reference["run_dir"])
    cfg, _ = _finished_run(tmp_path / "run", *extra)  # stopped at 6: step_2, 4, 6; latest -> 6
    root = cfg.run_dir / "checkpoints"
    (root / "latest").write_text("step_000004\n")

    class CrashAt6(TinyTask):
        def losses(self, batch, generator):
            if batch["step"] == 6:
                raise KeyboardInterrupt  # dies computing step 6: rows up to 5 are written
            return super().losses(batch, generator)

    with pytest.raises(KeyboardInterrupt):
        train(cfg, CrashAt6(), progress=False)
    assert (root / "stale-step_000006").is_dir() and not (root / "step_000006").exists()
    model = root / "step_000004" / "model.safetensors"
    model.write_bytes(model.read_bytes()[:100])
    out = train(cfg, TinyTask(), progress=False)
    assert out["status"] == "finished" and out["fingerprint"] == reference["fingerprint"]
    got = losses_by_step(cfg.run_dir)
    assert sorted(got) == list(range(1, 9)) and all(got[k] == ref[k] for k in got)


# ---------------------------------------------------------------------------------------------
# CLI: one-line errors


def _cli(*argv: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "train", *argv], capture_output=True, text=True,
                          env=env, cwd=REPO, timeout=120)


@pytest.mark.slow  # starts python -m train in a subprocess (a torch import each)
@pytest.mark.parametrize("argv, message", [
    (["--sweep", "loss.ssim_weight="], "no values after '='"),
    (["--sweep", "loss.ssim_weight=0.1,,0.2"], "empty value at position 2"),
    (["--set", "optim.lr=inf"], "optim.lr = inf: must be a finite number"),
    (["--stop-at", "-3"], "--stop-at -3: expected a step >= 1"),
    (["--set", "run.device=cuda"], "run.device = 'cuda', but no CUDA GPU is available"),
])
def test_cli_loopholes_are_one_line_errors(argv, message, tmp_path):
    if "cuda" in message and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    r = _cli("--preset", "pretrain", "--set", f"run.out_dir={json.dumps(str(tmp_path))}", *argv)
    assert r.returncode == 2
    assert message in r.stderr and "Traceback" not in r.stderr
    assert not any(tmp_path.iterdir())  # nothing written


@pytest.mark.slow  # starts python -m train in a subprocess (a torch import each)
def test_cli_unwritable_out_dir_and_second_process(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    r = _cli("--preset", "pretrain", "--set", f"run.out_dir={json.dumps(str(blocker / 'runs'))}")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "cannot create or lock" in r.stderr and "choose a writable run.out_dir" in r.stderr


@pytest.mark.slow  # starts python -m train in a subprocess (a torch import each)
def test_cli_failed_start_leaves_no_run_directory(tmp_path):
    r = _cli("--preset", "ssim_v3", "--set", f"run.out_dir={json.dumps(str(tmp_path))}",
             "--set", f"init.from={json.dumps(str(tmp_path / 'missing'))}")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert not [p for p in tmp_path.iterdir() if p.is_dir()]


def test_write_error_during_training_is_one_line(tmp_path, monkeypatch, capsys):
    import errno

    from train import __main__ as cli

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "x"))

    monkeypatch.setattr("train.loop.train", full)

    class FakeTask:
        def __init__(self, *a, **k):
            pass

    monkeypatch.setattr("medq.training.task.MiniBagelTask", FakeTask)
    cfg = tiny_cfg(tmp_path)
    args = cli.build_parser().parse_args(["--no-progress"])
    from medq.dist import Dist

    assert cli._train(cfg, args, torch.device("cpu"), Dist()) == 2
    err = capsys.readouterr().err
    assert "No space left on device" in err and "run the same command again" in err


def test_truncated_init_checkpoint_is_one_line_naming_the_file(tmp_path, capsys):
    from safetensors.torch import save_file

    from train.__main__ import main

    init = tmp_path / "init" / "step_000010"
    init.mkdir(parents=True)
    save_file({"w": torch.zeros(1000)}, str(init / "ema.safetensors"))
    data = (init / "ema.safetensors").read_bytes()
    (init / "ema.safetensors").write_bytes(data[:500])
    (init / "arch.json").write_text("{}")
    (init / "state.json").write_text('{"step": 10}')
    line = refusal(main, ["--preset", "ssim_v3", "--no-progress",
                          "--set", f"run.out_dir={json.dumps(str(tmp_path / 'runs'))}",
                          "--set", f"init.from={json.dumps(str(init))}"], capsys)
    assert f"{init / 'ema.safetensors'}: unreadable" in line and "truncated" in line
    assert not list((tmp_path / "runs").glob("*"))  # the failed start left no run directory
