"""A tiny training task for the loop and fault tests: ``train.loop.Task`` without medq.models or
medq.data.

    out = train(tiny_cfg(tmp_path), TinyTask(), progress=False)
    losses_by_step(out["run_dir"])              # {step: loss/total} from logs/metrics.csv
    save_checkpoint(root, 1, {"a": write_file("a.txt", "one")}, {})   # a one-file checkpoint
"""

from __future__ import annotations

import json
from itertools import count
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from medq.config import load_config
from train.logger import read_metrics


class TinyTask:
    """Noisy linear regression with dropout: uses the task generator and the global RNG, so an
    inexact resume (lost RNG, optimizer or data position) changes the losses."""

    def __init__(self, nan_steps: set[int] = frozenset()):
        torch.manual_seed(0)
        self.model = nn.Sequential(nn.Linear(3, 8), nn.Dropout(0.2), nn.Linear(8, 1))
        self.device = torch.device("cpu")
        self.nan_steps = nan_steps
        self.calls = 0
        self.seen_steps: list[int] = []

    def train_batches(self, start_step):
        for s in count(start_step):
            g = torch.Generator().manual_seed(1000 + s)
            x = torch.randn(4, 3, generator=g)
            self.seen_steps.append(s)
            yield {"x": x, "y": x.sum(1, keepdim=True), "step": s + 1}

    def losses(self, batch, generator):
        noise = 0.01 * torch.randn(batch["y"].shape, generator=generator)
        pred = self.model(batch["x"])
        mse = ((pred - batch["y"] - noise) ** 2).mean()
        if batch["step"] in self.nan_steps:
            mse = mse * float("nan")
        return {"mse": mse, "total": mse}, {"hidden": pred}

    def validate(self, model):
        x = torch.linspace(-1, 1, 12).reshape(4, 3)
        return {"val/total": float(((model(x) - x.sum(1, keepdim=True)) ** 2).mean())}

    def save_model(self, directory: Path):
        save_file({k: v.contiguous() for k, v in self.model.state_dict().items()},
                  str(directory / "model.safetensors"))

    def load_model(self, checkpoint: Path):
        self.model.load_state_dict(load_file(str(checkpoint / "model.safetensors")), strict=True)


def tiny_cfg(out_dir: Path, *extra: str):
    return load_config("pretrain", overrides=[
        f"run.out_dir={json.dumps(str(out_dir))}", "optim.max_steps=6", "optim.warmup_steps=2",
        "optim.lr=0.05", "run.log_every=1", "run.ckpt_every=3", "run.val_every=3",
        "run.probe_every=1000", "optim.ema_decay=0.9", *extra])


def losses_by_step(run_dir: Path) -> dict[int, float]:
    return read_metrics(run_dir / "logs" / "metrics.csv")["loss/total"]


def write_file(name: str, text: str):
    """A writer for ``medq.checkpoint.save_checkpoint`` (directory -> None) that writes ``text``
    into the file ``name``."""
    return lambda d: (d / name).write_text(text)
