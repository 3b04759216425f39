"""The training loop: one visible loop, the same order every iteration.

    result = train(cfg, task)            # resumes from checkpoints/latest when there is one

Each iteration: (1) log the averages since the last log, (2) validate + collapse monitor,
(3) save the state, (4) stop if done, (5) one optimisation step. Everything model-specific (data,
forward, losses, validation, weight files) is the ``task`` (``medq.training.task.MiniBagelTask``;
the tests
use a tiny module), so this file stays the whole story of a step.

A step: losses under autocast -> gradient probe (every run.probe_every steps, before backward,
since it differentiates each term separately) -> backward -> average gradients across ranks ->
clip -> if loss and gradient are finite on every rank: AdamW step + EMA update, else skip and count
-> learning-rate schedule.

With ``run.fsdp`` under torchrun the model is sharded (``train.fsdp``) after its weights are loaded
and before the optimizer and EMA are made: the backward then averages the gradients itself
(reduce-scatter), validation runs on every rank, and checkpoints and the end-of-run fingerprint
are gathered into full tensors, the same files as without FSDP.
"""

from __future__ import annotations

import logging
import math
import random
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Iterator, Protocol

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from medq.checkpoint import (
    LATEST,
    CheckpointError,
    apply_retention,
    clean_temp,
    fingerprint,
    last_good_checkpoint,
    latest_checkpoint,
    point_latest,
    read_run_json,
    read_state,
    save_checkpoint,
    set_aside_newer,
    update_best,
    usable_checkpoint,
    write_run_json,
)
from medq.config import Config, dump_toml
from medq.dist import Dist, all_true, autocast, average_gradients, barrier, gather
from medq.ema import EMA
from medq.run_lock import run_lock
from medq.schedule import warmup_cosine
from train.fsdp import (
    FullTensors,
    full_optimizer_state,
    full_state,
    full_tensor,
    load_full_optimizer_state,
    reshard,
    shard_model,
)
from train.logger import Logger
from train.monitors import NonFiniteError, NonFiniteGuard, collapse_warnings, probe_gradients

log = logging.getLogger("train")


class Task(Protocol):
    """What the loop needs of a model + data. ``model`` holds the trainable parameters."""

    model: torch.nn.Module
    device: torch.device

    def train_batches(self, start_step: int) -> Iterator[dict]: ...
    def losses(self, batch: dict, generator: torch.Generator
               ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]: ...
    def validate(self, model: torch.nn.Module) -> dict[str, float]: ...
    def save_model(self, directory: Path) -> None: ...
    # Under run.fsdp the loop calls save_model(directory, state) with the gathered full weights
    # (the model's own state dict holds shards); model.blocks, when present, are the FSDP units.
    def load_model(self, checkpoint: Path) -> None: ...


def train(cfg: Config, task: Task, *, dist: Dist = Dist(), resume: bool = True,
          stop_at: int | None = None, progress: bool = True) -> dict:
    """Train ``task.model`` as ``cfg`` says; return {"status", "step", "checkpoint", ...}.

    ``stop_at`` ends the process after that step with a checkpoint (status stays 'running'; the
    next call resumes). Raises NonFiniteError after run.max_nonfinite non-finite steps in a row
    (``latest`` then names the last good checkpoint), RunLockedError when another process holds
    the run directory, CheckpointError when the run has history but no usable checkpoint."""
    if not dist.is_main:  # rank 0 holds the run directory's lock for all ranks
        return _train(cfg, task, dist, resume, stop_at, progress)
    with run_lock(cfg.run_dir):
        return _train(cfg, task, dist, resume, stop_at, progress)


# Files every training checkpoint has (the task may write more, e.g. arch.json).
CHECKPOINT_FILES = ("model.safetensors", "ema.safetensors", "optim.pt")


def _resume_point(cfg: Config, ckpt_root: Path, dist: Dist) -> Path | None:
    """The checkpoint to resume from: the newest one whose files are intact (a broken newest one
    is moved aside with a warning naming the file). None for a new run; CheckpointError when the
    run has history (a ``latest`` pointer, run.json past step 0, a broken checkpoint) but nothing
    usable is left: restarting at step 0 would silently rewrite logs/metrics.csv."""
    if not dist.is_main:
        barrier(dist)
        return latest_checkpoint(ckpt_root)
    try:
        ckpt, broken = usable_checkpoint(ckpt_root, CHECKPOINT_FILES)
        info = read_run_json(cfg.run_dir) or {}
        if ckpt is None and (broken or (ckpt_root / LATEST).exists() or info.get("step", 0) > 0):
            raise CheckpointError(
                f"{cfg.run_dir}: the run reached step {info.get('step', '?')} but no usable "
                f"checkpoint is left in {ckpt_root}" + (f" ({broken[-1]})" if broken else "")
                + "; starting over would rewrite its metrics history: move the run directory "
                "away to train anew")
        if ckpt is not None:
            set_aside_newer(ckpt_root, ckpt)  # their metrics rows are about to be rewritten
            if broken:
                point_latest(ckpt_root, ckpt)  # every reader (other ranks, eval) agrees on it
    finally:
        barrier(dist)  # the other ranks read `latest` only after rank 0 has settled it
    return ckpt


def _train(cfg: Config, task: Task, dist: Dist, resume: bool, stop_at: int | None,
           progress: bool) -> dict:
    o, r = cfg.optim, cfg.run
    ckpt_root = cfg.run_dir / "checkpoints"
    state, params, latest, start = _prepare(cfg, task, dist, resume, ckpt_root)
    if dist.is_main:
        write_run_json(cfg.run_dir, preset=r.preset, hash_=cfg.hash, status="running", step=start)
    logger = Logger(cfg.run_dir / "logs", enabled=dist.is_main, start_step=start)
    batches = task.train_batches(start)
    bar = tqdm(initial=start, total=o.max_steps, disable=not (progress and dist.is_main),
               desc=cfg.run_name, dynamic_ncols=True)
    step, status, ckpt, t_last, n_last = start, "running", None, time.perf_counter(), start
    try:
        while True:
            done = step >= o.max_steps or (stop_at is not None and step >= stop_at)
            fresh = step > start
            if fresh and (step % r.log_every == 0 or done):                         # 1. log
                now = time.perf_counter()
                logger.log("time/steps_per_s", (step - n_last) / max(now - t_last, 1e-9))
                logger.flush(step)
                t_last, n_last = now, step
            val = None
            if fresh and (step % r.val_every == 0 or done):                         # 2. validate
                val, collapsed = _validate(state, cfg, step, logger)
                if collapsed:
                    status, done = "collapsed", True
            if fresh and (step % r.ckpt_every == 0 or done):                        # 3. save
                ckpt = state.save(cfg, step, ckpt_root, val)
            if done:                                                                # 4. done?
                break
            terms = _step(state, cfg, next(batches), step, params, logger)          # 5. step
            step += 1
            logger.log("train/skipped", state.guard.skipped)
            bar.update(1)
            bar.set_postfix(
                {k: f"{float(v.detach()):.4g}" for k, v in terms.items()}, refresh=False
            )
    finally:
        logger.flush(step + 1)  # what an abort leaves unflushed: the losses of the failed step
        bar.close()
        logger.close()
    if status == "running" and step >= o.max_steps:
        status = "finished"
    final = state.fingerprint()
    ranks = gather(final, dist)
    if len(set(ranks)) > 1:  # averaged gradients and one seed keep them equal; else it is a bug
        raise RuntimeError(f"ranks diverged: weight fingerprints {ranks} at step {step}")
    if dist.is_main:
        write_run_json(cfg.run_dir, preset=r.preset, hash_=cfg.hash, status=status, step=step)
    barrier(dist)
    return {"status": status, "step": step, "skipped": state.guard.skipped,
            "run_dir": cfg.run_dir, "checkpoint": ckpt or latest_checkpoint(ckpt_root),
            "fingerprint": final, "last": dict(logger.last)}


def _prepare(cfg: Config, task: Task, dist: Dist, resume: bool, ckpt_root: Path
             ) -> tuple[TrainState, list[torch.Tensor], Path | None, int]:
    """Before the first step: the checkpoint to resume from (None: a new run) with its weights
    loaded, the model sharded (run.fsdp), optimizer, schedule, EMA, generator and guard made and
    restored. Returns (state, trainable parameters, resume checkpoint, its step or 0)."""
    o, r = cfg.optim, cfg.run
    model, device = task.model, task.device
    if dist.is_main:
        clean_temp(ckpt_root)
    barrier(dist)
    latest = _resume_point(cfg, ckpt_root, dist) if resume else None
    if latest is not None:
        try:
            task.load_model(latest)  # full weights, into the model before it is sharded (run.fsdp)
        except (OSError, ValueError, RuntimeError) as e:
            raise CheckpointError(f"{latest}: cannot load its weights ({type(e).__name__}: "
                                  f"{str(e).splitlines()[0] if str(e) else ''})") from None
    if r.fsdp and not dist.active:
        log.warning("run.fsdp = true ignored: a single process has nothing to shard across "
                    "(start with torchrun --nproc_per_node=N to use FSDP)")
    sharded = r.fsdp and dist.active
    if sharded:
        shard_model(model, dist)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=o.lr, betas=tuple(o.betas), weight_decay=o.weight_decay)
    state = TrainState(
        task=task, dist=dist, sharded=sharded, opt=opt,
        sched=torch.optim.lr_scheduler.LambdaLR(
            opt, partial(warmup_cosine, warmup_steps=o.warmup_steps, max_steps=o.max_steps)),
        ema=EMA(model, o.ema_decay, warmup=o.ema_warmup),
        gen=torch.Generator(device=device).manual_seed(r.seed * 1000 + dist.rank),
        guard=NonFiniteGuard(r.max_nonfinite))
    start = 0
    if latest is not None:
        try:
            start = state.restore(latest)
        except (OSError, ValueError, RuntimeError, KeyError, EOFError) as e:
            raise CheckpointError(f"{latest}: cannot restore the training state ({type(e).__name__}"
                                  f": {str(e).splitlines()[0] if str(e) else ''})") from None
        log.info("resumed from %s (step %d)", latest, start)
    return state, params, latest, start


def _validate(state: TrainState, cfg: Config, step: int, logger: Logger
              ) -> tuple[dict[str, float], bool]:
    """Validation and the collapse monitor, logged; returns (values, whether to stop: a collapse
    warning on any rank with run.collapse_stop)."""
    dist = state.dist
    val = state.validate()
    warnings = collapse_warnings(val) if dist.is_main else []
    for w in warnings:
        log.warning("step %d: COLLAPSE MONITOR: %s", step, w)
    logger.write(step, {**val, "collapse/warning": float(bool(warnings))})
    stop = not all_true(not (warnings and cfg.run.collapse_stop), dist, state.task.device)
    return val, stop


def _step(state: TrainState, cfg: Config, batch: dict, step: int,
          params: list[torch.Tensor], logger: Logger) -> dict[str, torch.Tensor]:
    """One optimisation step on ``batch`` (the module docstring's order); returns the loss terms.
    On a non-finite abort ``latest`` is pointed at the last good checkpoint first."""
    o, task, dist = cfg.optim, state.task, state.dist
    model, device = task.model, task.device
    model.train()
    with autocast(o.amp, device):
        terms, activations = task.losses(batch, state.gen)
    if (step + 1) % cfg.run.probe_every == 0:
        logger.log_dict(probe_gradients(terms, activations, cfg.loss))
    state.opt.zero_grad(set_to_none=True)
    terms["total"].backward()
    state.average_gradients(params)
    grad_norm = torch.nn.utils.clip_grad_norm_(
        params, o.grad_clip if o.grad_clip > 0 else math.inf
    )
    grad_norm = full_tensor(grad_norm)  # under FSDP a DTensor; the global norm either way
    finite = all_true(
        bool(torch.isfinite(terms["total"].detach()) & torch.isfinite(grad_norm)),
        dist,
        device,
    )
    logger.log_dict({f"loss/{k}": v for k, v in terms.items()})
    logger.log_dict({"train/lr": state.sched.get_last_lr()[0], "train/grad_norm": grad_norm})
    try:
        applied = state.guard(finite, step + 1, float(terms["total"].detach()), float(grad_norm))
    except NonFiniteError:
        if dist.is_main:
            _latest_to_last_good(cfg.run_dir / "checkpoints")
        raise
    if applied:
        state.opt.step()
        state.ema.update(model)
    state.sched.step()
    return terms


@dataclass
class TrainState:
    """Everything a step changes besides the model weights, and the one place that knows whether
    the model is FSDP-sharded (``run.fsdp`` under torchrun): what a checkpoint saves, a resume
    restores, and how gradients, validation and the final fingerprint treat the ranks.

    Under FSDP the weights, the EMA and the optimizer state are gathered into full tensors to be
    saved (every rank joins, rank 0 writes) and cut back into shards when loaded; the files are
    those of an unsharded run."""

    task: Task
    dist: Dist
    sharded: bool
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LRScheduler
    ema: EMA
    gen: torch.Generator
    guard: NonFiniteGuard

    def average_gradients(self, params: list[torch.Tensor]) -> None:
        """All-reduce and average the gradients across ranks; under FSDP the backward has
        reduce-scattered and averaged them already."""
        if not self.sharded:
            average_gradients(params, self.dist)

    def validate(self) -> dict[str, float]:
        """Validation on rank 0 only, isolated from the training RNG streams (resume stays exact).

        Under FSDP every rank validates and rank 0's results are returned: each forward
        all-gathers the parameters of each unit, a collective that every rank must join. The ranks
        see the same validation batches, seeds and gathered weights, so they compute the same
        values and take the same branches (e.g. where greedy report generation stops). The
        alternative, an unsharded copy on rank 0, would need the whole model on one device, which
        is what FSDP is there to avoid."""
        dist, task, model = self.dist, self.task, self.task.model
        if not (dist.is_main or self.sharded):
            return {}
        devices = [task.device] if task.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            model.eval()
            try:
                with torch.no_grad():
                    out = task.validate(model)
            finally:
                model.train()
                reshard(model)
        return out if dist.is_main else {}

    def fingerprint(self) -> str:
        """Of the full weights: under FSDP gathered tensor by tensor as the fingerprint reads
        them (a rank's shard would differ from the others' even when nothing went wrong)."""
        state = self.task.model.state_dict()
        return fingerprint(FullTensors(state) if self.sharded else state)

    def save(self, cfg: Config, step: int, ckpt_root: Path, val: dict | None) -> Path | None:
        """Rank 0 writes the checkpoint (every rank's RNG streams included); all ranks wait for
        it. Under FSDP every rank first takes part in gathering the full weights, EMA and
        optimizer state (collectives), which rank 0 alone keeps and writes."""
        task, dist, guard = self.task, self.dist, self.guard
        rngs = gather(_rng_state(self.gen), dist)
        ckpt = None
        if self.sharded:
            weights = full_state(task.model.state_dict(), dist)
            ema_state = full_state(self.ema.state_dict(task.model), dist)
            optim_state = full_optimizer_state(task.model, self.opt)
            save_weights = partial(task.save_model, state=weights)
        else:
            weights = task.model.state_dict()
            ema_state, optim_state = self.ema.state_dict(task.model), self.opt.state_dict()
            save_weights = task.save_model
        if dist.is_main:
            writers = {
                "model": save_weights,
                "ema": lambda d: save_file(ema_state, str(d / "ema.safetensors")),
                "optim": lambda d: torch.save({"optimizer": optim_state,
                                               "scheduler": self.sched.state_dict(),
                                               "rng": rngs}, d / "optim.pt"),
                "config": lambda d: (d / "config.toml").write_text(dump_toml(cfg)),
            }
        # "good": the last step was finite and so is every weight (a finite step at a huge lr can
        # still leave NaN or huge weights: NaN ones are caught here, the streak that follows by
        # the guard's count)
        good = guard.in_a_row == 0 and _all_finite(weights)
        if dist.is_main:
            state = {"preset": cfg.run.preset, "hash": cfg.hash, "world": dist.world,
                     "data_seed": cfg.run.seed, "good": good, **guard.state()}
            if val and "val/total" in val:
                state["val_total"] = val["val/total"]
            ckpt = save_checkpoint(ckpt_root, step, writers, state)
            if good and "val_total" in state and math.isfinite(state["val_total"]):
                update_best(ckpt_root, ckpt, state["val_total"])
            apply_retention(ckpt_root, cfg.run.keep_last)
            write_run_json(cfg.run_dir, preset=cfg.run.preset, hash_=cfg.hash, status="running",
                           step=step)
            log.info("saved %s%s", ckpt, "" if good else " (not good: inside a non-finite streak)")
        barrier(dist)
        return ckpt

    def restore(self, ckpt: Path) -> int:
        """Everything of ``ckpt`` but the model weights (loaded before the model was sharded);
        returns its step. The guard takes the checkpoint's counts, the EMA its warm-up position
        (one update per finite step)."""
        task, dist = self.task, self.dist
        self.ema.load_state_dict(load_file(str(ckpt / "ema.safetensors"), device=str(task.device)))
        # Our own file of optimizer moments, schedule and RNG states; weights_only keeps it
        # data-only.
        blob = torch.load(ckpt / "optim.pt", map_location=task.device, weights_only=True)
        if self.sharded:
            load_full_optimizer_state(task.model, self.opt, blob["optimizer"])
        else:
            self.opt.load_state_dict(blob["optimizer"])
        self.sched.load_state_dict(blob["scheduler"])
        if dist.rank < len(blob["rng"]):
            _set_rng_state(blob["rng"][dist.rank], self.gen)
        else:
            log.warning("%s has RNG states of %d ranks; rank %d starts fresh streams",
                        ckpt, len(blob["rng"]), dist.rank)
        state = read_state(ckpt)
        self.guard = NonFiniteGuard(self.guard.limit, state.get("skipped", 0),
                                    state.get("nonfinite_in_a_row", 0))
        self.ema.num_updates = state["step"] - self.guard.skipped
        return state["step"]


def _rng_state(gen: torch.Generator) -> dict:
    """Every RNG stream as plain Python values (bytes, lists), which gather and weights_only
    loading both accept."""
    name, keys, *rest = np.random.get_state()
    return {
        "torch": _bytes(torch.get_rng_state()),
        "generator": _bytes(gen.get_state()),
        "cuda": [_bytes(s) for s in torch.cuda.get_rng_state_all()]
        if torch.cuda.is_available()
        else [],
        "numpy": [name, keys.tolist(), *rest],
        "python": random.getstate(),
    }


def _bytes(t: torch.Tensor) -> bytes:
    return t.cpu().numpy().tobytes()


def _tensor(b: bytes) -> torch.Tensor:
    return torch.frombuffer(bytearray(b), dtype=torch.uint8)


def _set_rng_state(s: dict, gen: torch.Generator) -> None:
    torch.set_rng_state(_tensor(s["torch"]))
    gen.set_state(_tensor(s["generator"]))
    if s["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([_tensor(b) for b in s["cuda"]])
    name, keys, *rest = s["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), *rest))
    version, internal, gauss = s["python"]
    random.setstate((version, tuple(internal), gauss))


def _all_finite(state: dict[str, torch.Tensor]) -> bool:
    return all(bool(torch.isfinite(v).all()) for v in state.values() if v.is_floating_point())


def _latest_to_last_good(ckpt_root: Path) -> None:
    """On a non-finite abort: ``latest`` names the last good checkpoint, which inference, eval and
    init.from then use (the checkpoints saved inside the streak stay, marked not good)."""
    good = last_good_checkpoint(ckpt_root)
    if good is None:
        log.warning("non-finite abort: no checkpoint of this run is good (saved after a finite "
                    "step with finite weights)")
    elif good != latest_checkpoint(ckpt_root):
        point_latest(ckpt_root, good)
        log.warning("non-finite abort: %s now names the last good checkpoint %s",
                    ckpt_root / LATEST, good.name)
