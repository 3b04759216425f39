
"""Bad input corpus (generated here, never committed): clear DataErrors, skip reports,
conversions."""

import numpy as np
import pytest
from PIL import Image

from fakes.images import fundus
from medq.config import DataConfig
from medq.data import DataError, build_dataset, load_rgb


@pytest.fixture
def corpus(tmp_path):
    d = tmp_path / "bad"
    d.mkdir()
    (d / "zero.png").write_bytes(b"")
    Image.fromarray(fundus()).save(d / "full.jpg", quality=90)
    (d / "truncated.jpg").write_bytes((d / "full.jpg").read_bytes()[:600])
    (d / "text.png").write_text("this is not a png")
    Image.fromarray(fundus(8, 8)).save(d / "tiny.png")
    Image.fromarray(np.zeros((96, 96, 3), np.uint8)).save(d / "black.png")
    (d / "full.jpg").unlink()
    return d


@pytest.mark.parametrize(
    "name,reason",
    [
        ("zero.png", "empty file"),
        ("truncated.jpg", "cannot decode"),
        ("text.png", "not an image"),
        ("tiny.png", "8x8 pixels"),
    ],
)
def test_unreadable_files_name_file_and_reason(corpus, name, reason):
    with pytest.raises(DataError, match=reason) as e:
        load_rgb(corpus / name)
    assert name in str(e.value) and isinstance(e.value, ValueError)


def test_folder_error_mode_stops_at_bad_file(corpus, tmp_path):
    cfg = DataConfig(source="folder", root=str(corpus), image_size=32,
                     cache_dir=str(tmp_path / "c"))
    with pytest.raises(DataError, match=r"black\.png: no field of view|zero\.png: empty"):
        build_dataset(cfg, "all")


def test_folder_skip_mode_reports_every_bad_file(corpus, tmp_path):
    for i in range(3):
        Image.fromarray(fundus()).save(corpus / f"good{i}.png")
    cfg = DataConfig(
        source="folder", root=str(corpus), cache_dir=str(tmp_path / "c"), on_bad_input="skip"
    )
    ds = build_dataset(cfg, "all", tasks=["sr2"])
    assert sorted(ds.ids) == ["good0", "good1", "good2"]
    bad = {b["path"].rsplit("/", 1)[-1] for b in ds.bad_inputs}
    assert bad == {"zero.png", "truncated.jpg", "text.png", "tiny.png", "black.png"}
    reports = list((tmp_path / "c").glob("*/bad_inputs.jsonl"))
    assert len(reports) == 1 and len(reports[0].read_text().splitlines()) == 5
    again = build_dataset(cfg, "all", tasks=["sr2"])  # from cache: the report is kept
    assert len(again.bad_inputs) == 5


def test_conversions_to_rgb_uint8(tmp_path):
    gray = np.arange(64 * 64, dtype=np.uint8).reshape(64, 64)
    Image.fromarray(gray).save(tmp_path / "gray.png")
    assert np.array_equal(load_rgb(tmp_path / "gray.png"), np.repeat(gray[:, :, None], 3, 2))
    g16 = (np.arange(64 * 64).reshape(64, 64) * 16).astype(np.uint16)
    Image.fromarray(g16).save(tmp_path / "g16.png")
    out = load_rgb(tmp_path / "g16.png")
    assert (
        out.dtype == np.uint8 and np.abs(out[:, :, 0].astype(int) - np.round(g16 / 257)).max() <= 1
    )
    rgba = np.zeros((32, 32, 4), np.uint8)
    rgba[..., :3] = (200, 100, 50)
    rgba[..., 3] = 128
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    assert tuple(load_rgb(tmp_path / "rgba.png")[0, 0]) == (100, 50, 25)  # composited on black
    pal = Image.fromarray(fundus(32, 32)).convert("P", palette=Image.ADAPTIVE, colors=4)
    pal.save(tmp_path / "pal.png")
    assert tuple(load_rgb(tmp_path / "pal.png")[16, 16]) == (200, 100, 50)
    Image.fromarray(fundus(32, 32)).convert("CMYK").save(tmp_path / "cmyk.jpg", quality=95)
    assert np.abs(load_rgb(tmp_path / "cmyk.jpg")[16, 16].astype(int) - (200, 100, 50)).max() < 12


def test_large_image_is_cropped_quickly_and_correctly(tmp_path):
    big = Image.new("RGB", (6000, 4000))
    from PIL import ImageDraw
    ImageDraw.Draw(big).ellipse([1000, 100, 4800, 3900], fill=(190, 90, 40))
    big.save(tmp_path / "big.jpg", quality=80)
    cfg = DataConfig(source="folder", root=str(tmp_path), image_size=64,
                     cache_dir=str(tmp_path / "c"))
    ds = build_dataset(cfg, "all", tasks=["sr2"])
    m = ds[0]["mask"][0]
    assert 0.7 < m.mean() < 0.85 and m[32, 32] == 1 and m[0, 0] == 0


def _csv(path, text):
    path.write_text(text)
    return path


def test_eyeq_csv_problems(tmp_path):
    img_dir = tmp_path / "img"
    img_dir.mkdir()
    for name in ("a.jpeg", "b.jpeg", "c.jpeg"):
        Image.fromarray(fundus()).save(img_dir / name)
    base = dict(source="eyeq", root=str(img_dir), image_size=32, cache_dir=str(tmp_path / "c"))
    cases = {
        ",image,DR_grade\n0,a.jpeg,0\n": "missing column.*quality",
        ",image,quality,DR_grade\n0,a.jpeg,7,0\n": "line 2: quality = 7",
        ",image,quality,DR_grade\n0,a.jpeg,good,0\n": "quality = 'good' is not an integer",
        ",image,quality,DR_grade\n0,a.jpeg,0,0\n1,a.jpeg,0,1\n": "duplicate image 'a.jpeg'",
    }
    for i, (text, pattern) in enumerate(cases.items()):
        labels = _csv(tmp_path / f"l{i}.csv", text)
        with pytest.raises(DataError, match=pattern):
            build_dataset(DataConfig(labels=str(labels), **base), "all")
    labels = _csv(tmp_path / "ok.csv", ",image,quality,DR_grade\n0,a.jpeg,0,0\n1,b.jpeg,1,2\n"
                                       "2,c.jpeg,0,3\n3,gone.jpeg,0,0\n4,rejected.jpeg,2,0\n")
    with pytest.raises(DataError, match="gone.jpeg"):
        build_dataset(DataConfig(labels=str(labels), **base), "all")
    ds = build_dataset(
        DataConfig(labels=str(labels), on_bad_input="skip", **base), "all", tasks=["sr4"]
    )
    assert sorted(ds.ids) == ["a", "c"]  # b is Usable: not a target with target_quality [0]
    assert [it["dr_grade"] for it in (ds[ds.ids.index("c")],)] == [3]
    assert [b["path"].rsplit("/", 1)[-1] for b in ds.bad_inputs] == [
        "gone.jpeg"
    ]  # not the Reject row
    report = next((tmp_path / "c").glob("*/bad_inputs.jsonl"))
    assert "gone.jpeg" in report.read_text()


def test_folder_duplicate_ids_are_an_error(tmp_path):
    d = tmp_path / "imgs"
    d.mkdir()
    Image.fromarray(fundus()).save(d / "eye.png")
    Image.fromarray(fundus()).save(d / "eye.jpg")
    with pytest.raises(DataError, match="duplicate image id 'eye'"):
        build_dataset(
            DataConfig(source="folder", root=str(d), image_size=32, cache_dir=str(tmp_path / "c")),
            "all"
        )


def test_items_load_in_dataloader_workers(tmp_path):
    import torch

    from medq.data import collate
    cfg = DataConfig(num_images=6, num_test_images=2, image_size=32, cache_dir=str(tmp_path / "c"))
    ds = build_dataset(cfg, "all", tasks=["sr4", "enhance"])
    loader = torch.utils.data.DataLoader(ds, batch_size=4, num_workers=1, collate_fn=collate)
    batches = list(loader)
    assert sum(len(b["id"]) for b in batches) == 2 * (6 + 2)  # train + val and the test set
    assert torch.equal(batches[0]["input"][1, :, :32, :32], ds[1]["input"])
