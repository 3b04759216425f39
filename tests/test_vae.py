"""Our VAE (shapes, normalisation, save/load, a short training on real fundus images) and the
diffusers AutoencoderKL path (a small random one saved to a temp dir; nothing is downloaded)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from medq.metrics import psnr
from medq.models import CheckpointMismatchError, DiffusersVAE, build_vae, load_vae, save_vae
from medq.models.vae_train import reconstruction_psnr, smooth_random_images, train_vae

REAL_PSNR_QUICK = 15.0
"""dB reached on 64 px real fundus images by the 40-step in-test training of a narrow VAE
(measured 16.9 dB; untrained 9.4 dB): proves the recipe fits fundus content quickly."""
REAL_PSNR_TRAINED = 22.0
"""dB of the shipped VAE (``weights/vae``, synthetic-trained) on the real images, which it never
saw."""
RUNS_VAE = Path(__file__).resolve().parents[1] / "weights" / "vae"


@pytest.mark.parametrize("f", [4, 8])
def test_shapes_and_differentiable_decode(f):
    vae = build_vae(None, downsample=f, latent_channels=4, channels=8)
    x = torch.rand(2, 3, 64, 64)
    z = vae.encode(x)
    assert z.shape == (2, 4, 64 // f, 64 // f)
    assert torch.equal(z, vae.encode(x))  # deterministic: the posterior mean
    z = z.detach().requires_grad_(True)
    out = vae.decode(z)
    assert out.shape == (2, 3, 64, 64)
    out.mean().backward()
    assert z.grad is not None and z.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="not a multiple"):
        vae.encode(torch.rand(1, 3, 62, 62))


def test_scale_and_shift_normalise_latents_and_decode_inverts_them():
    vae = build_vae(None, downsample=4, latent_channels=4, channels=8)
    x = smooth_random_images(8, 32)
    metrics = train_vae(vae, x, x[:2], steps=2, batch_size=4)
    with torch.no_grad():
        z = vae.encode(x)
    assert abs(float(z.mean())) < 1e-4 and abs(float(z.std()) - 1) < 1e-3
    assert metrics["scaling_factor"] == pytest.approx(float(vae.scaling_factor))
    raw = vae.moments(x)[0]
    assert torch.allclose(vae.decode(z), vae.decode_raw(raw), atol=1e-5)


def test_save_load_round_trip_and_errors(tmp_path):
    vae = build_vae(None, downsample=8, latent_channels=3, channels=8)
    with torch.no_grad():
        vae.scaling_factor.fill_(0.7)
    save_vae(vae, tmp_path / "v")
    loaded = load_vae(tmp_path / "v")
    a, b = vae.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert loaded.downsample == 8 and loaded.latent_channels == 3 and not loaded.training
    assert not any(p.requires_grad for p in loaded.parameters())
    arch = json.loads((tmp_path / "v" / "arch.json").read_text())
    (tmp_path / "v" / "arch.json").write_text(json.dumps({**arch, "channels": 16}))
    with pytest.raises(CheckpointMismatchError, match="shape-mismatched"):
        load_vae(tmp_path / "v")
    with pytest.raises(FileNotFoundError, match="python -m train vae"):
        load_vae(tmp_path / "empty")


def test_diffusers_autoencoderkl_directory(tmp_path):
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    ae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(8, 16),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=32,
        scaling_factor=0.5,
        shift_factor=0.1,
    )
    ae.save_pretrained(tmp_path / "ae")
    vae = load_vae(tmp_path / "ae")
    assert isinstance(vae, DiffusersVAE) and vae.downsample == 2 and vae.latent_channels == 4
    x = torch.rand(2, 3, 32, 32)
    z = vae.encode(x)
    with torch.no_grad():
        ref = (ae.eval().encode(x * 2 - 1).latent_dist.mean - 0.1) * 0.5
        ref_img = ae.decode(z / 0.5 + 0.1).sample * 0.5 + 0.5
    assert z.shape == (2, 4, 16, 16) and torch.allclose(z, ref, atol=1e-5)
    assert torch.allclose(vae.decode(z), ref_img, atol=1e-5)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "config.json").write_text(json.dumps({"_class_name": "UNet2DModel"}))
    with pytest.raises(ValueError, match="expected 'AutoencoderKL'"):
        load_vae(tmp_path / "other")


def _real_images(root: Path, size: int = 64) -> torch.Tensor:
    """The real fundus samples as (N, 3, size, size) in [0, 1]: centre square crop, area resize."""
    import numpy as np
    from PIL import Image

    paths = sorted((root / "eyeq" / "original_img").glob("*.jpeg")) + sorted(
        (root / "drive" / "images").glob("*.tif")
    )
    out = []
    for p in paths:
        with Image.open(p) as im:
            im.draft("RGB", (4 * size, 4 * size))
            im = im.convert("RGB")
            s = min(im.size)
            left, top = (im.size[0] - s) // 2, (im.size[1] - s) // 2
            im = im.crop((left, top, left + s, top + s)).resize((size, size), Image.Resampling.BOX)
            out.append(torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1).float() / 255)
    if not out:
        pytest.skip(f"no fundus images under {root}")
    return torch.stack(out)


def test_quick_training_reconstructs_real_fundus_images(fundus_samples):
    torch.manual_seed(0)
    real = _real_images(fundus_samples)
    # Train on the real images plus random crops-and-rescales of them (more variety), test on the
    # real images themselves: the claim is that the architecture + recipe fit fundus content fast.
    big = F.interpolate(real, scale_factor=2, mode="bilinear", align_corners=False)
    crops = torch.cat([big[:, :, i : i + 64, j : j + 64] for i in (0, 32, 64) for j in (0, 32, 64)])
    vae = build_vae(None, downsample=4, latent_channels=4, channels=8)
    before = reconstruction_psnr(vae, real)
    metrics = train_vae(vae, torch.cat([real, crops]), real, steps=40, batch_size=8, lr=5e-3)
    assert metrics["psnr_val"] > REAL_PSNR_QUICK > before, (metrics["psnr_val"], before)


def test_trained_vae_on_real_fundus_images(fundus_samples):
    if not (RUNS_VAE / "arch.json").is_file():
        pytest.fail(f"no shipped VAE at {RUNS_VAE} (restore weights/ or run `make weights`)")
    vae = load_vae(RUNS_VAE)
    real = _real_images(fundus_samples, 64)
    assert reconstruction_psnr(vae, real) > REAL_PSNR_TRAINED
    assert (
        float(psnr(real, real.flip(-1)).mean()) < REAL_PSNR_TRAINED
    )  # the threshold is not trivial


def test_train_vae_command_writes_skips_and_forces(tmp_path, capsys):
    import argparse

    from train import vae_cmd

    out = tmp_path / "vae"
    parser = argparse.ArgumentParser()
    vae_cmd.add_arguments(parser)
    argv = [
        "--set",
        f"model.vae={out}",
        "--set",
        "model.tile_size=32",
        "--set",
        "data.image_size=32",
        "--set",
        "data.num_images=6",
        "--set",
        f"data.cache_dir={tmp_path / 'cache'}",
        "--steps",
        "2",
        "--batch-size",
        "2",
        "--channels",
        "8",
        "--no-progress",
    ]
    assert vae_cmd.main(parser.parse_args(argv)) == 0
    assert {p.name for p in out.iterdir()} == {"model.safetensors", "arch.json", "metrics.json"}
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == 2 and metrics["image_size"] == 32 and metrics["psnr_val"] > 0
    assert load_vae(out).downsample == 2  # ModelConfig.vae_downsample
    before = (out / "model.safetensors").stat().st_mtime_ns
    assert vae_cmd.main(parser.parse_args(argv)) == 0
    assert "already at" in capsys.readouterr().out
    assert (out / "model.safetensors").stat().st_mtime_ns == before
    assert vae_cmd.main(parser.parse_args(argv + ["--force"])) == 0
    assert not list(tmp_path.glob(".tmp-*"))
