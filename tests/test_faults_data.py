"""Bad input that used to pass silently or crash (issue 18): the cache under on_bad_input=error,
decompression bombs, EXIF orientation, an all-white image called black."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from fakes.images import fundus, png_header_only
from medq.config import DataConfig
from medq.data import DataError, build_dataset, load_rgb
from medq.data.fov import NoFieldOfView, require_fov


def test_error_mode_never_reuses_the_cache_of_a_skip_build(tmp_path):
    root = tmp_path / "imgs"
    root.mkdir()
    for i in range(3):
        Image.fromarray(fundus()).save(root / f"good{i}.png")
    (root / "broken.png").write_text("not a png")
    skip = DataConfig(source="folder", root=str(root), cache_dir=str(tmp_path / "c"),
                      image_size=32, on_bad_input="skip")
    assert len(build_dataset(skip, "all", tasks=["sr2"]).ids) == 3
    error = DataConfig(source="folder", root=str(root), cache_dir=str(tmp_path / "c"),
                       image_size=32, on_bad_input="error")
    with pytest.raises(DataError, match=r"broken\.png: not an image"):
        build_dataset(error, "all", tasks=["sr2"])


@pytest.mark.parametrize("side", [12000, 100000])  # above the limit (warned by Pillow), above 2x
def test_decompression_bomb_is_a_data_error_naming_the_file(tmp_path, side):
    path = tmp_path / "bomb.png"
    png_header_only(path, side, side)
    with pytest.raises(DataError, match=r"bomb\.png: .*decompression bomb"):
        load_rgb(path)


def test_exif_orientation_is_applied(tmp_path):
    img = np.zeros((40, 80, 3), np.uint8)
    img[:, :40] = 255  # left half white, stored landscape
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    Image.fromarray(img).save(tmp_path / "sideways.jpg", exif=exif.tobytes(), quality=95)
    out = load_rgb(tmp_path / "sideways.jpg")
    assert out.shape == (80, 40, 3)  # upright: portrait
    assert out[:30].mean() > 200 and out[50:].mean() < 50  # the white half is now on top


def test_all_white_is_not_called_black():
    with pytest.raises(NoFieldOfView, match="all white") as e:
        require_fov(np.full((64, 64, 3), 255, np.uint8), "white.png")
    assert "black" not in str(e.value)
    with pytest.raises(NoFieldOfView, match="black"):
        require_fov(np.zeros((64, 64, 3), np.uint8), "black.png")
