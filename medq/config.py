"""Typed configuration: one dataclass per concern, TOML presets, dotted overrides, a stable hash.

The dataclass defaults below ARE the ``control`` preset (a fine-tune of the base model, the shipped
``weights/base``, with CE + latent MSE and no image loss). A preset in ``configs/<name>.toml``
states only what differs from it; overlays such as ``configs/model/small.toml`` are applied the
same way. "Base" means one thing: the base model that every fine-tune starts from (``pretrain``
trains one; ``make check-weights`` verifies the shipped one). Every value lives in exactly one
place: derived values (``LossConfig.needs_vae``) are properties, never fields.

    cfg = load_config("ssim_v3", overrides=["loss.ssim_weight=0.2"])
    cfg.run_name        # 'ssim_v3-1a2b3c4d': preset + short hash of every value
    dump_toml(cfg)      # the resolved config, as written into the run directory

Errors name the key, the value and the rule (``ConfigError``); each section checks itself when
it is made, so ``LossConfig(ssim_weight=-1)`` is refused on its own.

The hash covers every value, defaults included: adding a field changes every run's hash, so a
run made before starts anew in another directory. ``python -m train`` then names the older run
of the same preset and the keys that differ (``older_runs``, ``config_changes``).
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import math
import re
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from medq.tasks import TASKS

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


class ConfigError(ValueError):
    """A configuration key, type or value is wrong; the message says which and why."""


# TOML and command-line names that are Python keywords.
_ALIASES = {"from": "from_"}
_UNALIASES = {v: k for k, v in _ALIASES.items()}

Task = Literal[TASKS]


def _check(cond: bool, key: str, value, rule: str) -> None:
    if not cond:
        raise ConfigError(f"{key} = {value!r}: {rule}")


FLOAT_LIMIT = 1e6
"""Largest magnitude of any float setting. No setting of this trainer means anything near it (the
presets' values are orders of magnitude below); beyond it a value is a typo (``1e9`` for ``1e-9``)
or an overflow, and inf / nan would train to non-finite outputs without an error."""
INT_RANGE = (-(2**63), 2**63 - 1)
"""Integer settings are 64-bit, as TOML's integers (Python's reader accepts any size)."""
SEED_RANGE = (0, 2**32 - 1)
"""Seeds (fields named ``seed`` or ``*_seed``): what every RNG the project seeds accepts (numpy's
legacy seeding stops at 2**32; torch's generators take 64 bits, and the trainer's generator seed
is ``run.seed * 1000 + rank``)."""


def _check_number(typ, value, key: str) -> None:
    """The generic range of every float and int setting (``FLOAT_LIMIT``, ``INT_RANGE``,
    ``SEED_RANGE``): a new field gets it without a line of its own."""
    if typ is float:
        _check(isinstance(value, (int, float)) and not isinstance(value, bool)
               and math.isfinite(value) and abs(value) <= FLOAT_LIMIT, key, value,
               f"must be a finite number between -{FLOAT_LIMIT:g} and {FLOAT_LIMIT:g}")
    elif typ is int and not isinstance(value, bool) and isinstance(value, int):
        seed = key.rsplit(".", 1)[-1].split("[")[0]
        lo, hi = SEED_RANGE if seed == "seed" or seed.endswith("_seed") else INT_RANGE
        _check(lo <= value <= hi, key, value, f"must be an integer in {lo}..{hi}"
               + (" (a seed every RNG accepts)" if (lo, hi) == SEED_RANGE else ""))


def _check_section(section, name: str) -> None:
    """The checks every section runs at construction (its ``__post_init__``): each ``Literal``
    field holds one of its choices, each ``list[Literal]`` field a non-empty list of them, every
    float (and list of floats) is finite and within ``FLOAT_LIMIT``, every int within
    ``INT_RANGE`` (seeds: ``SEED_RANGE``)."""
    hints = typing.get_type_hints(type(section))
    for f in dataclasses.fields(section):
        typ, value = hints[f.name], getattr(section, f.name)
        key = f"{name}.{_UNALIASES.get(f.name, f.name)}"
        if typing.get_origin(typ) is list and typing.get_args(typ)[0] in (float, int):
            for j, item in enumerate(value if isinstance(value, list) else []):
                _check_number(typing.get_args(typ)[0], item, f"{key}[{j}]")
        else:
            _check_number(typ, value, key)
        if typing.get_origin(typ) is Literal:
            choices = typing.get_args(typ)
            _check(value in choices and type(value) is type(choices[0]), key, value,
                   f"must be one of {', '.join(map(str, choices))}")
        elif (
            typing.get_origin(typ) is list and typing.get_origin(typing.get_args(typ)[0]) is Literal
        ):
            choices = typing.get_args(typing.get_args(typ)[0])
            _check(isinstance(value, list) and len(value) > 0 and all(v in choices for v in value),
                   key, value, f"must be a non-empty list of {', '.join(map(str, choices))}")


@dataclass
class ModelConfig:
    """Architecture of the mini-BAGEL (transformer + VAE); see ``medq.models``."""

    tile_size: int = 64
    """Side in pixels of the model's tile: the square its token grid covers. Images are handled at
    ``data.image_size`` (the working size) and generated tile by tile with overlapping, blended
    tiles (``sample.tile_overlap``); training sees random tile crops of working-size images.
    Reports are written from the whole input image resized to one tile."""
    vae: str = "weights/vae"
    """Directory of the VAE: ours (shipped in ``weights/vae``, rebuilt by ``make weights``; or
    ``python -m train vae``) or a diffusers AutoencoderKL."""
    vae_downsample: Literal[2, 4, 8] = 2
    """Spatial downsampling factor of our VAE (2, 4 or 8); a diffusers VAE states its own. 2 x
    with 8 channels because the VAE must not be the ceiling: a 4 x VAE reconstructed the targets
    worse than bicubic x2 restores them (docs/HISTORY.md)."""
    latent_channels: int = 8
    """Channels of our VAE's latent; a diffusers VAE states its own."""
    patch_size: int = 4
    """Latent pixels per side folded into one image token (BAGEL: 2 on an 8 x VAE, i.e. 16 px
    per token; 4 on our 2 x VAE is 8 px per token, the same 64 tokens at 64 px)."""
    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 4
    mlp_ratio: float = 4.0
    cond_at_gen: bool = True
    """Also add a projection of the condition latent to the generated token at the same grid
    position (the super-resolution conditioning of SR3/ResShift-style models), beside BAGEL's
    condition tokens in context. Without it the transformer must find, by attention, which
    condition token matches each generated one, and at this size it learns a generic fundus
    instead (issue 14: PSNR of the x0 prediction fell to the constant image's)."""
    cond_prior: bool = True
    """The flow head predicts the velocity's difference from ``x_t - cond`` (the velocity that
    carries x_t onto the condition latent): ``v_hat = llm2vae(h) + (x_t - cond)``, per generated
    token. An untrained head then predicts x0 = the condition (bicubic / the unchanged input) from
    pure noise, and the network learns only what the condition lacks (the residual-prior trick of
    ResShift-style super-resolution, in BAGEL's velocity form; the loss path velocity -> x0_hat ->
    decode -> SSIM is unchanged). Without it the base model's x0 prediction from noise scored
    below the condition's own decoding (docs/HISTORY.md)."""
    prior_conv_channels: int = 48
    """Hidden channels of the CNN that sharpens the condition latent into the residual prior
    (``medq.models.transformer.PriorNet``, with ``cond_prior``); 0 = the condition itself (every
    base before issue 14's prior net). At the working size the SR residual is small and fine, and
    the regression prior is what an output needs to beat bicubic there; it runs once per tile at
    inference, so its width costs training time mainly."""
    prior_conv_layers: int = 5
    """Convolutions of the prior net (each 3 x 3: the receptive field grows by 2 latent pixels
    per layer)."""
    out_conv: bool = True
    """A 3 x 3 convolution after the flow head, on the velocity put back on the latent grid
    (zero at init: the same function without it), as U-ViT adds after its last linear layer. The
    linear head predicts each token's patch on its own, so neighbouring patches can disagree at
    their border: a pattern at the token pitch. The convolution sees across that border."""
    max_text_len: int = 48
    """Longest instruction or report in tokens, special tokens included."""
    vocab_pad_multiple: int = 64
    """Text head rows are the vocabulary size rounded up to this (Qwen2-style padding): the
    padding ids decode to nothing, which is how a collapsed model shows itself."""
    pixel_residual: bool = True
    """Render an image as a residual over the condition image: ``cond_image + D(x0_hat) -
    D(cond_latent)`` instead of ``D(x0_hat)`` (D: the VAE decoder), in inference and in the
    image-space losses alike. The VAE's reconstruction error of smooth real photographs is larger
    than what bicubic leaves of them inside the disc, so with a plain decode no output could
    beat bicubic there; the difference of two decodes cancels that error wherever the model
    changes little. See docs/RESULTS.md for the measured ceilings."""

    def __post_init__(self) -> None:
        _check_section(self, "model")
        _check(self.prior_conv_channels >= 0, "model.prior_conv_channels", self.prior_conv_channels,
               "must be >= 0 (0 = off)")
        _check(self.prior_conv_layers >= 2, "model.prior_conv_layers", self.prior_conv_layers,
               "must be >= 2 (an input and an output convolution)")
        for name in ("tile_size", "d_model", "n_layers", "n_heads", "patch_size",
                     "latent_channels", "max_text_len", "vocab_pad_multiple"):
            _check(getattr(self, name) >= 1, f"model.{name}", getattr(self, name), "must be >= 1")
        _check(self.d_model % self.n_heads == 0, "model.d_model", self.d_model,
               f"must be divisible by model.n_heads = {self.n_heads}")
        unit = self.vae_downsample * self.patch_size
        _check(self.tile_size % unit == 0, "model.tile_size", self.tile_size,
               f"must be a multiple of vae_downsample * patch_size = {unit}")


@dataclass
class DataConfig:
    """Where images come from and which tasks are made of them; see ``medq.data``."""

    source: Literal["synthetic", "eyeq", "drive", "folder"] = "synthetic"
    """synthetic (embedded generator) | eyeq | drive | folder."""
    root: str = ""
    """Image folder for eyeq / drive / folder sources."""
    labels: str = ""
    """EyeQ label CSV (``,image,quality,DR_grade``) for the eyeq source."""
    image_size: int = 256
    """Working size in pixels: every image is the square around its field of view at this side
    (synthetic images are drawn at it; a photograph is cropped to its FOV square and resized).
    0 = each real photograph at its own size (its FOV square, padded to a multiple of 4). SR inputs
    are the antialiased bicubic downscale of the whole working-size image; training takes random
    ``model.tile_size`` crops of it (``medq.data.tiles``)."""
    num_images: int = 2048
    """Number of synthetic fundus images generated for the train and val splits (cached). With
    384 the VAE and the base model learned the training images, not fundus photographs."""
    seed: int = 0
    """Seed of the synthetic generator and of the degradations."""
    test_seed: int = 1
    """Synthetic only: the test split is a set of its own, ``num_test_images`` images drawn with
    this seed, so that final numbers come from images no setting was ever chosen on (the
    ``seed`` set is split into train and val by ``val_fraction``)."""
    num_test_images: int = 24
    """Synthetic only: images of the test split (each scored on every task)."""
    split_file: str = ""
    """Real sources: a TOML file with ``train``, ``val`` and ``test`` lists of image ids (e.g.
    ``configs/splits/drive_development.toml``); empty = split by hashed fractions."""
    mix_root: str = ""
    """A DRIVE-layout folder of real photographs (the development set) whose tiles are mixed into
    training; only the ``train`` ids of ``mix_split`` are used, so the others stay unseen."""
    mix_split: str = "configs/splits/drive_development.toml"
    """Which images of ``mix_root`` may be trained on (its ``train`` list)."""
    mix_fraction: float = 0.0
    """Share of training tiles cut from ``mix_root``'s train images (at random working sizes,
    flipped, rotated and colour-jittered). They train the image tasks only: real photographs have
    no grade, so they carry no report."""
    tasks: list[Task] = field(default_factory=lambda: ["sr4", "sr2", "enhance"])
    """Image tasks trained and evaluated: sr2, sr4, enhance. Every sample also has a report."""
    target_quality: list[Literal[0, 1, 2]] = field(default_factory=lambda: [0])
    """EyeQ quality grades allowed as targets (0 Good, 1 Usable, 2 Reject)."""
    val_fraction: float = 0.03
    test_fraction: float = 0.03
    cache_dir: str = "runs/_cache"
    """Generated and preprocessed images are cached here."""
    on_bad_input: Literal["error", "skip"] = "error"
    """error: stop at the first unreadable image, naming it | skip: skip and list it in a report."""
    num_workers: int = 0

    def __post_init__(self) -> None:
        _check_section(self, "data")
        _check(self.source == "synthetic" or bool(self.root), "data.root", self.root,
               f"must name an image folder when data.source = {self.source!r}")
        _check(self.source != "eyeq" or bool(self.labels), "data.labels", self.labels,
               "must name the EyeQ label CSV when data.source = 'eyeq'")
        _check(self.num_images >= 3, "data.num_images", self.num_images,
               "must be >= 3 (train/val/test)")
        _check(self.num_test_images >= 1, "data.num_test_images", self.num_test_images,
               "must be >= 1")
        _check(self.image_size == 0 or self.image_size >= 16, "data.image_size", self.image_size,
               "must be >= 16 px, or 0 for each photograph's own size")
        _check(self.image_size % 4 == 0, "data.image_size", self.image_size,
               "must be a multiple of 4 (the x4 input is a quarter of it)")
        _check(self.image_size > 0 or self.source != "synthetic", "data.image_size",
               self.image_size, "0 (own size) needs a real data.source; synthetic images are "
               "drawn at a size")
        _check(0 <= self.mix_fraction < 1, "data.mix_fraction", self.mix_fraction,
               "must be in [0, 1)")
        _check(self.mix_fraction == 0 or bool(self.mix_root), "data.mix_root", self.mix_root,
               f"must name the development photographs when data.mix_fraction = "
               f"{self.mix_fraction}")
        for name in ("val_fraction", "test_fraction"):
            _check(0 < getattr(self, name) < 0.5, f"data.{name}", getattr(self, name),
                   "must be in (0, 0.5)")
        _check(self.num_workers >= 0, "data.num_workers", self.num_workers, "must be >= 0")


@dataclass
class LossConfig:
    """Weights and gates of the training objective; see ``medq.losses``."""

    ce_weight: float = 1.0
    """Cross-entropy on the report tokens."""
    mse_weight: float = 1.0
    """MSE between predicted and true flow velocity in latent space."""
    prior_weight: float = 1.0
    """Weight of the prior net's own latent MSE against the target latent; acts only for a model
    with a prior net (``model.prior_conv_channels``)."""
    prior_relative: bool = True
    """Divide each sample's prior error by the condition's own error |cond - x0|^2, so that every
    task counts alike. Absolute, enhance's colour corrections (|cond - x0|^2 0.216 per latent
    element) outweighed sr2's residual (0.041): continuing the base 800 steps (lr 1e-3), the prior
    recovered 13 % of sr2's residual absolute and 51 % relative (after 500 steps), the x0
    prediction 30 % and 47 % (issue 14)."""
    pixel_weight: float = 0.0
    """Pixel loss between the VAE-decoded x0_hat and the target image."""
    pixel_kind: Literal["l1", "l2"] = "l2"
    pixel_max_t: float = 0.3
    """Only samples with t <= pixel_max_t enter the pixel loss (x0_hat is trustworthy there)."""
    ssim_weight: float = 0.0
    """Weight of 1 - SSIM between the decoded x0_hat and the target."""
    ssim_max_t: float = 0.3
    ssim_grad_scale: float = 1.0
    """Identity forward; multiplies the SSIM gradient entering x0_hat in the backward pass."""
    ssim_grad_clamp: float = 0.0
    """Clamp each element of the SSIM gradient at x0_hat to [-c, c]; 0 turns it off."""
    ssim_window: int = 11
    ssim_sigma: float = 1.5
    ssim_masked: bool = True
    """Average the SSIM map inside the field of view only (the black border inflates SSIM)."""
    decode_chunk: int = 8
    """Samples decoded by the VAE at once in the image-space losses (bounds peak memory)."""
    timestep_shift: float = 1.0
    """Shift s of the training timesteps t = s t / (1 + (s - 1) t); BAGEL trains with 1.0."""
    instruction_dropout: float = 0.0
    """Probability of training a sample with an empty instruction: the unconditional branch that
    text guidance (``sample.text_guidance > 1``) needs. 0 keeps every instruction."""

    def __post_init__(self) -> None:
        _check_section(self, "loss")
        for name in ("ce_weight", "mse_weight", "prior_weight", "pixel_weight", "ssim_weight"):
            _check(getattr(self, name) >= 0, f"loss.{name}", getattr(self, name),
                   "loss weights must be >= 0")
        for name in ("pixel_max_t", "ssim_max_t"):
            _check(0 < getattr(self, name) <= 1, f"loss.{name}", getattr(self, name),
                   "must be in (0, 1]")
        _check(self.ssim_window >= 3 and self.ssim_window % 2 == 1, "loss.ssim_window",
               self.ssim_window, "must be odd and >= 3")
        _check(self.ssim_sigma > 0, "loss.ssim_sigma", self.ssim_sigma, "must be > 0")
        _check(self.ssim_grad_scale > 0, "loss.ssim_grad_scale", self.ssim_grad_scale,
               "must be > 0")
        _check(self.ssim_grad_clamp >= 0, "loss.ssim_grad_clamp", self.ssim_grad_clamp,
               "must be > 0, or 0 for off")
        _check(self.decode_chunk >= 1, "loss.decode_chunk", self.decode_chunk, "must be >= 1")
        _check(self.timestep_shift > 0, "loss.timestep_shift", self.timestep_shift, "must be > 0")
        _check(0 <= self.instruction_dropout < 1, "loss.instruction_dropout",
               self.instruction_dropout, "must be in [0, 1)")

    @property
    def needs_vae(self) -> bool:
        """The VAE decoder is in the training graph exactly when an image-space loss is on.

        Derived, never configured: the original v1 crash came from a separate flag that disagreed
        with the weights (SSIM-only left the VAE out and decode returned None)."""
        return self.pixel_weight > 0 or self.ssim_weight > 0


@dataclass
class OptimConfig:
    """Optimiser, schedule, batch and EMA."""

    lr: float = 3e-4
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    warmup_steps: int = 20
    max_steps: int = 300
    batch_size: int = 16
    grad_clip: float = 1.0
    """Clip the global gradient norm to this; 0 turns clipping off."""
    ema_decay: float = 0.995
    """EMA of the trainable weights. BAGEL uses 0.9999 over tens of thousands of steps; our CPU
    runs are a few hundred steps, so the horizon is shortened accordingly."""
    ema_warmup: bool = True
    """Warm the EMA up: update n uses decay min(ema_decay, (1 + n) / (10 + n)) (``medq.ema``).
    Without it a 300-step fine-tune's EMA still holds 22 % of its starting weights."""
    amp: Literal["auto", "bf16", "off"] = "auto"
    """auto (bf16 where the hardware runs it fast, i.e. CUDA) | bf16 | off."""

    def __post_init__(self) -> None:
        _check_section(self, "optim")
        _check(math.isfinite(self.lr) and self.lr > 0, "optim.lr", self.lr,
               "must be a finite number > 0")
        _check(self.weight_decay >= 0, "optim.weight_decay", self.weight_decay, "must be >= 0")
        _check(len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas), "optim.betas",
               self.betas, "must be two numbers in [0, 1)")
        _check(self.max_steps >= 1, "optim.max_steps", self.max_steps, "must be >= 1")
        _check(0 <= self.warmup_steps <= self.max_steps, "optim.warmup_steps", self.warmup_steps,
               f"must be in [0, optim.max_steps = {self.max_steps}]")
        _check(self.batch_size >= 1, "optim.batch_size", self.batch_size, "must be >= 1")
        _check(self.grad_clip >= 0, "optim.grad_clip", self.grad_clip, "must be >= 0 (0 = off)")
        _check(0 <= self.ema_decay < 1, "optim.ema_decay", self.ema_decay, "must be in [0, 1)")


@dataclass
class InitConfig:
    """Where the weights come from. Random weights only when ``scratch`` says so."""

    from_: str = "weights/base"
    """Checkpoint directory, run directory, or a preset name whose latest finished run in
    ``run.out_dir`` is used (e.g. 'pretrain'). Written ``from`` in TOML and on the command line.
    Default: the shipped base model (``weights/base``, EMA weights of a long ``pretrain`` run,
    rebuilt by ``make weights``)."""
    weights: Literal["ema", "model"] = "ema"
    """Which weights of that checkpoint are loaded."""
    scratch: bool = False
    """Start from random weights. Must be stated: the v2 accident was an unnoticed scratch start."""

    def __post_init__(self) -> None:
        _check_section(self, "init")
        _check(not (self.scratch and self.from_), "init.from", self.from_,
               "must be empty when init.scratch = true (random weights and a checkpoint exclude "
               "each other)")
        _check(self.scratch or bool(self.from_), "init.scratch", self.scratch,
               "init.from is empty: name a checkpoint, or set init.scratch = true to train from "
               "random weights on purpose (an unnoticed scratch start was the v2 accident)")


@dataclass
class SampleConfig:
    """Image generation (validation, inference): BAGEL's Euler sampler."""

    steps: int = 16
    """Euler steps from t = 1 to t = 0 (BAGEL: 49 at 50 timesteps)."""
    shift: float = 3.0
    """Timestep shift of the sampling schedule (BAGEL: 3.0 at inference)."""
    text_guidance: float = 1.0
    """Classifier-free guidance on the instruction text; 1.0 turns it off."""
    onestep_t: float = 0.9
    """The one-step output (``MiniBagelAdapter(output="onestep")``) is the x0 prediction from the
    condition latent noised to this t; 1.0 = from pure noise (the posterior mean given the
    condition alone). A t just below 1 keeps the condition's layout in x_t while leaving the
    model room to correct it; chosen on the validation split with ``python -m bench onestep-t``
    (the sweep and the model it was run on: docs/RESULTS.md)."""
    onestep_draws: int = 4
    """The one-step output averages the x0 predictions (in latent space, then decodes once) from
    this many noise draws at ``onestep_t``: one draw leaves in the output the part of x0_hat that
    follows its own noise. Each draw is one more forward; a few keep the output far cheaper than a
    sample (``python -m bench onestep-t --draws``; docs/RESULTS.md)."""
    noise_temperature: float = 0.3
    """The sample starts from ``noise_temperature`` times standard normal noise (reduced-
    temperature sampling, as in Glow): 1 = the model's own distribution; lower trades diversity
    and texture for fidelity, toward the one-step output. Chosen on the validation split with
    ``python -m bench sample-temperature`` (the trade-off and how the value was picked:
    docs/RESULTS.md). The one-step output's noise is not scaled (it averages over the noise)."""
    tile_overlap: int = 16
    """Pixels by which neighbouring tiles overlap when an image larger than ``model.tile_size``
    is generated. Each tile's velocity (or x0 prediction) is blended into the whole latent with a
    window that ramps over the overlap, at every Euler step (MultiDiffusion), so the tiles agree
    where they meet and no seam is left."""
    tile_batch: int = 64
    """Tiles run through the transformer in one forward (memory and speed only: outputs do not
    depend on it beyond float reduction order)."""
    seed: int = 0
    max_new_tokens: int = 40
    temperature: float = 0.0
    """0 = greedy text decoding."""
    top_p: float = 1.0

    def __post_init__(self) -> None:
        _check_section(self, "sample")
        _check(self.steps >= 1, "sample.steps", self.steps, "must be >= 1")
        _check(self.shift > 0, "sample.shift", self.shift, "must be > 0")
        _check(math.isfinite(self.noise_temperature) and self.noise_temperature > 0,
               "sample.noise_temperature", self.noise_temperature, "must be > 0 (1 = the model's "
               "distribution)")
        _check(self.text_guidance >= 1, "sample.text_guidance", self.text_guidance,
               "must be >= 1 (1 = off)")
        _check(self.max_new_tokens >= 1, "sample.max_new_tokens", self.max_new_tokens,
               "must be >= 1")
        _check(self.temperature >= 0, "sample.temperature", self.temperature,
               "must be >= 0 (0 = greedy)")
        _check(0 < self.top_p <= 1, "sample.top_p", self.top_p, "must be in (0, 1]")
        _check(0 < self.onestep_t <= 1, "sample.onestep_t", self.onestep_t,
               "must be in (0, 1] (1 = from pure noise)")
        _check(1 <= self.onestep_draws <= 64, "sample.onestep_draws", self.onestep_draws,
               "must be in 1..64 (the number of noise draws averaged by the one-step output)")
        _check(self.tile_overlap >= 0 and self.tile_overlap % 2 == 0, "sample.tile_overlap",
               self.tile_overlap, "must be an even number of pixels >= 0")
        _check(self.tile_batch >= 1, "sample.tile_batch", self.tile_batch, "must be >= 1")


@dataclass
class RunConfig:
    """Bookkeeping of one run: where it writes, how often it logs, checks and saves."""

    preset: str = "control"
    """Name of the preset this run was made from (set by the loader)."""
    out_dir: str = "runs"
    seed: int = 0
    device: str = "auto"
    """auto | cpu | cuda | cuda:N."""
    log_every: int = 10
    val_every: int = 100
    ckpt_every: int = 100
    keep_last: int = 2
    """Checkpoints kept besides the best one."""
    probe_every: int = 50
    """Steps between gradient probes (per-loss gradient norm at x0_hat and the backbone)."""
    max_nonfinite: int = 5
    """Abort after this many consecutive non-finite steps (each one is skipped)."""
    collapse_stop: bool = False
    """Stop early when the collapse monitor fires."""
    threads: int = 1
    """torch intra-op threads; 0 leaves torch's default. 1 by default: the default model's ops are
    small, and two threads synchronise after each of them, which on a shared 2-core CPU makes a
    step several times slower whenever anything else runs (``bench perf train --threads N``)."""
    fsdp: bool = False
    """Under torchrun, shard parameters, gradients and optimizer state across the ranks with FSDP2
    (``torch.distributed.fsdp.fully_shard``), one unit per transformer block plus the rest: for
    models that do not fit one device. Checkpoints hold full tensors either way. Ignored, with a
    warning, in a single process."""

    def __post_init__(self) -> None:
        _check_section(self, "run")
        for name in ("log_every", "val_every", "ckpt_every", "probe_every", "max_nonfinite"):
            _check(getattr(self, name) >= 1, f"run.{name}", getattr(self, name), "must be >= 1")
        _check(self.keep_last >= 1, "run.keep_last", self.keep_last, "must be >= 1")
        _check(self.threads >= 0, "run.threads", self.threads, "must be >= 0")


NOT_HASHED = (("run", "out_dir"), ("run", "preset"), ("run", "fsdp"), ("sample", "onestep_t"),
              ("sample", "onestep_draws"), ("sample", "noise_temperature"),
              ("sample", "tile_overlap"), ("sample", "tile_batch"))
"""Values that do not change what is computed: where a run is written, its name, and how the work
is spread over processes (like the number of ranks, which is no config value either: a run may
be resumed with or without FSDP, and runs made before the option existed keep their hash), and
which x0 prediction the one-step output is and the sample's noise temperature (inference settings,
recorded with every output; no training step reads them), and how images larger than a tile are
put together from tiles."""


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    init: InitConfig = field(default_factory=InitConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    run: RunConfig = field(default_factory=RunConfig)
    """Each section checks itself when it is made (``__post_init__``): a ``LossConfig`` with a
    negative weight is refused on its own, not only inside a ``Config``."""

    @property
    def hash(self) -> str:
        """sha256 of every value that changes what is computed (not where it is written)."""
        d = to_dict(self)
        for section, key in NOT_HASHED:
            d[section].pop(key)
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()

    @property
    def run_name(self) -> str:
        return f"{self.run.preset}-{self.hash[:8]}"

    @property
    def run_dir(self) -> Path:
        return Path(self.run.out_dir) / self.run_name


SECTIONS: dict[str, type] = {f.name: typing.get_type_hints(Config)[f.name]
                             for f in dataclasses.fields(Config)}


# ---------------------------------------------------------------------------------------------
# dict <-> dataclass, with key and type checks


def to_dict(cfg: Config) -> dict:
    """Nested plain dict with TOML key names (``init.from``)."""
    out = {}
    for section in dataclasses.fields(cfg):
        sub = getattr(cfg, section.name)
        out[section.name] = {_UNALIASES.get(f.name, f.name): _copy(getattr(sub, f.name))
                             for f in dataclasses.fields(sub)}
    return out


def _copy(v):
    return list(v) if isinstance(v, list) else v


def _field_types(cls: type) -> dict[str, type]:
    hints = typing.get_type_hints(cls)
    return {_UNALIASES.get(f.name, f.name): hints[f.name] for f in dataclasses.fields(cls)}


def _closest(key: str, valid: list[str]) -> str:
    near = difflib.get_close_matches(key, valid, n=1, cutoff=0.6)
    if near:
        return f"; did you mean {near[0]!r}?"
    return f"; valid: {', '.join(valid)}"


def _coerce(key: str, value, typ):
    """Check ``value`` against the field type; ints are accepted for floats."""
    origin = typing.get_origin(typ)
    if origin is Literal:
        choices = typing.get_args(typ)
        if isinstance(value, bool) or value not in choices:
            raise ConfigError(f"{key} = {value!r}: must be one of {', '.join(map(str, choices))}")
        return value
    if origin is list:
        (item,) = typing.get_args(typ)
        if not isinstance(value, list):
            what = "one of " + ", ".join(map(str, typing.get_args(item))) \
                if typing.get_origin(item) is Literal else item.__name__
            raise ConfigError(f"{key} = {value!r}: expected a list of {what}")
        return [_coerce(f"{key}[{j}]", v, item) for j, v in enumerate(value)]
    if typ is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if typ is bool and not isinstance(value, bool):
        raise ConfigError(f"{key} = {value!r}: expected true or false")
    if typ is int and isinstance(value, bool):
        raise ConfigError(f"{key} = {value!r}: expected an integer")
    if not isinstance(value, typ):
        raise ConfigError(f"{key} = {value!r}: expected {typ.__name__}, got {type(value).__name__}")
    return value


RENAMED_KEYS = {"sample.mmse_t": "sample.onestep_t", "sample.mmse_draws": "sample.onestep_draws"}
"""Keys renamed since configs were saved with them (issue 28: the 'MMSE output' is a one-step
estimate): a saved ``config.toml`` still loads, a ``--set`` of the old name is refused naming the
new one. Both are inference settings, outside the hash: the rename moves no run."""


def merge(base: dict, patch: dict, where: str) -> dict:
    """Apply a nested ``patch`` onto ``base`` (both with TOML key names), checking every key."""
    out = {k: dict(v) for k, v in base.items()}
    for section, values in patch.items():
        if section not in SECTIONS:
            raise ConfigError(
                f"{where}: unknown section {section!r}{_closest(section, list(SECTIONS))}"
            )
        if not isinstance(values, dict):
            raise ConfigError(f"{where}: [{section}] must be a table of key = value")
        types = _field_types(SECTIONS[section])
        for key, value in values.items():
            full = f"{section}.{key}"
            if full in RENAMED_KEYS and where.startswith("override"):
                raise ConfigError(f"{where}: {full} is now called {RENAMED_KEYS[full]}")
            if full in RENAMED_KEYS:  # a file written before the rename: the same value
                full = RENAMED_KEYS[full]
                key = full.split(".", 1)[1]
            if key not in types:
                valid = [f"{section}.{k}" for k in types]
                raise ConfigError(f"{where}: unknown key {full!r}{_closest(full, valid)}")
            out[section][key] = _coerce(full, value, types[key])
    return out


def from_dict(d: dict) -> Config:
    kwargs = {}
    for section, cls in SECTIONS.items():
        kwargs[section] = cls(**{_ALIASES.get(k, k): v for k, v in d[section].items()})
    return Config(**kwargs)


def parse_override(text: str) -> dict:
    """``loss.ssim_weight=0.2`` -> {'loss': {'ssim_weight': 0.2}}. Values are TOML literals; a
    bare word that is not a TOML literal is taken as a string (``data.source=eyeq``)."""
    if "=" not in text or "." not in text.split("=", 1)[0]:
        raise ConfigError(
            f"override {text!r}: expected section.key=value, e.g. loss.ssim_weight=0.2"
        )
    key, raw = text.split("=", 1)
    section, name = key.strip().split(".", 1)
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    return {section: {name: value}}


def with_overrides(cfg: Config, overrides: list[str]) -> Config:
    """``cfg`` with dotted ``section.key=value`` overrides applied (checked like ``load_config``'s);
    ``cfg`` itself is not changed. The preset name is kept."""
    d = to_dict(cfg)
    for text in overrides:
        d = merge(d, parse_override(text), f"override {text!r}")
    return from_dict(d)


def available_presets() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.toml"))


def _read_toml(path: Path) -> dict:
    try:
        return tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from e


CONTROL = "control"
RENAMED_PRESETS = {"base": CONTROL}
"""Presets renamed by issue 16 ("base" meant the defaults, the base model and a model size)."""


def _config_file(name: str, config_dir: Path, what: str) -> Path:
    """``config_dir/<name>.toml``, refused when the name leads outside ``config_dir``."""
    file = config_dir / f"{name}.toml"
    if not file.resolve().is_relative_to(config_dir.resolve()):
        raise ConfigError(f"{what} {name!r}: {file} is outside {config_dir}; {what} names are "
                          f"files of configs/ (a TOML file elsewhere is read when given as its "
                          f"path, ending in .toml)")
    return file


def _run_name_part(name: str, where: str) -> str:
    """A preset name as it becomes the run directory ``<run.out_dir>/<name>-<hash8>``: one path
    component, so that every run directory stays inside ``run.out_dir``."""
    if not name or name.startswith(".") or "/" in name or "\\" in name or "\0" in name:
        raise ConfigError(f"run.preset = {name!r} ({where}): must be a plain name (no '/', not "
                          f"starting with '.'): the run directory is <run.out_dir>/<preset>-<hash>")
    return name


def load_config(preset: str = CONTROL, overrides: list[str] = (), overlays: list[str] = (),
                config_dir: Path = CONFIG_DIR) -> Config:
    """Resolve defaults <- preset file <- overlay files (e.g. 'model/small') <- overrides.

    ``preset`` is a name in ``configs/`` (``control``, an empty file, is the defaults alone) or a
    path to a TOML file (e.g. a run's saved ``config.toml``, which loads back to an equal
    Config): a value ending in ``.toml`` that names an existing file is read as that path, any
    other value is looked up inside ``configs/`` and may not lead out of it (``../x``). The same
    holds for overlays. The preset name (the file's ``run.preset``, else its stem) must be one
    path component: it names the run directory inside ``run.out_dir``."""
    d = to_dict(Config())
    path = Path(preset)
    if path.suffix == ".toml" and path.exists():
        data = _read_toml(path)
        name = data.get("run", {}).get("preset", path.stem)
        d = merge(d, data, str(path))
    else:
        file = _config_file(preset, config_dir, "preset")
        if preset in RENAMED_PRESETS and not file.exists():
            raise ConfigError(f"preset {preset!r} is now called {RENAMED_PRESETS[preset]!r} "
                              f"(configs/{RENAMED_PRESETS[preset]}.toml)")
        if not file.exists():
            near = _closest(preset, available_presets())
            raise ConfigError(f"unknown preset {preset!r} (no {file}){near}")
        d = merge(d, _read_toml(file), str(file))
        name = preset
    for overlay in overlays:
        file = (Path(overlay) if Path(overlay).suffix == ".toml"
                else _config_file(overlay, config_dir, "overlay"))
        if not file.exists():
            raise ConfigError(f"overlay {overlay!r}: no such file {file}")
        d = merge(d, _read_toml(file), str(file))
    for text in overrides:
        d = merge(d, parse_override(text), f"override {text!r}")
    d["run"]["preset"] = _run_name_part(str(name), str(path))
    return from_dict(d)


def dump_toml(cfg: Config) -> str:
    """The resolved config as TOML (every value), with its hash in a header comment."""
    lines = [f"# resolved config of run {cfg.run_name}; sha256 {cfg.hash}"]
    for section, values in to_dict(cfg).items():
        lines.append(f"\n[{section}]")
        for key, value in values.items():
            lines.append(f"{key} = {_toml_value(value)}")
    return "\n".join(lines) + "\n"


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {v!r} as TOML")


# ---------------------------------------------------------------------------------------------
# orphaned runs: the hash covers every value, so a new field gives every preset a new directory


def older_runs(cfg: Config) -> list[Path]:
    """Run directories of ``cfg``'s preset in ``run.out_dir`` under another hash, newest first."""
    out = Path(cfg.run.out_dir)
    if not out.is_dir():
        return []
    name = re.compile(rf"{re.escape(cfg.run.preset)}-[0-9a-f]{{8}}")
    found = [p for p in out.iterdir() if name.fullmatch(p.name) and p.name != cfg.run_name
             and (p / "config.toml").is_file()]
    return sorted(found, key=lambda p: (p / "config.toml").stat().st_mtime, reverse=True)


def config_changes(saved: Path, cfg: Config) -> list[str]:
    """What differs between a run's saved ``config.toml`` and ``cfg``, one line per hashed key:
    ``loss.ssim_weight: 0.1 -> 0.2``, ``run.new_key = 1 (not in the saved config)``,
    ``x.old_key (no longer a key)``."""
    try:
        old = tomllib.loads(Path(saved).read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as e:
        return [f"{saved} is unreadable ({e})"]
    new, lines = to_dict(cfg), []
    for section in sorted(set(old) | set(new)):
        o, n = old.get(section, {}), new.get(section, {})
        for key in sorted(set(o) | set(n)):
            full = f"{section}.{key}"
            if (section, key) in NOT_HASHED:
                continue
            if key not in o:
                lines.append(f"{full} = {_toml_value(n[key])} (not in the saved config)")
            elif key not in n:
                lines.append(f"{full} (no longer a key)")
            elif o[key] != n[key]:
                lines.append(f"{full}: {_toml_value(o[key])} -> {_toml_value(n[key])}")
    return lines
