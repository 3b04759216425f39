"""Measured times behind the study's plan: seconds per training step of each preset, per
validation, and per scored image, on this machine, one torch thread (as the study's children
run), with the machine's calibration line (``bench/perf_machine.py``).

    timing = measure(presets, overrides, budget)    # minutes on the real config; kept by the caller
    bench.study.refine(timing, study_dir)           # later: from the study's own jobs

Step times come from ``bench.perf_train.time_steps`` (the loop's step: losses, backward, clip,
AdamW; random weights, which cost the same as trained ones). The time of a validation (loss on the
val tiles and the collapse probe, every ``run.val_every`` steps) is measured once. Scoring times
come from scoring the init checkpoint's one-step output and sample on the budget's images in a
scratch folder (``scoring_seconds``), apart from what a scoring job pays once. Once the study has
run jobs, ``bench.study.refine`` replaces the estimates by what its runs logged
(``time/steps_per_s``) and its points recorded.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from pathlib import Path

from bench.study_plan import INIT, Point, Timing

SCRATCH = ['init.from=""', "init.scratch=true"]


def _scratch_config(preset: str, overrides: list[str], tmp: Path):
    from medq.config import load_config

    return load_config(preset, overrides=list(overrides) + SCRATCH
                       + [f"run.out_dir={json.dumps(str(tmp / 'runs'))}"])


def step_seconds(preset: str, overrides: list[str], steps: int, tmp: Path) -> float:
    """Median seconds of ``steps`` training steps of ``preset`` (after one warm-up step)."""
    from bench.perf_train import time_steps
    from medq.dist import pick_device

    cfg = _scratch_config(preset, overrides, tmp)
    return statistics.median(time_steps(cfg, steps, pick_device("cpu")))


def validation_seconds(overrides: list[str], tmp: Path) -> float:
    """Seconds of one validation of the control preset (val loss + collapse probe)."""
    import torch

    from medq.dist import pick_device
    from medq.training.task import MiniBagelTask

    task = MiniBagelTask(_scratch_config("control", overrides, tmp), pick_device("cpu"),
                         write_init=False)
    t0 = time.perf_counter()
    with torch.no_grad():
        task.model.eval()
        task.validate(task.model)
    return time.perf_counter() - t0


def scoring_seconds(overrides: list[str], budget: dict, images_per_task: int, tmp: Path
                    ) -> tuple[dict[str, float], dict[str, float], float]:
    """(seconds per scored image by output, seconds per point besides its images by output,
    seconds a scoring job spends before its first point) from scoring, on ``images_per_task``
    images of each task under ``tmp``: a reference baseline first (the job's start-up: the
    validation subset, the Inception network, the targets' features), then the init
    checkpoint's one-step output and sample, and the one-step point's gradient ratio once more
    (warm: its first one also built the probe task and compiled the SSIM kernel)."""
    from bench.study_score import Scorer
    from medq.scoring import REFERENCE

    t0 = time.perf_counter()
    state = {"overrides": list(overrides), "budget": {**budget, "images": images_per_task}}
    scorer = Scorer(tmp / "scoring", state)
    reference = REFERENCE.get(scorer.tasks[0], "bicubic")
    scorer.score_shared([Point("baseline", reference, 0, "sample", final=True)])
    startup = time.perf_counter() - t0
    per_image, fixed = {}, {}
    for output in ("onestep", "sample"):
        point = Point("init", INIT, 0, output, final=True)
        scorer.score_shared([point])
        record = json.loads((tmp / "scoring" / "scores" / f"{point.key}.json").read_text())
        n = sum(r.get("n_images") or 0 for r in record["rows"])
        per_image[output] = (record["seconds"] - record.get("seconds_ratio", 0.0)) / max(n, 1)
        if output == "onestep":
            t1 = time.perf_counter()
            scorer.gradient_ratio(point)
            fixed[output] = time.perf_counter() - t1
            startup += record.get("seconds_ratio", 0.0) - fixed[output]
    return per_image, fixed, startup


def measure(presets, overrides: list[str], budget: dict, *, steps: int = 5,
            images_per_task: int | None = None, timing: Timing | None = None, save=None,
            say=print) -> Timing:
    """Every time the plan needs that ``timing`` lacks, measured now (one torch thread);
    ``save(timing)`` is called after each measurement, so an interrupted measurement keeps
    what it measured. Scoring is timed on the budget's own number of images (default): the
    Inception features are computed in fixed-size batches, so fewer images would cost more
    per image than the study's points do."""
    import torch

    from bench.perf_machine import machine_line, measure_machine

    torch.set_num_threads(1)
    timing = timing or Timing()
    machine = machine_line(measure_machine())
    timing.source = "measured by bench study (bench/study_timing.py)"
    say(machine)
    save = save or (lambda t: None)
    with tempfile.TemporaryDirectory(prefix="study-timing-") as tmp:
        for preset in [p for p in presets if p not in timing.step_seconds]:
            timing.step_seconds[preset] = step_seconds(preset, overrides, steps, Path(tmp))
            say(f"[study] step time {preset}: {timing.step_seconds[preset]:.3f} s "
                f"(median of {steps}, 1 thread)")
            timing.measured_on["steps"] = machine
            save(timing)
        if not timing.validation_seconds:
            timing.validation_seconds = validation_seconds(overrides, Path(tmp))
            say(f"[study] one validation: {timing.validation_seconds:.1f} s")
            timing.measured_on["validation"] = machine
            save(timing)
        if not timing.point_image_seconds:
            (timing.point_image_seconds, timing.point_fixed_seconds,
             timing.job_seconds) = scoring_seconds(overrides, budget,
                                                   images_per_task or budget["images"], Path(tmp))
            say(f"[study] a scoring job's start-up: {timing.job_seconds:.1f} s")
            for output, s in timing.point_image_seconds.items():
                say(f"[study] scoring the {output} output: {s:.2f} s per image + "
                    f"{timing.point_fixed_seconds.get(output, 0.0):.1f} s per point")
            timing.measured_on["scoring"] = machine
            save(timing)
    return timing
