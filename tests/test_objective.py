"""Loss composer and gradient probe, on fake forward outputs and a fake decoder."""

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from medq.config import LossConfig
from medq.losses import compose_losses, gradient_probe

N, C, H = 4, 4, 8


class FakeDecoder(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(C, 3, 3, padding=1)
        self.calls = 0

    def forward(self, z):
        self.calls += 1
        return torch.sigmoid(F.interpolate(self.conv(z), scale_factor=4, mode="bilinear"))


def fake(seed=0):
    g = torch.Generator().manual_seed(seed)
    head = torch.nn.Linear(8, C * H * H)  # stands in for the backbone's image head
    torch.manual_seed(seed)
    hidden = torch.randn(N, 8, generator=g).requires_grad_(True)
    v_hat = head(hidden).view(N, C, H, H)
    logits = torch.randn(2, 5, 11, generator=g).requires_grad_(True)
    targets = torch.randint(0, 11, (2, 5), generator=g)
    targets[0, :2] = -100
    fwd = SimpleNamespace(
        text_logits=logits,
        text_targets=targets,
        v_hat=v_hat,
        v_target=torch.randn(N, C, H, H, generator=g),
        x_t=torch.randn(N, C, H, H, generator=g),
        t=torch.tensor([0.05, 0.2, 0.6, 0.1]),
        hidden=hidden,
    )
    mask = torch.ones(N, 1, 32, 32)
    mask[:, :, :, :3] = 0
    batch = {"target": torch.rand(N, 3, 32, 32, generator=g), "mask": mask,
             "target_size": torch.tensor([[32, 32]] * N)}
    return fwd, batch, head


def test_base_config_never_decodes():
    fwd, batch, _ = fake()
    dec = FakeDecoder()
    cfg = LossConfig()
    assert not cfg.needs_vae
    terms = compose_losses(cfg, fwd, batch, dec)
    assert dec.calls == 0 and set(terms) == {"ce", "mse", "total"}
    assert compose_losses(cfg, fwd, batch, None)["total"].item() == pytest.approx(
        terms["total"].item())
    ce = F.cross_entropy(fwd.text_logits.reshape(-1, 11), fwd.text_targets.reshape(-1))
    assert terms["ce"].item() == pytest.approx(ce.item(), rel=1e-6)
    assert terms["total"].item() == pytest.approx(
        terms["ce"].item() + terms["mse"].item(), rel=1e-6
    )


def test_prior_term_is_the_prior_nets_latent_mse_and_only_with_a_prior_net():
    fwd, batch, _ = fake()
    g = torch.Generator().manual_seed(3)
    fwd.x0 = torch.randn(N, C, H, H, generator=g)
    fwd.prior = torch.randn(N, C, H, H, generator=g).requires_grad_(True)
    fwd.cond = fwd.x0 + torch.randn(N, C, H, H, generator=g) * torch.tensor([0.1, 1, 2, 3]).view(
        N, 1, 1, 1)
    absolute = LossConfig(prior_weight=0.5, prior_relative=False)
    terms = compose_losses(absolute, fwd, batch, None)
    assert terms["prior"].item() == pytest.approx(((fwd.prior - fwd.x0) ** 2).mean().item())
    assert terms["total"].item() == pytest.approx(
        (terms["ce"] + terms["mse"] + 0.5 * terms["prior"]).item())
    terms["total"].backward()
    assert torch.allclose(fwd.prior.grad, 0.5 * 2 * (fwd.prior - fwd.x0).detach() / fwd.x0.numel())
    # Relative (the default): each sample's error over the condition's, so all tasks count alike.
    per_sample = ((fwd.prior - fwd.x0) ** 2).mean(dim=(1, 2, 3))
    own = ((fwd.cond - fwd.x0) ** 2).mean(dim=(1, 2, 3))
    relative = compose_losses(LossConfig(), fwd, batch, None)["prior"]
    assert relative.item() == pytest.approx((per_sample / own).mean().item(), rel=1e-5)
    assert "prior" not in compose_losses(LossConfig(prior_weight=0.0), fwd, batch, None)
    fwd.prior = None  # a model without a prior net
    assert "prior" not in compose_losses(LossConfig(), fwd, batch, None)


def test_all_terms_weighted_sum_and_x0_hat():
    fwd, batch, _ = fake()
    dec = FakeDecoder()
    cfg = LossConfig(ce_weight=0.5, mse_weight=2.0, pixel_weight=3.0, pixel_kind="l1",
                     ssim_weight=0.1, ssim_max_t=0.1, ssim_grad_scale=0.01)
    terms = compose_losses(cfg, fwd, batch, dec)
    assert set(terms) == {"ce", "mse", "pixel", "ssim", "total"}
    assert all(v.dim() == 0 for v in terms.values())
    expect = 0.5 * terms["ce"] + 2 * terms["mse"] + 3 * terms["pixel"] + 0.1 * terms["ssim"]
    assert terms["total"].item() == pytest.approx(expect.item(), rel=1e-6)
    torch.testing.assert_close(terms.x0_hat, fwd.x_t - fwd.t.view(-1, 1, 1, 1) * fwd.v_hat)
    assert dec.calls > 0
    terms["total"].backward()
    assert torch.isfinite(fwd.hidden.grad).all()


def test_ssim_only_v1_config_decodes_and_needs_decoder():
    fwd, batch, _ = fake()
    cfg = LossConfig(ce_weight=0.0, mse_weight=0.0, ssim_weight=1.0, ssim_max_t=0.3)
    terms = compose_losses(cfg, fwd, batch, FakeDecoder())
    assert set(terms) == {"ssim", "total"} and 0 < terms["ssim"].item() < 2
    with pytest.raises(ValueError, match="need a VAE decode function"):
        compose_losses(cfg, fwd, batch, None)
    with pytest.raises(KeyError, match="'mask'"):
        compose_losses(cfg, fwd, {k: v for k, v in batch.items() if k != "mask"}, FakeDecoder())


def test_ssim_mask_follows_config():
    fwd, batch, _ = fake()
    on = compose_losses(LossConfig(ssim_weight=1.0), fwd, batch, FakeDecoder())["ssim"]
    off = compose_losses(LossConfig(ssim_weight=1.0, ssim_masked=False), fwd, batch,
                         FakeDecoder())["ssim"]
    batch["mask"][:, :, :, 3:] = 0  # a different field of view changes only the masked value
    on2 = compose_losses(LossConfig(ssim_weight=1.0), fwd, batch, FakeDecoder())["ssim"]
    off2 = compose_losses(LossConfig(ssim_weight=1.0, ssim_masked=False), fwd, batch,
                          FakeDecoder())["ssim"]
    assert off.item() == off2.item() and on.item() != on2.item()


def test_cross_entropy_without_targets_is_zero():
    fwd, batch, _ = fake()
    fwd.text_targets = torch.full((2, 5), -100)
    terms = compose_losses(LossConfig(), fwd, batch, None)
    assert terms["ce"].item() == 0.0
    terms["total"].backward()
    assert torch.isfinite(fwd.text_logits.grad).all()


def test_gradient_probe_measures_each_term_without_touching_grads():
    fwd, batch, head = fake()
    cfg = LossConfig(pixel_weight=1.0, ssim_weight=1.0, ssim_max_t=0.3, pixel_max_t=0.3)
    terms = compose_losses(cfg, fwd, batch, FakeDecoder())
    named = {k: v for k, v in terms.items() if k != "total"}
    at_x0 = gradient_probe(terms.x0_hat, named)
    assert head.weight.grad is None
    assert at_x0["ce"]["norm"].item() == 0.0 and at_x0["mse"]["norm"].item() == 0.0
    (g_ssim,) = torch.autograd.grad(terms["ssim"], terms.x0_hat, retain_graph=True)
    assert at_x0["ssim"]["norm"].item() == pytest.approx(g_ssim.norm().item(), rel=1e-6)
    assert at_x0["ssim"]["max"].item() == pytest.approx(g_ssim.abs().max().item(), rel=1e-6)
    at_hidden = gradient_probe(fwd.hidden, named)
    assert all(at_hidden[k]["norm"].item() > 0 for k in ("mse", "pixel", "ssim"))
    # the grad scale shows in the probe: exactly 1/8 of the unscaled SSIM gradient
    scaled = compose_losses(LossConfig(ssim_weight=1.0, ssim_max_t=0.3, ssim_grad_scale=0.125),
                            fwd, batch, FakeDecoder())
    s = gradient_probe(scaled.x0_hat, {"ssim": scaled["ssim"]})["ssim"]["norm"]
    assert s.item() == pytest.approx(at_x0["ssim"]["norm"].item() / 8, rel=1e-6)
    terms["total"].backward()  # the graph survived the probe
    assert head.weight.grad is not None
    with pytest.raises(ValueError, match="0-dim"):
        gradient_probe(terms.x0_hat, {"bad": terms.x0_hat})
