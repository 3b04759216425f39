"""bench perf: the machine line, flag checks, not-installed rows, the busy core, stage times."""

import json
import os
import time
from pathlib import Path

import pytest

from bench import __main__ as bench_main
from bench import perf_machine, perf_main, perf_ssim


def test_machine_line_names_cpu_threads_torch_calibration_and_load():
    import torch

    m = perf_machine.measure_machine()
    assert m.gflops > 0 and m.copy_gbs > 0 and m.threads == torch.get_num_threads()
    line = perf_machine.machine_line(m)
    for part in (m.cpu, f"{m.threads} torch threads", f"torch {torch.__version__}",
                 "GFLOPS (float32 1024x1024 matmul)", "GB/s", "load average"):
        assert part in line


@pytest.mark.parametrize("argv,message", [
    (["perf", "ssim", "--repeats", "0"], "0 is out of range: --repeats must be 1..1000"),
    (["perf", "ssim", "--repeats", "many"], "'many' is not an integer"),
    (["perf", "ssim", "--threads", "0"], "torch threads"),
    (["perf", "ssim", "--threads", str((os.cpu_count() or 1) + 1)], "torch threads"),
    (["perf", "ssim", "--shapes", "8x3x256"], "is not NxCxHxW with 4 positive integers"),
    (["perf", "ssim", "--shapes", "1x3x0x64"], "is not NxCxHxW"),
    (["perf", "ssim", "--shapes", "1x3x8x64"], "H and W must be >= 11"),
    (["perf", "ssim", "--shapes", "4096x3x1024x1024"], "elements; at most"),
    (["perf", "train", "--steps", "-1"], "--steps must be 1..1000"),
    (["perf", "infer", "--images", "0"], "--images must be"),
])
def test_nonsense_flags_fail_with_one_line(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        bench_main.main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_unknown_impl_is_rejected(capsys):
    assert bench_main.main(["perf", "ssim", "--impls", "medq,nope", "--no-memory"]) == 2
    assert "unknown ['nope']" in capsys.readouterr().err


def test_missing_library_gives_not_installed_row(monkeypatch, capsys):
    real = perf_ssim._impl

    def impl(name):
        if name == "piq":
            raise ImportError("No module named 'piq'")
        return real(name)

    monkeypatch.setattr(perf_ssim, "_impl", impl)
    rc = bench_main.main(["perf", "ssim", "--shapes", "1x1x24x24", "--repeats", "2",
                          "--no-memory", "--impls", "medq,piq,pytorch-msssim", "--threads", "1"])
    out = capsys.readouterr().out
    assert rc == 0
    assert out.splitlines()[0].startswith("machine: ")
    rows = {line.split()[4]: line for line in out.splitlines() if line.startswith("(1, 1, 24, 24)")}
    assert "not installed" in rows["piq"]
    assert "1.00x" in rows["medq"] and "x" in rows["pytorch-msssim"]
    assert "medq vs fastest anchor (pytorch-msssim)" in out and "memory-bound floor" in out


def test_busy_core_runs_a_process_and_ends_it():
    with perf_machine.busy_core() as proc:
        assert proc.poll() is None
        t = time.process_time()
        time.sleep(0.3)
        assert proc.poll() is None
    assert proc.poll() is not None  # ended by its pid on exit
    assert time.process_time() - t < 0.2  # the spinning was not in this process
    with perf_machine.busy_core(False) as none:
        assert none is None


def test_measure_interleaves_and_rotates_the_order():
    calls = []
    impls = {name: (lambda n: lambda x, y: calls.append(n) or (x * y).mean(dim=(1, 2, 3)))(name)
             for name in ("a", "b", "c")}
    times = perf_ssim._measure(impls, (1, 1, 12, 12), 3)
    assert [len(t) for t in times.values()] == [3, 3, 3]
    # warm-up a b c, then rounds a b c / b c a / c a b
    assert calls == list("abc") + list("abc") + list("bca") + list("cab")


def _touch(path: Path, t: float, text: str = "") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    os.utime(path, (t, t))


def test_perf_main_reads_stage_times_from_files(tmp_path, capsys):
    t0 = 1_700_000_000.0
    runs, reports = tmp_path / "runs", tmp_path / "reports"
    _touch(runs / "_cache" / "synthetic-v2-s0-64px-n2048.npz", t0)
    _touch(runs / "vae" / "metrics.json", t0 + 100, json.dumps({"train_seconds": 93.5}))
    for name, preset, start, end in (("pretrain-aa", "pretrain", 110, 400),
                                     ("ssim_v3-bb", "ssim_v3", 410, 600),
                                     ("pixel-cc", "pixel", 700, 760),
                                     ("mixed-dd", "mixed", 720, 770)):
        _touch(runs / name / "logs" / "tb" / f"events.out.tfevents.{int(t0 + start)}.host.1.0", t0)
        _touch(runs / name / "run.json", t0 + end,
               json.dumps({"preset": preset, "status": "finished", "step": 300}))
    # inference of three models: 2 + 1 + 1 samples; scoring gaps 800->815, 820->830, 850->900
    d1 = runs / "ssim_v3-bb" / "eval" / "step_000300-ema"
    _touch(d1 / "sr4" / "images" / "0_output.png", t0 + 790)
    _touch(d1 / "sr4" / "records.jsonl", t0 + 800,
           json.dumps({"id": "0", "seconds": 1.5}) + "\n" + json.dumps({"id": "1", "seconds": 2})
           + "\nnot json\n")
    d2 = runs / "_baselines" / "bicubic" / "eval"
    _touch(d2 / "sr4" / "images" / "0_output.png", t0 + 830)
    _touch(d2 / "sr4" / "records.jsonl", t0 + 850, json.dumps({"id": "0", "seconds": 0.25}))
    # the shipped base model's one-step output, laid out like a run's
    d3 = runs / "_init" / "0a1b2c3d" / "eval" / "step_003000-ema-onestep"
    _touch(d3 / "sr4" / "images" / "0_output.png", t0 + 815)
    _touch(d3 / "sr4" / "records.jsonl", t0 + 820, json.dumps({"id": "0", "seconds": 0.5}))
    _touch(reports / "leaderboard.csv", t0 + 900)
    rows = perf_main.stage_rows(runs, reports, runs / "vae")
    got = [(stage, seconds) for stage, _, seconds, _ in rows]
    # pixel and mixed ran side by side (700-760, 720-770): 70 s of wall clock, not 110
    assert got == [("data", None), ("VAE", 93.5), ("base", 290.0), ("fine-tune", 190.0),
                   ("fine-tune", 60.0), ("fine-tune", 50.0), ("fine-tunes", 260.0),
                   ("inference", 3.5), ("inference", 0.5), ("inference", 0.25), ("scoring", 75.0)]
    assert rows[8][1] == "_init/0a1b2c3d/eval/step_003000-ema-onestep (1 samples)"
    assert bench_main.main(["perf", "main", "--runs-dir", str(runs), "--reports",
                            str(reports)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("machine: ") and "pretrain-aa (finished at step 300)" in out
    assert "ssim_v3-bb/eval/step_000300-ema (2 samples)" in out
    # 93.5 + 290 + 260 (not 300) + 4.25 + 75
    assert "722.8" in out.splitlines()[-1] and "wall clock" in out.splitlines()[-1]


def test_perf_main_without_a_job_says_what_to_run(tmp_path, capsys):
    assert bench_main.main(["perf", "main", "--runs-dir", str(tmp_path / "none")]) == 2
    assert "make train-v3 && make eval" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert bench_main.main(["perf", "main", "--runs-dir", str(tmp_path / "empty")]) == 2
    assert "nothing timed" in capsys.readouterr().err


@pytest.mark.slow  # builds and steps the tiny model
def test_perf_train_counts_flops_per_component(capsys):
    rc = bench_main.main(["perf", "train", "--presets", "pixel", "--steps", "1", "--chunks", "",
                          "--threads", "1"])
    out = capsys.readouterr().out
    assert rc == 0 and out.startswith("machine: ")
    line = next(ln for ln in out.splitlines() if ln.startswith("pixel") and "%" in ln)
    transformer, encode, decode, loss, other, total = map(float, line.split()[1:7])
    assert transformer > 0 and encode > 0 and loss == 0  # pixel: no SSIM term
    assert total == pytest.approx(transformer + encode + decode + loss + other, abs=2e-3)


@pytest.mark.slow  # runs the inference harness on the tiny model
def test_perf_infer_reports_images_per_second(capsys):
    rc = bench_main.main(["perf", "infer", "--tiny", "--images", "2", "--batch-size", "2",
                          "--no-text", "--threads", "1"])
    out = capsys.readouterr().out
    assert rc == 0 and out.startswith("machine: ")
    rate, s_per_image, gflop, gflops = map(float, out.splitlines()[-1].split()[:4])
    assert rate > 0 and s_per_image == pytest.approx(1 / rate, rel=3e-2) and gflop > 0


def test_perf_data_starts_with_the_machine_and_rejects_zero_sizes(capsys):
    assert bench_main.main(["perf", "data", "--sizes", "32", "--images", "1"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("machine: ") and "1 torch threads" in out
    with pytest.raises(SystemExit):
        bench_main.main(["perf", "data", "--sizes", "0"])
    assert "--sizes must be 1..4096" in capsys.readouterr().err


@pytest.mark.slow  # runs the inference harness on the tiny model twice
def test_perf_infer_size_and_output_change_what_is_timed(capsys):
    """--size sets the working size (more tiles: more GFLOP per image); --output onestep times
    the one-step estimate, cheaper than the Euler sample at the same size."""
    def gflop(*extra):
        assert bench_main.main(["perf", "infer", "--tiny", "--images", "1", "--batch-size", "1",
                                "--no-text", "--threads", "1", *extra]) == 0
        out = capsys.readouterr().out
        return out, float(out.splitlines()[-1].split()[2])

    out_small, small = gflop("--size", "64")
    out_big, big = gflop("--size", "128")
    out_one, onestep = gflop("--size", "128", "--output", "onestep")
    assert "image 64px" in out_small and "image 128px" in out_big
    assert big > 2 * small and "one-step estimate" in out_one and onestep < big
