"""EMA warm-up: the shadow forgets the starting weights within the first updates."""

import pytest
import torch
from torch import nn

from medq.ema import EMA, WARMUP_DONE, warmup_decay, warmup_weight_of_start


def _model():
    torch.manual_seed(0)
    return nn.Linear(3, 2)


def test_warmup_schedule_and_share_of_the_start():
    assert warmup_decay(0.995, 0) == pytest.approx(0.1)
    assert warmup_decay(0.995, 90) == pytest.approx(91 / 100)
    assert warmup_decay(0.995, 10_000) == 0.995
    assert warmup_weight_of_start(300, 0.995, warmup=False) == pytest.approx(0.995 ** 300)
    assert warmup_weight_of_start(300, 0.995, warmup=False) > 0.2  # the 22 %
    assert warmup_weight_of_start(300, 0.995) < 1e-6


def test_warmup_ema_follows_the_trained_weights():
    model = _model()
    start = model.weight.detach().clone()
    plain, warm = EMA(model, 0.995), EMA(model, 0.995, warmup=True)
    with torch.no_grad():
        model.weight.add_(1.0)  # the trained weights move away from the start once
    for _ in range(300):
        plain.update(model)
        warm.update(model)
    # The shadow's distance to the trained weights is the start's remaining share.
    gap_plain = float((model.weight.detach() - plain.state_dict(model)["weight"]).mean())
    gap_warm = float((model.weight.detach() - warm.state_dict(model)["weight"]).mean())
    assert gap_plain == pytest.approx(0.995 ** 300, rel=1e-3) and gap_warm < 1e-5
    assert warm.num_updates == 300 and not torch.equal(start, model.weight)


def test_restored_shadow_is_past_warmup_unless_told():
    model = _model()
    ema = EMA(model, 0.9, warmup=True)
    ema.update(model)
    restored = EMA(model, 0.9, warmup=True)
    restored.load_state_dict(ema.state_dict(model))
    assert restored.num_updates >= WARMUP_DONE and restored.current_decay() == 0.9
    restored.num_updates = 1  # a trainer resuming at step 1
    assert restored.current_decay() == pytest.approx(2 / 11)
