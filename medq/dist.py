"""torch.distributed for every stage: process group set-up, rank and world, gathering, gradient
averaging, agreement; the device and autocast choice of a process. One set of helpers for the
trainer (``train/``), the inference harness (``medq.harness``) and ``bench eval``: each asks
``current()`` which process group it runs in (a single process is ``Dist()``, rank 0 of 1).

Under ``torchrun`` (``WORLD_SIZE`` > 1) the group uses NCCL on CUDA and gloo on CPU. Gradients are
averaged with one flattened all-reduce per step instead of wrapping the model in
DistributedDataParallel: the training forward calls several of the model's methods (not only
``forward``), which DDP's hooks do not follow, and a plain all-reduce gives the same update.
With ``run.fsdp`` the model is sharded instead (``train.fsdp``) and FSDP averages the gradients.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as tdist
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1


def current() -> Dist:
    """The process group this process has joined (whoever initialised it), or ``Dist()``."""
    if tdist.is_available() and tdist.is_initialized():
        return Dist(
            tdist.get_rank(), tdist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0"))
        )
    return Dist()


def init_dist(device: torch.device) -> Dist:
    """Join the process group torchrun describes; a single process gets ``Dist()``."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    if device.type == "cuda":
        torch.cuda.set_device(device)  # NCCL binds each process to its own GPU
    if not tdist.is_initialized():
        tdist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Dist(tdist.get_rank(), tdist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


class DeviceError(ValueError):
    """``run.device`` names a device this machine does not have."""


def pick_device(spec: str) -> torch.device:
    """``run.device`` -> torch.device; ``auto`` is CUDA (this process's local rank) when present.
    Raises DeviceError for a CUDA device without a usable GPU, or a device name torch rejects."""
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if spec == "auto":
        return torch.device("cuda", local) if torch.cuda.is_available() else torch.device("cpu")
    try:
        device = torch.device("cuda", local) if spec == "cuda" else torch.device(spec)
    except RuntimeError as e:
        raise DeviceError(f"run.device = {spec!r}: not a device name ({e}); use auto, cpu or "
                          f"cuda[:N]") from None
    if device.type not in ("cpu", "cuda", "mps"):
        # meta holds no data and the others need backends this project is not built for
        raise DeviceError(f"run.device = {spec!r}: a {device.type} device cannot run this "
                          f"project; use auto, cpu or cuda[:N]")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise DeviceError(f"run.device = {spec!r}, but no Apple GPU is available here "
                          f"(torch.backends.mps.is_available() is False); use run.device=auto or "
                          f"cpu")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"run.device = {spec!r}, but no CUDA GPU is available here "
                          f"(torch.cuda.is_available() is False); use run.device=auto or cpu")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise DeviceError(f"run.device = {spec!r}: this machine has {torch.cuda.device_count()} "
                          f"CUDA device(s)")
    return device


def broadcast_parameters(module: torch.nn.Module, d: Dist) -> None:
    """Start every rank from rank 0's weights (they already agree when seeded; this makes it so)."""
    if not d.active:
        return
    for t in list(module.parameters()) + list(module.buffers()):
        tdist.broadcast(t.data, src=0)


def average_gradients(params: list[torch.Tensor], d: Dist) -> None:
    """All-reduce and average the gradients of ``params`` (missing grads count as zeros)."""
    if not d.active:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = _flatten_dense_tensors(grads)
    tdist.all_reduce(flat)
    flat /= d.world
    for p, g in zip(params, _unflatten_dense_tensors(flat, grads)):
        if p.grad is None:
            p.grad = g
        else:
            p.grad.copy_(g)


def all_true(flag: bool, d: Dist, device: torch.device) -> bool:
    """True only if ``flag`` holds on every rank (e.g. 'this step is finite')."""
    if not d.active:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    tdist.all_reduce(t, op=tdist.ReduceOp.MIN)
    return bool(t.item() > 0)


def barrier(d: Dist) -> None:
    if d.active:
        tdist.barrier()


def shutdown_group(wait: bool = False) -> None:
    """Leave the process group. ``wait``: every rank first waits for the others (after a
    successful run: a rank that destroyed its gloo group while another still finished its last
    writes was once killed by SIGABRT, "terminate called without an active exception", after a
    complete FSDP run). Never on an error path, where another rank may never arrive."""
    if tdist.is_available() and tdist.is_initialized():
        if wait:
            tdist.barrier()
        tdist.destroy_process_group()


def gather(obj, d: Dist) -> list:
    """``obj`` of every rank, in rank order (a one-element list in a single process)."""
    if not d.active:
        return [obj]
    out = [None] * d.world
    tdist.all_gather_object(out, obj)
    return out


def autocast(amp: str, device: torch.device):
    """The autocast context of ``optim.amp``: auto = bf16 only on CUDA that runs it natively (CPU
    bf16 autocast is slower than float32); bf16 = always; off = never."""
    on = amp == "bf16" or (
        amp == "auto" and device.type == "cuda" and torch.cuda.is_bf16_supported()
    )
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=on)
