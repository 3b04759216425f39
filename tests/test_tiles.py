"""Full-size images from a small tile: training crops (medq.data.tiles), tiled generation
(medq.models.adapter: tile_starts, tile_window, TiledVelocity), the pixel-residual rendering, and
the report's own condition in training (medq.models.sequence.training_mask)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from fakes.models import tiny_model_config
from medq.config import DataConfig, ModelConfig, SampleConfig
from medq.data import build_dataset, collate
from medq.data.tasks import bicubic_resize
from medq.data.tiles import TrainTiles, condition_image, pick_tile, rim_band, vessel_weight
from medq.models import MiniBagel, MiniBagelAdapter, Tokenizer, build_vae, training_forward
from medq.models.adapter import TiledVelocity, tile_starts, tile_window
from medq.models.sequence import PROMPT, pack_text, sequence_mask
from medq.models.transformer import patchify

WORDS = ["upscale", "this", "fundus", "image", "by", "4x", ".", "quality", ":", "good",
         "describe", "the", "and", "any", "signs", "of", "diabetic", "retinopathy"]
SR4 = "upscale this fundus image by 4x."


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def cfg() -> ModelConfig:
    return tiny_model_config(prior_conv_channels=8)


@pytest.fixture
def tok() -> Tokenizer:
    return Tokenizer(WORDS)


def trained_like(cfg, tok) -> MiniBagel:
    """A model whose every head is non-zero (an untrained one predicts the condition exactly)."""
    model = MiniBagel(cfg, tok.vocab_size).eval()
    for layer in (model.llm2vae, model.cond2gen, model.out_conv, model.prior_net.net[-1],
                  model.prior_net.film):
        torch.nn.init.normal_(layer.weight, std=0.05)
    return model


# -- where tiles go ------------------------------------------------------------------------------


@pytest.mark.parametrize("length,tile,overlap", [(16, 16, 4), (40, 16, 4), (64, 16, 8),
                                                 (100, 16, 4), (17, 16, 8)])
def test_tiles_cover_the_latent_and_overlap_by_at_least_the_overlap(length, tile, overlap):
    starts = tile_starts(length, tile, overlap)
    assert starts[0] == 0 and starts[-1] + tile == max(length, tile)
    covered = np.zeros(max(length, tile), bool)
    for s in starts:
        covered[s:s + tile] = True
    assert covered.all()
    for a, b in zip(starts, starts[1:]):
        assert a + tile - b >= overlap  # neighbours share at least the overlap


def test_a_window_ramps_only_towards_another_tile():
    w = tile_window(16, 4, first=True, last=False)
    assert w[0] == 1 and w[-1] < 0.2 and torch.all(w > 0)
    assert torch.equal(tile_window(16, 4, first=True, last=True), torch.ones(16))
    inner = tile_window(16, 4, first=False, last=False)
    assert torch.equal(inner, inner.flip(0)) and inner[8] == 1


# -- tiled generation ----------------------------------------------------------------------------


def test_an_image_of_one_tile_is_exactly_the_untiled_model(cfg, tok, vae):
    """At the tile size there is one tile with weight 1: the blended velocity is the model's own
    velocity on the whole latent, bit for bit."""
    model = trained_like(cfg, tok)
    cond = torch.randn(2, cfg.latent_channels, 16, 16)
    x = torch.randn_like(cond)
    t = torch.full((2,), 0.7)
    tiled = TiledVelocity(model, tok, cond, [SR4, SR4], tile=16, overlap=4, batch=8)
    p = cfg.patch_size
    text = pack_text(tok, [SR4, SR4], None, cfg.max_text_len)
    n_tok = 16
    mask = sequence_mask(text, n_tok, n_tok)
    with torch.no_grad():
        _, _, v = model(text.ids, text.pos, mask, cond=patchify(cond, p), gen=patchify(x, p), t=t,
                        grid=(4, 4), prompt_mask=text.roles == PROMPT)
        from medq.models.transformer import unpatchify

        want = unpatchify(v, p, cfg.latent_channels, 16, 16)
        got = tiled(x, t)
    assert torch.allclose(got, want, atol=1e-6)


def test_blended_velocity_is_the_window_weighted_mean_of_the_tiles(cfg, tok):
    """Two overlapping tiles along x: wherever they overlap, the result is sum(w_k v_k) / sum(w_k)
    of the tiles' own velocities; elsewhere it is one tile's velocity."""
    model = trained_like(cfg, tok)
    cond = torch.randn(1, cfg.latent_channels, 16, 24)
    x, t = torch.randn_like(cond), torch.full((1,), 0.5)
    tiled = TiledVelocity(model, tok, cond, [SR4], tile=16, overlap=8, batch=1)
    with torch.no_grad():
        got = tiled(x, t)
        one = {s: TiledVelocity(model, tok, cond[..., s:s + 16], [SR4], tile=16, overlap=8,
                                batch=1)(x[..., s:s + 16], t) for s in (0, 8)}
    w0 = tile_window(16, 8, first=True, last=False)
    w1 = tile_window(16, 8, first=False, last=True)
    want = torch.zeros_like(got)
    total = torch.zeros(24)
    want[..., 0:16] += one[0] * w0
    want[..., 8:24] += one[8] * w1
    total[0:16] += w0
    total[8:24] += w1
    assert torch.allclose(got, want / total, atol=1e-5)


def test_tiles_leave_no_seam_where_the_model_is_local(cfg, tok, vae):
    """An untrained model without a prior net predicts x0 = the condition latent everywhere; the
    blended prediction of a multi-tile image is then exactly the condition too (the windows are a
    partition of unity, so tiles cannot leave a seam of their own), and with the pixel-residual
    rendering the one-step output is exactly the condition image."""
    plain = dataclasses.replace(cfg, prior_conv_channels=0)
    model = MiniBagel(plain, tok.vocab_size)
    vae2 = build_vae(plain, channels=8).eval()
    images = torch.rand(2, 3, 20, 24)  # x4 input of an 80 x 96 image: 5 x 6 tiles of 32 px
    ad = MiniBagelAdapter(model, vae2, tok, SampleConfig(onestep_t=1.0, onestep_draws=1),
                          output="onestep")
    out = ad.edit(images, [SR4, SR4], ["sr4", "sr4"], (80, 96), seed=[1, 2])
    cond_img = bicubic_resize(images, (80, 96))
    assert out.shape == (2, 3, 80, 96)
    assert torch.allclose(out, cond_img.clamp(0, 1), atol=1e-5)


def test_any_size_and_batch_give_each_image_its_own_output(cfg, tok, vae):
    """Non-square, not a multiple of the tile, smaller than a tile: one output of the asked size
    each; an image's output does not depend on the other images of its batch, nor on how many
    tiles go through the transformer at once."""
    model = trained_like(cfg, tok)
    sc = SampleConfig(steps=2, onestep_draws=2, tile_batch=3)
    ad = MiniBagelAdapter(model, vae, tok, sc, output="onestep")
    for size in ((24, 24), (40, 56)):
        x = torch.rand(2, 3, size[0] // 4, size[1] // 4)
        both = ad.edit(x, [SR4, SR4], ["sr4", "sr4"], size, seed=[3, 4])
        alone = ad.with_sample(tile_batch=64).edit(x[1:], [SR4], ["sr4"], size, seed=[4])
        assert both.shape == (2, 3, *size)
        assert torch.allclose(both[1:], alone, atol=1e-5)


def test_the_sample_is_tiled_like_the_onestep_output(cfg, tok, vae):
    """The Euler sampler blends the tiles' velocities at every step: a multi-tile sample is finite,
    in range, seeded, and differs between seeds."""
    model = trained_like(cfg, tok)
    ad = MiniBagelAdapter(model, vae, tok, SampleConfig(steps=3))
    x = torch.rand(1, 3, 12, 12)
    a = ad.edit(x, [SR4], ["sr4"], (48, 48), seed=[5])
    b = ad.edit(x, [SR4], ["sr4"], (48, 48), seed=[5])
    c = ad.edit(x, [SR4], ["sr4"], (48, 48), seed=[6])
    assert torch.equal(a, b) and not torch.allclose(a, c, atol=1e-4)
    assert torch.isfinite(a).all() and a.min() >= 0 and a.max() <= 1


def test_pixel_residual_renders_over_the_condition_image(cfg, tok, vae):
    """render(z) = cond_img + decode(z) - decode(cond): exactly the condition image at z = cond
    (the VAE's reconstruction error cancels), decode(z) without the residual."""
    model = trained_like(cfg, tok)
    ad = MiniBagelAdapter(model, vae, tok)
    cond_img = torch.rand(1, 3, 32, 32)
    cond = vae.encode(cond_img)
    assert torch.allclose(ad.render(cond, cond, cond_img), cond_img, atol=1e-6)
    z = cond + 0.1 * torch.randn_like(cond)
    assert torch.allclose(ad.render(z, cond, cond_img),
                          cond_img + vae.decode(z) - vae.decode(cond), atol=1e-6)
    plain = MiniBagelAdapter(MiniBagel(dataclasses.replace(cfg, pixel_residual=False),
                                       tok.vocab_size), vae, tok)
    assert torch.allclose(plain.render(z, cond, cond_img), vae.decode(z), atol=1e-6)


# -- training tiles ------------------------------------------------------------------------------


@pytest.fixture
def data(tmp_path) -> DataConfig:
    return DataConfig(num_images=8, num_test_images=2, image_size=128,
                      cache_dir=str(tmp_path / "cache"))


def test_a_training_tile_is_the_crop_of_the_whole_images_condition(data):
    """The SR condition of a tile is the bicubic upsampling of the whole image's downscale, cut
    where the target is cut (what tiled inference sees), not the upsampling of a cut input."""
    ds = build_dataset(data, "train")
    tiles = TrainTiles(ds, 32, seed=0, repeats=4)
    for k in range(12):
        item = tiles[k]
        whole = ds[k % len(ds)]
        cond = condition_image(whole)
        y, x = item["place"]
        assert torch.equal(item["target"], whole["target"][:, y:y + 32, x:x + 32])
        assert torch.equal(item["input"], cond[:, y:y + 32, x:x + 32])
        assert torch.equal(item["report_input"], bicubic_resize(whole["input"][None], 32)[0])
        assert item["report"] == whole["report"] and not item["real"]
    again = TrainTiles(ds, 32, seed=0, repeats=4)
    assert torch.equal(again[5]["target"], tiles[5]["target"])
    other = TrainTiles(ds, 32, seed=1, repeats=4)
    assert not all(torch.equal(other[k]["target"], tiles[k]["target"]) for k in range(6))


def test_tile_places_cover_the_rim_the_vessels_the_disc_and_the_macula():
    """Over many draws, crops land on the rim band, on vessel-like pixels, on the optic disc and on
    the macula of a synthetic fundus (where the generator draws them)."""
    from medq.data.synthetic import generate_fundus

    f = generate_fundus(3, 256)
    target = torch.from_numpy(f.image).permute(2, 0, 1).float() / 255
    mask = torch.from_numpy(f.mask.astype(np.float32))[None]
    vessels = vessel_weight(target, mask)
    rim = rim_band(mask)
    rng = np.random.default_rng(0)
    seen = np.zeros((256, 256), int)
    for _ in range(400):
        y, x = pick_tile(mask, 64, rng, vessels)
        assert 0 <= y <= 192 and 0 <= x <= 192
        seen[y:y + 64, x:x + 64] += 1
    top_vessels = vessels > np.quantile(vessels[mask[0].numpy() > 0], 0.9)
    assert (seen[rim] > 0).mean() > 0.95                  # nearly all of the rim band
    assert (seen[top_vessels] > 0).mean() > 0.95          # nearly all strong vessel pixels
    # the disc (brightest spot, nasal) and the macula (darkest spot near the centre)
    green = target[1].numpy()
    inside = mask[0].numpy() > 0
    disc = np.unravel_index(np.argmax(np.where(inside, green, -1)), green.shape)
    centre = green[96:160, 96:160]
    macula = np.unravel_index(np.argmin(centre), centre.shape)
    assert seen[disc] >= 10 and seen[macula[0] + 96, macula[1] + 96] >= 10


@pytest.mark.parametrize("report_size", [None, 64])
def test_report_in_training_sees_the_whole_image_and_the_image_the_tile(cfg, tok, vae, data,
                                                                        report_size):
    """A training batch of tiles carries the whole input at tile size (or at ``report_size``, a
    view larger than a tile, on its own token grid) for the report: the report's logits equal
    those of the inference layout [that image | question | report], and they do not change when
    the tile changes; the image's velocity does not change with the report image."""
    model = trained_like(cfg, tok)
    tiles = TrainTiles(build_dataset(data, "train"), 32, seed=0, repeats=2,
                       report_size=report_size)
    side = report_size or 32
    assert tiles[0]["report_input"].shape == (3, side, side)
    batch = collate([tiles[0], tiles[1]])
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    with torch.no_grad():
        fwd = training_forward(model, vae, tok, batch, generator=g())
        other_tile = dict(batch, input=torch.rand_like(batch["input"]),
                          target=torch.rand_like(batch["target"]))
        fwd_tile = training_forward(model, vae, tok, other_tile, generator=g())
        other_report = dict(batch, report_input=torch.rand_like(batch["report_input"]))
        fwd_report = training_forward(model, vae, tok, other_report, generator=g())
    targets = fwd.text_targets != -100
    assert targets.any()
    assert torch.allclose(fwd.text_logits[targets], fwd_tile.text_logits[targets], atol=1e-5)
    assert not torch.allclose(fwd.text_logits[targets], fwd_report.text_logits[targets],
                              atol=1e-4)
    assert torch.allclose(fwd.v_hat, fwd_report.v_hat, atol=1e-6)
    # the inference layout: the report image as the one condition
    from medq.data.text import REPORT_PROMPT

    rcond = patchify(vae.encode(batch["report_input"]), cfg.patch_size)
    text = pack_text(tok, None, list(batch["report"]), cfg.max_text_len,
                     questions=[REPORT_PROMPT] * 2)
    with torch.no_grad():
        _, logits, _ = model(text.ids, text.pos, sequence_mask(text, rcond.shape[1], 0),
                             cond=rcond, grid=(side // 8, side // 8))
    inf_targets = text.targets != -100
    assert torch.allclose(logits[inf_targets], fwd.text_logits[targets], atol=1e-5)


def test_real_tiles_come_only_from_the_train_images_and_carry_no_report(tmp_path, fundus_samples):
    """The development photographs mixed into training: only the split file's train ids, jittered
    crops at several working sizes, no report (they have no grade), the image tasks only."""
    from medq.training.task import MIX_SIZES

    real = []
    for size in (128, 0):
        cfg = DataConfig(source="drive", root=str(fundus_samples / "drive-train"),
                         split_file="configs/splits/drive_development.toml", image_size=size,
                         cache_dir=str(tmp_path / "c"))
        real.append(build_dataset(cfg, "train"))
    import tomllib

    split = tomllib.loads(open("configs/splits/drive_development.toml").read())
    for ds in real:
        assert set(ds.ids) == set(split["train"])
    base = build_dataset(DataConfig(num_images=8, num_test_images=2, image_size=128,
                                    cache_dir=str(tmp_path / "cache")), "train")
    tiles = TrainTiles(base, 32, seed=0, repeats=8, real=real, mix_fraction=0.5)
    items = [tiles[k] for k in range(40)]
    reals = [it for it in items if it["real"]]
    assert 8 < len(reals) < 32
    assert all(it["report"] is None for it in reals)
    assert all(it["id"].split("@")[0] in split["train"] for it in reals)
    assert {it["target"].shape[-1] for it in reals} == {32}
    assert 0 in MIX_SIZES


def test_the_synthetic_test_set_is_its_own_fresh_seed(data):
    """The test split is drawn with data.test_seed (never seen while developing): other ids and
    other pixels than every train and val image."""
    test = build_dataset(data, "test")
    seen = build_dataset(data, "train").ids + build_dataset(data, "val").ids
    assert len(test.ids) == data.num_test_images and not set(test.ids) & set(seen)
    assert all(i.startswith(f"syn{data.test_seed}_") for i in test.ids)
    train = build_dataset(data, "train")
    assert not np.array_equal(test.data["images"][0], train.data["images"][0])


# -- on real photographs, with the shipped base model --------------------------------------------


def _drive_val(fundus_samples, size: int, n: int):
    from medq.config import load_config

    cfg = load_config("control")
    data = dataclasses.replace(cfg.data, source="drive", root=str(fundus_samples / "drive-train"),
                               split_file="configs/splits/drive_development.toml",
                               image_size=size)
    ds = build_dataset(data, "val", tasks=["sr4"])
    return [ds[i] for i in range(min(n, len(ds)))]


@pytest.mark.slow
@pytest.mark.parametrize("output", ["onestep", "sample"])
def test_no_seam_and_no_token_grid_on_real_photographs(fundus_samples, output):
    """The shipped base model on development photographs of the val split at 512 px (121 tiles):
    the gradient energy across tile borders is within SEAM_TOLERANCE of the columns beside them,
    relative to the target's own (medq.metrics.artifacts.seam_ratio), and the spectrum shows no
    peak at the token pitch's harmonics beyond the target's plus PITCH_TOLERANCE
    (pitch_peaks): the windows blend the tiles, and the flow head's convolution crosses the
    token borders."""
    from medq.harness.load import load_run
    from medq.metrics.artifacts import pitch_peaks, seam_ratio

    seam_tolerance, pitch_tolerance = 0.10, 1.0
    model, _, info = load_run("weights/base", output=output)
    cfg = info["config"]
    pitch = cfg.model.patch_size * model.vae.downsample
    seams, pitches = [], []
    for item in _drive_val(fundus_samples, 512, 2):
        size = tuple(item["target"].shape[-2:])
        out = model.edit(item["input"][None], [item["instruction"]], ["sr4"], size, seed=[0])[0]
        starts = tile_starts(size[1] // model.vae.downsample,
                             cfg.model.tile_size // model.vae.downsample,
                             cfg.sample.tile_overlap // model.vae.downsample)
        f = model.vae.downsample
        borders = sorted({f * s for s in starts[1:]}
                         | {f * s + cfg.model.tile_size for s in starts[:-1]})
        for img, flip in ((out, False), (out, True)):
            pair = [(x.transpose(1, 2) if flip else x) for x in (img, item["target"], item["mask"])]
            seams.append((seam_ratio(pair[0], pair[2], borders),
                          seam_ratio(pair[1], pair[2], borders)))
        pitches.append((pitch_peaks(out, item["mask"], pitch),
                        pitch_peaks(item["target"], item["mask"], pitch)))
    out_seam, target_seam = np.mean(seams, axis=0)
    assert out_seam <= target_seam * (1 + seam_tolerance), seams
    out_peak = np.mean([p for p, _ in pitches], axis=0)
    target_peak = np.mean([t for _, t in pitches], axis=0)
    assert np.all(out_peak <= target_peak + pitch_tolerance), pitches
