"""medq.checkpoint: atomic directories, the latest pointer, kill during a save, init resolution."""

from __future__ import annotations

import hashlib
import json
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from fakes.training import write_file
from medq.checkpoint import (
    clean_temp,
    fingerprint,
    finished_runs,
    latest_checkpoint,
    list_checkpoints,
    read_state,
    resolve_init,
    save_checkpoint,
    write_run_json,
)

REPO = Path(__file__).resolve().parents[1]


def test_save_is_complete_and_pointer_moves(tmp_path):
    root = tmp_path / "checkpoints"
    c1 = save_checkpoint(root, 1, {"a": write_file("a.txt", "one")}, {"x": 1})
    assert c1.name == "step_000001" and (c1 / "a.txt").read_text() == "one"
    assert read_state(c1) == {"x": 1, "step": 1, "content_hashes": "sha256.json"}
    recorded = json.loads((c1 / "sha256.json").read_text())["sha256"]
    assert recorded == {name: hashlib.sha256((c1 / name).read_bytes()).hexdigest()
                        for name in ("a.txt", "state.json")}
    c2 = save_checkpoint(root, 2, {"a": write_file("a.txt", "two")}, {})
    assert (root / "latest").read_text().strip() == "step_000002"
    assert latest_checkpoint(root) == c2
    assert [p.name for p in list_checkpoints(root)] == ["step_000001", "step_000002"]
    assert not [p for p in root.iterdir() if p.name.startswith(".tmp-")]


def test_failed_writer_leaves_no_directory(tmp_path):
    root = tmp_path / "checkpoints"
    save_checkpoint(root, 1, {"a": write_file("a.txt", "one")}, {})

    def broken(d: Path):
        (d / "half.bin").write_bytes(b"xx")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(root, 2, {"b": broken}, {})
    assert latest_checkpoint(root).name == "step_000001"
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step_000001"]


def test_resave_of_an_existing_step_replaces_it(tmp_path):
    root = tmp_path / "checkpoints"
    save_checkpoint(root, 3, {"a": write_file("a.txt", "old")}, {})
    save_checkpoint(root, 3, {"a": write_file("a.txt", "new")}, {})
    assert (latest_checkpoint(root) / "a.txt").read_text() == "new"


def test_sigkill_during_save_never_exposes_the_half_written_checkpoint(tmp_path):
    root = tmp_path / "checkpoints"
    script = textwrap.dedent(f"""
        import os, sys
        from pathlib import Path
        sys.path.insert(0, {str(REPO)!r})
        import torch
        from safetensors.torch import save_file
        from medq.checkpoint import save_checkpoint
        root = Path({str(root)!r})
        def weights(value):
            return lambda d: save_file({{"w": torch.full((4,), float(value))}},
                                       str(d / "model.safetensors"))
        def marker(d):
            (d / "second.txt").write_text("second file")
        save_checkpoint(root, 1, {{"model": weights(1)}}, {{}})
        os.environ["MEDQ_TEST_SLOW_SAVE"] = "30"   # sleep after each file: the kill lands mid-save
        print("saving", flush=True)
        save_checkpoint(root, 2, {{"model": weights(2), "marker": marker}}, {{}})
        print("survived", flush=True)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "saving"
        deadline = time.monotonic() + 60
        tmp_dirs = []
        while time.monotonic() < deadline:
            tmp_dirs = [
                p for p in root.glob(".tmp-step_000002-*") if (p / "model.safetensors").exists()
            ]
            if tmp_dirs:
                break
            time.sleep(0.05)
        assert tmp_dirs, "the second save never started"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    # The half-written directory exists but is invisible to loading ...
    assert list(root.glob(".tmp-step_000002-*"))
    ckpt = latest_checkpoint(root)
    assert ckpt.name == "step_000001"
    from safetensors.torch import load_file
    assert load_file(str(ckpt / "model.safetensors"))["w"].tolist() == [1.0] * 4
    assert [p.name for p in list_checkpoints(root)] == ["step_000001"]
    # ... and cleaned at the next start.
    removed = clean_temp(root)
    assert removed and not list(root.glob(".tmp-*"))


def test_pointer_to_missing_dir_falls_back_to_newest_complete(tmp_path):
    root = tmp_path / "checkpoints"
    save_checkpoint(root, 1, {}, {})
    save_checkpoint(root, 2, {}, {})
    (root / "latest").write_text("step_000009\n")
    assert latest_checkpoint(root).name == "step_000002"
    (root / "step_000002" / "state.json").unlink()  # incomplete: never chosen
    assert latest_checkpoint(root).name == "step_000001"


def make_run(out: Path, preset: str, tag: str, status: str) -> Path:
    run = out / f"{preset}-{tag}"
    save_checkpoint(run / "checkpoints", 5, {}, {})
    write_run_json(run, preset=preset, hash_=tag, status=status, step=5)
    return run


def test_resolve_init_checkpoint_run_and_preset(tmp_path):
    out = tmp_path / "runs"
    unfinished = make_run(out, "pretrain", "aaaaaaaa", "running")
    with pytest.raises(FileNotFoundError) as e:
        resolve_init("pretrain", out)
    msg = str(e.value)
    assert "no finished run of preset 'pretrain'" in msg
    assert "python -m train --preset pretrain" in msg and "make check-weights" in msg
    old = make_run(out, "pretrain", "bbbbbbbb", "finished")
    time.sleep(0.02)
    new = make_run(out, "pretrain", "cccccccc", "finished")
    assert finished_runs(out, "pretrain") == [new, old]
    assert resolve_init("pretrain", out) == new / "checkpoints" / "step_000005"
    assert resolve_init(str(unfinished), out) == unfinished / "checkpoints" / "step_000005"
    ckpt = old / "checkpoints" / "step_000005"
    assert resolve_init(str(ckpt), out) == ckpt
    with pytest.raises(FileNotFoundError, match="no such checkpoint or run directory"):
        resolve_init(str(tmp_path / "nope" / "x"), out)
    with pytest.raises(FileNotFoundError, match="neither a checkpoint directory"):
        resolve_init(str(tmp_path), out)


def test_fingerprint_sees_values_and_names():
    a = {"w": torch.zeros(2, 2), "b": torch.ones(2)}
    assert fingerprint(a) == fingerprint({k: v.clone() for k, v in a.items()})
    assert fingerprint(a) != fingerprint({"w": torch.zeros(2, 2), "b": torch.tensor([1.0, 2.0])})
    assert fingerprint(a) != fingerprint({"v": torch.zeros(2, 2), "b": torch.ones(2)})
    assert fingerprint({"s": torch.tensor(1.0)})  # 0-d tensors hash too


def test_perf_checkpoint_prints_save_and_verify_times_with_the_machine(tmp_path, capsys):
    from bench.__main__ import main

    assert main(["perf", "checkpoint", "--sizes-mb", "1", "--repeats", "1", "--dir",
                 str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("machine: ") and "save ms" in lines[1]
    size, *times = (float(x) for x in lines[2].split())
    assert 0.9 < size < 1.1 and all(t > 0 for t in times) and times[1] <= times[0]
    assert list(tmp_path.iterdir()) == []               # its checkpoints were temporary
    with pytest.raises(SystemExit):
        main(["perf", "checkpoint", "--sizes-mb", "0"])
    assert "--sizes-mb must be 1..4096" in capsys.readouterr().err
