
"""fov_mask against DRIVE's hand-made masks, and the EyeQ-style crop on the real samples."""

import numpy as np
import pytest
import torch
from PIL import Image

from medq.config import DataConfig
from medq.data import DataError, build_dataset, crop_to_fov, fov_mask, load_rgb


def test_fov_mask_matches_drive_masks(fundus_samples):
    images = sorted((fundus_samples / "drive" / "images").glob("*.tif"))
    if not images:
        pytest.skip("no DRIVE images in the samples folder")
    for path in images:
        img = load_rgb(path)
        truth = (
            np.asarray(Image.open(fundus_samples / "drive" / "mask" / f"{path.stem}_mask.gif")) > 0
        )
        m = fov_mask(img)
        iou = (m & truth).sum() / (m | truth).sum()
        assert iou >= 0.98, f"{path.name}: IoU {iou:.4f}"


def test_fov_mask_tensor_and_synthetic_disc():
    yy, xx = np.mgrid[:100, :120]
    disc = (yy - 50) ** 2 + (xx - 60) ** 2 < 40 ** 2
    img = np.zeros((100, 120, 3), np.uint8)
    img[disc] = (180, 90, 40)
    assert (fov_mask(img) == disc).mean() > 0.995
    t = torch.from_numpy(img).permute(2, 0, 1).float()[None] / 255
    assert torch.equal(fov_mask(t)[0], torch.from_numpy(fov_mask(img)))
    assert not fov_mask(np.zeros((50, 50, 3), np.uint8)).any()


def test_crop_to_fov_pads_cut_circle():
    yy, xx = np.mgrid[:80, :200]
    disc = (yy - 40) ** 2 + (xx - 100) ** 2 < 50 ** 2  # cut at top and bottom, as EyePACS
    img = np.zeros((80, 200, 3), np.uint8)
    img[disc] = 200
    sq, m = crop_to_fov(img, disc)
    assert sq.shape == (99, 99, 3) and m.shape == (99, 99)
    assert m[:5].sum() == 0 and m[45:55].sum() > 0 and sq[~m].max() == 0


def test_real_sources(fundus_samples, tmp_path):
    drive = DataConfig(source="drive", root=str(fundus_samples / "drive"), image_size=64,
                       cache_dir=str(tmp_path))
    ds = build_dataset(drive, "all", tasks=["sr4"])
    assert len(ds) == 3
    it = ds[0]
    assert it["target"].shape == (3, 64, 64) and it["input"].shape == (3, 16, 16)
    assert 0.6 < it["mask"].mean() < 0.85  # a disc inscribed in the square: pi/4
    eyeq = DataConfig(
        source="eyeq",
        root=str(fundus_samples / "eyeq" / "original_img"),
        labels=str(fundus_samples / "eyeq" / "Label_EyeQ_train.head.csv"),
        image_size=64,
        cache_dir=str(tmp_path),
    )
    with pytest.raises(DataError, match="10009_left.jpeg"):
        build_dataset(eyeq, "all")


def test_folder_source_on_raw_eyepacs_images(fundus_samples, tmp_path):
    raw = fundus_samples / "eyeq" / "original_img"
    if not any(raw.glob("*.jpeg")):
        pytest.skip("no raw EyePACS images in the samples folder")
    cfg = DataConfig(source="folder", root=str(raw), image_size=128, cache_dir=str(tmp_path))
    ds = build_dataset(cfg, "all", tasks=["enhance"])
    assert len(ds) == len(list(raw.glob("*.jpeg")))
    for i in range(len(ds)):
        it = ds[i]
        m = it["mask"][0].bool()
        assert it["target"][:, ~m].abs().max() == 0  # black outside the detected FOV
        assert 0.55 < m.float().mean() < 0.85 and it["target"][:, m].mean() > 0.1
