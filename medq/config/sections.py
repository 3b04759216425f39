"""The config sections, one dataclass per concern, and ``Config`` with its hash. The dataclass
defaults ARE the ``control`` preset."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from medq.config.checks import (
    UNALIASES,
    Task,
    check_section,
    require,
)


@dataclass
class ModelConfig:
    """Architecture of the mini-BAGEL (transformer + VAE); see ``medq.models``."""

    tile_size: int = 64
    """Side in pixels of the model's tile: the square its token grid covers. Images are handled at
    ``data.image_size`` (the working size) and generated tile by tile with overlapping, blended
    tiles (``sample.tile_overlap``); training sees random tile crops of working-size images.
    Reports are written from the whole input image resized to ``report_size``."""
    report_size: int = 0
    """Side in pixels of the whole-image view reports are written from (the input resized to it,
    a token grid of its own before the report); 0 = ``tile_size``. A lesion drawn to scale in a
    working-size image is a fraction of a pixel once the image is shrunk to one 64-px tile, so
    the grade it defines cannot be read there; a larger view costs ``(report_size /
    tile_size)^2`` times the report's condition tokens. Not a parameter shape: a base trained
    with one value is read with the same value (its ``config.toml``)."""
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
        check_section(self, "model")
        require(self.prior_conv_channels >= 0, "model.prior_conv_channels",
                self.prior_conv_channels, "must be >= 0 (0 = off)")
        require(self.prior_conv_layers >= 2, "model.prior_conv_layers", self.prior_conv_layers,
                "must be >= 2 (an input and an output convolution)")
        require(self.report_size >= 0, "model.report_size", self.report_size,
                "must be >= 0 (0 = model.tile_size)")
        for name in ("tile_size", "d_model", "n_layers", "n_heads", "patch_size",
                     "latent_channels", "max_text_len", "vocab_pad_multiple"):
            require(getattr(self, name) >= 1, f"model.{name}", getattr(self, name), "must be >= 1")
        require(self.d_model % self.n_heads == 0, "model.d_model", self.d_model,
                f"must be divisible by model.n_heads = {self.n_heads}")
        unit = self.vae_downsample * self.patch_size
        require(self.tile_size % unit == 0, "model.tile_size", self.tile_size,
                f"must be a multiple of vae_downsample * patch_size = {unit}")
        require(self.report_size % unit == 0, "model.report_size", self.report_size,
                f"must be a multiple of vae_downsample * patch_size = {unit} (0 = tile_size)")

    @property
    def report_side(self) -> int:
        """The side reports are written from: ``report_size``, or ``tile_size`` when 0."""
        return self.report_size or self.tile_size


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
    num_test_images: int = 16
    """Synthetic only: images of the test split (each scored on every task). Sized for the main
    job's time budget on a 2-core CPU (inference and scoring grow with it); a study or a paper
    table sets more with ``--set data.num_test_images=N``."""
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
        check_section(self, "data")
        require(self.source == "synthetic" or bool(self.root), "data.root", self.root,
                f"must name an image folder when data.source = {self.source!r}")
        require(self.source != "eyeq" or bool(self.labels), "data.labels", self.labels,
                "must name the EyeQ label CSV when data.source = 'eyeq'")
        require(self.num_images >= 3, "data.num_images", self.num_images,
                "must be >= 3 (train/val/test)")
        require(self.num_test_images >= 1, "data.num_test_images", self.num_test_images,
                "must be >= 1")
        require(self.image_size == 0 or self.image_size >= 16, "data.image_size", self.image_size,
                "must be >= 16 px, or 0 for each photograph's own size")
        require(self.image_size % 4 == 0, "data.image_size", self.image_size,
                "must be a multiple of 4 (the x4 input is a quarter of it)")
        require(self.image_size > 0 or self.source != "synthetic", "data.image_size",
                self.image_size, "0 (own size) needs a real data.source; synthetic images are "
                "drawn at a size")
        require(0 <= self.mix_fraction < 1, "data.mix_fraction", self.mix_fraction,
                "must be in [0, 1)")
        require(self.mix_fraction == 0 or bool(self.mix_root), "data.mix_root", self.mix_root,
                f"must name the development photographs when data.mix_fraction = "
                f"{self.mix_fraction}")
        for name in ("val_fraction", "test_fraction"):
            require(0 < getattr(self, name) < 0.5, f"data.{name}", getattr(self, name),
                    "must be in (0, 0.5)")
        require(self.num_workers >= 0, "data.num_workers", self.num_workers, "must be >= 0")


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
        check_section(self, "loss")
        for name in ("ce_weight", "mse_weight", "prior_weight", "pixel_weight", "ssim_weight"):
            require(getattr(self, name) >= 0, f"loss.{name}", getattr(self, name),
                    "loss weights must be >= 0")
        for name in ("pixel_max_t", "ssim_max_t"):
            require(0 < getattr(self, name) <= 1, f"loss.{name}", getattr(self, name),
                    "must be in (0, 1]")
        require(self.ssim_window >= 3 and self.ssim_window % 2 == 1, "loss.ssim_window",
               self.ssim_window, "must be odd and >= 3")
        require(self.ssim_sigma > 0, "loss.ssim_sigma", self.ssim_sigma, "must be > 0")
        require(self.ssim_grad_scale > 0, "loss.ssim_grad_scale", self.ssim_grad_scale,
               "must be > 0")
        require(self.ssim_grad_clamp >= 0, "loss.ssim_grad_clamp", self.ssim_grad_clamp,
               "must be > 0, or 0 for off")
        require(self.decode_chunk >= 1, "loss.decode_chunk", self.decode_chunk, "must be >= 1")
        require(self.timestep_shift > 0, "loss.timestep_shift", self.timestep_shift, "must be > 0")
        require(0 <= self.instruction_dropout < 1, "loss.instruction_dropout",
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
        check_section(self, "optim")
        require(math.isfinite(self.lr) and self.lr > 0, "optim.lr", self.lr,
                "must be a finite number > 0")
        require(self.weight_decay >= 0, "optim.weight_decay", self.weight_decay, "must be >= 0")
        require(len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas), "optim.betas",
                self.betas, "must be two numbers in [0, 1)")
        require(self.max_steps >= 1, "optim.max_steps", self.max_steps, "must be >= 1")
        require(0 <= self.warmup_steps <= self.max_steps, "optim.warmup_steps", self.warmup_steps,
                f"must be in [0, optim.max_steps = {self.max_steps}]")
        require(self.batch_size >= 1, "optim.batch_size", self.batch_size, "must be >= 1")
        require(self.grad_clip >= 0, "optim.grad_clip", self.grad_clip, "must be >= 0 (0 = off)")
        require(0 <= self.ema_decay < 1, "optim.ema_decay", self.ema_decay, "must be in [0, 1)")


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
        check_section(self, "init")
        require(not (self.scratch and self.from_), "init.from", self.from_,
                "must be empty when init.scratch = true (random weights and a checkpoint exclude "
                "each other)")
        require(self.scratch or bool(self.from_), "init.scratch", self.scratch,
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
        check_section(self, "sample")
        require(self.steps >= 1, "sample.steps", self.steps, "must be >= 1")
        require(self.shift > 0, "sample.shift", self.shift, "must be > 0")
        require(math.isfinite(self.noise_temperature) and self.noise_temperature > 0,
                "sample.noise_temperature", self.noise_temperature, "must be > 0 (1 = the model's "
                "distribution)")
        require(self.text_guidance >= 1, "sample.text_guidance", self.text_guidance,
                "must be >= 1 (1 = off)")
        require(self.max_new_tokens >= 1, "sample.max_new_tokens", self.max_new_tokens,
                "must be >= 1")
        require(self.temperature >= 0, "sample.temperature", self.temperature,
                "must be >= 0 (0 = greedy)")
        require(0 < self.top_p <= 1, "sample.top_p", self.top_p, "must be in (0, 1]")
        require(0 < self.onestep_t <= 1, "sample.onestep_t", self.onestep_t,
                "must be in (0, 1] (1 = from pure noise)")
        require(1 <= self.onestep_draws <= 64, "sample.onestep_draws", self.onestep_draws,
                "must be in 1..64 (the number of noise draws averaged by the one-step output)")
        require(self.tile_overlap >= 0 and self.tile_overlap % 2 == 0, "sample.tile_overlap",
                self.tile_overlap, "must be an even number of pixels >= 0")
        require(self.tile_batch >= 1, "sample.tile_batch", self.tile_batch, "must be >= 1")


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
        check_section(self, "run")
        for name in ("log_every", "val_every", "ckpt_every", "probe_every", "max_nonfinite"):
            require(getattr(self, name) >= 1, f"run.{name}", getattr(self, name), "must be >= 1")
        require(self.keep_last >= 1, "run.keep_last", self.keep_last, "must be >= 1")
        require(self.threads >= 0, "run.threads", self.threads, "must be >= 0")


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


def to_dict(cfg: Config) -> dict:
    """Nested plain dict with TOML key names (``init.from``)."""
    out = {}
    for section in dataclasses.fields(cfg):
        sub = getattr(cfg, section.name)
        out[section.name] = {UNALIASES.get(f.name, f.name): copy_value(getattr(sub, f.name))
                             for f in dataclasses.fields(sub)}
    return out


def copy_value(v):
    return list(v) if isinstance(v, list) else v


