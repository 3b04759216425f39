"""The study's final tables as reports of ``python -m bench results`` (``results/<name>/``):

- ``<name>_main_budget/``: the main budget (mean over seeds with the seed sd; the reference
  baseline and the base model beside them): ``leaderboard.csv``, ``seed_comparisons.csv``
  (intervals over images x seeds; set metrics by the seed spread), ``meta.json``;
- ``<name>_check_length/``: one seed at the check length: ``leaderboard.csv`` with bootstrap
  intervals, ``comparisons.csv`` (paired bootstrap / Wilcoxon, KID by the jackknife, Holm),
  ``meta.json``.

Refused while points are missing (``--partial`` exports anyway and says so in the description),
so a results page never shows a half-finished study as if it were the answer.
"""

from __future__ import annotations

import datetime
from pathlib import Path

from medq.files import write_json_atomic

COLUMNS = ["ssim_fov", "psnr_eroded_fov", "vessel_dice", "kid_inception", "dr_kappa"]


def export(study: Path, state: dict, plan: dict, results: Path, name: str, *,
           partial: bool = False) -> list[Path]:
    from bench.results import write_comparison_csvs
    from bench.study import StudyError
    from bench.study_report import csv_file, tables

    t = tables(Path(study), state, plan)
    done, planned = t["points"]["done"], t["points"]["planned"]
    if done < planned and not partial:
        raise StudyError(f"{study}: {done} of {planned} points scored; finish the study (the same "
                         f"command resumes it) or export with --partial")
    b = state["budget"]
    note = "" if done >= planned else f" Partial: {done} of {planned} points scored."
    common = {"command": f"python -m bench study --budget {b['name']} && python -m bench study "
                         f"export --name {name}",
              "measured_on": state.get("machine") or "n/a",
              "date": datetime.date.today().isoformat(), "columns": COLUMNS}
    reports = (
        ("main_budget", t["main_budget"], [], t["seed_comparisons"],
         f"SSIM vs pixel at the main budget: {b['seed_steps']} steps, training seeds "
         f"{', '.join(map(str, b['seeds']))}, {b['images']} validation images per task; mean over "
         f"seeds +- seed sd; differences over images x seeds."),
        ("check_length", t["check_length"], t["comparisons"], [],
         f"SSIM vs pixel at the check length: {b['curve_steps']} steps, seed {b['curve_seed']}, "
         f"{b['images']} validation images per task; paired differences over images."),
    )
    written = []
    for suffix, board, comps, seed_comps, title in reports:
        folder = Path(results) / f"{name}_{suffix}"
        written.append(csv_file(folder / "leaderboard.csv", board))
        written += write_comparison_csvs(folder, comps, seed_comps)
        written.append(write_json_atomic(folder / "meta.json", {
            **common, "title": title.split(":")[0] + f" ({suffix.replace('_', ' ')})",
            "description": title + note}))
    return written
