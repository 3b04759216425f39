"""medq.metrics against scikit-image and torchmetrics; masks, Y channel, MS-SSIM size rule,
FD/KID."""

import math

import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio as sk_psnr
from skimage.metrics import structural_similarity

from medq import metrics as M


def _pair(n=2, size=64, noise=0.1, seed=0):
    g = torch.Generator().manual_seed(seed)
    t = torch.rand(n, 3, size, size, generator=g)
    return (t + noise * torch.randn(n, 3, size, size, generator=g)).clamp(0, 1), t


def test_psnr_matches_skimage_per_image():
    p, t = _pair(noise=0.05)
    p[1] = (t[1] + 0.2).clamp(0, 1)  # a different error level: a pooled PSNR would differ
    ours = M.psnr(p, t)
    for i in range(2):
        ref = sk_psnr(t[i].numpy(), p[i].numpy(), data_range=1.0)
        assert ours[i].item() == pytest.approx(ref, abs=1e-3)


def _sk_map(p, t):
    """scikit-image's SSIM map (H, W), averaged over channels, and its valid-window mean."""
    val, full = structural_similarity(t.permute(1, 2, 0).numpy(), p.permute(1, 2, 0).numpy(),
                                      channel_axis=2, gaussian_weights=True, sigma=1.5,
                                      use_sample_covariance=False, data_range=1.0, full=True)
    return full.mean(axis=2), val


def test_ssim_equals_skimage():
    p, t = _pair(size=96)
    ours = M.ssim(p, t)
    for i in range(2):
        assert ours[i].item() == pytest.approx(_sk_map(p[i], t[i])[1], abs=1e-5)


def _disc(n, size, radius):
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    c = (size - 1) / 2
    return ((yy - c) ** 2 + (xx - c) ** 2 <= radius ** 2).float().expand(n, 1, size, size).clone()


def test_ssim_fov_is_skimage_map_over_the_eroded_fov():
    from scipy.ndimage import binary_erosion

    p, t = _pair(size=64, noise=0.3)
    mask = _disc(2, 64, 30)
    p, t = p * mask, t * mask  # black outside the disc, as fundus images are
    ours = M.ssim(p, t, mask)
    for i in range(2):
        smap, _ = _sk_map(p[i], t[i])
        eroded = binary_erosion(mask[i, 0].numpy() > 0.5, structure=np.ones((11, 11)),
                                border_value=0)
        assert np.array_equal(M.eroded_fov(mask[i:i + 1])[0, 0].numpy() > 0.5, eroded)
        assert ours[i].item() == pytest.approx(float(smap[eroded].mean()), abs=1e-5)
    # The rim (windows reaching the shared black border) counts no more: the old number, over
    # every FOV pixel, flattered the pair.
    from torchmetrics.functional.image import structural_similarity_index_measure as tm_ssim

    _, tm_map = tm_ssim(p, t, gaussian_kernel=True, sigma=1.5, kernel_size=11, data_range=1.0,
                        reduction="none", return_full_image=True)
    m = mask.expand_as(tm_map)
    rim_included = (tm_map * m).sum(dim=(1, 2, 3)) / m.sum(dim=(1, 2, 3))
    assert (rim_included > ours + 0.01).all()


def test_ssim_undefined_is_nan_with_reason():
    p, t = _pair(size=64)
    thin = torch.zeros(2, 1, 64, 64)
    thin[..., 30:36, :] = 1  # 6 px high: no 11-px window fits
    assert torch.isnan(M.ssim(p, t, thin)).all()
    assert "no 11-px window" in M.ssim_unsupported_reason(64, 64, thin[0])
    small_p, small_t = _pair(size=8)
    assert torch.isnan(M.ssim(small_p, small_t)).all()
    assert "smaller than the 11-px window" in M.ssim_unsupported_reason(8, 8)
    assert M.ssim_unsupported_reason(64, 64, _disc(1, 64, 30)[0]) is None


def test_ms_ssim_small_images_nan_with_reason_and_masked_agrees():
    p, t = _pair(size=64)
    assert torch.isnan(M.ms_ssim(p, t)).all()
    assert "176" in M.ms_ssim_unsupported_reason(64, 64)
    p, t = _pair(n=1, size=176)
    ones = torch.ones(1, 1, 176, 176)
    assert M.ms_ssim(p, t, ones).item() == pytest.approx(M.ms_ssim(p, t).item(), abs=1e-5)
    assert 0 < M.ms_ssim(p, t).item() < 1


def test_y_channel_bt601():
    white, black = torch.ones(1, 3, 4, 4), torch.zeros(1, 3, 4, 4)
    assert M.rgb_to_y(white).flatten()[0].item() == pytest.approx(235 / 255, abs=1e-4)
    assert M.rgb_to_y(black).flatten()[0].item() == pytest.approx(16 / 255, abs=1e-6)
    p, t = _pair()
    y = M.image_metrics(p, t, channel="y")
    assert y["psnr"][0] != M.image_metrics(p, t)["psnr"][0]


def test_frechet_and_kid():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(200, 8)), rng.normal(size=(200, 8))
    c = rng.normal(loc=2.0, size=(200, 8))
    assert M.frechet_distance(a, b) < 1.0 < M.frechet_distance(a, c)
    assert M.kid(a, c, seed=0) == M.kid(a, c, seed=0)
    assert M.kid(a, b) < M.kid(a, c)
    assert math.isnan(M.kid(a[:1], b)) and math.isnan(M.frechet_distance(a[:1], b))


def test_backbone_names_never_fid_without_inception(monkeypatch, tmp_path):
    monkeypatch.delenv(M.INCEPTION_ENV, raising=False)
    monkeypatch.setattr(M.tempfile, "gettempdir", lambda: str(tmp_path))
    bb = M.feature_extractor()
    assert bb.name == "randresnet18" and bb.fd_column == "fd_randresnet18"
    x = torch.rand(2, 3, 299, 299) * 255
    assert torch.equal(bb(x), M.feature_extractor("randresnet18")(x))  # seeded weights
    monkeypatch.setenv(M.INCEPTION_ENV, str(tmp_path / "nope.pt"))
    with pytest.raises(FileNotFoundError, match="MEDQ_INCEPTION"):
        M.feature_extractor()


def test_frechet_clamped_and_kid_interval():
    rng = np.random.default_rng(1)
    a, c = rng.normal(size=(39, 16)), rng.normal(loc=0.5, size=(39, 16))
    assert M.frechet_distance(a, a) == 0.0  # sqrtm round-off made it slightly negative
    value, lo, hi = M.kid_interval(a, c, seed=0, n_boot=300)
    assert value == pytest.approx(M.kid(a, c, seed=0), rel=1e-9)  # clean-fid's, whole set
    assert lo < value < hi and hi - lo > 0  # a real spread, unlike 100 identical "subsets"
    assert M.kid_interval(a, c, seed=0, n_boot=300) == (value, lo, hi)  # seeded
    assert all(math.isnan(v) for v in M.kid_interval(a[:1], c))


def _degraded_series(images: torch.Tensor, kind: str) -> list[torch.Tensor]:
    from medq.data.tasks import gauss_blur

    g = torch.Generator().manual_seed(0)
    if kind == "blur":
        return [torch.stack([gauss_blur(im, s) for im in images]) for s in (0.8, 1.6, 3.2)]
    return [(images + s * torch.randn(images.shape, generator=g)).clamp(0, 1)
            for s in (0.03, 0.1, 0.3)]


def _assert_distance_grows(images: torch.Tensor):
    """The stand-in backbone's Frechet distance and KID to the clean set grow with blur sigma and
    noise level: what "useful to rank modes" claims."""
    bb = M.feature_extractor("randresnet18")

    def feats(x):
        x299 = torch.nn.functional.interpolate(x, size=(299, 299), mode="bicubic",
                                               align_corners=False)
        return bb((x299.clamp(0, 1) * 255)).double().numpy()

    clean = feats(images)
    for kind in ("blur", "noise"):
        fds = [M.frechet_distance(feats(x), clean) for x in _degraded_series(images, kind)]
        kids = [M.kid_interval(feats(x), clean, n_boot=1)[0]
                for x in _degraded_series(images, kind)]
        assert fds == sorted(fds) and fds[0] < fds[-1], (kind, fds)
        assert kids == sorted(kids), (kind, kids)


@pytest.mark.slow
def test_random_backbone_distance_grows_with_degradation_synthetic(tmp_path):
    from medq.config import DataConfig
    from medq.data import build_dataset

    ds = build_dataset(DataConfig(num_images=16, image_size=64, cache_dir=str(tmp_path)), "all",
                       tasks=["sr4"])
    _assert_distance_grows(torch.stack([ds[i]["target"] for i in range(16)]))


@pytest.mark.slow
def test_random_backbone_distance_grows_with_degradation_real(fundus_samples):
    from PIL import Image

    paths = sorted((fundus_samples / "drive-train" / "images").glob("*"))[:16]
    if len(paths) < 10:
        pytest.skip("DRIVE training images not present")
    imgs = [torch.from_numpy(np.asarray(
        Image.open(p).convert("RGB").resize((128, 128), Image.BICUBIC)).copy()) for p in paths]
    _assert_distance_grows(torch.stack(imgs).permute(0, 3, 1, 2).float() / 255)


def test_image_features_do_not_depend_on_batch_neighbours_or_position(tmp_path):
    """Fixed-size passes: an image's features are bit-identical whatever else is embedded with
    it and wherever it sits; they are clean-fid's (its own loader, one unpadded batch) to 1e-4."""
    from cleanfid import fid
    from PIL import Image

    rng = np.random.default_rng(0)
    paths = []
    for i in range(M.FEATURE_BATCH + 3):
        p = tmp_path / f"{i}.png"
        Image.fromarray(rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)).save(p)
        paths.append(p)
    bb = M.feature_extractor("randresnet18")
    all_ = M.image_features(paths, bb)
    assert all_.shape == (len(paths), bb.dims) and all_.dtype == np.float64
    alone = M.image_features([paths[5]], bb)
    moved = M.image_features(paths[5:] + paths[:5], bb)
    assert np.array_equal(alone[0], all_[5]) and np.array_equal(moved[0], all_[5])
    assert np.array_equal(moved[-1], all_[4])
    ref = fid.get_files_features([str(p) for p in paths], model=bb, num_workers=0,
                                 batch_size=len(paths), device=torch.device("cpu"), mode="clean",
                                 verbose=False)
    assert np.allclose(all_, ref, atol=1e-4) and not np.allclose(all_[0], all_[1], atol=1e-3)


def test_kid_difference_is_the_paired_difference_of_the_two_kids():
    rng = np.random.default_rng(0)
    y = rng.normal(size=(40, 16))
    near = y + 0.1 * rng.normal(size=y.shape)
    far = 1.5 * y + 1.0 + 0.5 * rng.normal(size=y.shape)
    d, lo, hi, p = M.kid_difference(near, far, y, n_boot=300)
    ka, kb = M.kid_interval(near, y)[0], M.kid_interval(far, y)[0]
    assert d == pytest.approx(ka - kb, rel=1e-9) and d < 0
    assert lo <= d <= hi < 0 and p == pytest.approx(1 / 300)
    same = M.kid_difference(near, near, y, n_boot=100)
    assert same[:3] == (0.0, 0.0, 0.0) and same[3] == 1.0
    assert all(math.isnan(v) for v in M.kid_difference(near[:2], far[:2], y[:2]))
