"""The demo page: handlers on a fake runs/reports tree with fake models, then the launched app
through gradio_client and raw HTTP (path security). The browser test is test_demo_browser.py."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from skimage.metrics import structural_similarity

import demo  # noqa: F401  (switches Gradio analytics off before gradio is imported)
from demo import catalog, handlers, imaging
from demo.models import ModelPool
from demo.security import UploadError, auth_from_env, read_upload
from test_demo_fakes import FAKE_MODES, SIZE, FakeModel, build_tree, fake_loader, fundus

REPO = Path(__file__).resolve().parents[1]


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
    assert catalog.default_selection(modes) == ["pixel", "ssim_v3", "mixed", "bicubic"]
    assert catalog.working_size(modes) == SIZE
    assert [sid for sid, _ in catalog.test_items(modes, "sr4")] == ["eyeq_0001", "eyeq_0002",
                                                                     "eyeq_0003"]


def test_compare_reuses_eval_records_and_runs_only_missing_modes(app_demo):
    cmp = handlers.compare(app_demo, "sr4", ["pixel", "bicubic", "ssim_v3_relaxed"],
                           sample_id="eyeq_0002")
    assert cmp["outputs"]["pixel"]["origin"] == "make eval (step_000300-ema)"
    assert cmp["outputs"]["bicubic"]["origin"] == "make eval"
    assert cmp["outputs"]["ssim_v3_relaxed"]["origin"] == "computed now"
    assert app_demo.loader.calls == ["ssim_v3_relaxed"]
    # The computed output is the model's output on the recorded input, at the target size.
    import torch
    inp = imaging.load_rgb(app_demo.modes["pixel"].record("sr4", "eyeq_0002").path("input"))
    expect = FakeModel("x", FAKE_MODES["ssim_v3_relaxed"][0]).edit(
        torch.from_numpy(inp.transpose(2, 0, 1).copy())[None], ["x"], ["sr4"], (SIZE, SIZE), 0)
    got = cmp["outputs"]["ssim_v3_relaxed"]["image"]
    assert np.allclose(got, expect[0].permute(1, 2, 0).numpy(), atol=1e-6)
    # A second comparison reuses the loaded model.
    handlers.compare(app_demo, "sr4", ["ssim_v3_relaxed"], sample_id="eyeq_0001")
    assert app_demo.loader.calls == ["ssim_v3_relaxed"]


def test_models_run_now_get_the_instruction_of_medq_data(app_demo):
    from medq.data.text import instruction

    handlers.compare(app_demo, "enhance", ["ssim_v3_relaxed"], sample_id="eyeq_0001",
                     enhance_kind="haze")
    handlers.compare(app_demo, "sr4", ["ssim_v3_relaxed"], sample_id="eyeq_0001")
    model = app_demo.pool.get("ssim_v3_relaxed")
    assert model.instructions == [[instruction("haze", 0)], [instruction("sr4", 0)]]
    with pytest.raises(ValueError, match="enhance kind 'fog'"):
        handlers.compare(app_demo, "enhance", ["pixel"], sample_id="eyeq_0001", enhance_kind="fog")


def test_metrics_are_the_leaderboards(app_demo):
    """The page shows the numbers of reports/per_image.csv (medq.metrics), not a second definition."""
    import torch
    from torchmetrics.functional.image import structural_similarity_index_measure

    cmp = handlers.compare(app_demo, "sr4", ["pixel"], sample_id="eyeq_0001")
    out, target = cmp["outputs"]["pixel"]["image"], cmp["target"]
    t = lambda a: torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)).permute(2, 0, 1)[None]
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
    assert list(table.columns) == handlers.METRIC_COLUMNS
    assert table.iloc[0]["mode"] == "pixel" and table.iloc[0]["SSIM"] == round(m["ssim"], 4)


def test_views_share_one_zoom_box_and_use_nearest_neighbour(app_demo):
    cmp = handlers.compare(app_demo, "sr4", ["pixel", "mixed"], sample_id="eyeq_0003")
    panels = handlers.panels(cmp)
    assert [c for _, c in panels] == ["Input 16x16", "pixel", "mixed", "Target 64x64"]
    assert all(img.shape == (256, 256, 3) and img.dtype == np.uint8 for img, _ in panels)
    # The 16 px input is shown as 16x16 blocks of identical pixels (no interpolation).
    assert (panels[0][0][:16, :16] == panels[0][0][0, 0]).all()
    overview, crops = handlers.zoom(cmp, 0.25, 0.75, 4)
    box = imaging.crop_box((SIZE, SIZE), 0.25, 0.75, 4)
    assert box == (40, 56, 8, 24)
    assert [cap for _, cap in crops] == ["Input", "pixel", "mixed", "Target"]
    assert handlers.zoom_box_text(cmp, 0.25, 0.75, 4).startswith("Region x 8-24, y 40-56 of the 64x64")
    target_crop = crops[-1][0]
    assert np.array_equal(target_crop[::16, ::16], imaging.to_uint8(cmp["target"][40:56, 8:24]))
    assert (overview[40 * 4, 8 * 4:24 * 4] == imaging.to_uint8(imaging.BOX_COLOUR)).all()
    assert handlers.click_to_centre(cmp, (64, 192), (256, 256)) == (0.25, 0.75)
    left, right = handlers.slider_pair(cmp, "pixel", "Target")
    assert left.shape == right.shape == (256, 256, 3)
    with pytest.raises(ValueError, match="not in this comparison"):
        handlers.slider_pair(cmp, "ssim_v3", "Target")


def test_error_maps_share_one_scale_and_are_dark_where_output_equals_target(app_demo):
    cmp = handlers.compare(app_demo, "sr4", ["pixel", "bicubic"], sample_id="eyeq_0001")
    perfect = dict(cmp["outputs"]["pixel"], image=cmp["target"].copy())
    perfect["metrics"] = imaging.image_metrics(perfect["image"], cmp["target"], cmp["mask"])
    cmp["outputs"]["perfect"] = perfect
    maps, vmax = handlers.error_maps(cmp)
    assert 0.05 <= vmax <= 1 and [c.split(":")[0] for _, c in maps] == ["pixel", "bicubic", "perfect"]
    dark = imaging.to_uint8(imaging.error_heatmap(np.zeros((2, 2)), np.ones((2, 2), bool), vmax))
    assert maps[2][0].max() <= dark.max()        # black (dimmed outside the field of view)
    assert maps[0][0].std() > 0


def test_report_warning_for_undecodable_tokens(app_demo):
    cmp = handlers.compare(app_demo, "sr4", ["pixel", "mixed", "bicubic"], sample_id="eyeq_0001")
    md = handlers.reports_markdown(cmp)
    assert "WARNING: 2 undecodable token(s)" in md and md.count("WARNING") == 1
    assert "**bicubic**: no text" in md
    assert handlers.undecodable_warnings(cmp) == ["mixed: 2 undecodable token(s) in its report"]
    assert handlers.metrics_table(cmp).set_index("mode").loc["mixed", "undecodable tokens"] == "2"


def test_a_failing_mode_is_reported_and_the_others_still_shown(app_demo):
    cmp = handlers.compare(app_demo, "enhance", ["pixel", "lanczos"], sample_id="eyeq_0001")
    assert list(cmp["outputs"]) == ["pixel"] and "no fake model 'lanczos'" in cmp["errors"]["lanczos"]
    assert "could not run" in handlers.reports_markdown(cmp)


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
    Image.new("RGB", (100, 100)).save(tmp_path / "black.png")
    cases[tmp_path / "black.png"] = "field of view"
    for path, message in cases.items():
        with pytest.raises(UploadError, match=message) as e:
            handlers.compare(app_demo, "sr4", ["bicubic"], upload=path)
        assert path.name in str(e.value)
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
    assert cmp["target"].shape == (SIZE, SIZE, 3) and cmp["input"].shape == (SIZE // 4, SIZE // 4, 3)
    assert all(o["origin"] == "computed now" for o in cmp["outputs"].values())
    assert progress[0][0] == 0.0 and progress[-1] == (1.0, "done")
    assert any("loading the model" in d for _, d in progress)


def test_real_fundus_photograph_upload(app_demo, fundus_samples):
    photo = sorted((fundus_samples / "eyeq" / "original_img").glob("*.jpeg"))[0]
    cmp = handlers.compare(app_demo, "sr4", ["pixel", "bicubic"], upload=photo)
    assert cmp["target"].shape == (SIZE, SIZE, 3)
    assert 0.5 < cmp["mask"].mean() < 0.95        # a disc inside the square, black corners
    assert cmp["outputs"]["bicubic"]["metrics"]["psnr"] > 20


def test_leaderboard_tab(tree, tmp_path):
    table, md, plots = handlers.leaderboard(tree[1])
    assert list(table["mode"]) == ["ssim_v3", "pixel", "mixed", "bicubic"]
    assert md.startswith("# Leaderboard") and plots[0][1] == "psnr ssim"
    table, md, plots = handlers.leaderboard(tmp_path / "nothing")
    assert "make eval" in table.iloc[0, 0] and "make eval" in md and plots == []


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


# ---------------------------------------------------------------------------------------------
# the launched app


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from demo.app import build_app, launch

    root = tmp_path_factory.mktemp("served")
    runs, reports = build_tree(root)
    (root / "secret.txt").write_text("SECRET-OUTSIDE")
    d = handlers.Demo.from_folders(runs, reports, pool=ModelPool(fake_loader))
    app = build_app(d)
    port = free_port()
    launch(app, d, port=port, prevent_thread_lock=True, quiet=True)
    try:
        yield {"url": f"http://127.0.0.1:{port}/", "root": root, "runs": runs}
    finally:
        app.close()


def test_client_compares_an_upload_and_the_test_set(server, tmp_path):
    from gradio_client import Client, handle_file

    client = Client(server["url"], verbose=False)
    photo = tmp_path / "photo.png"
    Image.fromarray(imaging.to_uint8(fundus(7, 128))).save(photo)
    result = client.predict(handle_file(str(photo)), "", "sr4", ["pixel", "bicubic"], 0.5, 0.5, 4,
                            "blur", api_name="/compare")
    panels, table = result[0]["value"], result[1]
    assert [p["caption"] for p in panels] == ["Input 16x16", "pixel", "bicubic", "Target 64x64"]
    assert all(Path(p["image"]).suffix == ".png" for p in panels)    # lossless, never WebP
    assert Image.open(panels[1]["image"]).size == (256, 256)
    assert [row[0] for row in table["data"]] == ["pixel", "bicubic"]
    result = client.predict(None, "eyeq_0002", "enhance", ["mixed"], 0.5, 0.5, 4, "blur",
                            api_name="/compare")
    assert result[1]["data"][0][-1] == "make eval (step_000300-ema)"
    assert "undecodable" in result[2]
    slider = result[8]
    assert len(slider) == 2 and all(Path(p).suffix == ".png" for p in slider)


def test_client_gets_a_readable_error_for_a_corrupt_upload(server, tmp_path):
    from gradio_client import Client, handle_file

    client = Client(server["url"], verbose=False)
    bad = _write(tmp_path / "scan.png", b"\x89PNG\r\n\x1a\n but then garbage")
    with pytest.raises(Exception, match="not an image|damaged"):
        client.predict(handle_file(str(bad)), "", "sr4", ["bicubic"], 0.5, 0.5, 4, "blur",
                       api_name="/compare")
    # The app keeps serving after the error.
    assert client.predict(api_name="/leaderboard")[0]["headers"][0] == "mode"


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=20) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def test_only_run_and_report_folders_are_served(server):
    url, root, runs = server["url"], server["root"], server["runs"]
    inside = next(runs.rglob("*_output.png"))
    status, body = _get(url + "gradio_api/file=" + str(inside))
    assert status == 200 and body[:4] == b"\x89PNG"             # positive control
    secrets = ["/etc/passwd", str(root / "secret.txt"), f"{runs}/../secret.txt",
               f"{runs}/%2e%2e/secret.txt", f"{runs}/..%2fsecret.txt", "%2Fetc%2Fpasswd",
               str(REPO / "pyproject.toml"), "../../../../etc/passwd"]
    for prefix in ("gradio_api/file=", "gradio_api/file/", "file="):
        for target in secrets:
            status, body = _get(url + prefix + target)
            assert status in (400, 403, 404), (prefix, target, status)
            assert b"root:x:" not in body and b"SECRET-OUTSIDE" not in body


def test_server_binds_localhost_only_and_exposes_two_endpoints(server):
    from gradio_client import Client

    assert server["url"].startswith("http://127.0.0.1:")
    info = Client(server["url"], verbose=False).view_api(return_format="dict", print_info=False)
    assert sorted(info["named_endpoints"]) == ["/compare", "/leaderboard"]


def test_login_from_the_environment_is_enforced(tmp_path, monkeypatch):
    from gradio_client import Client

    from demo.app import build_app, launch

    monkeypatch.setenv("MEDQ_DEMO_AUTH", "ann:s3cret")
    runs, reports = build_tree(tmp_path, tasks=("sr4",), evaluated=("pixel",))
    d = handlers.Demo.from_folders(runs, reports, pool=ModelPool(fake_loader))
    app = build_app(d)
    port = free_port()
    launch(app, d, port=port, prevent_thread_lock=True, quiet=True, auth=auth_from_env())
    try:
        url = f"http://127.0.0.1:{port}/"
        inside = next(runs.rglob("*_output.png"))
        assert _get(url + "config")[0] in (401, 403)
        assert _get(url + "gradio_api/file=" + str(inside))[0] in (401, 403)
        with pytest.raises(Exception):
            Client(url, verbose=False, auth=("ann", "wrong"))
        client = Client(url, verbose=False, auth=("ann", "s3cret"))
        assert client.predict(api_name="/leaderboard")[0]["headers"][0] == "mode"
    finally:
        app.close()


def test_records_with_a_corrupt_line_still_show_the_valid_rows(tmp_path, caplog):
    """The demo reads records.jsonl with the harness's reader: a broken line is logged with
    file and line and skipped; rows without an existing output PNG are not offered."""
    import json as _json

    from infer.images import save_png

    task = tmp_path / "eval" / "sr4"
    import torch

    save_png(task / "images" / "a_output.png", torch.zeros(3, 8, 8))
    rows = [{"id": "a", "task": "sr4", "output": "images/a_output.png"},
            {"id": "b", "task": "sr4", "output": "images/b_output.png"}]
    (task / "records.jsonl").write_text(_json.dumps(rows[0]) + "\n{not json\n" + _json.dumps(rows[1]) + "\n")
    with caplog.at_level("WARNING"):
        found = catalog.read_task_records(tmp_path / "eval")
    assert list(found) == ["sr4"] and list(found["sr4"]) == ["a"]
    assert "records.jsonl:2: not JSON" in caplog.text
