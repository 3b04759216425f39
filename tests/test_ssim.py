"""SSIM / MS-SSIM: agreement with scikit-image and the libraries, gradients, masks, edge cases."""

import importlib

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from skimage.metrics import structural_similarity

from medq.losses import ssim, ssim_loss
from medq.losses.ssim import gaussian_taps


def sk_ssim(x: torch.Tensor, y: torch.Tensor, full: bool = False):
    """scikit-image reference per image, (C, H, W) float64, channels averaged."""
    return structural_similarity(x.double().numpy(), y.double().numpy(), gaussian_weights=True,
                                 sigma=1.5, use_sample_covariance=False, data_range=1.0,
                                 channel_axis=0, full=full)


def pair(shape, seed=0, noise=0.1, smooth=False):
    g = torch.Generator().manual_seed(seed)
    if smooth:
        x = F.interpolate(torch.rand(shape[0], shape[1], 6, 6, generator=g), size=shape[-2:],
                          mode="bicubic", align_corners=False).clamp(0, 1)
    else:
        x = torch.rand(shape, generator=g)
    y = (x + noise * torch.randn(shape, generator=g)).clamp(0, 1)
    return x, y


@pytest.mark.parametrize("shape,smooth", [((2, 3, 32, 45), False), ((3, 1, 11, 11), False),
                                          ((2, 3, 64, 64), True), ((1, 2, 40, 23), True)])
def test_agrees_with_skimage(shape, smooth):
    x, y = pair(shape, smooth=smooth)
    ours = ssim(x, y, reduction="none")
    ref = [sk_ssim(a, b) for a, b in zip(x, y)]
    np.testing.assert_allclose(ours.numpy(), ref, atol=1e-4)
    assert ssim(x, y).item() == pytest.approx(float(np.mean(ref)), abs=1e-4)
    assert ssim_loss(x, y).item() == pytest.approx(1 - float(np.mean(ref)), abs=1e-4)


def _load(path, size=128):
    img = Image.open(path).convert("RGB").resize((size, size), Image.BICUBIC)
    return torch.from_numpy(np.asarray(img, dtype=np.float32) / 255).permute(2, 0, 1)


def test_agrees_with_skimage_on_real_fundus(fundus_samples):
    paths = sorted((fundus_samples / "drive" / "images").glob("*.tif"))[:2]
    paths += sorted((fundus_samples / "eyeq" / "original_img").glob("*.jpeg"))[:2]
    if not paths:
        pytest.skip("no DRIVE/EyeQ images in the samples folder")
    x = torch.stack([_load(p) for p in paths])
    # a realistic degradation: 4x bicubic down and up
    y = F.interpolate(F.interpolate(x, scale_factor=0.25, mode="bicubic"), size=x.shape[-2:],
                      mode="bicubic").clamp(0, 1)
    ref = [sk_ssim(a, b) for a, b in zip(x, y)]
    np.testing.assert_allclose(ssim(x, y, reduction="none").numpy(), ref, atol=1e-4)


def test_agrees_with_libraries():
    pytorch_msssim = pytest.importorskip("pytorch_msssim")
    piq = pytest.importorskip("piq")
    x, y = pair((2, 3, 48, 48), smooth=True)
    ours = ssim(x, y, reduction="none")
    torch.testing.assert_close(ours, pytorch_msssim.ssim(x, y, data_range=1.0, size_average=False),
                               atol=1e-5, rtol=0)
    torch.testing.assert_close(ours, piq.ssim(x, y, data_range=1.0, downsample=False,
                                              reduction="none"), atol=1e-5, rtol=0)


def test_torchmetrics_interior_of_padded_map_matches():
    """torchmetrics pads (reflect) and averages the whole map; its map cropped by half a window
    is our valid map, so that mean must agree. The full-map mean differs measurably."""
    tm = pytest.importorskip("torchmetrics.functional.image")
    x, y = pair((2, 3, 40, 40), smooth=True)
    _, full_map = tm.structural_similarity_index_measure(
        x, y, data_range=1.0, gaussian_kernel=True, sigma=1.5, kernel_size=11, reduction="none",
        return_full_image=True)
    interior = full_map[..., 5:-5, 5:-5].mean(dim=(1, 2, 3))
    torch.testing.assert_close(ssim(x, y, reduction="none"), interior, atol=1e-5, rtol=0)


def test_gradient_matches_autograd_reference():
    """The hand-written backward equals autograd through pytorch-msssim's plain implementation."""
    pytorch_msssim = pytest.importorskip("pytorch_msssim")
    x, y = pair((2, 3, 30, 34), smooth=True)
    a = x.clone().requires_grad_(True)
    b = x.clone().requires_grad_(True)
    ssim(a, y).backward()
    pytorch_msssim.ssim(b, y, data_range=1.0).backward()
    torch.testing.assert_close(a.grad, b.grad, atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("masked", [False, True])
def test_gradcheck_float64(masked):
    g = torch.Generator().manual_seed(1)
    x = torch.rand(2, 2, 15, 16, dtype=torch.float64, generator=g).requires_grad_(True)
    y = torch.rand(2, 2, 15, 16, dtype=torch.float64, generator=g).requires_grad_(True)
    mask = None
    if masked:
        mask = torch.zeros(2, 1, 15, 16, dtype=torch.float64)
        mask[0, :, 1:14, 2:15] = 1
        mask[1] = 1
    def fn(a, b):
        return ssim(a, b, mask=mask, reduction="none")

    assert fn(x, y).dtype == torch.float64
    assert torch.autograd.gradcheck(fn, (x, y))


def _finite(x, y, **kw):
    x = x.clone().requires_grad_(True)
    v = ssim(x, y, **kw)
    v.backward()
    return v, x.grad


@pytest.mark.parametrize("case", ["same_constant", "different_constants", "near_uniform"])
def test_flat_images_are_finite(case):
    x = torch.full((1, 3, 24, 24), 0.5)
    y = {"same_constant": x.clone(), "different_constants": torch.full_like(x, 0.2),
         "near_uniform": x + 1e-6 * torch.randn_like(x)}[case]
    v, g = _finite(x, y)
    assert torch.isfinite(v) and torch.isfinite(g).all()
    if case == "same_constant":
        assert v.item() == pytest.approx(1.0, abs=1e-6)


def test_bf16_autocast_and_inputs_are_computed_in_float32():
    x, y = pair((1, 3, 32, 32), smooth=True)
    ref = ssim(x, y)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        v, g = _finite(x, y)
    assert v.dtype == torch.float32 and v.item() == pytest.approx(ref.item(), abs=1e-6)
    xb = x.bfloat16().requires_grad_(True)
    vb = ssim(xb, y.bfloat16())
    vb.backward()
    assert vb.dtype == torch.bfloat16 and torch.isfinite(xb.grad.float()).all()
    assert vb.float().item() == pytest.approx(
        ssim(xb.detach().float(), y.bfloat16().float()).item(), abs=1e-2
    )


def test_all_zero_mask_gives_one_and_zero_gradient():
    x, y = pair((2, 3, 24, 24))
    mask = torch.ones(2, 1, 24, 24)
    mask[1] = 0
    v = ssim(x, y, mask=mask, reduction="none")
    assert v[1].item() == 1.0
    x2 = x.clone().requires_grad_(True)
    ssim(x2, y, mask=mask, reduction="none")[1].backward()
    assert torch.count_nonzero(x2.grad) == 0
    thin = torch.zeros(2, 1, 24, 24)
    thin[:, :, 5:15, :] = 1  # 10 rows: no 11x11 window fits
    assert ssim(x, y, mask=thin).item() == 1.0


def test_full_mask_equals_unmasked():
    x, y = pair((2, 3, 30, 30))
    torch.testing.assert_close(ssim(x, y, mask=torch.ones(2, 1, 30, 30), reduction="none"),
                               ssim(x, y, reduction="none"))


def test_mask_is_window_inside_field_of_view():
    """Masked SSIM = mean of the skimage map over the windows that lie wholly inside the mask."""
    x, y = pair((1, 3, 40, 40), smooth=True, noise=0.2)
    yy, xx = torch.meshgrid(torch.arange(40.), torch.arange(40.), indexing="ij")
    mask = (((yy - 19.5) ** 2 + (xx - 19.5) ** 2) < 17 ** 2).float().view(1, 1, 40, 40)
    _, smap = sk_ssim(x[0], y[0], full=True)
    smap = smap.mean(axis=0)[5:-5, 5:-5]  # channel mean, valid windows
    m = mask[0, 0].numpy()
    inside = np.array([[m[i:i + 11, j:j + 11].min() for j in range(30)] for i in range(30)])
    expected = smap[inside > 0].mean()
    assert ssim(x, y, mask=mask).item() == pytest.approx(float(expected), abs=1e-4)
    # pixels farther than a window from every counted window neither change the value nor
    # receive gradient: the black border outside the field of view is ignored.
    x2 = x.clone()
    x2[..., :2, :] = torch.rand(1, 3, 2, 40)
    assert ssim(x2, y, mask=mask).item() == pytest.approx(ssim(x, y, mask=mask).item(), abs=1e-7)
    _, g = _finite(x, y, mask=mask)
    assert torch.count_nonzero(g[..., :2, :]) == 0 and torch.count_nonzero(g) > 0


def test_reduction_and_errors():
    x, y = pair((3, 3, 16, 16))
    per = ssim(x, y, reduction="none")
    assert per.shape == (3,) and ssim(x, y).item() == pytest.approx(per.mean().item())
    with pytest.raises(ValueError, match="smaller than the window"):
        ssim(x[..., :10], y[..., :10])
    with pytest.raises(ValueError, match="same shape"):
        ssim(x, y[:1])
    with pytest.raises(ValueError, match="mask must be"):
        ssim(x, y, mask=torch.ones(3, 3, 16, 16))
    with pytest.raises(ValueError, match="reduction"):
        ssim(x, y, reduction="sum")


def test_window_and_sigma_parameters():
    x, y = pair((1, 1, 20, 20), smooth=True)
    ref = structural_similarity(x[0, 0].double().numpy(), y[0, 0].double().numpy(),
                                gaussian_weights=True, sigma=1.0,
                                use_sample_covariance=False, data_range=1.0)
    # skimage's window is 2 * int(3.5 sigma + 0.5) + 1 = 9 at sigma 1
    assert len(gaussian_taps(9, 1.0)) == 9
    assert ssim(x, y, window_size=9, sigma=1.0).item() == pytest.approx(ref, abs=1e-4)


def test_gradient_in_y_by_symmetry():
    """SSIM is symmetric: d ssim(x, y)/dy equals d ssim(y, x)/dy computed through the x branch."""
    x, y = pair((1, 2, 16, 16), smooth=True)
    xr, yr = x.clone().requires_grad_(True), y.clone().requires_grad_(True)
    ssim(xr, yr).backward()
    y2 = y.clone().requires_grad_(True)
    ssim(y2, x).backward()
    torch.testing.assert_close(yr.grad, y2.grad)
    assert torch.count_nonzero(xr.grad) > 0


@pytest.mark.parametrize("masked", [False, True])
def test_plane_blocks_do_not_change_value_or_gradient(monkeypatch, masked):
    # the package attribute medq.losses.ssim is the function; the module is in sys.modules
    ssim_module = importlib.import_module("medq.losses.ssim")
    x, y = pair((3, 2, 20, 24), smooth=True)
    mask = torch.ones(3, 1, 20, 24) if masked else None
    if masked:
        mask[1, :, :, :6] = 0
    out = []
    for block in (1, 2 * 20 * 24, 1 << 30):  # one plane, one image, everything at once
        monkeypatch.setattr(ssim_module, "BLOCK_ELEMENTS", block)
        xr, yr = x.clone().requires_grad_(True), y.clone().requires_grad_(True)
        v = ssim(xr, yr, mask=mask, reduction="none")
        (v * torch.tensor([1.0, 2.0, 3.0])).sum().backward()
        out.append((v.detach(), xr.grad, yr.grad))
    for other in out[:2]:
        for a, b in zip(other, out[2]):
            torch.testing.assert_close(a, b, atol=1e-7, rtol=1e-6)


def _value_and_grads(x, y, mask, weights):
    xr, yr = x.clone().requires_grad_(True), y.clone().requires_grad_(True)
    v = ssim(xr, yr, mask=mask, reduction="none")
    (v * weights).sum().backward()
    return v.detach(), xr.grad, yr.grad


@pytest.mark.slow  # compiles C++ kernels on the first run (~10-60 s; cached on disk afterwards)
def test_compiled_kernel_equals_eager_and_skimage(monkeypatch):
    """The torch.compile'd map and backward give the eager kernel's value and both gradients
    (uniform and masked weights, one or several blocks) and stay within 1e-6 of scikit-image."""
    ssim_module = importlib.import_module("medq.losses.ssim")
    # A fresh compiler state: earlier tests of a long session compile many other graphs, and past
    # dynamo's recompile limit the kernel falls back to eager by design (one warning), which is
    # not what this test is about.
    torch._dynamo.reset()
    ssim_module._compiled.cache_clear()
    monkeypatch.setitem(ssim_module._compile_state, "failed", False)
    x, y = pair((3, 2, 40, 36), smooth=True)
    mask = torch.ones(3, 1, 40, 36)
    mask[1, :, :, :9] = 0
    weights = torch.tensor([1.0, 2.0, 3.0])
    real = ssim_module._call_compiled
    for m, block in ((None, 2 * 40 * 36), (mask, 2 * 40 * 36), (mask, 1 << 30)):
        # one image per block, or all planes in one block (its outputs are used without a copy)
        monkeypatch.setattr(ssim_module, "BLOCK_ELEMENTS", block)
        monkeypatch.setattr(ssim_module, "COMPILE_MIN_ELEMENTS", 1 << 40)
        eager = _value_and_grads(x, y, m, weights)
        monkeypatch.setattr(ssim_module, "COMPILE_MIN_ELEMENTS", 0)
        calls = []
        monkeypatch.setattr(ssim_module, "_call_compiled",
                            lambda *a, calls=calls: calls.append(a[0]) or real(*a))
        compiled = _value_and_grads(x, y, m, weights)
        assert sorted(set(calls)) == [0, 1] and not ssim_module._compile_state["failed"]
        for a, b in zip(compiled, eager):
            torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
    with torch.no_grad():
        value = ssim(x, y, reduction="none")
    np.testing.assert_allclose(value.numpy(), [sk_ssim(a, b) for a, b in zip(x, y)], atol=1e-6)


def test_compile_failure_falls_back_to_eager_with_one_warning(monkeypatch):
    ssim_module = importlib.import_module("medq.losses.ssim")

    def broken(*args):
        raise RuntimeError("no C++ compiler\nsecond line")

    x, y = pair((2, 3, 24, 24), smooth=True)
    weights = torch.tensor([1.0, 2.0])
    eager = _value_and_grads(x, y, None, weights)
    monkeypatch.setattr(ssim_module, "COMPILE_MIN_ELEMENTS", 0)
    monkeypatch.setitem(ssim_module._compile_state, "failed", False)
    monkeypatch.setattr(ssim_module, "_compiled", lambda: (broken, broken))
    with pytest.warns(RuntimeWarning, match="torch.compile failed .RuntimeError: no C.. compiler"):
        fallback = _value_and_grads(x, y, None, weights)
    assert ssim_module._compile_state["failed"]
    for a, b in zip(fallback, eager):
        torch.testing.assert_close(a, b, atol=0, rtol=0)
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no second warning, no second attempt
        _value_and_grads(x, y, None, weights)


def test_compiled_path_is_only_for_large_float32_cpu_inputs(monkeypatch):
    ssim_module = importlib.import_module("medq.losses.ssim")
    monkeypatch.setitem(ssim_module._compile_state, "failed", False)
    monkeypatch.delenv("MEDQ_SSIM_COMPILE", raising=False)
    big = torch.zeros(1, 1, 1, ssim_module.COMPILE_MIN_ELEMENTS)
    assert ssim_module._use_compiled(big)
    assert not ssim_module._use_compiled(big[..., 1:])
    assert not ssim_module._use_compiled(big.double())
    monkeypatch.setenv("MEDQ_SSIM_COMPILE", "0")
    assert not ssim_module._use_compiled(big)


@pytest.mark.parametrize("k", [1, 3, 11])
def test_window_max_is_max_pool_over_the_square_window(k):
    """The separable max behind every FOV erosion equals the square max-pool it replaces, on
    non-square images and random (not only binary) values."""
    from medq.losses.ssim import window_max

    x = torch.rand(2, 3, 23, 17, generator=torch.Generator().manual_seed(k))
    assert torch.equal(window_max(x, k), F.max_pool2d(x, k, stride=1))
