"""The fault-injection corpus (issue 31), beside the chaos test: every fault through every entry
point it reaches, each ending in one line naming the file, key or disk, the documented exit code
(``python -m train`` and ``python -m infer``: 2; see their ``--help``), and nothing good replaced.

- image and mask files: ``fakes.images.image_corpus`` through the readers (``load_rgb``,
  ``load_mask``), the datasets built from a folder (images and their masks), the harness's any-size
  path and PNG writer, and ``python -m infer``'s mask reading;
- label CSVs: ``quality = inf``, not UTF-8;
- checkpoints: same-size corruption of every file (caught by its sha256, set aside, the previous
  checkpoint used, the same weights as a run that never saw it), inference reading a corrupted run,
  the retention of set-aside folders;
- a full disk during a checkpoint save (safetensors' and torch's own errors, which never say so);
- config loopholes: every float setting non-finite, seeds beyond 64 bits, devices this project
  cannot run on, presets and run directories outside their folders;
- a run that fails is never left "running".
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import os
import re
import resource
import shutil
import signal
import typing
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from fakes.cli import refusal
from fakes.images import CORPUS_SHAPE, corpus_picture, image_corpus
from fakes.training import TinyTask, losses_by_step, tiny_cfg
from medq.checkpoint import (
    BROKEN_PREFIX,
    STALE_PREFIX,
    CheckpointError,
    CheckpointWriteError,
    apply_retention,
    latest_checkpoint,
    list_checkpoints,
    save_checkpoint,
    verify_checkpoint,
)
from medq.config import SECTIONS, ConfigError, load_config
from medq.data import DataError, build_dataset
from medq.data.imageio import load_mask, load_rgb, save_png, to_uint8
from medq.files import sha256_file
from medq.run_loading import inference_checkpoint
from train.loop import train


def _names() -> tuple[list[str], list[str], list[str]]:
    """Corpus file names for parametrize (read, read losslessly, refused): the corpus is built
    once into a throwaway folder to learn them (the tests build their own)."""
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        corpus = image_corpus(Path(d))
    return (sorted(n for n, c in corpus.items() if c.reason is None),
            sorted(n for n, c in corpus.items() if c.reason is None and c.tolerance == 0),
            sorted(n for n, c in corpus.items() if c.reason is not None))


READ, LOSSLESS, REFUSED_FILES = _names()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return image_corpus(tmp_path_factory.mktemp("corpus"))


def _folder(tmp_path: Path, files: dict[str, Path]) -> Path:
    """A folder holding copies of ``files`` under the given names."""
    d = tmp_path / "data"
    d.mkdir(parents=True, exist_ok=True)
    for name, src in files.items():
        shutil.copyfile(src, d / name)
    return d


def _dataset(root: Path, tmp_path: Path, **kw):
    from medq.config import DataConfig

    cfg = DataConfig(source="folder", root=str(root), cache_dir=str(tmp_path / "cache"),
                     image_size=32, **kw)
    return build_dataset(cfg, "all", tasks=["enhance"])


@pytest.fixture(scope="module")
def reference_item(tmp_path_factory):
    """``reference_item(picture, masked)``: the folder dataset's item of ``picture`` stored as an
    8-bit PNG, with its mask as a 0/255 PNG when ``masked``: what every encoding of that picture
    (and of its mask) must give. Built once per picture."""
    items: dict[tuple[bytes, bool], dict] = {}

    def item(picture: np.ndarray, masked: bool) -> dict:
        key = (picture.tobytes(), masked)
        if key not in items:
            d = tmp_path_factory.mktemp("reference")
            Image.fromarray(picture).save(d / "eye.png")
            if masked:
                Image.fromarray((picture.max(axis=2) >= 128).astype(np.uint8) * 255).save(
                    d / "eye_mask.png")
            items[key] = _dataset(d, d)[0]
        return items[key]

    return item


# ---------------------------------------------------------------------------------------------
# image and mask files through the readers


@pytest.mark.parametrize("name", READ)
def test_every_encoding_reads_as_the_same_picture_and_mask(corpus, name):
    case = corpus[name]
    rgb = load_rgb(case.path)
    assert case.matches(rgb), (name, rgb.shape)
    mask = load_mask(case.path, CORPUS_SHAPE)
    agree = (mask == case.mask).mean()
    assert agree == 1.0 if case.tolerance == 0 else agree >= 0.99, (name, agree)


@pytest.mark.parametrize("name", REFUSED_FILES)
@pytest.mark.parametrize("reader", ["image", "mask"])
def test_every_refused_file_is_one_data_error_naming_it(corpus, name, reader):
    case = corpus[name]
    with pytest.raises(DataError, match=case.reason) as e:
        load_rgb(case.path) if reader == "image" else load_mask(case.path, CORPUS_SHAPE)
    assert str(case.path) in str(e.value) and "\n" not in str(e.value)


def test_masks_are_refused_when_they_cannot_be_the_images_field_of_view(tmp_path):
    labels = tmp_path / "labels01.png"
    Image.fromarray((corpus_picture().max(axis=2) >= 128).astype(np.uint8)).save(labels)
    with pytest.raises(DataError, match=r"labels01\.png: mask holds only the values 0 and 1"):
        load_mask(labels)
    turned = tmp_path / "turned.png"                       # the image turned, its mask not
    Image.fromarray(np.rot90(corpus_picture()).copy()).save(turned)
    with pytest.raises(DataError, match=r"turned\.png: mask is 64x80 pixels, its image 80x64"):
        load_mask(turned, CORPUS_SHAPE)
    assert load_mask(tmp_path / "turned.png", (40, 32)).shape == (40, 32)  # resized, same shape


def test_half_scale_is_the_one_mask_threshold(tmp_path):
    grey = np.array([[0, 1, 127, 128, 200, 255]] * 16, np.uint8)
    grey = np.repeat(grey, 3, axis=1)
    Image.fromarray(grey).save(tmp_path / "m.png")
    assert load_mask(tmp_path / "m.png")[0].tolist() == [False] * 9 + [True] * 9


@pytest.mark.parametrize("name", READ)
def test_a_folder_dataset_gives_the_same_item_for_every_encoding(corpus, reference_item, name,
                                                                 tmp_path):
    """The data readers (``build_dataset`` over a folder) end in the same training item for every
    encoding of the picture, and the same field of view for every encoding of its mask."""
    case = corpus[name]
    ext = case.path.suffix
    as_image = _dataset(_folder(tmp_path / "img", {f"eye{ext}": case.path}), tmp_path / "i")[0]
    as_mask = _dataset(_folder(tmp_path / "msk", {"eye.png": corpus["rgb8.png"].path,
                                                  f"eye_mask{ext}": case.path}), tmp_path / "m")[0]
    for got, want in ((as_image, reference_item(case.expect, False)),
                      (as_mask, reference_item(corpus["rgb8.png"].expect, True))):
        diff = (got["target"] - want["target"]).abs()
        assert (diff.max() == 0) if case.tolerance == 0 else diff.mean() < 0.02, name
        agree = (got["mask"] == want["mask"]).float().mean()
        assert agree == 1 if case.tolerance == 0 else agree >= 0.99, name


@pytest.mark.parametrize("name", REFUSED_FILES)
def test_a_folder_dataset_refuses_a_bad_image_or_mask_naming_it(corpus, name, tmp_path):
    case = corpus[name]
    ext = case.path.suffix
    image_dir = _folder(tmp_path / "img", {f"eye{ext}": case.path})
    with pytest.raises(DataError, match=case.reason) as e:
        _dataset(image_dir, tmp_path / "i")
    assert str(image_dir / f"eye{ext}") in str(e.value)
    mask_dir = _folder(tmp_path / "msk", {"eye.png": corpus["rgb8.png"].path,
                                          f"eye_mask{ext}": case.path})
    with pytest.raises(DataError, match=case.reason) as e:
        _dataset(mask_dir, tmp_path / "m")
    assert str(mask_dir / f"eye_mask{ext}") in str(e.value)
    assert not list((tmp_path / "m" / "cache").glob("*/images.npz"))  # no cache entry written


def test_skip_mode_lists_every_refused_file_and_keeps_the_good_ones(corpus, tmp_path):
    files = {n: corpus[n].path for n in REFUSED_FILES}
    files["good.png"] = corpus["rgb8.png"].path
    ds = _dataset(_folder(tmp_path, files), tmp_path, on_bad_input="skip")
    assert ds.ids == ["good"]
    assert sorted(Path(b["path"]).name for b in ds.bad_inputs) == REFUSED_FILES


def test_a_mask_replaced_in_place_is_read_again_not_taken_from_the_cache(corpus, tmp_path):
    d = _folder(tmp_path, {"eye.png": corpus["rgb8.png"].path,
                           "eye_mask.png": corpus["rgb8.png"].path})
    assert len(_dataset(d, tmp_path)) == 1
    shutil.copyfile(corpus["bomb.png"].path, d / "eye_mask.png")
    os.utime(d / "eye_mask.png", ns=(1, 1))  # another mtime even on a coarse clock
    with pytest.raises(DataError, match=r"eye_mask\.png: .*decompression bomb"):
        _dataset(d, tmp_path)


# ---------------------------------------------------------------------------------------------
# the harness: the any-size path and the PNG writer


@pytest.mark.parametrize("name", LOSSLESS)
def test_the_harness_prepares_every_lossless_encoding_alike(corpus, name):
    from medq.harness.images import prepare

    def prepared(rgb):
        return prepare(torch.from_numpy(rgb).permute(2, 0, 1).float() / 255, 32, "sr2")

    got, want = prepared(load_rgb(corpus[name].path)), prepared(corpus[name].expect)
    assert all(torch.equal(got[k], want[k]) for k in ("input", "target", "mask")), name


def test_written_pngs_read_back_as_written(tmp_path):
    x = torch.rand(3, 20, 24)
    x[0, 0, 0], x[1, 0, 0], x[2, 0, 0] = float("nan"), float("inf"), -float("inf")
    save_png(tmp_path / "x.png", x)
    back = load_rgb(tmp_path / "x.png")
    assert np.array_equal(back, to_uint8(x)) and tuple(back[0, 0]) == (0, 255, 0)
    assert np.array_equal(to_uint8(x), to_uint8(x.permute(1, 2, 0).numpy()))  # torch == numpy
    save_png(tmp_path / "m.png", torch.ones(1, 20, 24))
    assert load_mask(tmp_path / "m.png").all()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]


# ---------------------------------------------------------------------------------------------
# python -m infer: masks and label CSVs of a data folder


def _infer(root: Path, tmp_path: Path, *extra: str) -> list[str]:
    return ["--baseline", "identity", "--data", "folder", "--root", str(root), "--split", "all",
            "--tasks", "enhance", "--no-text", "--no-progress", "--out", str(tmp_path / "out"),
            "--set", f"data.cache_dir={json.dumps(str(tmp_path / 'cache'))}", *extra]


def test_infer_refuses_every_bad_mask_in_one_line_with_exit_2(corpus, tmp_path, capsys):
    from infer.__main__ import main

    for name in REFUSED_FILES:
        case = corpus[name]
        d = _folder(tmp_path / name, {"eye.png": corpus["rgb8.png"].path,
                                      f"eye_mask{case.path.suffix}": case.path})
        line = refusal(main, _infer(d, tmp_path / name), capsys)
        assert str(d / f"eye_mask{case.path.suffix}") in line and re.search(case.reason, line)


def test_infer_reads_every_encoding_of_a_mask_alike(corpus, tmp_path, capsys, monkeypatch):
    from infer.__main__ import main

    monkeypatch.setenv("MEDQ_SSIM_COMPILE", "0")  # the verdict's SSIM of 64 px images: no compile

    files = {}
    for k, name in enumerate(LOSSLESS):
        files[f"eye{k}.png"] = corpus["rgb8.png"].path
        files[f"eye{k}_mask{corpus[name].path.suffix}"] = corpus[name].path
    assert main(_infer(_folder(tmp_path, files), tmp_path)) == 0
    written = sorted((tmp_path / "out" / "enhance" / "images").glob("*_mask.png"))
    assert len(written) == len(LOSSLESS)
    first = np.asarray(Image.open(written[0]))
    assert all(np.array_equal(np.asarray(Image.open(p)), first) for p in written)


@pytest.mark.parametrize("text, message", [
    (",image,quality,DR_grade\n0,eye.png,inf,0\n", r"line 2: quality = 'inf' is not an integer"),
    (",image,quality,DR_grade\n0,eye.png,0,-inf\n", r"line 2: DR_grade = '-inf' is not an integer"),
    (b",image,quality,DR_grade\n0,\xe9il.png,0,0\n", r"not a UTF-8 text file \(byte 26"),
])
def test_bad_label_csvs_are_one_line_naming_the_file(corpus, tmp_path, capsys, text, message):
    from infer.__main__ import main

    d = _folder(tmp_path, {"eye.png": corpus["rgb8.png"].path})
    labels = tmp_path / "labels.csv"
    labels.write_bytes(text if isinstance(text, bytes) else text.encode())
    argv = _infer(d, tmp_path, "--labels", str(labels))
    argv[argv.index("folder")] = "eyeq"
    line = refusal(main, argv, capsys)
    assert str(labels) in line and re.search(message, line), line


# ---------------------------------------------------------------------------------------------
# checkpoints: content hashes


def _flip(path: Path, n: int = 64) -> None:
    """Flip ``n`` bytes of ``path`` in place, the size kept: in a safetensors file inside the
    tensor data (its header stays valid and the file loads), elsewhere in the middle."""
    data = bytearray(path.read_bytes())
    start = len(data) // 2
    if path.suffix == ".safetensors":
        start = 8 + int.from_bytes(data[:8], "little")
    for k in range(start, min(start + n, len(data))):
        data[k] ^= 0xFF
    path.write_bytes(bytes(data))


def _edit_text(path: Path) -> None:
    """A same-length edit of a text file that still parses (a digit or a letter changed)."""
    text = path.read_text()
    m = re.search(r"\d", text)
    path.write_text(text[:m.start()] + str((int(m.group()) + 1) % 10) + text[m.end():])


@pytest.mark.parametrize("file", ["model.safetensors", "ema.safetensors", "optim.pt",
                                  "config.toml", "state.json"])
def test_same_size_corruption_is_caught_set_aside_and_the_previous_checkpoint_used(
        tmp_path, caplog, file):
    cfg = tiny_cfg(tmp_path / "run", "run.keep_last=3", "optim.max_steps=9")
    train(cfg, TinyTask(), stop_at=6, progress=False)
    root = cfg.run_dir / "checkpoints"
    newest, before = root / "step_000006", (root / "step_000003" / "ema.safetensors").read_bytes()
    size = (newest / file).stat().st_size
    (_edit_text if file.endswith((".toml", ".json")) else _flip)(newest / file)
    assert (newest / file).stat().st_size == size
    if file.endswith(".safetensors"):
        from safetensors.torch import load_file

        load_file(str(newest / file))       # loads without a word: only the hash can tell
    with caplog.at_level("WARNING"):
        out = train(cfg, TinyTask(), progress=False)
    # optim.pt's zip CRCs catch the flip first ("unreadable"); the other files keep a valid
    # structure, which only the recorded sha256 tells from the original
    caught = "unreadable" if file == "optim.pt" else "content differs from the sha256 recorded"
    assert f"{newest / file}: {caught}" in caplog.text
    assert (root / f"{BROKEN_PREFIX}step_000006").is_dir() and out["step"] == 9
    assert (root / "step_000003" / "ema.safetensors").read_bytes() == before  # untouched
    reference = train(tiny_cfg(tmp_path / "ref", "optim.max_steps=9"), TinyTask(), progress=False)
    assert out["fingerprint"] == reference["fingerprint"]
    assert sorted(losses_by_step(cfg.run_dir)) == list(range(1, 10))


def test_a_checkpoint_that_lost_its_hashes_is_broken_and_an_old_one_without_them_is_read(tmp_path):
    cfg = tiny_cfg(tmp_path)
    train(cfg, TinyTask(), progress=False)
    ckpt = latest_checkpoint(cfg.run_dir / "checkpoints")
    (ckpt / "sha256.json").unlink()
    with pytest.raises(CheckpointError, match=r"sha256\.json: missing \(state\.json says"):
        verify_checkpoint(ckpt)
    state = json.loads((ckpt / "state.json").read_text())
    del state["content_hashes"]              # written before content hashes existed
    (ckpt / "state.json").write_text(json.dumps(state))
    verify_checkpoint(ckpt, ("model.safetensors",))


def test_inference_skips_a_corrupted_checkpoint_names_it_and_renames_nothing(tmp_path, caplog):
    cfg = tiny_cfg(tmp_path, "run.keep_last=3")
    train(cfg, TinyTask(), progress=False)
    root = cfg.run_dir / "checkpoints"
    for ckpt in list_checkpoints(root):  # what inference needs besides the weights
        for name in ("arch.json", "tokenizer.json"):
            (ckpt / name).write_text("{}")
    newest = latest_checkpoint(root)
    for ckpt in list_checkpoints(root):   # re-record the hashes of the files added above
        digests = json.loads((ckpt / "sha256.json").read_text())["sha256"]
        digests.update({n: sha256_file(ckpt / n) for n in ("arch.json", "tokenizer.json")})
        (ckpt / "sha256.json").write_text(json.dumps({"sha256": digests}))
    _flip(newest / "ema.safetensors")
    listing = sorted(p.name for p in root.iterdir())
    with caplog.at_level("WARNING"):
        assert inference_checkpoint(cfg.run_dir).name == "step_000003"
    assert f"{newest / 'ema.safetensors'}: content differs" in caplog.text
    assert sorted(p.name for p in root.iterdir()) == listing      # a reader renames nothing
    with pytest.raises(CheckpointError, match=r"ema\.safetensors: content differs"):
        inference_checkpoint(newest)                               # asked for it by name


def _mini_run(tmp_path: Path) -> Path:
    """A run directory of a tiny mini-BAGEL with checkpoints step_000001 and step_000002, written
    by ``save_checkpoint`` (so with their hashes), and its VAE."""
    import medq.models as M
    from medq.config import dump_toml

    vae = tmp_path / "vae"
    cfg = load_config("control", overrides=[
        "model.d_model=32", "model.n_layers=1", "model.n_heads=2", "model.tile_size=32",
        "data.image_size=32",
        f"model.vae={json.dumps(str(vae))}"])
    M.save_vae(M.build_vae(cfg.model), vae)
    tok = M.Tokenizer()
    net = M.MiniBagel(cfg.model, tok.vocab_size)
    run = tmp_path / "run"
    for step in (1, 2):
        save_checkpoint(run / "checkpoints", step, {
            "model": lambda d: M.save_model(net, tok, d),
            "ema": lambda d: M.save_model(net, tok, d, filename="ema.safetensors"),
            "config": lambda d: (d / "config.toml").write_text(dump_toml(cfg))}, {})
    return run


def test_infer_refuses_a_corrupted_checkpoint_and_a_run_falls_back(tmp_path, capsys, caplog):
    from infer.__main__ import main
    from medq.run_loading import load_for_inference

    run = _mini_run(tmp_path)
    newest = run / "checkpoints" / "step_000002"
    _flip(newest / "ema.safetensors")
    line = refusal(main, ["--run", str(run), "--checkpoint", "step_2", "--no-progress"], capsys)
    assert f"{newest / 'ema.safetensors'}: content differs from the sha256 recorded" in line
    with caplog.at_level("WARNING"):
        *_, info = load_for_inference(run)
    assert info["checkpoint"].name == "step_000001" and "step_000002 is broken" in caplog.text
    assert not list((run / "checkpoints").glob(f"{BROKEN_PREFIX}*"))     # a reader renames nothing
    assert not (run / "eval").exists()


def test_set_aside_folders_keep_only_the_newest_of_each_kind(tmp_path):
    root = tmp_path / "checkpoints"
    for step in (1, 2, 3):
        save_checkpoint(root, step, {}, {})
    for step, prefix in ((4, BROKEN_PREFIX), (9, BROKEN_PREFIX), (7, BROKEN_PREFIX),
                         (5, STALE_PREFIX), (6, STALE_PREFIX)):
        (root / f"{prefix}step_{step:06d}").mkdir()
    apply_retention(root, keep_last=2)
    assert sorted(p.name for p in root.iterdir()) == [
        "broken-step_000009", "latest", "stale-step_000006", "step_000002", "step_000003"]


# ---------------------------------------------------------------------------------------------
# a full disk during a checkpoint save


@contextlib.contextmanager
def file_size_limit(nbytes: int):
    """Writes past ``nbytes`` in any file fail with EFBIG (RLIMIT_FSIZE, SIGXFSZ ignored) for the
    duration: a real kernel write error for writers that cannot be pointed at /dev/full."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, handler)


class FullDiskTask(TinyTask):
    """At its ``fail_on``-th checkpoint one file cannot be written, through the library's own
    writer: ``optim.pt`` goes to /dev/full (the kernel's always-full device: ENOSPC; torch then
    says only "unexpected pos"); ``model.safetensors`` (which safetensors writes to a temp file
    and renames, so no link can redirect it) hits a file size limit (EFBIG; safetensors says so
    inside its own error type)."""

    def __init__(self, fail_file: str, fail_on: int):
        super().__init__()
        self.fail_file, self.fail_on, self.saves = fail_file, fail_on, 0

    def save_model(self, directory: Path):
        self.saves += 1
        if self.saves != self.fail_on:
            return super().save_model(directory)
        if self.fail_file == "optim.pt":
            (directory / "optim.pt").symlink_to("/dev/full")
            return super().save_model(directory)
        with file_size_limit(1 << 14):
            save_file({"w": torch.zeros(1 << 16)}, str(directory / "model.safetensors"))


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="no /dev/full on this system")
@pytest.mark.parametrize("file, errno_name, said", [
    ("model.safetensors", "File too large", "SafetensorError: Error while serializing"),
    ("optim.pt", "Input/output error", "RuntimeError: [enforce fail"),
])
def test_a_failed_write_during_a_save_is_one_line_naming_the_disk_and_exit_2(
        tmp_path, monkeypatch, capsys, file, errno_name, said):
    """safetensors reports the OS error inside its own error type and torch only "unexpected pos"
    (with no cause: a disk with room left is named an I/O error, a full one "No space left");
    both become one line naming the checkpoint, the file and the disk, exit 2; the previous
    checkpoint stays ``latest``, no temp directory is left, the run is "failed", and the same
    command resumes it once the disk takes writes again."""
    from train.__main__ import main

    task = FullDiskTask(file, fail_on=2)                      # steps 3 and 6 are saved
    monkeypatch.setattr("medq.training.task.MiniBagelTask", lambda *a, **k: task)
    cfg = tiny_cfg(tmp_path)
    argv = ["--preset", "pretrain", "--no-progress",
            *[a for o in _tiny_overrides(tmp_path) for a in ("--set", o)]]
    line = refusal(main, argv, capsys)
    root = cfg.run_dir / "checkpoints"
    label = "model" if file == "model.safetensors" else "optim"
    assert line.startswith(f"error: cannot write checkpoint {root / 'step_000006'} ({label}): "
                           f"{errno_name} ({said}"), line
    assert "; the disk of /" in line
    assert "free of" in line and "run the same command again" in line
    assert latest_checkpoint(root).name == "step_000003"
    assert not [p for p in root.iterdir() if p.name.startswith(".tmp")]
    assert json.loads((cfg.run_dir / "run.json").read_text())["status"] == "failed"
    monkeypatch.setattr("medq.training.task.MiniBagelTask", lambda *a, **k: TinyTask())
    assert main(argv) == 0
    assert json.loads((cfg.run_dir / "run.json").read_text())["status"] == "finished"


def _tiny_overrides(tmp_path: Path) -> list[str]:
    """``fakes.training.tiny_cfg``'s overrides, for the command line."""
    cfg, base = tiny_cfg(tmp_path), load_config("pretrain")
    out = []
    for section in SECTIONS:
        for f in dataclasses.fields(getattr(cfg, section)):
            value = getattr(getattr(cfg, section), f.name)
            if value != getattr(getattr(base, section), f.name) and f.name != "preset":
                out.append(f"{section}.{f.name}={json.dumps(value)}")
    return out


def test_write_errors_of_libraries_are_checkpoint_write_errors(tmp_path):
    """The three ways a full disk shows up while a checkpoint is written, without /dev/full."""
    from safetensors import SafetensorError

    root = tmp_path / "checkpoints"
    save_checkpoint(root, 1, {}, {})
    for error in (SafetensorError("Error while serializing: I/O error: No space left on device "
                                  "(os error 28)"),
                  OSError(28, "No space left on device"),
                  RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 "
                               "vs 534")):
        def writer(d, error=error):
            (d / "half").write_bytes(b"x")
            raise error

        with pytest.raises(CheckpointWriteError, match=r"cannot write checkpoint .*step_000002 "
                                                       r"\(model\): .*; the disk of /") as e:
            save_checkpoint(root, 2, {"model": writer}, {})
        assert e.value.errno in (28, 5)
        assert sorted(p.name for p in root.iterdir()) == ["latest", "step_000001"]
    def bug(d):
        raise ValueError("a bug")

    with pytest.raises(ValueError, match="a bug"):          # not a write error: raised as it is
        save_checkpoint(root, 2, {"model": bug}, {})


# ---------------------------------------------------------------------------------------------
# config loopholes


def _float_keys() -> list[str]:
    return [f"{section}.{'from' if f.name == 'from_' else f.name}" for section, cls in
            SECTIONS.items() for f in dataclasses.fields(cls)
            if typing.get_type_hints(cls)[f.name] is float]


@pytest.mark.parametrize("key", _float_keys())
@pytest.mark.parametrize("value", ["inf", "-inf", "nan", "1e300"])
def test_every_float_setting_refuses_non_finite_and_absurd_values(key, value):
    with pytest.raises(ConfigError, match=rf"^{re.escape(key)} = .*: must be a finite number"):
        load_config("control", overrides=[f"{key}={value}"])


@pytest.mark.parametrize("override, message", [
    ("run.seed=36893488147419103232", r"run\.seed = 36893488147419103232: must be an integer in "
                                      r"0\.\.4294967295"),
    ("data.seed=-1", r"data\.seed = -1: must be an integer in 0\.\.4294967295"),
    ("sample.seed=18446744073709551616", r"sample\.seed = .*: must be an integer"),
    ("data.num_images=99999999999999999999", r"data\.num_images = .*: must be an integer in"),
    ("optim.betas=[0.9, inf]", r"optim\.betas\[1\] = inf: must be a finite number"),
    ("sample.shift=inf", r"sample\.shift = inf: must be a finite number"),
    ("sample.temperature=inf", r"sample\.temperature = inf: must be a finite number"),
])
def test_train_refuses_absurd_values_in_one_line_and_writes_nothing(override, message, tmp_path,
                                                                    capsys):
    from train.__main__ import main

    line = refusal(main, ["--preset", "pretrain", "--set", f"run.out_dir="
                          f"{json.dumps(str(tmp_path))}", "--set", override], capsys)
    assert re.search(message, line), line
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("device, message", [
    ("meta", "a meta device cannot run this project"),
    ("mps", "no Apple GPU is available here"),
])
def test_devices_this_project_cannot_run_on_are_refused(device, message, tmp_path, capsys):
    from train.__main__ import main

    if device == "mps" and torch.backends.mps.is_available():
        pytest.skip("this machine has an Apple GPU")
    line = refusal(main, ["--preset", "pretrain", "--set", f"run.device={device}", "--set",
                          f"run.out_dir={json.dumps(str(tmp_path))}"], capsys)
    assert f"run.device = '{device}'" in line and message in line
    assert not any(tmp_path.iterdir())


def test_presets_stay_in_configs_and_runs_in_their_out_dir(tmp_path, capsys):
    from train.__main__ import main

    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "x.toml").write_text("[optim]\nmax_steps = 30\n")
    runs = f"run.out_dir={json.dumps(str(tmp_path / 'runs'))}"
    escape = os.path.relpath(outside / "x", Path(__file__).resolve().parents[1] / "configs")
    assert "is outside" in refusal(main, ["--preset", escape, "--set", runs, "--dry-run"], capsys)
    assert "is outside" in refusal(main, ["--with", escape, "--set", runs, "--dry-run"], capsys)
    assert main(["--preset", str(outside / "x.toml"), "--set", runs, "--dry-run"]) == 0
    assert "is read as a file path, not from configs/" in capsys.readouterr().err
    (outside / "y.toml").write_text('[run]\npreset = "../../escaped"\n')
    line = refusal(main, ["--preset", str(outside / "y.toml"), "--set", runs, "--dry-run"], capsys)
    assert "run.preset = '../../escaped'" in line and "must be a plain name" in line
    assert not (tmp_path / "runs").exists() and not (tmp_path / "escaped").exists()


# ---------------------------------------------------------------------------------------------
# a run that fails is never left "running"


def test_a_run_that_fails_after_it_started_is_marked_failed_and_resumes(tmp_path, monkeypatch,
                                                                        capsys):
    from train.__main__ import main

    cfg = tiny_cfg(tmp_path)
    metrics = cfg.run_dir / "logs" / "metrics.csv"

    class DiskFullAtStep5(TinyTask):
        def losses(self, batch, generator):
            if batch["step"] == 5:
                raise OSError(errno.ENOSPC, "No space left on device", str(metrics))
            return super().losses(batch, generator)

    argv = ["--preset", "pretrain", "--no-progress",
            *[a for o in _tiny_overrides(tmp_path) for a in ("--set", o)]]
    monkeypatch.setattr("medq.training.task.MiniBagelTask", lambda *a, **k: DiskFullAtStep5())
    line = refusal(main, argv, capsys)
    assert f"cannot write {metrics}: No space left on device; the disk of /" in line
    assert json.loads((cfg.run_dir / "run.json").read_text()) == {
        "preset": "pretrain", "hash": cfg.hash, "status": "failed", "step": 3}
    monkeypatch.setattr("medq.training.task.MiniBagelTask", lambda *a, **k: TinyTask())
    assert main(argv) == 0


def test_a_new_run_that_fails_before_its_first_step_leaves_no_directory(tmp_path, monkeypatch,
                                                                         capsys):
    from train.__main__ import main

    class NoData(TinyTask):
        def train_batches(self, start_step):
            raise OSError(errno.ENOSPC, "No space left on device", "/data/cache/images.npz")

    monkeypatch.setattr("medq.training.task.MiniBagelTask", lambda *a, **k: NoData())
    argv = ["--preset", "pretrain", "--no-progress",
            *[a for o in _tiny_overrides(tmp_path) for a in ("--set", o)]]
    line = refusal(main, argv, capsys)
    assert "/data/cache/images.npz: No space left on device" in line
    assert not [p for p in tmp_path.iterdir() if p.is_dir()]


def test_too_small_names_the_files_own_size_not_a_shrunk_one(tmp_path):
    """A long thin image shrunk on load (max_side) is refused with the size the file has."""
    from PIL import Image

    from medq.data.imageio import DataError, load_rgb

    path = tmp_path / "strip.png"
    Image.new("RGB", (4000, 12), (120, 40, 20)).save(path)
    with pytest.raises(DataError, match="4000x12 pixels"):
        load_rgb(path, max_side=512)
