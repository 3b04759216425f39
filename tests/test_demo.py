"""The demo page: handlers on a fake runs/reports tree with fake models, then the launched app
through gradio_client and raw HTTP (path security). The browser test is test_demo_browser.py."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import struct
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from skimage.metrics import structural_similarity

import demo  # noqa: F401  (switches Gradio analytics off before gradio is imported)
from demo import catalog, handlers, imaging
from demo.models import ModelPool
from demo.security import UploadError, auth_from_env, read_upload
from fakes.demo import FAKE_MODES, IDS, SIZE, FakeModel, build_tree, fake_loader, free_port, fundus
from medq.data.readers import MAX_OWN_SIDE

REPO = Path(__file__).resolve().parents[1]


def fov_side(u8: np.ndarray) -> int:
    """Pixels across the square around the field of view of a uint8 photograph (medq.data.fov)."""
    from medq.data.fov import crop_to_fov, require_fov

    return crop_to_fov(u8, require_fov(u8, "photo"))[1].shape[0]


class CountingLoader:
    def __init__(self):
        self.calls: list[str] = []

    def __call__(self, label):
        self.calls.append(label)
        return fake_loader(label)


@pytest.fixture
def tree(tmp_path):
    return build_tree(tmp_path)


@pytest.fixture
def app_demo(tree):
    loader = CountingLoader()
    d = handlers.Demo.from_folders(*tree, pool=ModelPool(loader))
    d.loader = loader
    return d


def test_discovery_finds_presets_baselines_and_the_working_size(tree, tmp_path):
    runs, _ = tree
    # An unfinished, newer run of a preset must not replace the finished one.
    newer = runs / "pixel-ffffffff"
    (newer / "checkpoints").mkdir(parents=True)
    (newer / "run.json").write_text(json.dumps({"preset": "pixel", "status": "running", "step": 5}))
    modes = catalog.discover(runs, ("bicubic", "lanczos"))
    assert modes["pixel"].root.name == "pixel-00000000"
    assert set(modes) == {*FAKE_MODES, "bicubic", "lanczos"}
    assert modes["bicubic"].kind == "baseline" and modes["lanczos"].records == {}
    assert modes["ssim_v3_relaxed"].records == {}          # trained, never evaluated
    assert catalog.default_selection(list(modes), "sr4") == ["ssim_v3", "pixel", "mixed", "bicubic"]
    assert catalog.working_size(modes) == SIZE
    assert [sid for sid, _ in catalog.test_items(modes, "sr4")] == ["eyeq_0001", "eyeq_0002",
                                                                     "eyeq_0003"]


def test_compare_reuses_eval_records_and_runs_only_missing_modes(app_demo):
    cmp = handlers.compare(app_demo, "sr4", ["pixel", "bicubic", "ssim_v3_relaxed"],
                           sample_id="eyeq_0002")
    assert cmp["outputs"]["pixel"]["origin"] == "make eval (step_000300-ema)"
    assert cmp["outputs"]["bicubic"]["origin"] == "make eval"
    assert cmp["outputs"]["ssim_v3_relaxed"]["origin"] == "computed now (the harness)"
    assert app_demo.loader.calls == ["ssim_v3_relaxed"]
    # The computed output is the model's output on the recorded input, at the target size.
    import torch
    inp = imaging.load_rgb(app_demo.modes["pixel"].record("sr4", "eyeq_0002").path("input"))
    expect = FakeModel("x", FAKE_MODES["ssim_v3_relaxed"][0]).edit(
        torch.from_numpy(inp.transpose(2, 0, 1).copy())[None], ["x"], ["sr4"], (SIZE, SIZE), 0)
    got = cmp["outputs"]["ssim_v3_relaxed"]["image"]
    assert np.allclose(got, expect[0].permute(1, 2, 0).numpy(), atol=0.5 / 255 + 1e-6)
    # A second comparison reuses the loaded model.
    handlers.compare(app_demo, "sr4", ["ssim_v3_relaxed"], sample_id="eyeq_0001")
    assert app_demo.loader.calls == ["ssim_v3_relaxed"]


def test_test_images_keep_their_instruction_uploads_get_the_chosen_one(app_demo, tmp_path):
    """A test image was degraded for one instruction: every mode gets that one, whatever the
    enhancement control says (the control is hidden for test images). For an upload the chosen
    degradation applies."""
    from fakes.demo import instruction_of
    from medq.data.text import instruction

    cmp = handlers.compare(app_demo, "enhance", ["ssim_v3_relaxed"], sample_id="eyeq_0001",
                           enhance_kind="blur")
    assert "dehaze this retinal photo" in cmp["note"]
    handlers.compare(app_demo, "sr4", ["ssim_v3_relaxed"], sample_id="eyeq_0001")
    photo = tmp_path / "photo.png"
    Image.fromarray(imaging.to_uint8(fundus(5, 128))).save(photo)
    handlers.compare(app_demo, "enhance", ["ssim_v3_relaxed"], upload=photo, enhance_kind="noise")
    model = app_demo.pool.get("ssim_v3_relaxed")
    assert model.instructions == [[instruction_of("enhance")], [instruction("sr4", 0)],
                                  [instruction("noise", 0)]]
    with pytest.raises(ValueError, match="enhance kind 'fog'"):
        handlers.compare(app_demo, "enhance", ["pixel"], upload=photo, enhance_kind="fog")


def test_metrics_are_the_leaderboards(app_demo):
    """The page shows the numbers of reports/per_image.csv (medq.metrics), not a second
    definition."""
    import torch
    from torchmetrics.functional.image import structural_similarity_index_measure

    cmp = handlers.compare(app_demo, "sr4", ["pixel"], sample_id="eyeq_0001")
    out, target = cmp["outputs"]["pixel"]["image"], cmp["target"]
    def t(a):
        return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)).permute(2, 0, 1)[None]

    # The leaderboard's SSIM is scikit-image's valid-window mean (medq.metrics, issue 15)
    ref = structural_similarity(out, target, channel_axis=-1, gaussian_weights=True, sigma=1.5,
                                use_sample_covariance=False, data_range=1.0)
    m = cmp["outputs"]["pixel"]["metrics"]
    assert m["ssim"] == pytest.approx(ref, abs=1e-5)
    # torchmetrics' reflect-padded SSIM is a different number: the page must not show that one
    tm = float(structural_similarity_index_measure(t(out), t(target), data_range=1.0))
    assert abs(m["ssim"] - tm) > 1e-5
    err = np.mean((out.astype(np.float64) - target) ** 2)
    assert m["psnr"] == pytest.approx(10 * np.log10(1 / err), abs=1e-6)
    # Inside the field of view the black border no longer pads the score.
    assert m["ssim_fov"] != pytest.approx(m["ssim"], abs=1e-4)
    table = handlers.metrics_table(cmp)
    assert list(table.columns) == handlers.METRIC_COLUMNS and table.columns[1] == "SSIM FOV"
    assert table.iloc[0]["Mode"] == "Pixel-loss fine-tune"
    assert table.iloc[0]["SSIM"] == round(m["ssim"], 4)


def test_views_share_one_zoom_box_at_native_pixels(app_demo):
    cmp = handlers.compare(app_demo, "sr4", ["pixel", "mixed"], sample_id="eyeq_0003")
    panels = handlers.panels(cmp)
    assert [c for _, c in panels] == ["Input 64x64", "Pixel-loss fine-tune",
                                      "Pixel + SSIM fine-tune", "Target 256x256"]
    assert all(img.shape == (SIZE, SIZE, 3) and img.dtype == np.uint8 for img, _ in panels)
    # The 64 px input is shown as 4x4 blocks of identical pixels (no interpolation).
    assert (panels[0][0][:4, :4] == panels[0][0][0, 0]).all()
    # Zoom factor 4: a region of ZOOM_VIEW / 4 = 64 image pixels, each a 4x4 block.
    overview, crops = handlers.zoom(cmp, 0.25, 0.75, 4)
    assert handlers.zoom_region(cmp, 0.25, 0.75, 4) == (160, 224, 32, 96)
    assert [cap for _, cap in crops] == ["Input", "Pixel-loss fine-tune",
                                         "Pixel + SSIM fine-tune", "Target"]
    assert all(img.shape == (handlers.ZOOM_VIEW, handlers.ZOOM_VIEW, 3) for img, _ in crops)
    assert handlers.zoom_box_text(cmp, 0.25, 0.75, 4) == (
        "Region x 32-96, y 160-224 of the 256x256 target, each image pixel a 4x4 block of screen "
        "pixels. The input has 4x fewer pixels across: each of its pixels is a 4x4 block of the "
        "target's here.")
    target_crop, mode_crop = crops[-1][0], crops[1][0]
    native = imaging.to_uint8(cmp["target"][160:224, 32:96])
    assert np.array_equal(target_crop, np.repeat(np.repeat(native, 4, axis=0), 4, axis=1))
    assert np.array_equal(mode_crop[::4, ::4],
                          imaging.to_uint8(cmp["outputs"]["pixel"]["image"][160:224, 32:96]))
    assert (overview[160, 32:96] == imaging.to_uint8(imaging.BOX_COLOUR)).all()
    # Zoom factor 1: the image's own pixels, one for one (here the whole 256-px target).
    _, crops = handlers.zoom(cmp, 0.25, 0.75, 1)
    assert np.array_equal(crops[-1][0], imaging.to_uint8(cmp["target"]))
    assert "native pixels: one image pixel per screen pixel" in handlers.zoom_box_text(
        cmp, 0.25, 0.75, 1)
    assert handlers.click_to_centre(cmp, (64, 192), (256, 256)) == (0.25, 0.75)
    left, right = handlers.slider_pair(cmp, "Pixel-loss fine-tune", "Target")
    assert left.shape == right.shape == (256, 256, 3)
    with pytest.raises(ValueError, match="not in this comparison"):
        handlers.slider_pair(cmp, "SSIM fine-tune (v3)", "Target")


def test_crop_box_has_the_given_side_and_stays_inside_the_image():
    assert imaging.crop_box((100, 200), 0.5, 0.5, 40) == (30, 70, 80, 120)
    assert imaging.crop_box((100, 200), 0.0, 0.0, 40) == (0, 40, 0, 40)       # shifted inside
    assert imaging.crop_box((100, 200), 1.0, 1.0, 40) == (60, 100, 160, 200)
    assert imaging.crop_box((100, 200), 0.5, 0.5, 500) == (0, 100, 50, 150)   # at most 100
    assert imaging.crop_box((100, 200), 0.5, 0.5, 0) == (50, 51, 100, 101)    # at least 1


def test_zoom_crop_shows_native_pixels_enlarged_by_whole_blocks():
    img = np.random.default_rng(0).random((10, 12, 3)).astype(np.float32)
    box = (2, 6, 3, 7)
    assert np.array_equal(imaging.zoom_crop(img, box, 1), img[2:6, 3:7])
    big = imaging.zoom_crop(img, box, 3)
    assert big.shape == (12, 12, 3)
    for y in range(4):
        for x in range(4):
            assert (big[3 * y:3 * y + 3, 3 * x:3 * x + 3] == img[2 + y, 3 + x]).all()


def test_zoom_region_side_follows_the_factor_up_to_the_whole_image():
    def cmp(side):
        return {"target": np.zeros((side, side, 3), np.float32), "task": "sr4", "outputs": {},
                "input": np.zeros((side // 4, side // 4, 3), np.float32)}

    assert handlers.ZOOM_VIEW == 256
    assert [handlers.zoom_side(cmp(1024), f) for f in (1, 2, 3, 8)] == [256, 128, 85, 32]
    assert handlers.zoom_side(cmp(100), 1) == 100 and handlers.zoom_side(cmp(100), 2) == 100
    assert handlers.zoom_side(cmp(100), 4) == 64
    # Every zoomed view is at most ZOOM_VIEW pixels across, the size the page shows it at.
    for f in range(handlers.ZOOM_FACTORS[0], handlers.ZOOM_FACTORS[1] + 1):
        _, crops = handlers.zoom(cmp(1024), 0.5, 0.5, f)
        assert crops[0][0].shape[0] == handlers.zoom_side(cmp(1024), f) * f <= handlers.ZOOM_VIEW


def test_pan_moves_the_region_by_half_its_side_and_stops_at_the_edges():
    cmp = {"target": np.zeros((1024, 1024, 3), np.float32),
           "input": np.zeros((256, 256, 3), np.float32)}

    def region(x, y, f):
        return handlers.zoom_region(cmp, x, y, f)

    x, y = 0.5, 0.5
    assert region(x, y, 8) == (496, 528, 496, 528)              # 32 px at factor 8
    x, y = handlers.pan(cmp, x, y, 8, 1, 0)
    assert region(x, y, 8) == (496, 528, 512, 544)              # right by 16 px
    x, y = handlers.pan(cmp, x, y, 8, 0, -1)
    assert region(x, y, 8) == (480, 512, 512, 544)              # up by 16 px
    # Right to the edge, one exact step at a time, then no further.
    seen = []
    for _ in range(40):
        x, y = handlers.pan(cmp, x, y, 8, 1, 0)
        seen.append(region(x, y, 8)[2])
    assert seen[:3] == [528, 544, 560] and seen[-1] == 1024 - 32 and seen.count(992) > 1
    assert all(b - a in (0, 16) for a, b in zip(seen, seen[1:]))
    # A centre outside the box's reach (slider at 0): the first step moves the box as shown.
    assert region(0.0, 0.5, 2) == (448, 576, 0, 128)
    assert region(*handlers.pan(cmp, 0.0, 0.5, 2, 1, 0), 2)[2] == 64
    assert region(*handlers.pan(cmp, 0.0, 0.5, 2, -1, 0), 2)[2] == 0
    assert region(*handlers.pan(cmp, 0.5, 1.0, 1, 0, 1), 1)[:2] == (768, 1024)


def test_error_maps_share_one_fixed_scale_and_are_dark_where_output_equals_target(app_demo):
    cmp = handlers.compare(app_demo, "sr4", ["pixel", "bicubic"], sample_id="eyeq_0001")
    perfect = dict(cmp["outputs"]["pixel"], image=cmp["target"].copy())
    perfect["metrics"] = imaging.image_metrics(perfect["image"], cmp["target"], cmp["mask"])
    cmp["outputs"]["perfect"] = perfect
    maps, vmax = handlers.error_maps(cmp)
    assert vmax == 1.0 and handlers.ERROR_SCALE == (0.0, 1.0)
    # The same error gets the same colour on another comparison (no per-image rescaling).
    other = handlers.compare(app_demo, "sr4", ["pixel"], sample_id="eyeq_0003")
    assert handlers.error_maps(other)[1] == vmax
    assert [c.split(":")[0] for _, c in maps] == ["Pixel-loss fine-tune", "Bicubic upscaling",
                                                  "Training preset perfect"]
    bar = imaging.colour_bar()
    assert bar.shape[1] == 512 and bar.std() > 20         # a gradient with ticks, not blank
    dark = imaging.to_uint8(imaging.error_heatmap(np.zeros((2, 2)), np.ones((2, 2), bool), vmax))
    assert maps[2][0].max() <= dark.max()        # black (dimmed outside the field of view)
    assert maps[0][0].std() > 0


def test_report_warning_for_undecodable_tokens(app_demo):
    cmp = handlers.compare(app_demo, "sr4", ["pixel", "mixed", "bicubic"], sample_id="eyeq_0001")
    md = handlers.reports_markdown(cmp)
    assert "WARNING: 2 undecodable token(s)" in md and md.count("WARNING") == 1
    assert "**Bicubic upscaling**: no text" in md
    assert handlers.undecodable_warnings(cmp) == [
        "Pixel + SSIM fine-tune: 2 undecodable token(s) in its report"]
    table = handlers.metrics_table(cmp).set_index("Mode")
    assert table.loc["Pixel + SSIM fine-tune", "undecodable tokens"] == "2"


def test_a_long_run_shows_its_seconds_against_the_last_runs_and_passes_its_error_on(
        app_demo, tmp_path, monkeypatch):
    """An own-size upload may take minutes per mode on a CPU: the bar moves with the seconds
    elapsed (against an estimate from the mode's last run here), and a failure in the worker
    thread reaches the caller as it is."""
    import time

    monkeypatch.setattr(handlers, "PROGRESS_TICK", 0.01)
    seen = []

    def slow():
        time.sleep(0.2)
        return 7

    assert handlers._with_progress(slow, lambda f, d: seen.append((f, d)), (0.2, 0.6),
                                   "Pixel: 256-px image", 0.4) == 7
    assert seen[0] == (0.2, "Pixel: 256-px image") and len(seen) > 3
    fractions = [f for f, _ in seen]
    assert fractions == sorted(fractions) and 0.3 < fractions[-1] <= 0.2 + 0.4 * 0.95
    assert seen[-1][1].startswith("Pixel: 256-px image: ") and seen[-1][1].endswith(
        " s of about 0 s")

    def broken():
        raise RuntimeError("tile 3 failed")

    with pytest.raises(RuntimeError, match="tile 3 failed"):
        handlers._with_progress(broken, lambda f, d: None, (0.0, 1.0), "x", None)
    # The time per megapixel of a mode's run is kept for the next one's estimate.
    photo = tmp_path / "photo.png"
    Image.fromarray(imaging.to_uint8(fundus(5, 128))).save(photo)
    handlers.compare(app_demo, "sr4", ["pixel"], upload=photo)
    assert set(app_demo.speed) == {"pixel"} and app_demo.speed["pixel"] > 0


def test_a_failing_mode_is_reported_and_the_others_still_shown(app_demo, caplog):
    """The page says it in a clinician's words; the exception, with its paths, goes to the
    server log only."""
    with caplog.at_level("ERROR"):
        cmp = handlers.compare(app_demo, "enhance", ["pixel", "lanczos"], sample_id="eyeq_0001")
    assert list(cmp["outputs"]) == ["pixel"]
    assert cmp["errors"]["lanczos"] == ("could not be run on this image; the server log has the "
                                        "technical details")
    assert "no fake model 'lanczos'" in caplog.text and "Traceback" in caplog.text
    md = handlers.reports_markdown(cmp)
    assert "**Unchanged input (lanczos)**: ⚠️ could not be run on this image" in md
    assert "Error" not in md and "/" not in md.split("Unchanged input (lanczos)")[1]


def test_png_store_writes_each_picture_once_losslessly(tmp_path):
    store = imaging.PngStore(tmp_path)
    img = imaging.to_uint8(fundus(2, 32))
    first = store(img)
    mtime = Path(first).stat().st_mtime_ns
    assert store(img.copy()) == first and Path(first).stat().st_mtime_ns == mtime
    assert np.array_equal(np.asarray(Image.open(first)), img)
    assert store(255 - img) != first and len(list(tmp_path.glob("*.png"))) == 2


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def test_bad_uploads_give_readable_errors(app_demo, tmp_path):
    png = tmp_path / "ok.png"
    Image.fromarray((fundus(1, 128) * 255).astype(np.uint8)).save(png)
    cases = {
        _write(tmp_path / "notes.png", b"this is not an image"): "not an image",
        _write(tmp_path / "cut.png", png.read_bytes()[:200]): "damaged or truncated",
        _write(tmp_path / "empty.jpg", b""): "not an image",
    }
    Image.new("RGB", (8, 8)).save(tmp_path / "tiny.png")
    cases[tmp_path / "tiny.png"] = "too small"
    cases[tmp_path / "empty.jpg"] = "empty"
    Image.new("RGB", (100, 100)).save(tmp_path / "black.png")
    cases[tmp_path / "black.png"] = "not a colour fundus photograph: the image is one flat black"
    Image.new("RGB", (100, 100), "white").save(tmp_path / "white.png")
    cases[tmp_path / "white.png"] = "one flat white"
    Image.new("RGB", (2000, 40), (120, 60, 20)).save(tmp_path / "strip.png")
    cases[tmp_path / "strip.png"] = "2000x40"
    for path, message in cases.items():
        with pytest.raises(UploadError, match=message) as e:
            handlers.compare(app_demo, "sr4", ["bicubic"], upload=path)
        assert path.name in str(e.value) and str(tmp_path) not in str(e.value)
    assert read_upload(png).shape == (128, 128, 3)
    assert read_upload(png, max_side=64).shape == (64, 64, 3)     # big photographs shrunk early


def test_upload_is_cropped_to_the_field_of_view_and_run_by_every_mode(app_demo, tmp_path):
    path = tmp_path / "photo.png"
    wide = np.zeros((150, 240, 3), np.float32)
    wide[11:139, 60:188] = fundus(4, 128)
    Image.fromarray(imaging.to_uint8(wide)).save(path)
    progress = []
    cmp = handlers.compare(app_demo, "sr4", ["pixel", "bicubic"], upload=path,
                           progress=lambda f, d: progress.append((f, d)))
    # At its own size: the square around its field of view, padded to whole x4 input pixels.
    side = fov_side(imaging.to_uint8(wide))
    side += -side % 4
    assert 100 < side <= 132 and cmp["target"].shape == (side, side, 3)
    assert cmp["input"].shape == (side // 4, side // 4, 3)
    assert cmp["title"] == "uploaded photo.png (240x150)"
    assert cmp["notes"] == [f"Worked at its own size: the {side} px square around its field of "
                            "view.", "The photograph is 240x150: the square around its disc is "
                            "used, black where the disc leaves the frame."]
    assert all(o["origin"] == "computed now (the harness)" for o in cmp["outputs"].values())
    assert progress[0][0] == 0.0 and progress[-1] == (1.0, "done")
    assert any("loading the model" in d for _, d in progress)


def test_an_upload_over_the_own_size_limit_is_downscaled_to_it_and_says_so(app_demo, tmp_path):
    """medq.data.readers.MAX_OWN_SIDE is the largest field of view worked at its own size (its
    docstring: larger ones are downscaled to it); the page says what it did, in the status."""
    big = tmp_path / "big.png"
    side = MAX_OWN_SIDE + 200
    Image.fromarray(imaging.to_uint8(fundus(3))).resize((side, side), Image.BICUBIC).save(big)
    own = fov_side(np.asarray(Image.open(big).convert("RGB")))
    assert own > MAX_OWN_SIDE
    cmp = handlers.compare(app_demo, "sr4", ["bicubic"], upload=big)
    assert cmp["target"].shape == (MAX_OWN_SIDE, MAX_OWN_SIDE, 3)
    assert cmp["input"].shape == (MAX_OWN_SIDE // 4, MAX_OWN_SIDE // 4, 3)
    assert cmp["outputs"]["bicubic"]["image"].shape == (MAX_OWN_SIDE, MAX_OWN_SIDE, 3)
    assert cmp["notes"] == [f"Its field of view is {own} px across, over this page's limit of "
                            f"{MAX_OWN_SIDE} px: downscaled to {MAX_OWN_SIDE} px (what the panels "
                            "and the zoom show)."]
    # Just under the limit: its own size, nothing downscaled.
    Image.fromarray(imaging.to_uint8(fundus(3))).resize((MAX_OWN_SIDE - 100,) * 2).save(big)
    own = fov_side(np.asarray(Image.open(big).convert("RGB")))
    cmp = handlers.compare(app_demo, "sr4", ["bicubic"], upload=big)
    assert cmp["target"].shape[0] == own + -own % 4 < MAX_OWN_SIDE
    assert cmp["notes"][0].startswith("Worked at its own size")


def test_an_upload_whose_disc_is_smaller_than_a_model_tile_is_refused(app_demo, tmp_path):
    """The models generate tiles of model.tile_size: a smaller field of view is refused, with its
    size, the tile's and what to do, before any model runs."""
    assert app_demo.tile == 64
    small = tmp_path / "thumb.png"
    Image.fromarray(imaging.to_uint8(fundus(2, 56))).save(small)
    with pytest.raises(UploadError, match=r"^thumb.png \(56x56\): its field of view is \d\d px "
                                          r"across, smaller than the smallest image the models "
                                          r"generate \(64 px\); upload the photograph at its "
                                          r"original size"):
        handlers.compare(app_demo, "sr4", ["pixel"], upload=small)
    assert app_demo.loader.calls == []


def test_real_fundus_photograph_upload(app_demo, fundus_samples):
    photo = sorted((fundus_samples / "eyeq" / "original_img").glob("*.jpeg"))[0]
    cmp = handlers.compare(app_demo, "sr4", ["pixel", "bicubic"], upload=photo)
    # An EyeQ photograph's disc is over MAX_OWN_SIDE across: downscaled to it, and said so.
    assert cmp["target"].shape == (MAX_OWN_SIDE, MAX_OWN_SIDE, 3)
    assert f"downscaled to {MAX_OWN_SIDE} px" in cmp["notes"][0]
    assert 0.5 < cmp["mask"].mean() < 0.95        # a disc inside the square, black corners
    assert cmp["outputs"]["bicubic"]["metrics"]["psnr"] > 20


def test_results_tab_for_clinicians_one_short_table_per_task_and_the_finding(tree, tmp_path):
    """Reference, best fine-tune and floor in the Compare tab's names, the finding in one
    sentence, saying where the models lose (real photographs), the report scores only here."""
    reports_dir = tree[1]
    with open(reports_dir / "leaderboard.csv", "a") as f:
        f.write("ok,constant,baseline,constant,,sr4,3,17.6,17.0,18.1,0.695,0.68,0.71,90,,,,,,"
                "unknown,\n")
    text, files, plots = handlers.results(reports_dir)
    assert "### Super-resolution x4" in text and "Enhancement" not in text
    assert ("The best fine-tune, SSIM fine-tune (v3), judged by SSIM inside the disc: on the "
            "synthetic test images it beats Bicubic upscaling (0.884 against 0.820); on real "
            "photographs it has not been measured here.") in text
    table = text.split("Synthetic test images:")[1].split("###")[0]
    assert table.count("\n|") == 5                        # header, rule, three rows
    assert "| reference | Bicubic upscaling | 0.820 [0.810, 0.830] | 25.80 [25.40, 26.20] |" \
        in table
    assert "| best fine-tune | SSIM fine-tune (v3) | 0.884 [0.874, 0.894] |" in table
    assert "| floor | Constant image | 0.695 [0.680, 0.710] |" in table
    assert "| SSIM fine-tune (v3) | Super-resolution x4 | 0.120 | 0.000 |" in text
    assert "_" not in table and "00000001" not in text     # no column names, no run hashes
    assert [f.name for f in files] == ["leaderboard.csv", "leaderboard.md"]
    assert plots[0][1] == "psnr ssim"
    # Real photographs: the fine-tune loses to bicubic there, and the sentence says so.
    real = tmp_path / "reports-drive"
    real.mkdir()
    lines = (reports_dir / "leaderboard.csv").read_text().splitlines()
    real_rows = [lines[0], lines[2].replace(",0.884,0.874,0.894,", ",0.864,0.85,0.87,"),
                 lines[4].replace(",0.820,0.81,0.83,", ",0.903,0.89,0.91,")]
    (real / "leaderboard.csv").write_text("\n".join(real_rows) + "\n")
    text, _, _ = handlers.results(reports_dir, real)
    assert ("on real photographs it loses to Bicubic upscaling (0.864 against 0.903). It loses "
            "somewhere: do not take it for an improvement.") in text
    assert "Real photographs (development set, never trained on):" in text
    text, files, plots = handlers.results(tmp_path / "nothing")
    assert "make eval" in text and files == [] and plots == []


def test_auth_from_env(tmp_path):
    assert auth_from_env({}) is None
    assert auth_from_env({"MEDQ_DEMO_AUTH": "ann:pw:with:colons"}) == [("ann", "pw:with:colons")]
    f = tmp_path / "logins.txt"
    f.write_text("# clinicians\nbob:one\n\ncarol:two\n")
    assert auth_from_env({"MEDQ_DEMO_AUTH_FILE": str(f)}) == [("bob", "one"), ("carol", "two")]
    f.write_text("bob\n")
    with pytest.raises(ValueError, match="line 1: expected user:password"):
        auth_from_env({"MEDQ_DEMO_AUTH_FILE": str(f)})
    with pytest.raises(ValueError, match="no such file"):
        auth_from_env({"MEDQ_DEMO_AUTH_FILE": str(tmp_path / "missing")})


def test_cli_help_and_defaults():
    from demo.__main__ import parse_args

    args = parse_args([])
    assert (args.host, args.port, args.runs, args.reports) == ("127.0.0.1", 7860, Path("runs"),
                                                               Path("reports"))
    out = subprocess.run([sys.executable, "-m", "demo", "--help"], cwd=REPO, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0 and "--runs" in out.stdout and "MEDQ_DEMO_AUTH" in out.stdout


def test_demo_output_and_report_equal_the_harness_records(tmp_path):
    """Issue 16 item 3: a mode without records for a test image is run by the harness's own
    code; its output and report equal the records ``run_harness`` writes for that image (the
    report from the input, never the target)."""
    import torch

    from fakes.demo import instruction_of
    from medq.harness import run_harness
    from medq.harness.records import read_jsonl

    runs, reports_dir = build_tree(tmp_path, evaluated=("pixel",))
    d = handlers.Demo.from_folders(runs, reports_dir, pool=ModelPool(fake_loader))
    for task in ("sr4", "enhance"):
        for sid, rec in d.items(task):
            item = {"id": sid, "task": task, "instruction": instruction_of(task),
                    **{k: torch.from_numpy(imaging.load_rgb(rec.path(k)).transpose(2, 0, 1).copy())
                       for k in ("input", "target")},
                    "mask": torch.from_numpy(imaging.load_mask(rec.path("mask"), (SIZE, SIZE))
                                             .astype(np.float32))[None]}
            out = tmp_path / "harness" / sid
            run_harness(fake_loader("mixed"), [item], out, seed=0, progress=False)
            row = read_jsonl(out / task / "records.jsonl")[0]
            cmp = handlers.compare(d, task, ["mixed"], sample_id=sid)
            got = cmp["outputs"]["mixed"]
            assert got["origin"] == "computed now (the harness)"
            assert np.array_equal(imaging.to_uint8(got["image"]),
                                  np.asarray(Image.open(out / task / row["output"]).convert("RGB")))
            assert got["report"] == row["report_text"] and got["undecodable"] == row["undecodable"]
            # The fake's report says "usable" for the 64 px / darkened input, "good" for the
            # target: the report is the input's.
            assert "usable" in got["report"]


def test_upload_output_and_report_equal_edit_one(app_demo, tmp_path):
    import torch

    from medq.data.text import instruction
    from medq.harness import edit_one

    photo = tmp_path / "photo.png"
    Image.fromarray(imaging.to_uint8(fundus(9, 200))).save(photo)
    cmp = handlers.compare(app_demo, "sr4", ["ssim_v3"], upload=photo)
    rgb = read_upload(photo)
    ref = edit_one(fake_loader("ssim_v3"), torch.from_numpy(rgb.transpose(2, 0, 1).copy()), "sr4",
                   size=0, instruction=instruction("sr4", 0), report=True)
    got = cmp["outputs"]["ssim_v3"]
    assert np.allclose(got["image"], ref["output"].permute(1, 2, 0).numpy(), atol=1e-6)
    assert got["report"] == ref["report"].text and "usable" in got["report"]
    assert np.allclose(cmp["input"], ref["input"].permute(1, 2, 0).numpy())


def test_reference_report_beside_each_report_with_agreement_per_finding(app_demo):
    from fakes.demo import reference_of

    cmp = handlers.compare(app_demo, "sr4", ["pixel", "bicubic"], sample_id="eyeq_0002")
    assert cmp["reference"] == reference_of(1)
    rows = {f["finding"]: f for f in cmp["outputs"]["pixel"]["findings"]}
    # The fake reports "usable", microaneurysms only, grade 3; the reference: good, grade 3,
    # microaneurysms and haemorrhages.
    assert rows["image quality"]["agree"] is False
    assert rows["diabetic retinopathy grade"]["agree"] is True
    assert rows["microaneurysms"]["agree"] is True and rows["haemorrhages"]["agree"] is False
    assert rows["new vessels"]["agree"] is True
    md = handlers.reports_markdown(cmp)
    assert f"**Reference report** (the label of this test image): {reference_of(1)}" in md
    assert "diabetic retinopathy grade: 3 (severe) → **agree**" in md
    assert "haemorrhages: absent → **disagree** (reference: present)" in md
    # Test-set report scores are on the Results tab, never beside a single report.
    assert "kappa" not in md.lower() and "test set" not in md
    assert handlers.TRAINED_ON in md and "never from a real photograph" in md
    other = handlers.compare(app_demo, "sr4", ["pixel"], sample_id="eyeq_0001")
    assert {f["finding"]: f["agree"] for f in other["outputs"]["pixel"]["findings"]}[
        "diabetic retinopathy grade"] is False
    assert handlers.BANNER.count("Not for diagnosis") == 1 and "synthetic" in handlers.BANNER


def test_reference_reports_rebuilt_from_the_runs_data_config(tmp_path):
    """Records without a reference field: the report of the item of the run's own data config,
    and only for the very same pixels (data_sha256)."""
    from demo.reports import ReferenceReports
    from medq.config import dump_toml, load_config
    from medq.data import build_dataset
    from medq.harness import data_fingerprint

    cfg = load_config("control", [f"data.cache_dir={tmp_path / 'cache'}", "data.num_images=6",
                               "model.tile_size=32", "data.image_size=32"])
    path = tmp_path / "config.toml"
    path.write_text(dump_toml(cfg))
    item = build_dataset(dataclasses.replace(cfg.data, image_size=32), "all", tasks=["enhance"])[3]
    refs = ReferenceReports([path])
    sha = data_fingerprint(item)
    assert refs.get("enhance", item["id"], {"data_sha256": sha}) == item["report"]
    assert refs.get("enhance", item["id"], {"data_sha256": "0" * 16}) is None
    assert refs.get("enhance", "nope", {}) is None
    assert refs.get("sr4", "x", {"reference_report": "quality: good."}) == "quality: good."


def test_verdict_saying_a_mode_ignores_its_input_is_flagged_on_the_panel(tree):
    runs, reports_dir = tree
    task_dir = runs / "mixed-00000002" / "eval" / "step_000300-ema" / "sr4"
    (task_dir / "verdict.json").write_text(json.dumps(
        {"status": "collapsed", "reasons": ["ignores its input: outputs of different inputs "
                                            "differ by 0.001 (< 0.01)"]}))
    d = handlers.Demo.from_folders(runs, reports_dir, pool=ModelPool(fake_loader))
    cmp = handlers.compare(d, "sr4", ["pixel", "mixed"], sample_id="eyeq_0001")
    assert cmp["outputs"]["mixed"]["ignores_input"].startswith("ignores its input")
    assert cmp["outputs"]["pixel"]["ignores_input"] is None
    captions = [c for _, c in handlers.panels(cmp)]
    assert captions[2] == "Pixel + SSIM fine-tune ⚠ ignores its input"
    assert "⚠" not in captions[1]
    assert "**Pixel + SSIM fine-tune ignores its input**" in handlers.reports_markdown(cmp)
    assert "ignores its input" in handlers.metrics_table(cmp).iloc[1]["note"]
    # The same flag from a leaderboard column (the verdict reasons the eval may write there).
    board = reports_dir / "leaderboard.csv"
    lines = board.read_text().splitlines()
    lines[0] += ",verdict_reasons"
    lines = [lines[0]] + [ln + (",ignores its input (constant outputs)" if ln.startswith("ok,pixel")
                                else ",") for ln in lines[1:]]
    board.write_text("\n".join(lines) + "\n")
    lines = board.read_text().splitlines()
    lines = [lines[0]] + [ln.replace(",healthy,", ",collapsed,") if ln.startswith("ok,pixel")
                          else ln for ln in lines[1:]]
    board.write_text("\n".join(lines) + "\n")
    cmp = handlers.compare(d, "sr4", ["pixel"], sample_id="eyeq_0001")
    assert cmp["outputs"]["pixel"]["ignores_input"] == "ignores its input (constant outputs)"
    assert "verdict of make eval on the test set: collapsed" in handlers.reports_markdown(cmp)
    assert "verdict: collapsed" in handlers.metrics_table(cmp).iloc[0]["note"]


def test_a_second_output_in_the_records_is_a_selectable_mode(tmp_path):
    runs, reports_dir = build_tree(tmp_path, tasks=("sr4",), evaluated=("ssim_v3",))
    task_dir = runs / "ssim_v3-00000001" / "eval" / "step_000300-ema" / "sr4"
    rows = [json.loads(x) for x in (task_dir / "records.jsonl").read_text().splitlines()]
    for row in rows:
        row["output_onestep"] = f"images/{row['id']}_output_onestep.png"
        onestep = imaging.to_uint8(fundus(40, SIZE) * 0.5)
        Image.fromarray(onestep).save(task_dir / row["output_onestep"])
    (task_dir / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    d = handlers.Demo.from_folders(runs, reports_dir, pool=ModelPool(fake_loader))
    assert "ssim_v3:onestep" in d.modes
    assert (catalog.display_name("ssim_v3:onestep", "sr4")
            == "SSIM fine-tune (v3), one-step estimate")
    cmp = handlers.compare(d, "sr4", ["ssim_v3", "ssim_v3:onestep"], sample_id="eyeq_0001")
    assert not np.array_equal(cmp["outputs"]["ssim_v3"]["image"],
                              cmp["outputs"]["ssim_v3:onestep"]["image"])
    # a one-step evaluation writes no report (make eval's): the page points at the model's report,
    # not at an image-only baseline's absence of one
    cmp["outputs"]["ssim_v3:onestep"].update(report=None, undecodable=None)
    assert ("**SSIM fine-tune (v3), one-step estimate**: no text (an image read-out of the same "
            "model, "
            "which writes its report once: see **SSIM fine-tune (v3)**)"
            in handlers.reports_markdown(cmp))
    # The one-step read-out runs on an upload: the parent's weights, read out as x0 prediction.
    photo = tmp_path / "photo.png"
    Image.fromarray(imaging.to_uint8(fundus(5, 128))).save(photo)
    up = handlers.compare(d, "sr4", ["ssim_v3:onestep"], upload=photo)
    assert up["outputs"]["ssim_v3:onestep"]["origin"] == "computed now (the harness)"
    assert up["errors"] == {}


def test_readable_mode_names_and_identical_outputs_marked(tmp_path):
    from demo.app import mode_choices, mode_help

    runs, reports_dir = build_tree(tmp_path, tasks=("enhance",), evaluated=("pixel",))
    d = handlers.Demo.from_folders(runs, reports_dir, pool=ModelPool(fake_loader),
                                   baselines=("bicubic", "identity"))
    assert catalog.display_name("ssim_v3") == "SSIM fine-tune (v3)"
    assert catalog.display_name("identity", "enhance") == "Unchanged input"
    sr = dict(mode_choices(d, "sr4"))
    assert sr["Bicubic upscaling"] == "bicubic" and "Unchanged input" not in sr
    enh = [lb for _, lb in mode_choices(d, "enhance")]
    assert "identity" in enh and "bicubic" not in enh          # one "unchanged input" offered
    assert "- **Unchanged input**: no model" in mode_help(d, "enhance")
    assert all(line.count(":") >= 1 for line in mode_help(d, "sr4").splitlines())
    from medq.baselines import BASELINES

    d.pool = ModelPool(lambda label: BASELINES[label]() if label in ("identity", "bicubic")
                       else fake_loader(label))
    cmp = handlers.compare(d, "enhance", ["pixel", "bicubic", "identity"], sample_id="eyeq_0001")
    assert cmp["outputs"]["bicubic"]["identical_to"] is None
    assert cmp["outputs"]["identity"]["identical_to"] == "Unchanged input (bicubic)"
    assert cmp["outputs"]["pixel"]["identical_to"] is None
    caps = [c for _, c in handlers.panels(cmp)]
    assert caps[3] == "Unchanged input (identical to Unchanged input (bicubic))"


def test_uploads_that_are_not_fundus_photographs_are_refused_with_the_reason(app_demo, tmp_path):
    from fakes.images import NOT_FUNDUS_REASON, not_fundus_corpus

    for name, path in not_fundus_corpus(tmp_path).items():
        with pytest.raises(UploadError) as e:
            handlers.compare(app_demo, "sr4", ["bicubic"], upload=path)
        msg = str(e.value)
        assert msg.startswith(name) and "not a colour fundus photograph" in msg, msg
        assert re.search(NOT_FUNDUS_REASON[name], msg) and str(tmp_path) not in msg


def test_16_bit_and_float_uploads_are_converted(app_demo, tmp_path, fundus_samples):
    import tifffile

    from fakes.images import write_png16
    from medq.data.imageio import load_rgb

    rgb = load_rgb(sorted((fundus_samples / "drive-train" / "images").glob("*"))[0])
    files = [write_png16(tmp_path / "drive16.png", rgb.astype(np.uint16) * 257)]
    tifffile.imwrite(tmp_path / "drive_float.tif", rgb.astype(np.float32) / 255)
    files.append(tmp_path / "drive_float.tif")
    for path in files:
        cmp = handlers.compare(app_demo, "sr4", ["bicubic"], upload=path)
        assert cmp["title"] == f"uploaded {path.name} (565x584)"
        assert cmp["target"].mean() > 0.1                     # not clipped to black


def test_oversized_uploads_are_refused_before_decoding(tmp_path, monkeypatch):
    from demo import security

    big = tmp_path / "big.png"
    with open(big, "wb") as f:
        f.truncate(security.MAX_UPLOAD_BYTES + 1)
    with pytest.raises(UploadError, match=r"^big.png: the file is 25.0 MB, over the 25.0 MB"):
        read_upload(big)
    # Few-kB PNGs that declare 8000x8000 and 60000x60000 pixels: refused from their header,
    # never decoded (the second one is past Pillow's own decompression-bomb limit).
    def chunk(k, d):
        return struct.pack(">I", len(d)) + k + d + struct.pack(">I", zlib.crc32(k + d))

    decoded = []
    monkeypatch.setattr("medq.data.imageio.load_rgb", lambda *a, **k: decoded.append(a))
    for side, message in ((8000, "declares 8000x8000 pixels \\(64 Mpx\\)"),
                          (60000, "declares 3,600 Mpx")):
        bomb = tmp_path / f"bomb{side}.png"
        bomb.write_bytes(b"\x89PNG\r\n\x1a\n"
                         + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0))
                         + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))
        with pytest.raises(UploadError, match=f"^bomb{side}.png: the image {message}, over the "
                                              "limit of 40 Mpx; it was not decoded"):
            read_upload(bomb)
        assert bomb.stat().st_size < 1000
    assert decoded == []


def test_login_throttle_locks_a_user_after_failed_attempts():
    from demo.security import LoginThrottle

    now = [0.0]
    auth = LoginThrottle([("ann", "s3cret")], free=5, lock_seconds=30, clock=lambda: now[0])
    assert auth("ann", "s3cret") and not auth("ann", "nope")
    for _ in range(29):
        assert not auth("ann", "guess")
    # Locked: even the right password is refused, without being checked.
    assert auth.locked_for("ann") > 0 and not auth("ann", "s3cret")
    now[0] += 900.0
    assert auth("ann", "s3cret")                       # the lock expires; success resets it
    assert not auth("bob", "s3cret")


# ---------------------------------------------------------------------------------------------
# the launched app


@pytest.mark.slow      # launches the Gradio server
def test_client_compares_an_upload_and_the_test_set(server, tmp_path):
    from gradio_client import Client, handle_file

    client = Client(server["url"], verbose=False)
    photo = tmp_path / "photo.png"
    Image.fromarray(imaging.to_uint8(fundus(7, 128))).save(photo)
    result = client.predict(handle_file(str(photo)), "", "sr4", ["pixel", "bicubic"], 0.5, 0.5, 4,
                            "blur", api_name="/compare")
    panels, table = result[0]["value"], result[1]      # (the gr.State output is not in the API)
    assert [p["caption"] for p in panels] == ["Input 32x32", "Pixel-loss fine-tune",
                                              "Bicubic upscaling", "Target 128x128"]
    assert all(Path(p["image"]).suffix == ".png" for p in panels)    # lossless, never WebP
    assert Image.open(panels[1]["image"]).size == (256, 256)
    assert [row[0] for row in table["data"]] == ["Pixel-loss fine-tune", "Bicubic upscaling"]
    assert "No reference report" in result[2]
    assert "Worked at its own size: the 128 px square around its field of view" in result[-1]
    result = client.predict(None, "eyeq_0002", "enhance", ["mixed"], 0.5, 0.5, 4, "blur",
                            api_name="/compare")
    assert result[1]["data"][0][7] == "make eval (step_000300-ema)"
    assert "undecodable" in result[2] and "**Reference report**" in result[2]
    slider = result[8]
    assert slider["label"] == ("Before / after: Pixel + SSIM fine-tune (left) and Target (right); "
                               "drag the handle")
    assert len(slider["value"]) == 2 and all(Path(p).suffix == ".png" for p in slider["value"])


@pytest.mark.slow      # launches the Gradio server
def test_a_bad_upload_leaves_its_reason_in_the_status_line(server, tmp_path):
    """No pop-up that vanishes and no 'Error' badges: the outputs are cleared and the reason,
    with the file's own name and never a server path, stays in the status line."""
    from gradio_client import Client, handle_file

    client = Client(server["url"], verbose=False)
    bad = _write(tmp_path / "scan.png", b"\x89PNG\r\n\x1a\n but then garbage")
    result = client.predict(handle_file(str(bad)), "", "sr4", ["bicubic"], 0.5, 0.5, 4, "blur",
                            api_name="/compare")
    status = result[-1]
    assert "scan.png" in status and re.search("not an image|damaged", status)
    assert "/tmp" not in status and "gradio" not in status
    assert not (result[0] if isinstance(result[0], list) else result[0].get("value"))
    noise = tmp_path / "noise.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (300, 400, 3), np.uint8)).save(noise)
    status = client.predict(handle_file(str(noise)), "", "sr4", ["bicubic"], 0.5, 0.5, 4, "blur",
                            api_name="/compare")[-1]
    assert "noise.png (400x300) is not a colour fundus photograph" in status
    # The app keeps serving after the error.
    assert "Super-resolution x4" in client.predict(api_name="/leaderboard")[0]


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=20) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


@pytest.mark.slow      # launches the Gradio server
def test_only_the_pictures_the_page_shows_are_served(server, tmp_path):
    """Weights, the cached dataset, configs and even the records' own PNGs are refused by full
    path; the PNGs the page handed out are served."""
    from gradio_client import Client

    url, root, runs, run = server["url"], server["root"], server["runs"], server["run"]
    result = Client(server["url"], verbose=False).predict(
        None, "eyeq_0001", "sr4", ["pixel"], 0.5, 0.5, 4, "blur", api_name="/compare")
    shown = result[0]["value"][0]["image"]                  # downloaded copy; find its URL
    from demo.hygiene import temp_root

    cached = list(temp_root().rglob(Path(shown).name))       # the page's own temp folder
    assert cached, shown
    status, body = _get(url + "gradio_api/file=" + str(cached[0]))
    assert status == 200 and body[:4] == b"\x89PNG"             # positive control
    secrets = [run / "checkpoints" / "step_000300" / "model.safetensors", run / "config.toml",
               runs / "_cache" / "synthetic-v2-s0-64px-n2048.npz", next(runs.rglob("*_output.png")),
               next(runs.rglob("records.jsonl")), root / "secret.txt", REPO / "pyproject.toml"]
    for prefix in ("gradio_api/file=", "gradio_api/file/", "file="):
        for target in [*map(str, secrets), "/etc/passwd", f"{runs}/../secret.txt",
                       f"{runs}/%2e%2e/secret.txt", "%2Fetc%2Fpasswd", "../../../../etc/passwd"]:
            status, body = _get(url + prefix + target)
            assert status in (400, 403, 404), (prefix, target, status)
            for secret in (b"root:x:", b"SECRET", b"WEIGHTS", b"PATIENT-IMAGES"):
                assert secret not in body, (prefix, target)


@pytest.mark.slow      # launches the Gradio server
def test_server_refuses_an_upload_over_the_limit_before_it_reaches_the_page(server):
    """Gradio's upload route enforces launch(max_file_size=25mb): 413, nothing stored."""
    from demo.security import MAX_UPLOAD_BYTES

    boundary = "medqboundary"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; "
            f"filename=\"huge.png\"\r\nContent-Type: image/png\r\n\r\n").encode() \
        + b"\0" * (MAX_UPLOAD_BYTES + 1024) + f"\r\n--{boundary}--\r\n".encode()
    req = urllib.request.Request(server["url"] + "gradio_api/upload", data=body, headers={
        "Content-Type": f"multipart/form-data; boundary={boundary}"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            status = r.status
    except urllib.error.HTTPError as e:
        status = e.code
    assert status == 413


@pytest.mark.slow      # launches the Gradio server
def test_server_binds_localhost_only_and_exposes_two_endpoints(server):
    from gradio_client import Client

    assert server["url"].startswith("http://127.0.0.1:")
    info = Client(server["url"], verbose=False).view_api(return_format="dict", print_info=False)
    assert sorted(info["named_endpoints"]) == ["/compare", "/leaderboard"]


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


def _post_login(url: str, user: str, password: str, full: bool = False):
    """The status of a login attempt (redirects not followed); ``full``: (status, headers)."""
    data = urllib.parse.urlencode({"username": user, "password": password}).encode()
    opener = urllib.request.build_opener(_NoRedirect)
    try:
        with opener.open(urllib.request.Request(url + "login", data=data), timeout=20) as r:
            status, headers = r.status, r.headers
    except urllib.error.HTTPError as e:
        status, headers = e.code, e.headers
    return (status, headers) if full else status


@pytest.mark.slow      # launches the Gradio server
def test_login_is_enforced_throttled_and_offers_logout(tmp_path, monkeypatch):
    from gradio_client import Client

    from fakes.demo import launch_login_demo

    app, runs, url = launch_login_demo(tmp_path, monkeypatch)
    try:
        inside = next(runs.rglob("*_output.png"))
        assert _get(url + "config")[0] in (401, 403)
        assert _get(url + "gradio_api/file=" + str(inside))[0] in (401, 403)
        with pytest.raises(Exception):  # noqa: B017 - gradio_client raises its own (unexported) error
            Client(url, verbose=False, auth=("ann", "wrong"))
        client = Client(url, verbose=False, auth=("ann", "s3cret"))
        assert "Super-resolution x4" in client.predict(api_name="/leaderboard")[0]
        # A logout link on the page, and Gradio's /logout route behind it.
        config = json.dumps(client.config)
        assert '"link": "/logout"' in config
        # Guessing: the 5th failure locks the user; the answer sends the browser back to the
        # page with a cookie naming the user, and the login page then says it is locked and for
        # how long. The right password too is refused while locked.
        assert [_post_login(url, "ann", f"guess{k}") for k in range(4)] == [400] * 4
        status, headers = _post_login(url, "ann", "guess4", full=True)
        assert status == 303 and "medq-login-locked=ann" in headers["set-cookie"]
        assert _post_login(url, "ann", "s3cret") == 303
        with pytest.raises(Exception):  # noqa: B017 - as above
            Client(url, verbose=False, auth=("ann", "s3cret"))
        req = urllib.request.Request(url, headers={"Cookie": "medq-login-locked=ann"})
        with urllib.request.urlopen(req, timeout=20) as r:
            page = r.read().decode()
        assert re.search(r"User ann is locked after too many wrong passwords: try again in "
                         r"\d+ s", page), page[-3000:]
        assert "User" not in _get(url)[1].decode().split("auth_message")[1][:200]
    finally:
        app.close()


def test_records_with_a_corrupt_line_still_show_the_valid_rows(tmp_path, caplog):
    """The demo reads records.jsonl with the harness's reader: a broken line is logged with
    file and line and skipped; rows without an existing output PNG are not offered."""
    import json as _json

    from medq.data.imageio import save_png

    task = tmp_path / "eval" / "sr4"
    import torch

    save_png(task / "images" / "a_output.png", torch.zeros(3, 8, 8))
    rows = [{"id": "a", "task": "sr4", "output": "images/a_output.png"},
            {"id": "b", "task": "sr4", "output": "images/b_output.png"}]
    (task / "records.jsonl").write_text(_json.dumps(rows[0]) + "\n{not json\n"
                                        + _json.dumps(rows[1]) + "\n")
    with caplog.at_level("WARNING"):
        found = catalog.read_task_records(tmp_path / "eval")
    assert list(found) == ["sr4"] and list(found["sr4"]) == ["a"]
    assert "records.jsonl:2: not JSON" in caplog.text


def test_fake_tree_matches_the_records_contract(tmp_path):
    from PIL import Image

    from medq.harness import records

    runs, _ = build_tree(tmp_path)
    rec = runs / "pixel-00000000" / "eval" / "step_000300-ema" / "sr4" / "records.jsonl"
    row = json.loads(rec.read_text().splitlines()[0])
    assert not set(records.FIELDS) - set(row), "the fake rows lack fields of the records contract"
    assert records.is_finished(row, rec.parent)  # every field present, every PNG it names there
    assert Image.open(rec.parent / row["input"]).size == (SIZE // 4, SIZE // 4)


# ---------------------------------------------------------------------------------------------
# issue 30: honest reports, every offered mode runs, identical within a tolerance


def test_a_real_photograph_gets_no_grade_and_a_synthetic_one_does(app_demo, tmp_path,
                                                                   fundus_samples):
    """A DRIVE photograph is unlike the synthetic training images: every report is "not
    assessed", no grade is shown. A synthetic photograph uploaded the same way gets its report."""
    photo = sorted((fundus_samples / "drive-train" / "images").glob("*.tif"))[0]
    cmp = handlers.compare(app_demo, "sr4", ["pixel", "mixed", "bicubic"], upload=photo)
    assert cmp["ood"]["unlike"] and cmp["ood"]["distance"] > cmp["ood"]["threshold"]
    md = handlers.reports_markdown(cmp)
    assert "Reports not assessed: this photograph is unlike the images the report model was " \
           "trained on" in md
    assert "**Pixel-loss fine-tune**: not assessed" in md
    assert not re.search(r"grade \d", md.replace("no grade is shown", ""))
    assert "WARNING: 2 undecodable token(s)" in md          # the collapse signal stays
    synthetic = tmp_path / "synthetic.png"
    Image.fromarray(imaging.to_uint8(fundus(11, 256))).save(synthetic)
    cmp = handlers.compare(app_demo, "sr4", ["pixel"], upload=synthetic)
    assert not cmp["ood"]["unlike"], cmp["ood"]
    md = handlers.reports_markdown(cmp)
    assert "not assessed" not in md and re.search(r"Pixel-loss fine-tune\*\*: .*grade 3", md)


def test_a_grade_is_shown_only_for_a_mode_whose_reports_read_it_on_the_test_set(app_demo,
                                                                                 tmp_path):
    """The fake leaderboard: pixel's reports read the DR grade with kappa 0.85, ssim_v3's with
    0.12, ssim_v3_relaxed has no score. Only pixel's grade is shown; the others show their image
    quality and why the grade is withheld, with their kappa as the reason, on test images and
    uploads alike. The lesions go with the grade."""
    assert 0.12 < handlers.GRADE_MIN_KAPPA <= 0.85
    for kw in ({"sample_id": "eyeq_0002"}, {"upload": _synthetic_upload(tmp_path)}):
        cmp = handlers.compare(app_demo, "sr4", ["pixel", "ssim_v3", "ssim_v3_relaxed"], **kw)
        assert not cmp["ood"]["unlike"], cmp["ood"]
        assert cmp["outputs"]["pixel"]["grade"]["assessed"] is True
        assert cmp["outputs"]["ssim_v3"]["grade"] == {"assessed": False, "kappa": 0.12,
                                                      "floor": 0.0}
        assert cmp["outputs"]["ssim_v3_relaxed"]["grade"]["kappa"] is None
        md = handlers.reports_markdown(cmp)
        by_mode = {line.split("**")[1]: line for line in md.split("\n- ")[1:]}
        pixel = by_mode["Pixel-loss fine-tune"]
        assert re.search(r"grade 3", pixel) and "not assessed" not in pixel
        assert "kappa" not in pixel and "0.85" not in pixel    # no score beside a shown grade
        low = by_mode["SSIM fine-tune (v3)"]
        assert ("DR grade not assessed: this model's reports did not read the DR grade reliably "
                "on the test images (kappa 0.12 against the truth") in low
        assert "quality: usable." in low
        assert not re.search(r"grade \d", low) and "microaneurysms" not in low
        unscored = by_mode["SSIM fine-tune (v3 relaxed)"]
        assert "DR grade not assessed" in unscored and "no DR grade score" in unscored
        assert not re.search(r"grade \d", unscored) and "microaneurysms" not in unscored
        if "sample_id" in kw:        # agreement marks: the grade's only where it is shown
            assert "diabetic retinopathy grade: 3 (severe) \u2192 **agree**" in pixel
            assert "image quality: usable \u2192 **disagree**" in low
            assert "diabetic retinopathy" not in low.split("withheld")[1]


def test_grade_gate_at_the_threshold_and_for_one_step_read_outs(tree):
    """A kappa at the threshold passes, just under it does not; a mode with no row, a failed
    row or a row without a kappa has no score. A one-step read-out's report is its parent's
    text, so the parent's score decides; several runs of a preset: the lowest decides."""
    runs, _ = tree
    modes = catalog.discover(runs, ("bicubic",))
    t = handlers.GRADE_MIN_KAPPA

    def row(kappa, run="pixel-00000000", status="ok", task="sr4", preset="pixel"):
        return {"status": status, "name": run, "kind": "run", "run": run, "preset": preset,
                "task": task, "dr_kappa": kappa, "dr_kappa_floor": "0.1"}

    def gate(board, label="pixel"):
        return handlers.grade_gate(board, modes[label], "sr4")

    assert gate([row(str(t))])["assessed"] is True
    assert gate([row(str(t - 0.001))]) == {"assessed": False, "kappa": t - 0.001, "floor": 0.1}
    for board in ([], [row("0.9", status="failed")], [row("")], [row("0.9", task="sr2")],
                  [row("0.9", preset="mixed")]):
        assert gate(board) == {"assessed": False, "kappa": None, "floor": None}, board
    one_step = dataclasses.replace(modes["pixel"], label="pixel:onestep", parent="pixel")
    onestep_row = {**row(""), "preset": "pixel/onestep"}
    assert handlers.grade_gate([row("0.9"), onestep_row], one_step, "sr4")["assessed"] is True
    assert handlers.grade_gate([row("0.2"), onestep_row], one_step, "sr4")["assessed"] is False
    # The run shown decides when the leaderboard names it; otherwise the lowest score.
    assert gate([row("0.9"), row("0.1", run="pixel-99999999")])["kappa"] == 0.9
    assert gate([row("0.9", run="pixel-a"), row("0.1", run="pixel-b")])["kappa"] == 0.1
    # A comparison built without a gate (nothing known) withholds the grade too.
    md = handlers.reports_markdown({
        "title": "x", "task": "sr4", "note": "", "id": None, "reference": None, "ood": None,
        "errors": {}, "outputs": {"pixel": {"report": "quality: good. diabetic retinopathy "
                                            "grade 4 (proliferative).", "undecodable": 0,
                                            "findings": []}}})
    assert "not assessed" in md and not re.search(r"grade \d", md)


def _synthetic_upload(tmp_path: Path) -> Path:
    photo = tmp_path / "synthetic_upload.png"
    Image.fromarray(imaging.to_uint8(fundus(11, 256))).save(photo)
    return photo


def test_without_a_usable_calibration_no_report_is_assessed(tree, tmp_path):
    for path, why in ((tmp_path / "missing.json", "is not set up"),
                      (_write(tmp_path / "bad.json", b"{}"), "is broken")):
        d = handlers.Demo.from_folders(*tree, pool=ModelPool(fake_loader), ood_calibration=path)
        cmp = handlers.compare(d, "sr4", ["pixel"], sample_id="eyeq_0002")
        md = handlers.reports_markdown(cmp)
        assert f"Reports not assessed: the check for photographs unlike the training images {why}" \
            in md and "python -m demo calibrate-ood" in md
        assert "Reference report" not in md and "**Pixel-loss fine-tune**: not assessed" in md
    stale = json.loads(handlers.OOD_CALIBRATION.read_text())
    stale["generator_version"] = -1
    path = tmp_path / "stale.json"
    path.write_text(json.dumps(stale))
    d = handlers.Demo.from_folders(*tree, pool=ModelPool(fake_loader), ood_calibration=path)
    assert "set up for other training images" in d.ood_problem
    assert handlers.compare(d, "sr4", ["pixel"], sample_id="eyeq_0002")["ood"]["unlike"]


def test_outputs_identical_within_one_level_or_ssim_0999_are_flagged():
    base = np.round(fundus(3, 256) * 255) / 255
    one_level = np.clip(base + np.where(np.arange(256)[:, None, None] % 2, 1, -1) / 255, 0, 1)
    far = np.clip(base * 0.9, 0, 1)
    speck = base.copy()
    speck[128, 100:103] += 4 / 255                    # three pixels off by 4 levels: SSIM 0.9999
    outputs = {lb: {"image": img} for lb, img in (("pixel", base), ("mixed", one_level),
                                                  ("ssim_v3", far), ("ssim_v1", speck))}
    handlers._mark_identical(outputs, "sr4")
    assert outputs["mixed"]["identical_to"] == "Pixel-loss fine-tune"
    assert outputs["ssim_v3"]["identical_to"] is None
    assert outputs["ssim_v1"]["identical_to"] == "Pixel-loss fine-tune"
    assert not imaging.nearly_identical(base, far, 1, 0.999)
    assert not imaging.nearly_identical(base, base[:32], 1, 0.999)


def _with_base_model(tmp_path, weights_here: bool):
    """A tree whose runs started from a base checkpoint (bench eval scored it under
    runs/_init/<sha8>, its records naming the checkpoint in ``run``)."""
    runs, reports_dir = build_tree(tmp_path, tasks=("sr4",), evaluated=("pixel",))
    base = tmp_path / "weights" / "base"
    if weights_here:
        base.mkdir(parents=True)
        (base / "state.json").write_text('{"step": 6000}')
    from fakes.demo import write_eval
    write_eval(runs / "_init" / "1a2b3c4d" / "eval" / "sr4", fake_loader("pixel"), "sr4",
               str(base), "step_006000", "ema", {sid: fundus(n) for n, sid in enumerate(IDS)})
    loads = []

    def loader(label):
        loads.append(label)
        return fake_loader("ssim_v3" if label.startswith("pretrain") else label)

    return handlers.Demo.from_folders(runs, reports_dir, pool=ModelPool(loader)), loads


def test_base_model_and_its_onestep_output_run_on_an_upload_or_are_not_offered(tmp_path):
    from demo.app import mode_choices

    photo = tmp_path / "photo.png"
    Image.fromarray(imaging.to_uint8(fundus(5, 128))).save(photo)
    d, loads = _with_base_model(tmp_path / "a", weights_here=True)
    assert d.modes["pretrain"].weights == tmp_path / "a" / "weights" / "base"
    offered = [lb for _, lb in mode_choices(d, "sr4", upload=True)]
    assert "pretrain" in offered
    cmp = handlers.compare(d, "sr4", ["pretrain", "pixel"], upload=photo)
    assert set(cmp["outputs"]) == {"pretrain", "pixel"} and cmp["errors"] == {}
    assert loads == ["pretrain", "pixel"]
    # Weights not on this disk: offered for the evaluated test images only.
    d, _ = _with_base_model(tmp_path / "b", weights_here=False)
    assert "pretrain" in [lb for _, lb in mode_choices(d, "sr4")]
    assert "pretrain" not in [lb for _, lb in mode_choices(d, "sr4", upload=True)]
    cmp = handlers.compare(d, "sr4", ["pretrain", "pixel"], upload=photo)
    assert cmp["errors"]["pretrain"] == ("not available for this image: its outputs exist only "
                                         "for the evaluated test images")
    assert "runs/_init" not in handlers.reports_markdown(cmp)


def test_session_end_deletes_its_uploads_and_pictures_and_forgets_its_comparison(tmp_path,
                                                                                 monkeypatch):
    from demo.hygiene import TEMP_ENV, Sessions

    monkeypatch.setenv(TEMP_ENV, str(tmp_path))
    sessions = Sessions(tmp_path / "page", max_sessions=2)
    upload = tmp_path / "0f3a" / "patient.jpg"
    upload.parent.mkdir()
    upload.write_bytes(b"photo")
    outside = tmp_path.parent / f"{tmp_path.name}-outside.jpg"
    outside.write_bytes(b"not ours")
    sessions.add_upload("s1", upload)
    sessions.add_upload("s1", outside)                  # never deleted: not in the temp folder
    picture = imaging.PngStore(sessions.folder("s1"))(np.zeros((4, 4, 3), np.uint8))
    sessions.remember("s1", {"title": "one"})
    other = imaging.PngStore(sessions.folder("s2"))(np.zeros((4, 4, 3), np.uint8))
    gone = sessions.end("s1")
    assert not upload.exists() and not upload.parent.exists() and outside.exists()
    assert not Path(picture).exists() and Path(other).exists()
    assert sessions.comparison("s1") is None and set(gone) == {upload, Path(picture)}
    for k in range(3):                                   # bounded: least recently used dropped
        sessions.remember(f"x{k}", {"title": k})
    assert sessions.comparison("x0") is None and sessions.comparison("x2") == {"title": 2}


def test_kept_comparisons_stay_within_their_byte_budget_however_many_sessions(tmp_path):
    """Sessions that never end (a tab left open, an API client) each leave their last comparison
    on the server: the kept bytes stay within the budget however many there are, the newest is
    always kept, and a dropped session is told to compare again rather than shown nothing."""
    from demo.hygiene import Sessions, nbytes

    picture = np.zeros((256, 256, 3), np.uint8)                # 192 KiB
    cmp = {"target": picture, "outputs": {"a": {"image": picture.copy()}}}
    assert nbytes(cmp) == 2 * picture.nbytes
    sessions = Sessions(tmp_path / "page", max_sessions=1000, max_bytes=5 * nbytes(cmp))
    for k in range(200):
        sessions.remember(f"s{k}", {**cmp, "k": k})
        assert sessions.kept_bytes() <= 5 * nbytes(cmp) and len(sessions) <= 5
    assert sessions.comparison("s199")["k"] == 199 and sessions.comparison("s0") is None
    assert sessions.dropped("s0") and not sessions.dropped("s199")
    huge = {"target": np.zeros((2048, 2048, 3), np.uint8)}      # over the budget on its own
    sessions.remember("big", huge)
    assert sessions.comparison("big") is huge and len(sessions) == 1
    sessions.end("big")
    assert len(sessions) == 0 and sessions.kept_bytes() == 0
    from demo.hygiene import MAX_KEPT_BYTES

    assert Sessions(tmp_path / "p2").max_bytes == MAX_KEPT_BYTES


def test_memory_freed_by_a_request_goes_back_to_the_system():
    """Freed memory in the middle of glibc's heap stays resident until ``malloc_trim``: the
    page calls ``release_memory`` after every comparison, so resident memory follows what the
    server still holds instead of creeping up with every upload."""
    from demo.bench_memory import rss_mb
    from demo.hygiene import can_release_memory, release_memory

    if not can_release_memory():
        pytest.skip("not glibc: nothing to trim")
    # 100 KiB blocks come from the heap (under glibc's mmap threshold); every other one stays
    # allocated, so the freed ones are holes that free() alone does not give back.
    blocks = [np.ones(100 * 1024, np.uint8) for _ in range(1200)]
    del blocks[::2]
    held = rss_mb(os.getpid())
    assert release_memory()
    assert rss_mb(os.getpid()) < held - 30, (held, rss_mb(os.getpid()))
    assert len(blocks) == 600 and all(int(b[-1]) == 1 for b in blocks)


def test_the_kept_comparison_gives_the_same_zoom_and_slider_in_a_quarter_of_the_memory(
        app_demo, tmp_path):
    """The page keeps a compact comparison per session (uint8 pictures, no metrics): every view
    drawn from it later is the very pixels of the full comparison's."""
    from demo.hygiene import nbytes

    photo = tmp_path / "photo.png"
    Image.fromarray(imaging.to_uint8(fundus(5, 256))).save(photo)
    full = handlers.compare(app_demo, "sr4", ["pixel", "bicubic"], upload=photo)
    small = handlers.kept(full)
    assert nbytes(small) * 3 < nbytes(full)
    for x, y, z in ((0.5, 0.5, 2), (0.1, 0.9, 1), (0.7, 0.3, 8)):
        (over, crops), (over2, crops2) = handlers.zoom(full, x, y, z), handlers.zoom(small, x, y, z)
        assert np.array_equal(over, over2)
        assert all(c == c2 and np.array_equal(a, a2) for (a, c), (a2, c2) in zip(crops, crops2))
        assert handlers.zoom_box_text(full, x, y, z) == handlers.zoom_box_text(small, x, y, z)
        assert handlers.pan(full, x, y, z, 1, -1) == handlers.pan(small, x, y, z, 1, -1)
    names = handlers.view_names(full)
    assert names == handlers.view_names(small)
    for a, b in zip(handlers.slider_pair(full, names[0], names[-2]),
                    handlers.slider_pair(small, names[0], names[-2])):
        assert np.array_equal(a, b)


def test_a_request_still_running_at_the_stop_leaves_nothing_behind(tmp_path, monkeypatch):
    """The stop removes the page's folder while a request may still be running: that request
    cannot re-create the folder (its picture store fails instead), the harness's scratch files
    are inside the folder, and whatever a late writer did put there goes in the sweep at exit."""
    import tempfile

    from demo import hygiene

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "system-tmp"))
    (tmp_path / "system-tmp").mkdir()
    monkeypatch.setenv(hygiene.TEMP_ENV, "")
    monkeypatch.setattr(hygiene, "_root", None)
    monkeypatch.setattr(hygiene, "_removed", [])
    root = hygiene.temp_root()
    assert root.parent == tmp_path / "system-tmp" and hygiene.scratch_dir() == str(root)
    sessions = hygiene.Sessions(Path(tempfile.mkdtemp(prefix="page-", dir=root)))
    picture = np.zeros((4, 4, 3), np.uint8)
    assert Path(imaging.PngStore(sessions.folder("s1"))(picture)).is_file()
    hygiene.remove_temp_root()                                  # the stop
    assert not root.exists() and hygiene.scratch_dir() is None
    with pytest.raises(FileNotFoundError):                      # a request finishing late
        imaging.PngStore(sessions.folder("s2"))(picture)
    with pytest.raises(FileNotFoundError):
        imaging.PngStore(sessions.root / "shared")
    assert not root.exists()
    late = root / "0f3a" / "patient.jpg"                        # e.g. an upload being written
    late.parent.mkdir(parents=True)
    late.write_bytes(b"photo")
    hygiene.remove_temp_root()                                  # what runs at interpreter exit
    assert list((tmp_path / "system-tmp").iterdir()) == []


@pytest.mark.slow      # starts python -m demo
def test_no_uploaded_file_is_left_after_the_server_stops(tmp_path):
    """Nothing at all is left in the server's temp folder (TMPDIR): not an upload, not a picture,
    not Gradio's folders, not torch.compile's kernel cache (the photograph is large enough for
    the per-image SSIM to run compiled; the cache goes to the user's cache folder instead)."""
    import os
    import signal

    from gradio_client import Client, handle_file

    runs, reports_dir = build_tree(tmp_path / "tree", tasks=("sr4",), evaluated=("pixel",))
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "TORCHINDUCTOR_CACHE_DIR"}
    server = subprocess.Popen([sys.executable, "-m", "demo", "--runs", str(runs), "--reports",
                               str(reports_dir), "--port", str(port)], cwd=REPO,
                              env={**env, "TMPDIR": str(tmp),
                                   "XDG_CACHE_HOME": str(tmp_path / "cache")},
                              stderr=subprocess.PIPE, text=True)
    try:
        client = None
        for _ in range(240):
            try:
                client = Client(f"http://127.0.0.1:{port}/", verbose=False)
                break
            except Exception:  # noqa: BLE001 - not up yet
                assert server.poll() is None, server.stderr.read()
                import time
                time.sleep(0.5)
        photo = tmp_path / "patient_0042.png"
        Image.fromarray(imaging.to_uint8(fundus(8, 256))).save(photo)
        result = client.predict(handle_file(str(photo)), "", "sr4", ["bicubic"], 0.5, 0.5, 4,
                                "blur", api_name="/compare")
        assert "Showing" in result[-1]
        assert list(tmp.rglob("patient_0042.png")), "the upload should be on disk while in use"
        assert list(tmp.rglob("*/*.png"))
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)
    assert sorted(tmp.rglob("*")) == []
