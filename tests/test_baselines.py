"""Bicubic / Lanczos / identity as ImageTextModels."""

from __future__ import annotations

import pytest
import torch

from medq.baselines import BASELINES, Bicubic, Identity, Lanczos, bicubic
from medq.protocol import ImageTextModel

torch.set_num_threads(1)


def smooth(n=2, size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 3, 4, 4, generator=g)
    return torch.nn.functional.interpolate(low, size=(size, size), mode="bilinear", align_corners=False)


@pytest.mark.parametrize("name", list(BASELINES))
def test_protocol_shapes_range_and_no_text(name):
    model = BASELINES[name]()
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
