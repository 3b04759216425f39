"""The harness on the real fundus samples (EyeQ raw JPEGs, DRIVE TIFFs): any size, one policy."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from fakes.infer import PROMPT, TextBicubic, parse_report
from medq.baselines import Bicubic
from medq.harness import edit_one, run_harness, summarize
from medq.harness.images import prepare
from medq.harness.records import read_records

torch.set_num_threads(1)


def load(path) -> torch.Tensor:
    img = Image.open(path)
    img.draft("RGB", (img.width // 4, img.height // 4))   # JPEG: decode at reduced size, fast
    return torch.from_numpy(np.asarray(img.convert("RGB")).copy()).permute(2, 0, 1).float() / 255


def real_images(root):
    paths = sorted((root / "eyeq" / "original_img").glob("*.jpeg")) + sorted(
        (root / "drive" / "images").glob("*.tif")
    )
    assert paths, f"no images under {root}"
    return paths


@pytest.mark.parametrize("task", ["sr4", "sr2", "enhance"])
def test_edit_one_on_any_size(fundus_samples, task):
    for path in real_images(fundus_samples):
        img = load(path)
        out = edit_one(Bicubic(), img, task, size=64, seed=0,
                       instruction="dehaze this retinal photo." if task == "enhance" else None)
        s = {"sr4": 16, "sr2": 32, "enhance": 64}[task]
        assert out["input"].shape == (3, s, s) and out["output"].shape == (3, 64, 64)
        assert out["target"].shape == (3, 64, 64) and out["mask"].shape == (1, 64, 64)
        # the field of view fills the square: corners black, the disc most of the area
        assert float(out["target"][:, :3, :3].max()) == 0
        assert 0.5 < float(out["mask"].mean()) < 0.95, (path.name, float(out["mask"].mean()))
        assert out["check"]["psnr"] is None or out["check"]["psnr"] > 20


def test_harness_over_real_samples(fundus_samples, tmp_path):
    items = []
    for path in real_images(fundus_samples):
        prep = prepare(load(path), 64, "sr4")
        items.append({"id": path.stem, "task": "sr4", "instruction": "x", "quality": 0, **prep})
    paths = run_harness(TextBicubic(), items, tmp_path, batch_size=2, progress=False, prompt=PROMPT,
                        parse_report=parse_report)
    rows = read_records(paths["sr4"])
    assert [r["id"] for r in rows] == sorted(p.stem for p in real_images(fundus_samples))
    s = summarize(rows)
    assert s["verdict"]["status"] == "healthy" and s["text"]["quality_accuracy"] == 1.0


def test_dataset_readers_through_harness(fundus_samples, tmp_path):
    import medq.data as data
    from medq.config import load_config

    cfg = load_config(
        "control",
        overrides=[
            "data.source=drive",
            f"data.root=\"{fundus_samples / 'drive'}\"",
            f"data.cache_dir=\"{tmp_path / 'cache'}\"",
            "data.tasks=[\"sr4\"]",
        ],
    )
    ds = data.build_dataset(cfg.data, "test")
    paths = run_harness(Bicubic(), ds, tmp_path / "out", progress=False)
    rows = read_records(paths["sr4"])
    assert rows and all(r["check"]["output_std"] > 0.01 for r in rows)
