"""The image-space objective: gate, chunked decode, crop, gradient shaping, packed entry."""

import pytest
import torch
import torch.nn.functional as F

from medq.losses import (
    ImageTerm,
    clamp_gradient,
    image_space_loss_from_x0,
    image_space_loss_packed,
    scale_gradient,
    unpatchify,
)

C, P, UP = 4, 2, 4  # latent channels, patch size, decoder upsampling


def image_space_loss(v_hat, x_t, t, target, decode, term, **kwargs):
    """The objective on batched latents, as the packed entry computes it: x0_hat = x_t - t v_hat."""
    return image_space_loss_from_x0(x_t - t.view(-1, 1, 1, 1) * v_hat, t, target, decode, term,
                                    **kwargs)


class FakeDecoder(torch.nn.Module):
    """A tiny VAE decoder: latents (K, 4, h, w) -> images (K, 3, 4h, 4w) in [0, 1]."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(C, 3, 3, padding=1)
        self.calls = []

    def forward(self, z):
        self.calls.append(z.shape[0])
        return torch.sigmoid(F.interpolate(self.conv(z), scale_factor=UP, mode="bilinear"))


def batch(n=5, h=8, w=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(n, C, h, w, generator=g).requires_grad_(True)
    x_t = torch.randn(n, C, h, w, generator=g)
    t = torch.tensor([0.05, 0.5, 0.2, 0.9, 0.1][:n])
    target = torch.rand(n, 3, h * UP, w * UP, generator=g)
    size = torch.tensor([[h * UP, w * UP]] * n)
    return v, x_t, t, target, size


@pytest.mark.parametrize("kind", ["l1", "l2", "ssim"])
def test_gate_mean_over_kept_and_zero_gradient_for_gated(kind):
    dec = FakeDecoder()
    v, x_t, t, target, size = batch()
    loss = image_space_loss(v, x_t, t, target, dec, ImageTerm(kind, max_t=0.3), target_size=size)
    loss.backward()
    kept = torch.tensor([0, 2, 4])
    assert torch.count_nonzero(v.grad[[1, 3]]) == 0
    assert all(torch.count_nonzero(v.grad[i]) > 0 for i in kept)
    assert sum(dec.calls[:1]) == 3  # only kept samples are decoded
    v2 = v.detach()[kept].requires_grad_(True)
    ref = image_space_loss(v2, x_t[kept], t[kept], target[kept], dec, ImageTerm(kind, max_t=1.0),
                           target_size=size[kept])
    assert loss.item() == pytest.approx(ref.item(), rel=1e-6)


def test_nothing_kept_is_a_connected_zero():
    dec = FakeDecoder()
    v, x_t, t, target, size = batch()
    with torch.no_grad():
        v[0] = float("nan")
    loss = image_space_loss(v, x_t, t, target, dec, ImageTerm("ssim", max_t=0.01),
                            target_size=size)
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert torch.count_nonzero(v.grad) == 0 and dec.calls == []


@pytest.mark.parametrize("kind", ["l2", "ssim"])
def test_chunked_equals_unchunked(kind):
    v, x_t, t, target, size = batch()
    mask = torch.ones(5, 1, 32, 32)
    mask[:, :, :4] = 0
    out = {}
    for chunk in (1, 2, 8):
        dec = FakeDecoder()
        vv = v.detach().clone().requires_grad_(True)
        loss = image_space_loss(vv, x_t, t, target, dec, ImageTerm(kind, max_t=1.0, chunk=chunk),
                                target_size=size, mask=mask)
        loss.backward()
        out[chunk] = (loss.detach(), vv.grad, dec.conv.weight.grad.clone())
        assert max(dec.calls) <= chunk
    for chunk in (1, 2):
        for a, b in zip(out[chunk], out[8]):
            torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def test_crop_to_true_size_ignores_padding():
    dec = FakeDecoder()
    v, x_t, t, target, _ = batch(n=2)
    size = torch.tensor([[32, 32], [20, 24]])
    ssim = ImageTerm("ssim", max_t=1.0)
    loss = image_space_loss(v, x_t, t, target, dec, ssim, target_size=size)
    target2 = target.clone()
    target2[1, :, 20:] = 0  # padding rows of image 1
    target2[1, :, :, 24:] = 0
    loss2 = image_space_loss(v, x_t, t, target2, dec, ssim, target_size=size)
    assert loss.item() == pytest.approx(loss2.item(), abs=1e-7)
    with pytest.raises(ValueError, match="target_size"):
        image_space_loss(v, x_t, t, target, dec, ImageTerm("l1", max_t=1.0),
                         target_size=torch.tensor([[64, 32], [32, 32]]))


def test_grad_scale_exact_and_value_unchanged():
    v, x_t, t, target, size = batch()
    x0 = (x_t - t.view(-1, 1, 1, 1) * v).detach()
    res = {}
    for s in (1.0, 0.25):
        a = x0.clone().requires_grad_(True)
        loss = image_space_loss_from_x0(a, t, target, FakeDecoder(),
                                        ImageTerm("ssim", max_t=0.3, grad_scale=s),
                                        target_size=size)
        loss.backward()
        res[s] = (loss.item(), a.grad)
    assert res[1.0][0] == res[0.25][0]
    assert torch.equal(res[0.25][1], res[1.0][1] * 0.25)


def test_grad_clamp_bounds_every_element():
    v, x_t, t, target, size = batch()
    x0 = (x_t - t.view(-1, 1, 1, 1) * v).detach()
    a = x0.clone().requires_grad_(True)
    image_space_loss_from_x0(a, t, target, FakeDecoder(), ImageTerm("ssim", max_t=1.0),
                             target_size=size).backward()
    c = float(a.grad.abs().max()) / 4
    b = x0.clone().requires_grad_(True)
    image_space_loss_from_x0(b, t, target, FakeDecoder(),
                             ImageTerm("ssim", max_t=1.0, grad_clamp=c),
                             target_size=size).backward()
    assert float(b.grad.abs().max()) <= c
    assert torch.equal(b.grad, a.grad.clamp(-c, c))


def test_scale_and_clamp_gradient_functions():
    x = torch.randn(3, 4, requires_grad=True)
    g = torch.randn(3, 4) * 10
    y = clamp_gradient(scale_gradient(x, 3.0), 2.0)
    assert torch.equal(y, x)
    y.backward(g)
    torch.testing.assert_close(x.grad, g.clamp(-2, 2) * 3.0)
    with pytest.raises(ValueError, match="must be > 0"):
        clamp_gradient(x, 0.0)


def patchify(lat, p=P):
    """BAGEL: (C, H, W) -> (h*w, p*p*C) with einsum('chpwq->hwpqc')."""
    c, hh, ww = lat.shape
    x = lat.reshape(c, hh // p, p, ww // p, p)
    return torch.einsum("chpwq->hwpqc", x).reshape(-1, p * p * c)


def test_packed_equals_batched_with_mixed_sizes():
    g = torch.Generator().manual_seed(3)
    shapes = [(4, 4), (3, 4), (4, 2)]  # patches per image
    lat_hw = [(h * P, w * P) for h, w in shapes]
    n = len(shapes)
    v = torch.zeros(n, C, 8, 8)
    x_t = torch.zeros(n, C, 8, 8)
    for i, (h, w) in enumerate(lat_hw):
        v[i, :, :h, :w] = torch.randn(C, h, w, generator=g)
        x_t[i, :, :h, :w] = torch.randn(C, h, w, generator=g)
    t = torch.tensor([0.1, 0.2, 0.7])
    target = torch.rand(n, 3, 32, 32, generator=g)
    size = torch.tensor([[h * UP, w * UP] for h, w in lat_hw])
    pv = torch.cat([patchify(v[i, :, :h, :w]) for i, (h, w) in enumerate(lat_hw)])
    px = torch.cat([patchify(x_t[i, :, :h, :w]) for i, (h, w) in enumerate(lat_hw)])
    pt = torch.cat([t[i].repeat(h * w) for i, (h, w) in enumerate(shapes)])
    torch.testing.assert_close(unpatchify(px, shapes, P), x_t)
    term = ImageTerm("ssim", max_t=0.3, chunk=2)
    vb, pvb = v.clone().requires_grad_(True), pv.clone().requires_grad_(True)
    batched = image_space_loss(vb, x_t, t, target, FakeDecoder(), term, target_size=size)
    packed = image_space_loss_packed(pvb, px, pt, shapes, P, target, FakeDecoder(), term,
                                     target_size=size)
    assert packed.item() == pytest.approx(batched.item(), abs=1e-6)
    batched.backward()
    packed.backward()
    expect = torch.cat([patchify(vb.grad[i, :, :h, :w]) for i, (h, w) in enumerate(lat_hw)])
    torch.testing.assert_close(pvb.grad, expect, atol=1e-7, rtol=1e-5)
    bad = pt.clone()
    bad[1] = 0.9
    with pytest.raises(ValueError, match="expected one constant t"):
        image_space_loss_packed(pv, px, bad, shapes, P, target, FakeDecoder(), term,
                                target_size=size)


@pytest.mark.parametrize("kind", ["ssim", "l1", "l2"])
@pytest.mark.parametrize("masked", [False, True])
def test_a_chunk_without_padding_is_scored_in_one_call_with_the_per_sample_values(kind, masked):
    # The batched path (one SSIM call per chunk) must give the loss and gradient that scoring each
    # sample on its own gives; a chunk with a padded sample takes the per-sample crop path.
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(5, 3, 32, 32, generator=g, requires_grad=True)
    target = torch.rand(5, 3, 32, 32, generator=g)
    mask = (torch.rand(5, 1, 32, 32, generator=g) > 0.2).float() if masked else None
    t = torch.zeros(5)
    kw = {"kind": kind, "max_t": 1.0, "ssim_window": 7}

    def decode(z):
        return z.clamp(0, 1)

    def one(i, size=None):
        return image_space_loss_from_x0(
            x0[i:i + 1], t[i:i + 1], target[i:i + 1], decode, ImageTerm(chunk=1, **kw),
            mask=None if mask is None else mask[i:i + 1],
            target_size=None if size is None else torch.tensor([size]))

    batched = image_space_loss_from_x0(x0, t, target, decode, ImageTerm(chunk=5, **kw), mask=mask)
    (g_batched,) = torch.autograd.grad(batched, x0)
    per_sample = torch.stack([one(i) for i in range(5)]).mean()
    (g_per_sample,) = torch.autograd.grad(per_sample, x0)
    torch.testing.assert_close(batched, per_sample, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(g_batched, g_per_sample, rtol=1e-4, atol=1e-7)
    sizes = torch.tensor([[32, 32]] * 4 + [[30, 28]])
    padded = image_space_loss_from_x0(x0, t, target, decode, ImageTerm(chunk=5, **kw), mask=mask,
                                      target_size=sizes)
    expected = torch.stack([one(i) for i in range(4)] + [one(4, [30, 28])]).mean()
    torch.testing.assert_close(padded, expected, rtol=1e-5, atol=1e-6)
