"""Two processes under torchrun on CPU (gloo): disjoint data shards, ranks in sync, rank 0
writes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from medq.training.data_order import batch_indices

REPO = Path(__file__).resolve().parents[1]

WORKER = textwrap.dedent("""
    import json, os, sys
    from pathlib import Path
    sys.path.insert(0, {repo!r})
    import torch
    from torch import nn
    from safetensors.torch import load_file, save_file
    from medq.config import load_config
    from medq.training.data_order import batch_indices
    from medq.dist import broadcast_parameters, init_dist, shutdown_group
    from train.loop import train

    torch.set_num_threads(1)
    out = Path({out!r})
    cfg = load_config("pretrain", overrides=[
        "run.out_dir=" + json.dumps(str(out / "runs")), "optim.max_steps=4", "optim.warmup_steps=1",
        "optim.batch_size=4", "run.log_every=1", "run.ckpt_every=2", "run.val_every=2",
        "run.probe_every=1000", "optim.lr=0.05"])
    dist = init_dist(torch.device("cpu"))
    X = torch.randn(24, 3, generator=torch.Generator().manual_seed(7))

    class IndexTask:
        def __init__(self):
            torch.manual_seed(100 + dist.rank)   # different on purpose: the broadcast must fix it
            self.model = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 1))
            broadcast_parameters(self.model, dist)
            self.device = torch.device("cpu")
            self.seen = []
        def train_batches(self, start_step):
            for idx in batch_indices(len(X), cfg.optim.batch_size, rank=dist.rank, world=dist.world,
                                     seed=cfg.run.seed, start_step=start_step):
                self.seen.append(idx)
                yield {{"x": X[idx]}}
        def losses(self, batch, generator):
            loss = ((self.model(batch["x"]) - batch["x"].sum(1, keepdim=True)) ** 2).mean()
            return {{"mse": loss, "total": loss}}, {{}}
        def validate(self, model):
            return {{"val/total": float(((model(X) - X.sum(1, keepdim=True)) ** 2).mean())}}
        def save_model(self, d):
            save_file(dict(self.model.state_dict()), str(d / "model.safetensors"))
        def load_model(self, ckpt):
            self.model.load_state_dict(load_file(str(ckpt / "model.safetensors")))

    task = IndexTask()
    result = train(cfg, task, dist=dist, progress=False)
    (out / f"rank{{dist.rank}}.json").write_text(json.dumps({{
        "fingerprint": result["fingerprint"], "seen": task.seen, "world": dist.world,
        "status": result["status"]}}))
    shutdown_group()
""")


def test_batch_indices_are_disjoint_across_ranks_and_resumable():
    a = batch_indices(24, 4, rank=0, world=2, seed=3)
    b = batch_indices(24, 4, rank=1, world=2, seed=3)
    first_a = [next(a) for _ in range(6)]  # one epoch = 6 batches of 2 per rank
    first_b = [next(b) for _ in range(6)]
    flat_a = {i for batch in first_a for i in batch}
    flat_b = {i for batch in first_b for i in batch}
    assert not flat_a & flat_b and flat_a | flat_b == set(range(24))
    resumed = batch_indices(24, 4, rank=0, world=2, seed=3, start_step=4)
    assert [next(resumed) for _ in range(2)] == first_a[4:6]
    assert next(resumed) == next(a)  # into the next epoch the same way
    with pytest.raises(ValueError, match="divisible by the number of processes"):
        next(batch_indices(24, 3, rank=0, world=2, seed=0))
    with pytest.raises(ValueError, match="raise data.num_images"):
        next(batch_indices(5, 8, rank=0, world=1, seed=0))


@pytest.mark.slow
def test_torchrun_two_ranks_on_cpu(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER.format(repo=str(REPO), out=str(tmp_path)))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=0",
         "--rdzv_backend=c10d", "--rdzv_endpoint=localhost:0", str(script)],
        env=env, capture_output=True, text=True, timeout=150)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0 = json.loads((tmp_path / "rank0.json").read_text())
    r1 = json.loads((tmp_path / "rank1.json").read_text())
    assert r0["world"] == r1["world"] == 2 and r0["status"] == r1["status"] == "finished"
    assert r0["fingerprint"] == r1["fingerprint"]  # gradients averaged: equal weights after 4 steps
    seen0 = {i for b in r0["seen"] for i in b}
    seen1 = {i for b in r1["seen"] for i in b}
    assert not seen0 & seen1 and len(r0["seen"]) == len(r1["seen"]) == 4
    runs = list((tmp_path / "runs").iterdir())
    assert len(runs) == 1
    ckpts = runs[0] / "checkpoints"
    assert (ckpts / "latest").read_text().strip() == "step_000004"
    # Only rank 0 wrote: one metrics file, no leftovers from a second writer.
    assert sorted(p.name for p in (runs[0] / "logs").iterdir()) == ["metrics.csv", "tb"]
    state = json.loads((ckpts / "step_000004" / "state.json").read_text())
    assert state["world"] == 2
    import torch
    rng = torch.load(ckpts / "step_000004" / "optim.pt", weights_only=True)["rng"]
    assert len(rng) == 2  # every rank's RNG streams, for an exact resume


def _launch_trainer(overrides: list[str], *extra: str) -> subprocess.CompletedProcess:
    """``torchrun --nproc_per_node=2 -m train --preset pretrain`` with ``--set`` overrides."""
    args = [a for o in overrides for a in ("--set", o)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--rdzv_backend=c10d",
         "--rdzv_endpoint=localhost:0", "-m", "train", "--preset", "pretrain", "--no-progress",
         *args, *extra],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=150,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("run directory:") == 1  # rank 0 alone prints and writes
    return proc


@pytest.fixture(scope="module")
def tiny_trainer(tmp_path_factory, tiny_overrides):
    """The tiny config (``configs/tiny.toml``, its VAE) and one finished 4-step DDP run of the real
    trainer on it (shared: the FSDP test compares its weights with this run's)."""
    from medq.config import load_config

    root = tmp_path_factory.mktemp("tiny_trainer")
    common = tiny_overrides + [f"data.cache_dir={json.dumps(str(root / 'cache'))}"]
    ddp = common + [f"run.out_dir={json.dumps(str(root / 'ddp'))}"]
    _launch_trainer(ddp)
    return {"root": root, "common": common, "ddp": load_config("pretrain", overrides=ddp)}


@pytest.mark.slow
def test_torchrun_real_trainer_two_ranks(tiny_trainer):
    """``torchrun -m train`` on the tiny mini-BAGEL: finishes, ranks end with equal weights (the
    trainer compares their fingerprints at the end and fails otherwise), only rank 0 writes."""
    cfg = tiny_trainer["ddp"]
    assert json.loads((cfg.run_dir / "run.json").read_text())["status"] == "finished"
    state = json.loads((cfg.run_dir / "checkpoints" / "step_000004" / "state.json").read_text())
    assert state["world"] == 2
    assert sorted(p.name for p in (cfg.run_dir / "logs").iterdir()) == ["metrics.csv", "tb"]


@pytest.mark.slow
def test_torchrun_real_trainer_fsdp_matches_ddp_and_resumes(tiny_trainer):
    """``run.fsdp=true``: stopped after step 2 and run again, it finishes; only rank 0 writes; the
    checkpoint holds full tensors in the unsharded format (the inference loader and a plain AdamW
    read it) and equals the DDP run's up to float rounding: same seed, same data."""
    import torch
    from safetensors.torch import load_file

    from medq.config import load_config
    from medq.models import load_model
    from train.logger import read_metrics

    overrides = tiny_trainer["common"] + [
        f"run.out_dir={json.dumps(str(tiny_trainer['root'] / 'fsdp'))}", "run.fsdp=true"]
    cfg, ddp = load_config("pretrain", overrides=overrides), tiny_trainer["ddp"]
    first = _launch_trainer(overrides, "--stop-at", "2")
    assert "FSDP: MiniBagel sharded over 2 ranks" in first.stderr
    assert json.loads((cfg.run_dir / "run.json").read_text()) == {
        "preset": "pretrain", "hash": cfg.hash, "status": "running", "step": 2}
    second = _launch_trainer(overrides)
    assert "resumed from" in second.stderr and "step_000002 (step 2)" in second.stderr
    assert json.loads((cfg.run_dir / "run.json").read_text())["status"] == "finished"
    ckpts = cfg.run_dir / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == [
        "best.json",
        "latest",
        "step_000002",
        "step_000004",
    ]  # no second writer's leftovers
    assert sorted(p.name for p in (cfg.run_dir / "logs").iterdir()) == ["metrics.csv", "tb"]
    assert json.loads((ckpts / "step_000004" / "state.json").read_text())["world"] == 2

    ours, theirs = ckpts / "step_000004", ddp.run_dir / "checkpoints" / "step_000004"
    for name in ("model.safetensors", "ema.safetensors"):
        a, b = load_file(str(ours / name)), load_file(str(theirs / name))
        assert {k: v.shape for k, v in a.items()} == {k: v.shape for k, v in b.items()}, name
        for k in a:
            torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=0, msg=f"{name} {k}")
    # The inference loader checks every key and full shape against a fresh (unsharded) MiniBagel.
    model, _, _ = load_model(ours, expect_arch=cfg.model)
    load_model(ours, weights_file="ema.safetensors", expect_arch=cfg.model)
    # A resume without FSDP reads the optimizer state as it is.
    opt = torch.optim.AdamW(model.parameters())
    saved = torch.load(ours / "optim.pt", weights_only=True)["optimizer"]
    opt.load_state_dict(saved)
    reference = torch.load(theirs / "optim.pt", weights_only=True)["optimizer"]
    assert saved["state"].keys() == reference["state"].keys()
    for i, s in saved["state"].items():
        for k, v in s.items():
            torch.testing.assert_close(v, reference["state"][i][k], atol=1e-5, rtol=0)

    ma = read_metrics(cfg.run_dir / "logs" / "metrics.csv")
    mb = read_metrics(ddp.run_dir / "logs" / "metrics.csv")
    assert sorted(ma["loss/total"]) == [1, 2, 3, 4]
    for key in ("loss/total", "train/grad_norm", "val/total", "probe/hidden/ce/norm"):
        for step, value in mb[key].items():
            assert abs(ma[key][step] - value) <= 1e-5 * max(1.0, abs(value)), (key, step)
