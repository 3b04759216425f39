"""medq.scoring's feature code: several backbones in one cache, their columns, and KID comparisons
on the primary backbone only (issue 28: the random-feature distance is a secondary column)."""

import numpy as np
import torch
from PIL import Image

from medq import metrics as M
from medq import scoring as S


def _pooled(name: str, size: int) -> M.FeatureBackbone:
    """A cheap stand-in: the image average-pooled to size x size x 3 values."""
    def fn(x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.adaptive_avg_pool2d(x / 255, size).flatten(1)

    return M.FeatureBackbone(name, fn, 3 * size * size, f"pooled {size}")


def _pairs(tmp_path, name: str, gain: float) -> list[dict]:
    """8 random targets (the same for every ``name``) and outputs ``gain`` x target + noise."""
    rng = np.random.default_rng(0)
    out = []
    for i in range(8):
        t = rng.integers(0, 256, (40, 40, 3)).astype(np.uint8)
        o = np.clip(gain * t + 5 * rng.normal(size=t.shape), 0, 255).astype(np.uint8)
        for kind, im in (("target", t), ("output", o)):
            Image.fromarray(im).save(tmp_path / f"{name}_{i}_{kind}.png")
        out.append({"id": f"i{i}", "output": tmp_path / f"{name}_{i}_output.png",
                    "target": tmp_path / f"{name}_{i}_target.png", "mask": None})
    return out


def test_every_backbone_gets_its_columns_and_only_the_primary_is_compared(tmp_path):
    cache = S.FeatureCache([_pooled("primary", 4), _pooled("second", 2)])
    _, _, near = S.score_pairs(_pairs(tmp_path, "near", 1.0), features=cache,
                               set_key=("near", "sr4"))
    _, _, far = S.score_pairs(_pairs(tmp_path, "far", 0.5), features=cache,
                              set_key=("far", "sr4"))
    for dist in (near, far):
        assert {"fd_primary", "kid_primary", "kid_primary_lo", "kid_primary_hi", "fd_second",
                "kid_second", "kid_second_lo", "kid_second_hi"} <= set(dist)
    assert near["kid_primary"] < far["kid_primary"] and near["fd_second"] < far["fd_second"]
    # both sets share their 8 targets (same pixels): embedded once, cached by content
    assert len(cache.cache) == 8 + 8 + 8
    rows = S.kid_comparisons(cache, "sr4", "near", "far")
    assert [r["metric"] for r in rows] == ["kid_primary"]
    assert rows[0]["mean_diff"] < 0 and rows[0]["p_value"] < 0.05
    single = S.FeatureCache(_pooled("primary", 4))  # one backbone still works as before
    assert len(single.features([tmp_path / "near_0_target.png"])) == 1
