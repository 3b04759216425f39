"""The frozen image autoencoder of the mini-BAGEL: ours, or a diffusers ``AutoencoderKL``.

Both present one interface (``LatentVAE``)::

    z = vae.encode(images)   # (N, 3, H, W) in [0, 1] -> (N, C, H/f, W/f), deterministic (the mean),
                             # normalised (z - shift) * scale so that latents have ~unit variance
    x = vae.decode(z)        # -> (N, 3, H, W), differentiable; ~[0, 1] (not clamped, so that the
                             # image-space losses keep their gradient; clamp for display)

Ours (``SmallVAE``) is a KL-regularised convolutional autoencoder with ``downsample`` 4 or 8,
trained by ``python -m train vae`` (``medq.models.vae_train``) and stored as ``model.safetensors``
+ ``arch.json``; scale and shift are buffers measured on the training images after training, like
FLUX's ``scaling_factor``/``shift_factor``. ``load_vae(dir)`` also accepts a diffusers AutoencoderKL
directory (``config.json`` + weights) and uses its ``scaling_factor``/``shift_factor``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import save_file

ARCH_FILE = "arch.json"
WEIGHTS_FILE = "model.safetensors"
KIND = "medq-small-vae"


class PixelNorm(nn.Module):
    """RMS normalisation over the channels of each pixel, with a learned gain and bias: a norm that
    looks at one position only. GroupNorm averages over the whole image, so a tile encoded alone
    and the same tile cut from an encoded image differ everywhere (by about a third of the
    latents' spread for our VAE), and tiled generation could not use one whole-image encoding;
    with this norm the VAE is local up to its receptive field."""

    def __init__(self, ch: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(ch))
        self.bias = nn.Parameter(torch.zeros(ch))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x * torch.rsqrt(x.square().mean(dim=1, keepdim=True) + self.eps)
        return x * self.weight[:, None, None] + self.bias[:, None, None]


NORMS = ("pixel", "group")
"""``pixel`` (``PixelNorm``, local: what tiled generation needs) | ``group`` (GroupNorm over the
image, the VAEs shipped before tiles; still loadable)."""


def _norm(kind: str, ch: int) -> nn.Module:
    return PixelNorm(ch) if kind == "pixel" else nn.GroupNorm(min(8, ch), ch)


class ResBlock(nn.Module):
    def __init__(self, ch: int, norm: str = "pixel"):
        super().__init__()
        self.norm = _norm(norm, ch)
        self.conv1 = nn.Conv2d(ch, ch, 3, padding=1)
        self.conv2 = nn.Conv2d(ch, ch, 3, padding=1)
        # A residual branch that starts near zero keeps the untrained net close to the identity.
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)

    def forward(self, x):
        return x + self.conv2(F.silu(self.conv1(F.silu(self.norm(x)))))


class SmallVAE(nn.Module):
    """Convolutional KL autoencoder. ``downsample`` f = 2 ** stages: a 2x space-to-depth
    (pixel-unshuffle, so that no convolution runs at full resolution: the CPU budget) followed by
    stages - 1 stride-2 convolutions; ``channels`` is the width at half resolution, doubled
    below."""

    def __init__(self, downsample: int = 4, latent_channels: int = 4, channels: int = 32,
                 norm: str = "group"):
        super().__init__()
        if downsample not in (2, 4, 8, 16):
            raise ValueError(f"SmallVAE: downsample = {downsample}; expected 2, 4, 8 or 16")
        if norm not in NORMS:
            raise ValueError(f"SmallVAE: norm = {norm!r}; expected one of {NORMS}")
        # An arch.json without "norm" is a VAE from before tiles: GroupNorm.
        self.arch = {"kind": KIND, "downsample": downsample, "latent_channels": latent_channels,
                     "channels": channels, "norm": norm}
        self.downsample, self.latent_channels = downsample, latent_channels
        stages = int(math.log2(downsample)) - 1
        widths = [channels] + [channels * 2] * stages
        enc: list[nn.Module] = [nn.PixelUnshuffle(2), nn.Conv2d(12, widths[0], 3, padding=1)]
        for i in range(stages):
            enc += [
                ResBlock(widths[i], norm),
                nn.Conv2d(widths[i], widths[i + 1], 4, stride=2, padding=1),
            ]
        enc += [ResBlock(widths[-1], norm), _norm(norm, widths[-1]), nn.SiLU(),
                nn.Conv2d(widths[-1], 2 * latent_channels, 3, padding=1)]
        self.encoder = nn.Sequential(*enc)
        dec: list[nn.Module] = [
            nn.Conv2d(latent_channels, widths[-1], 3, padding=1),
            ResBlock(widths[-1], norm),
        ]
        for i in reversed(range(stages)):
            dec += [nn.Upsample(scale_factor=2, mode="nearest"),
                    nn.Conv2d(widths[i + 1], widths[i], 3, padding=1), ResBlock(widths[i], norm)]
        dec += [
            _norm(norm, widths[0]),
            nn.SiLU(),
            nn.Conv2d(widths[0], 12, 3, padding=1),
            nn.PixelShuffle(2),
        ]
        self.decoder = nn.Sequential(*dec)
        # Start with a small posterior variance: sampling noise of std 1 would swamp the
        # reconstruction signal in the first hundred steps of a one-minute training.
        with torch.no_grad():
            self.encoder[-1].bias[latent_channels:].fill_(-6.0)
        self.register_buffer("scaling_factor", torch.tensor(1.0))
        self.register_buffer("shift_factor", torch.tensor(0.0))

    def moments(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """images (N, 3, H, W) in [0, 1] -> (mean, logvar), each (N, C, H/f, W/f), unnormalised."""
        _check_images(images, self.downsample)
        mean, logvar = self.encoder(images * 2 - 1).chunk(2, dim=1)
        return mean, logvar.clamp(-30.0, 20.0)

    def decode_raw(self, z: torch.Tensor) -> torch.Tensor:
        """Unnormalised latents (N, C, h, w) -> images (N, 3, h*f, w*f), ~[0, 1]."""
        return self.decoder(z) * 0.5 + 0.5

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        mean, _ = self.moments(images)
        return (mean - self.shift_factor) * self.scaling_factor

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return self.decode_raw(latents / self.scaling_factor + self.shift_factor)


class DiffusersVAE(nn.Module):
    """A diffusers ``AutoencoderKL`` behind the ``SmallVAE`` interface: [0, 1] <-> [-1, 1], latents
    normalised with its config's ``scaling_factor`` and ``shift_factor`` (FLUX: 0.3611, 0.1159)."""

    def __init__(self, autoencoder):
        super().__init__()
        self.inner = autoencoder
        cfg = autoencoder.config
        self.downsample = 2 ** (len(cfg.block_out_channels) - 1)
        self.latent_channels = int(cfg.latent_channels)
        self.scale = float(cfg.scaling_factor)
        self.shift = float(getattr(cfg, "shift_factor", None) or 0.0)
        self.arch = {"kind": "diffusers-AutoencoderKL", "downsample": self.downsample,
                     "latent_channels": self.latent_channels}

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        _check_images(images, self.downsample)
        mean = self.inner.encode(images * 2 - 1).latent_dist.mean
        return (mean - self.shift) * self.scale

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return self.inner.decode(latents / self.scale + self.shift).sample * 0.5 + 0.5


def _check_images(images: torch.Tensor, f: int) -> None:
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"VAE.encode: expected images (N, 3, H, W), got {tuple(images.shape)}")
    if images.shape[-1] % f or images.shape[-2] % f:
        raise ValueError(f"VAE.encode: image size {tuple(images.shape[-2:])} is not a multiple of "
                         f"the VAE's downsampling factor {f}")


def build_vae(model_cfg=None, *, channels: int = 32, **arch) -> SmallVAE:
    """A fresh ``SmallVAE`` with ``ModelConfig.vae_downsample`` / ``latent_channels`` (or the
    keyword arguments ``downsample``, ``latent_channels``, ``norm``; new VAEs are local:
    ``norm="pixel"``)."""
    arch.setdefault("norm", "pixel")
    if model_cfg is not None:
        arch.setdefault("downsample", model_cfg.vae_downsample)
        arch.setdefault("latent_channels", model_cfg.latent_channels)
    return SmallVAE(channels=channels, **arch)


def save_vae(vae: SmallVAE, directory: str | Path) -> None:
    """``model.safetensors`` + ``arch.json`` into ``directory`` (created)."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    save_file(
        {k: v.detach().cpu().contiguous() for k, v in vae.state_dict().items()},
        str(d / WEIGHTS_FILE),
    )
    (d / ARCH_FILE).write_text(json.dumps(vae.arch, indent=1))


def load_vae(path: str | Path) -> nn.Module:
    """Our VAE (``arch.json`` + ``model.safetensors``) or a diffusers AutoencoderKL directory
    (``config.json`` with ``_class_name`` AutoencoderKL + its weights), in eval mode, frozen."""
    d = Path(path)
    if (d / ARCH_FILE).is_file():
        from medq.models.io import load_state_verified, read_weights

        arch = json.loads((d / ARCH_FILE).read_text())
        if arch.get("kind") != KIND:
            raise ValueError(f"{d / ARCH_FILE}: kind = {arch.get('kind')!r}, expected {KIND!r}")
        vae = SmallVAE(**{k: v for k, v in arch.items() if k != "kind"})
        if not (d / WEIGHTS_FILE).is_file():
            raise FileNotFoundError(f"{d}: has {ARCH_FILE} but no {WEIGHTS_FILE}")
        load_state_verified(vae, read_weights(d / WEIGHTS_FILE), source=str(d / WEIGHTS_FILE),
                            weights="vae")
    elif (d / "config.json").is_file():
        cls = json.loads((d / "config.json").read_text()).get("_class_name")
        if cls != "AutoencoderKL":
            raise ValueError(
                f"{d / 'config.json'}: _class_name = {cls!r}, expected 'AutoencoderKL'"
            )
        from diffusers import AutoencoderKL

        vae = DiffusersVAE(AutoencoderKL.from_pretrained(str(d), local_files_only=True))
    else:
        raise FileNotFoundError(
            f"VAE directory {d}: found neither {ARCH_FILE} (ours; train it with "
            f"`python -m train vae`) nor config.json (a diffusers AutoencoderKL)"
        )
    return vae.eval().requires_grad_(False)
