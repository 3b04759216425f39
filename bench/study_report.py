"""The study's tables, from what its jobs left in the study folder (partial results included):
learning curves, gradient norms and ratios, stability, the final leaderboards at the main budget
and at the check length, and the differences between presets with their intervals.

    files = write_report(study, state, plan)     # every file below, rewritten from the points

Files (under the study folder):

- ``curves.csv``: one row per (run, step, output, task) (``CURVE_COLUMNS``); step 0 is the init
  checkpoint every fine-tune starts from (``run`` = ``init``), the reference baselines have no
  step. Rebuilt from the point records each time, so a killed and resumed study has no duplicated
  and no lost row.
- ``gradient_ratios.csv``: per scored checkpoint, SSIM's and L2's gradient norms at the VAE
  decoder's input and at the backbone, without and with the per-element clamp, and their ratios.
- ``grad_norms.csv``: the per-term gradient norms each run logged while training
  (``probe/<where>/<term>/norm``, weighted as trained) and their logged ratios.
- ``stability.csv``: per long run and task, where (if anywhere) it collapsed or its reports broke.
- ``main_budget.csv`` / ``check_length.csv`` / ``stability_length.csv``: the leaderboards at the
  main budget (mean over seeds), at the check length and at the end of the stability runs (one
  seed), with the reference baseline and the init checkpoint.
- ``seed_comparisons.csv`` (main budget: intervals over images x seeds, ``medq.stats.
  seed_image_comparison``; report kappa and KID: the seed spread) and ``comparisons.csv`` (check
  length: paired bootstrap and Wilcoxon over images, KID by the jackknife, Holm over the family).
- ``summary.json``: all of it in one machine-readable file; ``plots/``: ``bench.study_plots``.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np

from bench.study_plan import INIT
from medq.files import write_json_atomic, write_text_atomic

CURVE_METRICS = ("ssim_fov", "psnr_eroded_fov", "vessel_dice", "kid_inception", "dr_kappa")
IMAGE_METRICS = ("ssim_fov", "psnr_eroded_fov", "vessel_dice")
"""Per-image metrics: the differences between presets get intervals over images (and seeds)."""
CURVE_COLUMNS = ("run", "preset", "stage", "seed", "max_steps", "step", "output", "task",
                 "n_images", *(f"{m}{s}" for m in CURVE_METRICS for s in ("", "_lo", "_hi")
                               if m != "dr_kappa" or not s),
                 "psnr_fov", "lr_psnr", "fid_inception", "verdict")
LEADERBOARD_METRICS = ("ssim_fov", "psnr_eroded_fov", "vessel_dice", "kid_inception",
                       "fid_inception", "dr_kappa", "psnr_fov", "lr_psnr")
GRAD_RATIO_COLUMNS = ("run", "preset", "stage", "seed", "step", "where", "l2", "ssim",
                      "ssim_clamped", "mse", "ssim_over_l2", "ssim_clamped_over_l2", "batches",
                      "max_t", "clamp")
GRAD_NORM_COLUMNS = ("run", "preset", "stage", "seed", "step", "where", "term", "norm", "max")
STUDY_PAIRS = (("ssim_matched", "pixel"), ("mixed", "pixel"), ("ssim_matched", "mixed"),
               ("ssim_v1", "pixel"), ("ssim_v3", "pixel"), ("ssim_v3", "control"),
               ("ssim_v3_relaxed", "control"), ("ssim_v1", "control"),
               ("ssim_matched", "control"), ("pixel", "control"), ("mixed", "control"))
"""The differences the study answers with (a - b), each present pair per task and output; every
preset is also compared with the task's reference baseline."""
KAPPA_DROP = 0.1
"""A run's reports count as broken at the first checkpoint whose DR kappa is this far below the
init checkpoint's (``train weights --check`` allows the same margin for float noise)."""


def _num(v) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


# ---------------------------------------------------------------------------------------------
# reading what the jobs left


def load_records(study: Path) -> list[dict]:
    """Every point record under ``<study>/scores`` (complete points only), sorted by key."""
    out = []
    for path in sorted((Path(study) / "scores").rglob("*.json")):
        try:
            out.append(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, json.JSONDecodeError):
            continue  # a half-written file never has the final name; anything else is foreign
    return sorted(out, key=lambda r: r["key"])


def load_features(study: Path, record: dict, task: str) -> dict[str, tuple]:
    """{image id: (output feature, target feature)} of one point and task (from its .npz)."""
    path = (Path(study) / "scores" / record["key"]).with_suffix("")
    path = path.with_name(path.name + ".npz")
    try:
        with np.load(path) as z:
            ids = [str(i) for i in z[f"{task}/ids"]]
            return {i: (z[f"{task}/output"][k], z[f"{task}/target"][k])
                    for k, i in enumerate(ids)}
    except (OSError, KeyError, ValueError):
        return {}


def read_metrics_csv(path: Path) -> list[tuple[int, str, float]]:
    """A run's ``logs/metrics.csv`` as (step, key, value) rows ([] when absent)."""
    if not Path(path).is_file():
        return []
    with open(path, newline="", encoding="utf-8") as f:
        return [(int(r["step"]), r["key"], _num(r["value"])) for r in csv.DictReader(f)]


# ---------------------------------------------------------------------------------------------
# curves and gradients


def curve_rows(records: list[dict]) -> list[dict]:
    """``CURVE_COLUMNS`` rows of every point, one per (run, step, output, task)."""
    rows = []
    for rec in records:
        for r in rec["rows"]:
            row = {"run": rec["run"], "preset": rec.get("preset"), "stage": rec.get("stage"),
                   "seed": rec.get("seed"), "max_steps": rec.get("steps"),
                   "step": rec["step"] if rec["source"] != "baseline" else None,
                   "output": rec["output"], **r}
            rows.append({c: row.get(c) for c in CURVE_COLUMNS})
    return sorted(rows, key=lambda r: (str(r["run"]), _num(r["step"]), str(r["output"]),
                                       str(r["task"])))


def grad_ratio_rows(records: list[dict]) -> list[dict]:
    rows = []
    for rec in records:
        g = rec.get("grad_ratio")
        if not g:
            continue
        for where in ("x0_hat", "hidden"):
            rows.append({"run": rec["run"], "preset": rec.get("preset"),
                         "stage": rec.get("stage"), "seed": rec.get("seed"),
                         "step": rec["step"], "where": where, **g.get(where, {}),
                         **{k: g.get(k) for k in ("batches", "max_t", "clamp")}})
    return rows


def training_grad_rows(study: Path, runs: list[dict]) -> list[dict]:
    """Every ``probe/<where>/<term>/{norm,max}`` and ``probe/<where>/<a>_over_<b>`` value the
    study's runs logged while training."""
    rows = []
    for run in runs:
        cells: dict[tuple[int, str, str], dict] = {}
        for step, key, value in read_metrics_csv(Path(study) / "runs" / run["name"] / "logs"
                                                 / "metrics.csv"):
            parts = key.split("/")
            if parts[0] != "probe" or len(parts) not in (3, 4):
                continue
            where, term = parts[1], parts[2]
            field = parts[3] if len(parts) == 4 else "norm"
            cells.setdefault((step, where, term), {})[field] = value
        for (step, where, term), v in sorted(cells.items()):
            rows.append({"run": run["name"], "preset": run["preset"], "stage": run["stage"],
                         "seed": run["seed"], "step": step, "where": where, "term": term,
                         "norm": v.get("norm"), "max": v.get("max")})
    return rows


def stability_rows(curves: list[dict], study: Path, runs: list[dict]) -> list[dict]:
    """Per run of the curve and stability stages and task: the first checkpoint whose output the
    verdict calls collapsed, the first whose DR kappa fell ``KAPPA_DROP`` below the init's, the
    collapse monitor's warnings while training, and the first / best / last SSIM-fov."""
    init = {(r["task"], r["output"]): r for r in curves if r["run"] == INIT}
    out = []
    for run in runs:
        if run["stage"] not in ("curve", "stability"):
            continue
        logs = read_metrics_csv(Path(study) / "runs" / run["name"] / "logs" / "metrics.csv")
        warned = [s for s, k, v in logs if k == "collapse/warning" and v > 0]
        skipped = max((v for _, k, v in logs if k == "train/skipped"), default=0.0)
        for task in sorted({r["task"] for r in curves if r["run"] == run["name"]}):
            pts = sorted((r for r in curves if r["run"] == run["name"] and r["task"] == task
                          and r["output"] == "onestep"), key=lambda r: _num(r["step"]))
            if not pts:
                continue
            k0 = _num(init.get((task, "onestep"), {}).get("dr_kappa"))
            kappa = [(int(r["step"]), _num(r["dr_kappa"])) for r in pts]
            ssim = [(int(r["step"]), _num(r["ssim_fov"])) for r in pts]
            collapsed = [int(r["step"]) for r in pts if r.get("verdict") == "collapsed"]
            broke = [s for s, k in kappa if not math.isnan(k0) and k < k0 - KAPPA_DROP]
            best = max(ssim, key=lambda x: -math.inf if math.isnan(x[1]) else x[1])
            out.append({"run": run["name"], "preset": run["preset"], "stage": run["stage"],
                        "max_steps": run["steps"], "task": task,
                        "scored_to": int(pts[-1]["step"]),
                        "first_collapsed_step": collapsed[0] if collapsed else None,
                        "first_kappa_drop_step": broke[0] if broke else None,
                        "kappa_init": k0, "kappa_min": min((k for _, k in kappa), default=None),
                        "kappa_last": kappa[-1][1],
                        "ssim_fov_init": _num(init.get((task, "onestep"), {}).get("ssim_fov")),
                        "ssim_fov_best": best[1], "ssim_fov_best_step": best[0],
                        "ssim_fov_last": ssim[-1][1],
                        "psnr_eroded_fov_last": _num(pts[-1]["psnr_eroded_fov"]),
                        "monitor_warnings": len(warned),
                        "first_monitor_warning_step": warned[0] if warned else None,
                        "skipped_steps": skipped})
    return out


# ---------------------------------------------------------------------------------------------
# final tables and differences


def final_records(records: list[dict], steps: int, seeds) -> dict[tuple[str, str], dict]:
    """{(preset, output): {seed: record}} of the runs of length ``steps`` and a seed in
    ``seeds``, at their last checkpoint."""
    out: dict[tuple[str, str], dict] = {}
    for rec in records:
        if (rec["source"] == "run" and rec.get("steps") == steps and rec["step"] == steps
                and rec.get("seed") in seeds):
            out.setdefault((rec["preset"], rec["output"]), {})[rec["seed"]] = rec
    return out


def shared_records(records: list[dict]) -> dict[tuple[str, str], dict]:
    """{(name, output): record} of the init checkpoint and the baselines."""
    return {(r["name"], r["output"]): r for r in records if r["source"] != "run"}


def task_row(record: dict, task: str) -> dict | None:
    return next((r for r in record["rows"] if r["task"] == task), None)


def image_values(record: dict, task: str, metric: str) -> dict[str, float]:
    return {r["id"]: _num(r.get(metric)) for r in record["per_image"] if r["task"] == task}


def _reference(shared: dict, task: str) -> tuple[str, dict] | None:
    from medq.scoring import REFERENCE

    name = REFERENCE.get(task)
    rec = shared.get((name, "sample"))
    return (name, rec) if rec is not None else None


def leaderboard(finals: dict, shared: dict, tasks: list[str], label: str) -> list[dict]:
    """Rows in ``bench results``'s leaderboard format: each (preset, output) at this length (the
    mean over seeds with its seed sd when there are several seeds, else the run's row with its
    bootstrap intervals), the init checkpoint and the task's reference baseline."""
    rows = []
    for task in tasks:
        ref = _reference(shared, task)
        if ref is not None and task_row(ref[1], task):
            rows.append({**task_row(ref[1], task), "name": ref[0], "kind": "baseline"})
        for output in ("onestep", "sample"):
            rec = shared.get((INIT, output))
            if rec is not None and task_row(rec, task):
                rows.append({**task_row(rec, task), "name": f"base model/{output}",
                             "kind": "init", "step": 0})
        for (preset, output), by_seed in sorted(finals.items()):
            per = [task_row(r, task) for _, r in sorted(by_seed.items())]
            per = [p for p in per if p is not None]
            if not per:
                continue
            name = f"{preset}/{output} {label}"
            if len(per) == 1:
                rows.append({**per[0], "name": name, "kind": "run", "preset": preset,
                             "seed": next(iter(by_seed))})
                continue
            row = {"name": name, "kind": "seeds", "preset": preset, "task": task,
                   "n_seeds": len(per), "n_images": per[0].get("n_images"),
                   "status": "ok" if all(str(p.get("status")).startswith("ok") for p in per)
                   else "; ".join(sorted({str(p.get("status")) for p in per}))}
            for m in LEADERBOARD_METRICS:
                vals = np.asarray([_num(p.get(m)) for p in per], dtype=np.float64)
                vals = vals[~np.isnan(vals)]
                row[m] = float(vals.mean()) if len(vals) else math.nan
                row[f"{m}_seed_sd"] = float(vals.std(ddof=1)) if len(vals) >= 2 else math.nan
            rows.append(row)
    return rows


def _pairs(finals: dict) -> list[tuple[str, str]]:
    presets = {p for p, _ in finals}
    return [(a, b) for a, b in STUDY_PAIRS if a in presets and b in presets]


def seed_comparison_rows(finals: dict, shared: dict, tasks: list[str], label: str) -> list[dict]:
    """Across training seeds, a - b for ``STUDY_PAIRS`` and each preset - the reference: per-image
    metrics over images x seeds (``seed_image_comparison``), DR kappa and KID (set metrics) by
    the seed spread of their per-seed values (``seed_comparison``)."""
    from medq.stats import seed_comparison, seed_image_comparison

    out = []
    for task in tasks:
        ref = _reference(shared, task)
        for output in ("onestep", "sample"):
            pairs = _pairs({k: v for k, v in finals.items() if k[1] == output})
            pairs += [(p, None) for p, o in sorted(finals) if o == output and ref is not None]
            for a, b in pairs:
                ra = finals[(a, output)]
                rb = finals[(b, output)] if b is not None else {s: ref[1] for s in ra}
                names = (f"{a}/{output} {label}",
                         f"{b}/{output} {label}" if b is not None else ref[0])
                for m in IMAGE_METRICS:
                    c = seed_image_comparison(
                        {s: image_values(r, task, m) for s, r in ra.items()},
                        {s: image_values(r, task, m) for s, r in rb.items()})
                    out.append({"task": task, "a": names[0], "b": names[1], "metric": m,
                                **c.as_dict()})
                for m in ("kid_inception", "dr_kappa"):
                    if m == "dr_kappa" and (output != "onestep" or b is None):
                        continue  # reports come with the one-step point; baselines write none
                    c = seed_comparison({s: _num((task_row(r, task) or {}).get(m))
                                         for s, r in ra.items()},
                                        {s: _num((task_row(r, task) or {}).get(m))
                                         for s, r in rb.items()})
                    out.append({"task": task, "a": names[0], "b": names[1], "metric": m,
                                **c.as_dict()})
    return out


def comparison_rows(study: Path, finals: dict, shared: dict, tasks: list[str],
                    label: str) -> list[dict]:
    """One seed, a - b on the images both scored: per-image metrics by the paired bootstrap and
    Wilcoxon (``paired_comparison``), KID by its jackknife (``metrics.kid_difference``); p
    Holm-adjusted over the whole family."""
    from medq.metrics import kid_difference
    from medq.stats import holm, paired_comparison

    out = []
    for task in tasks:
        ref = _reference(shared, task)
        for output in ("onestep", "sample"):
            one = {p: next(iter(v.values())) for (p, o), v in finals.items() if o == output}
            pairs = [(one[a], one[b], f"{a}/{output} {label}", f"{b}/{output} {label}")
                     for a, b in _pairs({(p, output): 0 for p in one})]
            if ref is not None:
                pairs += [(one[p], ref[1], f"{p}/{output} {label}", ref[0]) for p in sorted(one)]
            for ra, rb, na, nb in pairs:
                for m in IMAGE_METRICS:
                    c = paired_comparison(image_values(ra, task, m), image_values(rb, task, m))
                    out.append({"task": task, "a": na, "b": nb, "metric": m, **c.as_dict()})
                fa, fb = load_features(study, ra, task), load_features(study, rb, task)
                ids = sorted(set(fa) & set(fb))
                diff, lo, hi, p = kid_difference(
                    np.stack([fa[i][0] for i in ids]) if ids else np.zeros((0, 1)),
                    np.stack([fb[i][0] for i in ids]) if ids else np.zeros((0, 1)),
                    np.stack([fa[i][1] for i in ids]) if ids else np.zeros((0, 1)))
                out.append({"task": task, "a": na, "b": nb, "metric": "kid_inception",
                            "n": len(ids), "mean_diff": diff, "ci_low": lo, "ci_high": hi,
                            "p_value": p, "wins": "n/a", "losses": "n/a", "ties": "n/a",
                            "note": "set metric (lower is better): paired KID difference, "
                                    "jackknife interval and p"})
    for c, adj in zip(out, holm([_num(c["p_value"]) for c in out])):
        c["p_holm"] = adj
    return out


# ---------------------------------------------------------------------------------------------
# writing


def csv_file(path: Path, rows: list[dict], columns=None) -> Path:
    """``rows`` as CSV at ``path`` (atomically); columns: ``columns`` or every key in order."""
    from bench.report import csv_text

    if columns is None:
        columns = list(dict.fromkeys(k for r in rows for k in r))
    return write_text_atomic(Path(path), csv_text(rows, list(columns)))


BOARD_FIRST = ("name", "kind", "preset", "task", "status", "step", "seed", "n_seeds", "n_images")


def board_columns(rows: list[dict]) -> list[str]:
    """A leaderboard's columns: who it is (``BOARD_FIRST``), then each metric of
    ``LEADERBOARD_METRICS`` with its interval or seed sd, then the rest in name order."""
    have = {k for r in rows for k in r}
    metrics = [f"{m}{s}" for m in LEADERBOARD_METRICS for s in ("", "_lo", "_hi", "_seed_sd")]
    first = [c for c in (*BOARD_FIRST, *metrics) if c in have]
    return first + sorted(have - set(first))


def inert_rows(presets, overrides: list[str] = ()) -> list[dict]:
    """``medq.study.term_reach`` of each image term of each preset (``TermReach`` fields)."""
    from medq.config import load_config
    from medq.study import IMAGE_TERMS, term_reach

    rows = []
    for preset in presets:
        cfg = load_config(preset, overrides=list(overrides))
        for term in IMAGE_TERMS:
            reach = term_reach(cfg, term)
            if reach.active:
                rows.append({"preset": preset, **reach.as_dict()})
    return rows


def tables(study: Path, state: dict, plan: dict) -> dict:
    """Every table of the report, computed from the study folder: {name: rows}."""
    from medq.config import load_config

    budget = state["budget"]
    records = load_records(study)
    curves = curve_rows(records)
    tasks = list(load_config("control", overrides=state["overrides"]).data.tasks)
    shared = shared_records(records)
    main = final_records(records, budget["seed_steps"], tuple(budget["seeds"]))
    check = final_records(records, budget["curve_steps"], (budget["curve_seed"],))
    long = final_records(records, budget["stability_steps"], (budget["curve_seed"],))
    main_label, check_label = f"@{budget['seed_steps']}", f"@{budget['curve_steps']}"
    return {
        "curves": curves,
        "gradient_ratios": grad_ratio_rows(records),
        "grad_norms": training_grad_rows(study, plan["runs"]),
        "stability": stability_rows(curves, study, plan["runs"]),
        "main_budget": leaderboard(main, shared, tasks, main_label),
        "check_length": leaderboard(check, shared, tasks, check_label),
        "stability_length": leaderboard(long, shared, tasks, f"@{budget['stability_steps']}"),
        "seed_comparisons": seed_comparison_rows(main, shared, tasks, main_label),
        "comparisons": comparison_rows(study, check, shared, tasks, check_label),
        "inert": inert_rows(budget["presets"], state["overrides"]),
        "points": {"done": len(records), "planned": plan.get("points", 0)},
    }


def write_report(study: Path, state: dict, plan: dict, *, plots: bool = True) -> dict:
    """Write every table (CSV), ``summary.json`` and the plots; return {name: path}."""
    from bench.results import COMPARISON_COLUMNS, SEED_COMPARISON_COLUMNS

    study = Path(study)
    t = tables(study, state, plan)
    files = {
        "curves": csv_file(study / "curves.csv", t["curves"], CURVE_COLUMNS),
        "gradient_ratios": csv_file(study / "gradient_ratios.csv", t["gradient_ratios"],
                                    GRAD_RATIO_COLUMNS),
        "grad_norms": csv_file(study / "grad_norms.csv", t["grad_norms"], GRAD_NORM_COLUMNS),
        "stability": csv_file(study / "stability.csv", t["stability"]),
        "main_budget": csv_file(study / "main_budget.csv", t["main_budget"],
                                board_columns(t["main_budget"])),
        "check_length": csv_file(study / "check_length.csv", t["check_length"],
                                 board_columns(t["check_length"])),
        "stability_length": csv_file(study / "stability_length.csv", t["stability_length"],
                                     board_columns(t["stability_length"])),
        "seed_comparisons": csv_file(study / "seed_comparisons.csv", t["seed_comparisons"],
                                     ["task", "a", "b", "metric",
                                      *SEED_COMPARISON_COLUMNS[4:]]),
        "comparisons": csv_file(study / "comparisons.csv", t["comparisons"],
                                COMPARISON_COLUMNS),
        "inert": csv_file(study / "inert.csv", t["inert"]),
    }
    if plots:
        from bench.study_plots import write_plots

        files.update(write_plots(study / "plots", t, state))
    summary = {"budget": state["budget"], "overrides": state["overrides"],
               "machine": state.get("machine"), "runs": plan["runs"],
               "files": {k: str(Path(v).relative_to(study)) for k, v in files.items()},
               **{k: v for k, v in t.items() if k not in ("curves", "grad_norms")}}
    files["summary"] = write_json_atomic(study / "summary.json", summary)
    return files
