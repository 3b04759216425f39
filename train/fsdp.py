"""FSDP2 for the trainer (``run.fsdp``): sharding the model, and full tensors for checkpoints.

    shard_model(model, dist)                  # after the init weights are in, before the optimizer
    full_state(model.state_dict(), dist)      # rank 0: full CPU tensors; other ranks: {}
    full_optimizer_state(model, opt)          # rank 0: the format of an unsharded opt.state_dict()
    load_full_optimizer_state(model, opt, s)  # every rank: from that format, into the shards

Under FSDP each rank holds one dim-0 shard of every parameter (a ``DTensor``); a forward
all-gathers a unit's parameters and the backward reduce-scatters and averages its gradients.
Everything that leaves the process (checkpoint files, the end-of-run fingerprint) is made of full
tensors, gathered by every rank together (collectives) and kept by rank 0 only, so a checkpoint
written under FSDP is byte-for-byte the format of an unsharded run's: inference, ``init.from`` and
a resume without FSDP read it unchanged.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import torch
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_optimizer_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import FSDPModule, fully_shard
from torch.distributed.tensor import DTensor

from medq.dist import Dist

log = logging.getLogger("train")


def shard_model(model: torch.nn.Module, d: Dist) -> None:
    """Shard ``model`` in place over all ranks: each module of ``model.blocks`` (the transformer
    blocks of ``MiniBagel``) is its own unit, so one block's full weights exist at a time; the
    root unit holds the rest (embeddings, heads). Call it after the weights are loaded and
    identical on every rank, and before the optimizer and EMA are made of its parameters."""
    if not d.active:
        raise ValueError("shard_model: FSDP needs more than one process (start with torchrun)")
    name = type(model).__name__  # before fully_shard renames the class (FSDP<name>)
    device = next(model.parameters()).device
    mesh = init_device_mesh(device.type, (d.world,))
    blocks = list(getattr(model, "blocks", ()))
    for block in blocks:
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    log.info("FSDP: %s sharded over %d ranks (%d block units + the root unit)", name, d.world,
             len(blocks))


def is_sharded(model: torch.nn.Module) -> bool:
    return isinstance(model, FSDPModule)


def reshard(model: torch.nn.Module) -> None:
    """Free the gathered parameters a forward without backward left (the root unit keeps its
    gathered parameters after a forward, expecting the backward); state dicts and the EMA then see
    the sharded parameters again."""
    if is_sharded(model):
        model.reshard()


def full_tensor(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor of a DTensor (a collective: every rank must call it); others as they are."""
    return t.full_tensor() if isinstance(t, DTensor) else t


def full_state(state: dict[str, torch.Tensor], d: Dist) -> dict[str, torch.Tensor]:
    """Full CPU tensors of a (sharded) state dict on rank 0, ``{}`` on the others. Every rank must
    call it, with the same keys: each DTensor is all-gathered in turn, so one full tensor at a time
    is held besides the result."""
    out = {}
    for k, v in state.items():
        full = full_tensor(v).detach()
        if d.is_main:
            out[k] = full.cpu().contiguous()
    return out


class FullTensors(Mapping):
    """A read-only view of a sharded state dict whose values are gathered when read, one at a time
    (e.g. ``fingerprint(FullTensors(model.state_dict()))``, which reads keys in sorted order).
    Every rank must read the same keys in the same order."""

    def __init__(self, state: dict[str, torch.Tensor]):
        self.state = state

    def __getitem__(self, key: str) -> torch.Tensor:
        return full_tensor(self.state[key])

    def __iter__(self):
        return iter(self.state)

    def __len__(self) -> int:
        return len(self.state)


def full_optimizer_state(model: torch.nn.Module, opt: torch.optim.Optimizer) -> dict:
    """The optimizer state of the sharded ``model`` with full CPU tensors, on rank 0 (``{}`` on the
    others; every rank must call it). Returned in ``opt.state_dict()``'s own layout (integer
    parameter ids), which is what an unsharded run saves and loads."""
    state = get_optimizer_state_dict(model, opt, options=StateDictOptions(full_state_dict=True,
                                                                          cpu_offload=True))
    if not state:
        return {}
    # get_optimizer_state_dict keys the state by parameter name; the ids are the names' positions
    # in the param groups, in order, exactly as Optimizer.state_dict() numbers them.
    ids: dict[str, int] = {}
    groups = [{**g, "params": [ids.setdefault(name, len(ids)) for name in g["params"]]}
              for g in state["param_groups"]]
    return {"state": {ids[name]: s for name, s in state["state"].items()}, "param_groups": groups}


def load_full_optimizer_state(
    model: torch.nn.Module, opt: torch.optim.Optimizer, state: dict
) -> None:
    """Load an ``opt.state_dict()``-layout state with full tensors (every rank passes the same one)
    into the optimizer of the sharded ``model``: each rank keeps its shard."""
    names = {id(p): name for name, p in model.named_parameters()}
    order = [names[id(p)] for g in opt.param_groups for p in g["params"]]
    n_saved = sum(len(g["params"]) for g in state["param_groups"])
    if n_saved != len(order):
        raise ValueError(
            f"optimizer state holds {n_saved} parameters, the model trains {len(order)}"
        )
    by_name = {"state": {order[i]: s for i, s in state["state"].items()},
               "param_groups": [{**g, "params": [order[i] for i in g["params"]]}
                                for g in state["param_groups"]]}
    set_optimizer_state_dict(model, opt, by_name, options=StateDictOptions(full_state_dict=True))
