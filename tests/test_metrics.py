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


def test_random_backbone_is_named_as_a_secondary_distance_never_fid():
    bb = M.feature_extractor("randresnet18")
    assert bb.name == "randresnet18" and bb.fd_column == "fd_randresnet18"
    assert bb.kid_column == "kid_randresnet18" and "NOT Inception" in bb.description
    x = torch.rand(2, 3, 299, 299) * 255
    assert torch.equal(bb(x), M.feature_extractor("randresnet18")(x))  # seeded weights
    assert M.feature_backbones("none") == ()
    assert [b.name for b in M.feature_backbones("randresnet18")] == ["randresnet18"]
    with pytest.raises(ValueError, match="expected one of auto, inception, randresnet18, none"):
        M.feature_backbones("vgg")


def test_frechet_clamped_and_unpaired_kid_is_clean_fids():
    rng = np.random.default_rng(1)
    a, c = rng.normal(size=(39, 16)), rng.normal(loc=0.5, size=(39, 16))
    assert 0.0 <= M.frechet_distance(a, a) < 1e-9  # round-off never makes it negative
    value, lo, hi = M.kid_interval(a, c)
    assert value == pytest.approx(M.kid(a, c, seed=0), rel=1e-9)  # clean-fid's, whole set
    assert lo < value < hi and hi - lo > 0  # a real spread, unlike 100 identical "subsets"
    assert M.kid_interval(a, c) == (value, lo, hi)  # deterministic
    assert all(math.isnan(v) for v in M.kid_interval(a[:2], c))
    more = np.concatenate([c, rng.normal(loc=0.5, size=(2, 16))])  # unequal sizes: unpaired only
    assert math.isfinite(M.kid_interval(a, more)[0])
    with pytest.raises(ValueError, match="39 and 41 rows"):
        M.kid_interval(a, more, paired=True)


@pytest.mark.parametrize("n1,n2,dims", [(300, 280, 16), (24, 24, 64), (20, 30, 128)])
def test_frechet_distance_is_clean_fids_formula_without_sqrtm(n1, n2, dims):
    """Both routes (sets larger than D: eigendecompositions; smaller: the nuclear norm of the
    N1 x N2 cross product) give clean-fid's value; with fewer samples than dimensions its sqrtm
    of a singular product is the less exact one, hence the tolerance."""
    import contextlib
    import io
    import warnings

    from cleanfid import fid

    rng = np.random.default_rng(dims)
    a = np.abs(rng.normal(size=(n1, dims))) ** 1.5
    b = np.abs(rng.normal(loc=0.1, size=(n2, dims))) ** 1.4
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = fid.frechet_distance(a.mean(0), np.cov(a, rowvar=False), b.mean(0),
                                   np.cov(b, rowvar=False))
    assert M.frechet_distance(a, b) == pytest.approx(ref, rel=1e-6)


def _paired_sets(n, rng, shift=0.2, dims=16):
    """Targets y and outputs made *of* them (x_i = 1.1 y_i + noise + shift)."""
    y = rng.normal(size=(n, dims))
    return 1.1 * y + 0.5 * rng.normal(size=y.shape) + shift, y


def test_paired_kid_is_unbiased_where_the_all_pairs_estimator_rewards_fidelity():
    """Outputs made of their own targets: the all-pairs (clean-fid) estimator counts
    k(output_i, target_i) in the cross term, so it comes out far below the distance between the
    two distributions (even negative); the paired MMD^2_u leaves those terms out and is centred on
    it. The reference value: the same distributions sampled independently (no pairing)."""
    rng = np.random.default_rng(2)
    x_far, _ = _paired_sets(600, rng)
    _, y_far = _paired_sets(600, rng)
    truth = M.kid_interval(x_far, y_far)[0]  # independent samples: unbiased either way
    paired, classic, covered = [], [], 0
    for _ in range(60):
        x, y = _paired_sets(40, rng)
        v, lo, hi = M.kid_interval(x, y, paired=True)
        paired.append(v)
        classic.append(M.kid_interval(x, y)[0])
        covered += lo <= truth <= hi
    assert abs(np.mean(paired) - truth) < 0.2 * truth
    assert np.mean(classic) < 0  # the fidelity term swamps the distance
    assert covered >= 54  # the jackknife interval covers (95 % nominal, conservative)


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
        kids = [M.kid_interval(feats(x), clean, paired=True)[0]
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
    d, lo, hi, p = M.kid_difference(near, far, y)
    ka, kb = M.kid_interval(near, y, paired=True)[0], M.kid_interval(far, y, paired=True)[0]
    assert d == pytest.approx(ka - kb, rel=1e-9) and d < 0
    assert lo <= d <= hi < 0
    # A huge effect gets a tiny p, not the 1 / n_boot floor a bootstrap gives (Holm 0.049).
    assert p < 1e-6
    same = M.kid_difference(near, near, y)
    assert same == (0.0, 0.0, 0.0, 1.0)
    assert all(math.isnan(v) for v in M.kid_difference(near[:2], far[:2], y[:2]))


def test_kid_difference_p_keeps_its_level_and_finds_a_real_difference():
    """Two modes equally far from the targets (exchangeable): p < 0.05 in at most ~5 % of sets
    (the jackknife is conservative); one mode clearly farther: found in most sets."""
    rng = np.random.default_rng(3)
    null_p, alt_p = [], []
    for _ in range(200):
        y = rng.normal(size=(40, 16))
        null_p.append(M.kid_difference(y + 0.5 * rng.normal(size=y.shape),
                                       y + 0.5 * rng.normal(size=y.shape), y)[3])
    for _ in range(50):
        y = rng.normal(size=(40, 16))
        alt_p.append(M.kid_difference(y + 0.3 * rng.normal(size=y.shape),
                                      y + 0.9 * rng.normal(size=y.shape), y)[3])
    assert np.mean(np.asarray(null_p) < 0.05) <= 0.08
    assert np.mean(np.asarray(alt_p) < 0.05) >= 0.5
    assert min(alt_p) < 1e-3  # under the old bootstrap's 1 / 1000 floor


def test_psnr_eroded_fov_is_psnr_over_the_ssim_fov_windows_centres():
    """The main PSNR column leaves out the rim band: an output wrong only in the rim band scores
    the cap there, while psnr_fov (every FOV pixel) sees the error."""
    p, t = _pair(size=64, noise=0.1)
    mask = _disc(2, 64, 30)
    core = M.eroded_fov(mask)
    rim_only = torch.where(core > 0, t, p)  # exact inside the eroded FOV, noisy in the rim band
    m = M.image_metrics(rim_only, t, mask)
    assert (m["psnr_eroded_fov"] == M.PSNR_CAP_DB).all() and (m["psnr_fov"] < 40).all()
    assert torch.allclose(M.psnr_eroded_fov(p, t, mask), M.psnr(p, t, core))
    thin = torch.zeros(2, 1, 64, 64)
    thin[..., 30:36, :] = 1  # no SSIM window fits: n/a, as ssim_fov
    assert torch.isnan(M.image_metrics(p, t, thin)["psnr_eroded_fov"]).all()
    assert torch.isnan(M.image_metrics(p, t)["psnr_eroded_fov"]).all()  # no mask
    assert list(M.image_metrics(p, t, mask)) == list(M.IMAGE_METRICS)


@pytest.mark.parametrize("size", [256, 512])
def test_ms_ssim_at_working_sizes(size):
    """The working sizes (256, 512 px) have MS-SSIM, whole and inside a disc; the disc variant with
    an all-ones mask is torchmetrics' value."""
    p, t = _pair(n=1, size=size, noise=0.05)
    mask = _disc(1, size, size // 2 - 4)
    assert M.ms_ssim_unsupported_reason(size, size) is None
    whole, fov = M.ms_ssim(p, t).item(), M.ms_ssim(p, t, mask).item()
    assert 0 < whole < 1 and 0 < fov < 1 and math.isfinite(fov)
    assert M.ms_ssim(p, t, torch.ones(1, 1, size, size)).item() == pytest.approx(whole, abs=1e-5)
    assert M.ms_ssim(t, t, mask).item() == pytest.approx(1.0, abs=1e-6)
    assert "176" in M.ms_ssim_unsupported_reason(175, 175)
