"""The mini-BAGEL as the loop's task: data, frozen VAE, strict init, forward + composed losses,
validation with the collapse monitor, and the weight files of a checkpoint.

The VAE is always loaded (targets are encoded into latents); its decoder enters the training graph
only when ``cfg.loss.needs_vae`` (an image-space loss is on).
"""

from __future__ import annotations

import contextlib
import json
import logging
from pathlib import Path
from typing import Iterator

import torch
from safetensors.torch import load_file
from torch.utils.data import DataLoader

from medq.checkpoint import fingerprint, resolve_init
from medq.config import Config
from medq.dist import Dist, barrier, broadcast_parameters
from medq.training.data_order import batch_indices

log = logging.getLogger("train")

PROBE_IMAGES = 4
"""Validation images of the fixed collapse-monitor probe batch (text generation and images)."""
VAL_SEED = 1234
"""Seed of the timesteps and noise of the validation loss (the same every validation)."""


TILE_REPEATS = 16
"""Passes over the training images per epoch of tiles: each pass crops every image elsewhere."""


def training_sets(cfg: Config):
    """(train tiles, val tiles, val images) of ``cfg.data`` for ``cfg.model.tile_size``: random
    crops of the train split (with the development set's train photographs mixed in at
    ``data.mix_fraction``), one fixed crop per val item (the validation loss is comparable from
    one validation to the next), and the whole val items for the collapse probe."""
    import dataclasses

    from medq.data import build_dataset
    from medq.data.tiles import TrainTiles

    tile = cfg.model.tile_size
    train_images = build_dataset(cfg.data, "train")
    val_images = build_dataset(cfg.data, "val")
    real = []
    if cfg.data.mix_fraction > 0:
        for size in MIX_SIZES:
            mix = dataclasses.replace(cfg.data, source="drive", root=cfg.data.mix_root,
                                      split_file=cfg.data.mix_split, image_size=size,
                                      mix_fraction=0.0, mix_root="")
            real.append(build_dataset(mix, "train"))
    report = cfg.model.report_side
    train = TrainTiles(train_images, tile, cfg.run.seed, TILE_REPEATS, real,
                       cfg.data.mix_fraction, report_size=report)
    val = TrainTiles(val_images, tile, VAL_SEED, report_size=report)
    return train, val, val_images


MIX_SIZES = (256, 384, 512, 0)
"""Working sizes at which the development photographs are cut into training tiles (0: their own
size): the scales at which the model will meet real photographs."""


class _Batches:
    """An endless iterable of index lists, usable as a DataLoader ``batch_sampler``."""

    def __init__(self, order: Iterator[list[int]]):
        self.order = order

    def __iter__(self):
        return self.order


def to_device(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def init_model(cfg: Config, device: torch.device):
    """(model, tokenizer, init_info): random weights only when ``init.scratch``, otherwise the
    ``init.weights`` of the checkpoint ``init.from`` resolves to, loaded strictly: ``arch.json``
    must equal ``cfg.model``'s architecture and every key must be present with its shape and
    nothing unexpected, else ``CheckpointMismatchError`` lists the differences."""
    from medq import models as M

    if cfg.init.scratch:
        tokenizer = M.Tokenizer()
        model = M.MiniBagel(cfg.model, tokenizer.vocab_size)
        info = {"scratch": True, "weights": "random", "seed": cfg.run.seed,
                "fingerprint": fingerprint(model.state_dict())}
        return model.to(device), tokenizer, info
    ckpt = resolve_init(cfg.init.from_, Path(cfg.run.out_dir))
    file = "ema.safetensors" if cfg.init.weights == "ema" else "model.safetensors"
    model, tokenizer, report = M.load_model(ckpt, weights_file=file, expect_arch=cfg.model,
                                            tile_size=cfg.model.tile_size)
    info = {"scratch": False, "checkpoint": str(ckpt), "weights": report.weights,
            "fingerprint": report.fingerprint, "report": report.to_dict()}
    return model.to(device), tokenizer, info


def init_changed(run_dir: Path) -> str | None:
    """Why the weights a run started from (its ``init.json``: file and fingerprint) are not what
    that file holds now, or None (same weights, random init, or no record). A finished fine-tune of
    a base that was rebuilt since (``make weights``, a pulled commit) describes the old base; its
    config hash cannot tell, since the config names the directory, not its contents."""
    try:
        info = json.loads((Path(run_dir) / "init.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None
    report = info.get("report") or {}
    source, recorded = report.get("source"), report.get("fingerprint")
    if info.get("scratch") or not source or not recorded:
        return None
    if not Path(source).is_file():
        return f"it started from {source}, which no longer exists"
    try:
        now = fingerprint(load_file(source))
    except Exception as e:  # noqa: BLE001 - a damaged file is a reason too, named
        return f"it started from {source}, which cannot be read now ({type(e).__name__}: {e})"
    if now != recorded:
        return (f"it started from {source} with fingerprint {recorded}, and that file now holds "
                f"other weights (fingerprint {now})")
    return None


@contextlib.contextmanager
def shipped_weights_hint(spec: str):
    """Re-raise a load error of the shipped weights (``weights/``) with what to do about it: a
    missing, truncated or foreign file there is never a reason to start from random weights."""
    from medq.checkpoint import REBUILD, is_shipped
    from medq.models import CheckpointMismatchError

    try:
        yield
    except (FileNotFoundError, CheckpointMismatchError, ValueError) as e:
        if not is_shipped(spec):
            raise
        raise type(e)(f"{e}\n  {spec} is part of the shipped weights: restore it with "
                      f"`git checkout -- weights/` or rebuild it with {REBUILD}") from None


def _true_size(image: torch.Tensor, batch: dict, key: str, i: int) -> torch.Tensor:
    """Sample ``i``'s image (3, H, W) cropped to its size before collate's padding."""
    if key not in batch:
        return image
    h, w = (int(v) for v in batch[key][i])
    return image[:, :h, :w]


class MiniBagelTask:
    """``train.loop.Task`` for ``medq.models.MiniBagel``."""

    def __init__(
        self, cfg: Config, device: torch.device, dist: Dist = Dist(), write_init: bool = True
    ):
        from medq import models as M
        from medq.data import collate

        self.cfg, self.device, self.dist, self.collate = cfg, device, dist, collate
        with shipped_weights_hint(cfg.model.vae):
            self.vae = M.load_vae(cfg.model.vae).to(device).eval().requires_grad_(False)
        with shipped_weights_hint(cfg.init.from_):
            self.model, self.tokenizer, self.init_info = init_model(cfg, device)
        broadcast_parameters(self.model, dist)
        if dist.is_main and write_init:  # a measurement (``train probe``) leaves no run directory
            cfg.run_dir.mkdir(parents=True, exist_ok=True)
            (cfg.run_dir / "init.json").write_text(
                json.dumps(self.init_info, indent=1, default=str)
            )
        log.info(
            "init: %s weights%s, fingerprint %s",
            self.init_info["weights"],
            f" of {self.init_info['checkpoint']}" if not cfg.init.scratch else " (init.scratch)",
            self.init_info["fingerprint"],
        )
        # Rank 0 generates / caches the images first; the others then read the cache (two
        # processes writing one cache file would race).
        if not dist.is_main:
            barrier(dist)
        self.train_set, self.val_set, val_images = training_sets(cfg)
        if dist.is_main:
            barrier(dist)
        # The collapse probe generates whole images, tile by tile, as inference does.
        self.probe = self.collate([val_images[i]
                                   for i in range(min(PROBE_IMAGES, len(val_images)))])

    # -- training --------------------------------------------------------------------------

    def train_batches(self, start_step: int) -> Iterator[dict]:
        order = batch_indices(len(self.train_set), self.cfg.optim.batch_size, rank=self.dist.rank,
                              world=self.dist.world, seed=self.cfg.run.seed, start_step=start_step)
        # The order comes from batch_indices alone: worker processes only load, so the data
        # position after a resume does not depend on data.num_workers.
        loader = DataLoader(self.train_set, batch_sampler=_Batches(order), collate_fn=self.collate,
                            num_workers=self.cfg.data.num_workers)
        for batch in loader:
            yield to_device(batch, self.device)

    def _decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(z)

    def losses(self, batch: dict, generator: torch.Generator, validation: bool = False):
        from medq.losses import compose_losses
        from medq.models import training_forward

        fwd = training_forward(
            self.model,
            self.vae,
            self.tokenizer,
            batch,
            timestep_shift=self.cfg.loss.timestep_shift,
            generator=generator,
            instruction_dropout=0.0 if validation else self.cfg.loss.instruction_dropout,
            with_render_offset=self.cfg.loss.needs_vae,
        )
        decode = self._decode if self.cfg.loss.needs_vae else None
        out = compose_losses(self.cfg.loss, fwd, batch, decode)
        # Probe points: x0_hat (where the image losses enter; latent MSE does not pass through it),
        # v_hat (the prediction every image term and MSE reach: their ratios are comparable there)
        # and the backbone's last hidden state (what the corruption of v1 went through).
        return dict(out), {"x0_hat": out.x0_hat, "v_hat": fwd.v_hat, "hidden": fwd.hidden}

    # -- validation ------------------------------------------------------------------------

    def validate(self, model: torch.nn.Module) -> dict[str, float]:
        """Mean loss terms on the val split (fixed timesteps/noise) + the collapse monitor."""
        gen = torch.Generator(device=self.device).manual_seed(VAL_SEED)
        sums: dict[str, float] = {}
        n = 0
        bs = max(1, self.cfg.optim.batch_size // self.dist.world)
        for start in range(0, len(self.val_set), bs):
            items = [self.val_set[i] for i in range(start, min(start + bs, len(self.val_set)))]
            batch = to_device(self.collate(items), self.device)
            terms, _ = self.losses(batch, gen, validation=True)
            for k, v in terms.items():
                sums[k] = sums.get(k, 0.0) + float(v)
            n += 1
        out = {f"val/{k}": v / n for k, v in sums.items()}
        out.update(self.collapse_probe(model))
        return out

    def collapse_probe(self, model: torch.nn.Module) -> dict[str, float]:
        """Greedy report generation (undecodable-id rate) and image sanity on the fixed probe
        batch, measured as the inference harness measures a checkpoint (``medq.verdict``:
        ``image_checks`` against the target and the bicubic / identity reference), so the
        monitor and the harness's verdict apply the same rules."""
        from medq.data import REPORT_PROMPT
        from medq.models import MiniBagelAdapter
        from medq.models.forward import resize_bicubic
        from medq.verdict import image_checks, image_statistics

        adapter = MiniBagelAdapter(model, self.vae, self.tokenizer, self.cfg.sample)
        probe = to_device(self.probe, self.device)
        # Each image cropped to its true size: the probe mixes tasks, and a padded sr4 input
        # resized as a whole would be a wrong input, not a collapse.
        inputs = [
            _true_size(probe["input"][i], probe, "input_size", i) for i in range(len(probe["task"]))
        ]
        targets = [
            _true_size(probe["target"][i], probe, "target_size", i) for i in range(len(inputs))
        ]
        report_ids, checks = [], []
        for i, (inp, tgt) in enumerate(zip(inputs, targets)):
            # The model sees the degraded input, as in training; the harness's prompt, so that
            # this rate and the harness's agree.
            report_ids += adapter.generate_report(
                inp[None], [REPORT_PROMPT], seed=self.cfg.sample.seed
            )
            size = tuple(tgt.shape[-2:])
            out = adapter.edit(inp[None], [probe["instruction"][i]], [probe["task"][i]], size,
                               seed=self.cfg.sample.seed)[0]
            checks.append(image_checks(out, tgt, resize_bicubic(inp[None], size)[0]))
        decoded = [adapter.decode(x) for x in report_ids]
        n_tokens = sum(len(d.ids) for d in decoded)
        undecodable = sum(d.n_bad for d in decoded)
        stats = image_statistics(checks)
        out = {"collapse/undecodable_rate": undecodable / max(n_tokens, 1),
               "collapse/undecodable_tokens": float(undecodable)}
        for key in ("psnr", "psnr_gap_db", "ssim_ratio", "output_std_ratio", "nonfinite_frac"):
            if stats[key] is not None:
                out[f"collapse/{key}"] = float(stats[key])
        return out

    # -- weight files ----------------------------------------------------------------------

    def save_model(self, directory: Path, state: dict[str, torch.Tensor] | None = None) -> None:
        """model.safetensors (``state``, else the model's own weights), arch.json,
        tokenizer.json."""
        from medq.models import save_model

        save_model(self.model, self.tokenizer, directory, state=state)

    def load_model(self, checkpoint: Path) -> None:
        from medq.models import load_state_verified

        file = checkpoint / "model.safetensors"
        load_state_verified(self.model, load_file(str(file), device=str(self.device)),
                            source=str(file), weights="model")
