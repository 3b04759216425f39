"""Fault injection through ``bench eval`` and ``bench score`` (issue 31): every case one line, its
documented exit code, nothing good replaced, no output directory without outputs.

Exit codes (``bench/eval.py``, ``bench/score.py``): 0 complete; 1 some row failed (eval: report in
``<out>/failed``) or nothing scored (score); 2 nothing done: bad input, unwritable ``--out``, a
device this machine lacks, another evaluation of the same runs directory, a full disk.
"""

from __future__ import annotations

import errno
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from PIL import Image

from fakes.images import fundus, fundus_folder
from fakes.infer import TextBicubic
from medq.baselines import bicubic
from medq.config import dump_toml, load_config
from medq.harness.records import read_jsonl

SMALL = ["--set", "data.num_images=12", "--set", "model.tile_size=32", "--set",
         "data.image_size=32", "--test-images", "2"]


def _eval(tmp_path: Path, *extra: str) -> int:
    from bench.__main__ import main

    return main(["eval", "--skip-train", "--runs-dir", str(tmp_path / "runs"),
                 "--out", str(tmp_path / "reports"), "--tasks", "sr4", "--no-text", "--no-plots",
                 "--no-progress", "--backbone", "randresnet18",
                 "--set", f"data.cache_dir={json.dumps(str(tmp_path / 'cache'))}", *extra])


def _folder(tmp_path: Path, name: str = "good", broken: bool = False) -> Path:
    return fundus_folder(tmp_path / name, n=2, size=32, broken=broken)


def _one_error_line(captured) -> str:
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), captured.err
    assert "Traceback" not in captured.out + captured.err
    return lines[0]


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


# ---------------------------------------------------------------------------------------------
# bench eval: refused before any work, one line, exit 2


def test_a_bad_data_source_is_said_once_naming_the_file_before_any_model(tmp_path, capsys):
    bad = _folder(tmp_path, "bad", broken=True)
    assert _eval(tmp_path, "--data", "folder", "--root", str(bad), "--split", "all") == 2
    captured = capsys.readouterr()
    assert "broken.png" in _one_error_line(captured)
    assert "inference on" not in captured.out
    assert not (tmp_path / "reports").exists() or not any((tmp_path / "reports").iterdir())
    assert not list((tmp_path / "runs").glob("_baselines/*/eval*"))


def test_an_unwritable_out_is_refused_before_any_work(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    code = _eval(tmp_path, "--out", str(tmp_path / "file" / "reports"), *SMALL)
    line = _one_error_line(capsys.readouterr())
    assert code == 2 and "--out" in line and str(tmp_path / "file" / "reports") in line
    assert not (tmp_path / "runs" / "_baselines").exists()  # nothing was inferred


@pytest.mark.parametrize("device, says", [("cuda", "no CUDA GPU"), ("meta", "cannot run"),
                                          ("mps", "no Apple GPU"), ("tpu9", "not a device")])
def test_run_device_is_honoured_or_refused_in_one_line(tmp_path, capsys, device, says):
    if device == "cuda" and torch.cuda.is_available() or device == "mps" and \
            torch.backends.mps.is_available():
        pytest.skip(f"this machine has the device: {device} is honoured")
    assert _eval(tmp_path, "--set", f"run.device={json.dumps(device)}", *SMALL) == 2
    line = _one_error_line(capsys.readouterr())
    assert "run.device" in line and says in line, line
    assert not (tmp_path / "runs" / "_baselines").exists()


def test_a_second_evaluation_of_the_same_runs_directory_is_refused_naming_the_first(tmp_path,
                                                                                     capsys):
    runs = tmp_path / "runs"
    code = textwrap.dedent(f"""
        import sys, time
        from pathlib import Path
        from medq.run_lock import run_lock
        with run_lock(Path({str(runs)!r}), lock_file="eval.lock"):
            print("held", flush=True)
            time.sleep(60)
    """)
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                              cwd=Path(__file__).resolve().parents[1])
    try:
        assert holder.stdout.readline().strip() == "held"
        assert _eval(tmp_path, *SMALL) == 2
        line = _one_error_line(capsys.readouterr())
        assert "another bench eval" in line and str(holder.pid) in line
        assert not (runs / "_baselines").exists()
    finally:
        holder.kill()
        holder.wait()
    # Once the first is gone (even killed: the kernel drops its lock), the next one runs.
    assert _eval(tmp_path, *SMALL, "--no-baselines") == 0


# ---------------------------------------------------------------------------------------------
# bench eval: failures keep the other rows, leave no empty output directory


class Broken(TextBicubic):
    """A model that loads and then fails on its first image."""

    name = "broken-model"

    def edit(self, images, instructions, tasks, out_size, seed):
        raise RuntimeError("CUDA out of memory (simulated)")


def test_a_failing_model_is_one_failed_line_and_leaves_no_folder_holding_only_data_json(
        tmp_path, capsys):
    leftover = tmp_path / "runs" / "_models" / "old" / "eval-folder-all-0badc0de"
    leftover.mkdir(parents=True)
    (leftover / "data.json").write_text("{}")  # a killed evaluation's claim, never filled
    code = _eval(tmp_path, "--model", f"{__name__}:Broken", *SMALL)
    captured = capsys.readouterr()
    assert code == 1
    failed = [line for line in captured.err.splitlines() if line.startswith("[eval] FAILED")]
    assert len(failed) == 1 and "broken-model" in failed[0] and "out of memory" in failed[0]
    assert "Traceback" not in captured.out + captured.err
    assert "CUDA out of memory" in (tmp_path / "runs" / "_logs" / "eval-failures.log").read_text()
    assert not (tmp_path / "runs" / "_models").exists()  # the leftover and the failed one
    from medq.leaderboard import read_leaderboard

    status = {r["name"]: r["status"] for r in read_leaderboard(tmp_path / "reports" / "failed")}
    assert status["bicubic"] == "ok" and status["broken-model"].startswith("error: RuntimeError")


# ---------------------------------------------------------------------------------------------
# bench eval: every output directory keyed by the data, the base model's one-step output included


class Sharpened(TextBicubic):
    def __init__(self, name: str, amount: float):
        super().__init__()
        self.name, self.amount = name, amount

    def edit(self, images, instructions, tasks, out_size, seed):
        up = bicubic(images, out_size)
        blur = torch.nn.functional.avg_pool2d(up, 3, 1, 1, count_include_pad=False)
        return (up + self.amount * (up - blur)).clamp(0, 1)


def _run_with_a_base(tmp_path: Path) -> Path:
    """runs/ssim_v3-aaaa1111 (a finished run, one checkpoint) fine-tuned from weights/base."""
    cfg = dump_toml(load_config("ssim_v3", overrides=["model.tile_size=32",
                                                      "data.image_size=32"]))
    base = tmp_path / "weights" / "base"
    base.mkdir(parents=True)
    (base / "state.json").write_text(json.dumps({"step": 3000}))
    (base / "config.toml").write_text(cfg)
    run = tmp_path / "runs" / "ssim_v3-aaaa1111"
    ckpt = run / "checkpoints" / "step_000004"
    ckpt.mkdir(parents=True)
    (ckpt / "state.json").write_text(json.dumps({"step": 4}))
    (ckpt / "config.toml").write_text(cfg)
    (run / "run.json").write_text(json.dumps({"preset": "ssim_v3", "hash": "aaaa1111",
                                              "status": "finished", "step": 4}))
    (run / "init.json").write_text(json.dumps({"checkpoint": str(base)}))
    return run


def _fake_load_run(run, *, weights="ema", checkpoint=None, device="cpu", output="sample",
                   overrides=()):
    amount = 0.5 if "weights" in str(run) else 0.9
    model = Sharpened(f"{Path(run).name}/{output}", amount + (0.3 if output == "onestep" else 0))
    return model, {"run": Path(run).name, "checkpoint": checkpoint, "weights": weights}, {}


@pytest.mark.slow  # two whole evaluations (a run, its base model, four baselines)
def test_a_folder_evaluation_leaves_the_embedded_outputs_byte_identical(tmp_path, monkeypatch):
    monkeypatch.setattr("medq.harness.load.load_run", _fake_load_run)
    _run_with_a_base(tmp_path)
    runs = tmp_path / "runs"
    assert _eval(tmp_path, *SMALL) == 0
    embedded = {p: _files(p) for p in sorted(runs.rglob("eval")) if p.is_dir()}
    assert len(embedded) == 5  # the run, the base model, the three sr4 baselines
    base_eval = next(p for p in embedded if "_init" in p.parts)
    assert sorted(d.name for d in base_eval.iterdir()) == ["step_003000-ema",
                                                           "step_003000-ema-onestep"]
    good = _folder(tmp_path)
    assert _eval(tmp_path, "--data", "folder", "--root", str(good), "--split", "all") == 0
    assert {p: _files(p) for p in embedded} == embedded  # not a byte changed, nothing added
    assert not list(runs.glob("_init/*/eval-onestep")) and not list(runs.glob("*/eval-onestep"))
    for home in (base_eval.parent, runs / "ssim_v3-aaaa1111"):
        [keyed] = home.glob("eval-folder-all-*")
        for out in ("-ema", "-ema-onestep"):
            [d] = keyed.glob(f"step_*{out}")
            ids = {r["id"] for r in read_jsonl(d / "sr4" / "records.jsonl")}
            assert ids == {"f0", "f1"}, d


def test_outputs_of_the_old_base_model_layout_are_removed_not_mixed(tmp_path):
    from bench.eval_infer import tidy_outputs

    home = tmp_path / "runs" / "_init" / "0123abcd"
    for d in ("eval/sr4", "eval-onestep/sr4", "eval/step_003000-ema/sr4"):
        (home / d).mkdir(parents=True)
    (home / "eval" / "sr4" / "records.jsonl").write_text("{}\n")
    (home / "eval-onestep" / "sr4" / "records.jsonl").write_text("{}\n")
    removed = tidy_outputs(tmp_path / "runs")
    assert sorted(p.name for p in removed) == ["eval", "eval-onestep"]
    assert not home.joinpath("eval").exists() and not home.joinpath("eval-onestep").exists()


def test_retention_keeps_any_output_and_removes_only_empty_claims(tmp_path):
    from medq.harness.records import remove_unfilled

    runs = tmp_path / "runs"
    kept = runs / "r" / "eval-folder-all-1" / "step_000001-ema"
    (kept / "sr4").mkdir(parents=True)
    (kept / "data.json").write_text("{}")
    (kept / "sr4" / "records.part-0.jsonl").write_text("{}\n")  # a partial run: resumable
    assert not remove_unfilled(kept, stop=runs) and kept.is_dir()
    empty = runs / "r" / "eval-folder-all-2" / "step_000001-ema"
    (empty / "sr4" / "images").mkdir(parents=True)
    (empty / "data.json").write_text("{}")
    assert remove_unfilled(empty, stop=runs)
    assert not empty.parent.exists() and (runs / "r").is_dir()


# ---------------------------------------------------------------------------------------------
# bench score: the reports are replaced all or none


def _score_args(tmp_path: Path, *extra: str):
    import argparse

    from bench import score

    parser = argparse.ArgumentParser()
    score.add_arguments(parser)
    return parser.parse_args(["--pred", str(tmp_path / "pred"), "--target",
                              str(tmp_path / "tgt"), "--backbone", "none", "--out",
                              str(tmp_path / "reports"), *extra])


def _pairs(tmp_path: Path, n: int = 3) -> None:
    for d in ("pred", "tgt"):
        (tmp_path / d).mkdir(exist_ok=True)
    for k in range(n):
        img = fundus(48, 48)
        Image.fromarray(img).save(tmp_path / "tgt" / f"{k}.png")
        Image.fromarray((img * 0.9).astype("uint8")).save(tmp_path / "pred" / f"{k}.png")


def test_score_on_a_full_disk_leaves_every_report_as_it_was(tmp_path, capsys, monkeypatch):
    from bench import report, score

    _pairs(tmp_path)
    assert score.main(_score_args(tmp_path, "--name", "first")) == 0
    before = _files(tmp_path / "reports")
    assert {"leaderboard.csv", "per_image.csv", "leaderboard.md"} <= set(before)
    calls = []
    real = report.write_markdown

    def full(*a, **k):  # the CSVs are written, then the disk fills during the page
        calls.append(1)
        raise OSError(errno.ENOSPC, "No space left on device", "leaderboard.md")

    monkeypatch.setattr(report, "write_markdown", full)
    capsys.readouterr()
    assert score.main(_score_args(tmp_path, "--name", "second")) == 2
    line = _one_error_line(capsys.readouterr())
    assert calls and "No space left on device" in line
    assert _files(tmp_path / "reports") == before  # all or none: none
    monkeypatch.setattr(report, "write_markdown", real)
    assert score.main(_score_args(tmp_path, "--name", "second")) == 0
    after = (tmp_path / "reports" / "leaderboard.csv").read_text()
    assert "first" in after and "second" in after
    assert "second" in (tmp_path / "reports" / "leaderboard.md").read_text()
    assert "bars_sr4.png" in _files(tmp_path / "reports")  # the plots are of the merged rows


def test_score_keeps_the_plots_bench_eval_wrote(tmp_path):
    from bench import score
    from bench.publish import MANIFEST, publish_reports

    def eval_reports(stage):
        stage.mkdir(parents=True)
        for name in ("losses.png", "leaderboard.csv"):
            (stage / name).write_text(name)
        return {}

    publish_reports(tmp_path / "reports", eval_reports)
    (tmp_path / "reports" / "leaderboard.csv").unlink()  # a fresh leaderboard for the score
    _pairs(tmp_path)
    assert score.main(_score_args(tmp_path, "--name", "x", "--no-plots")) == 0
    assert (tmp_path / "reports" / "losses.png").read_text() == "losses.png"
    listed = json.loads((tmp_path / "reports" / MANIFEST).read_text())
    assert "losses.png" in listed and "leaderboard.md" in listed


# ---------------------------------------------------------------------------------------------
# bench score: every file read by the pipeline's one reader (the shared corpus)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    from fakes.images import image_corpus

    return image_corpus(tmp_path_factory.mktemp("corpus"))


def _score_corpus(tmp_path: Path, corpus: dict, role: str):
    """``bench score`` with every corpus file as the ``role`` side ("target", "pred" or "mask")
    of its own pair; the other sides are exact 8-bit PNGs of the picture the file means (for a
    mask: the picture itself as target, and as prediction with the surround painted grey, so
    that PSNR inside the field of view is exact only where the mask was read right)."""
    import shutil

    from bench import score
    from fakes.images import corpus_picture

    dirs = {k: tmp_path / k for k in ("pred", "tgt", "mask")}
    for d in dirs.values():
        d.mkdir()
    side = {"target": "tgt", "pred": "pred", "mask": "mask"}[role]
    picture = corpus_picture()
    for name, case in corpus.items():
        stem = Path(name).stem
        shutil.copyfile(case.path, dirs[side] / name)
        meant = case.expect if case.expect is not None else picture
        if role == "mask":
            painted = meant.copy()
            painted[meant.max(axis=2) < 128] = 60
            Image.fromarray(meant).save(dirs["tgt"] / f"{stem}.png")
            Image.fromarray(painted).save(dirs["pred"] / f"{stem}.png")
        else:
            for other in ("pred", "tgt"):
                if other != side:
                    Image.fromarray(meant).save(dirs[other] / f"{stem}.png")
    extra = ["--mask", str(dirs["mask"])] if role == "mask" else []
    return score.run_score(_score_args(tmp_path, "--name", role, "--no-plots", *extra))


@pytest.mark.parametrize("role", ["target", "pred", "mask"])
def test_score_reads_every_encoding_as_the_pipeline_does(tmp_path, capsys, corpus, role):
    result = _score_corpus(tmp_path, corpus, role)
    scored = {r["id"]: r for r in result["per_image"]}
    problems = {p["id"]: p["error"] for p in result["problems"]}
    out = capsys.readouterr().out
    metric = "psnr_fov" if role == "mask" else "psnr"
    for name, case in corpus.items():
        stem = Path(name).stem
        if case.reason is not None:  # refused: one line naming the file, nothing scored of it
            assert stem in problems and str(case.path.name) in problems[stem], (name, problems)
            [line] = [ln for ln in out.splitlines() if ln.startswith(f"[score] {stem}: ")]
            assert "Traceback" not in out and name in line
        elif case.tolerance == 0:  # 16-bit, float TIFF, EXIF, palette, CMYK TIFF: the same picture
            assert scored[stem][metric] == 100.0, (name, scored[stem][metric])
        else:                      # lossy JPEG
            assert scored[stem][metric] > 30, (name, scored[stem][metric])
    assert len(scored) + len(problems) == len(corpus)


def test_a_data_source_that_fails_later_is_built_once_and_said_once(monkeypatch):
    """A source that fails only at some run's size (after the up-front check passed): built
    once, every model's rows say so without a rebuild, and the FAILED lines say it once."""
    import argparse

    from bench import eval as E
    from bench.eval_infer import DataSourceError, EvalItems
    from bench.eval_targets import Target
    from medq.data import DataError

    calls = []

    def broken(*a, **k):
        calls.append(1)
        raise DataError("/data/x/broken.png: not an image Pillow can read")

    monkeypatch.setattr("medq.data.build_dataset", broken)
    cfg = load_config("control")
    items = EvalItems("all", ["sr4"], None)
    for _ in range(3):
        with pytest.raises(DataSourceError, match="broken.png"):
            items.items(cfg)
    assert len(calls) == 1
    ctx = E.Context(argparse.Namespace(split="all", channel="rgb"), [], ["sr4"], "cpu", items)
    rows = []
    for name in ("a", "b"):
        target = Target({"name": name, "kind": "model"}, ["sr4"], cfg, load=TextBicubic,
                        out_dir=lambda m: Path("/nonexistent") / "eval")
        rows += E.evaluate(target, ctx)[0]
    assert all("broken.png" in r["status"] for r in rows)
    lines = E.failures(rows, list(items.failures.values()))
    assert len(lines) == 1 and lines[0].startswith("data: DataError") and "broken.png" in lines[0]
