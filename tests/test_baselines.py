"""Bicubic / Lanczos / identity / constant as ImageTextModels."""

from __future__ import annotations

import pytest
import torch

from medq.baselines import (
    BASELINES,
    Bicubic,
    Constant,
    Identity,
    Lanczos,
    bicubic,
    training_mean_image,
)
from medq.protocol import ImageTextModel

torch.set_num_threads(1)


def smooth(n=2, size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 3, 4, 4, generator=g)
    return torch.nn.functional.interpolate(
        low, size=(size, size), mode="bilinear", align_corners=False
    )


@pytest.mark.parametrize("name", list(BASELINES))
def test_protocol_shapes_range_and_no_text(name):
    # The constant baseline's default image comes from the embedded data; a fixed one here.
    model = Constant(torch.rand(3, 64, 64)) if name == "constant" else BASELINES[name]()
    assert isinstance(model, ImageTextModel) and model.name == name and model.has_text is False
    x = smooth()
    out = model.edit(x, ["i", "i"], ["sr4", "sr4"], (64, 64), seed=0)
    assert out.shape == (2, 3, 64, 64) and out.dtype == torch.float32
    assert 0 <= float(out.min()) and float(out.max()) <= 1
    assert torch.equal(out, model.edit(x, ["i", "i"], ["sr4", "sr4"], (64, 64), seed=123))
    assert model.generate_report(x, ["p", "p"], seed=0) == [[], []]
    assert model.decode([]).text == ""


def test_identity_same_size_returns_input():
    x = smooth()
    assert torch.equal(Identity().edit(x, ["i"] * 2, ["enhance"] * 2, (16, 16), seed=0), x)


def test_resizers_are_the_data_modules():
    from medq.data import bicubic_resize, lanczos_resize
    x = smooth(1, 8)
    assert torch.equal(Bicubic().edit(x, ["i"], ["sr4"], (32, 32), 0), bicubic_resize(x, (32, 32)))
    assert torch.equal(Lanczos().edit(x, ["i"], ["sr4"], (32, 32), 0), lanczos_resize(x, (32, 32)))


def test_upsamplers_recover_smooth_images_better_than_nearest():
    hi = smooth(2, 64)
    lo = bicubic(hi, (16, 16))
    nearest = torch.nn.functional.interpolate(lo, size=(64, 64), mode="nearest")
    err = lambda a: float(((a - hi) ** 2).mean())  # noqa: E731
    assert err(Bicubic().edit(lo, [""] * 2, ["sr4"] * 2, (64, 64), 0)) < err(nearest)
    assert err(Lanczos().edit(lo, [""] * 2, ["sr4"] * 2, (64, 64), 0)) < err(nearest)


def test_bad_shape_is_a_clear_error():
    with pytest.raises(ValueError, match="bicubic: images must be"):
        Bicubic().edit(torch.zeros(3, 8, 8), ["i"], ["sr4"], (16, 16), 0)


def test_constant_is_the_training_mean_and_ignores_its_input(tmp_path):
    from medq.config import DataConfig
    from medq.data import build_dataset

    cfg = DataConfig(num_images=12, num_test_images=3, image_size=32,
                     cache_dir=str(tmp_path / "cache"))
    mean = training_mean_image(cfg)
    train = build_dataset(cfg, "train")
    manual = torch.stack([train[i]["target"] for i in range(0, len(train), len(cfg.tasks))]).mean(0)
    assert mean.shape == (3, 32, 32) and torch.allclose(mean, manual, atol=1e-6)
    test = build_dataset(cfg, "test")
    step = len(cfg.tasks)
    test_mean = torch.stack([test[i]["target"] for i in range(0, len(test), step)]).mean(0)
    assert not torch.allclose(mean, test_mean, atol=1e-3)  # the training targets, not the test's
    model = Constant(data_cfg=cfg)
    a, b = model.edit(smooth(seed=1), ["i"] * 2, ["sr4", "enhance"], (32, 32), seed=0), \
        model.edit(torch.zeros(2, 3, 8, 8), ["i"] * 2, ["sr2", "sr2"], (32, 32), seed=5)
    assert torch.equal(a, b) and torch.allclose(a[0], mean)
    with pytest.raises(ValueError, match="constant: image must be"):
        Constant(torch.rand(32, 32))
