"""Writing the leaderboard: CSV (byte-stable), Markdown (sorted, with comparisons and protocol),
plots. Which columns exist and what they mean is ``medq.leaderboard``'s (the schema); this module
lays them out.

    write_reports(rows, per_image, out_dir, protocol=..., comparisons=..., runs=[run dirs])
    merge_rows(old_rows, new_rows, key=("name", "task"))   # bench score: replace same name+task

Numbers are written with ``repr``-free fixed formatting (``%.7g``), rows in a fixed order, NaN and
None as an empty cell, so the same inputs give the same bytes. Timing columns
(``medq.leaderboard.TIMING_COLUMNS``) are the only ones expected to change between identical runs.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Sequence

from bench.results import write_comparison_csvs
from medq.files import write_text_atomic
from medq.leaderboard import (
    MAIN_METRIC,
    PER_IMAGE_COLUMNS,
    column,
    floor_of,
    leaderboard_columns,
    number,
)
from medq.text_metrics import REPORT_SCORE_COLUMNS


def fmt(v) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return "" if math.isnan(v) else ("inf" if math.isinf(v) else "%.7g" % v)
    return str(v)


def csv_text(rows: Sequence[dict], columns: Sequence[str]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(columns)
    for r in rows:
        w.writerow([fmt(r.get(c)) for c in columns])
    return buf.getvalue()


def row_key(r: dict) -> tuple:
    return (str(r.get("task", "")), str(r.get("kind", "")), str(r.get("name", "")))


def read_csv(path: Path) -> list[dict]:
    """Rows of any CSV file as dicts of strings ([] when it does not exist)."""
    if not Path(path).is_file():
        return []
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def merge_rows(old: list[dict], new: list[dict], key=("name", "task")) -> list[dict]:
    """Rows of ``old`` whose key no row of ``new`` has, then ``new``."""
    replaced = {tuple(str(r.get(k, "")) for k in key) for r in new}
    return [r for r in old if tuple(str(r.get(k, "")) for k in key) not in replaced] + list(new)


def write_csvs(rows: list[dict], per_image: list[dict], out_dir: Path) -> tuple[Path, Path]:
    out_dir = Path(out_dir)
    rows = sorted(rows, key=row_key)
    per_image = sorted(per_image, key=lambda r: (str(r["task"]), str(r["name"]), str(r["id"])))
    lb, pi = out_dir / "leaderboard.csv", out_dir / "per_image.csv"
    write_text_atomic(lb, csv_text(rows, leaderboard_columns(rows)))
    write_text_atomic(pi, csv_text(per_image, PER_IMAGE_COLUMNS))
    return lb, pi


def _cell(r: dict, m: str, digits: int) -> str:
    v = number(r.get(m))
    if math.isnan(v):
        return "n/a"
    lo, hi = number(r.get(f"{m}_lo")), number(r.get(f"{m}_hi"))
    ci = "" if math.isnan(lo) else f" [{lo:.{digits}f}, {hi:.{digits}f}]"
    return f"{v:.{digits}f}{ci}"


def _fmt(v, spec: str) -> str:
    v = number(v)
    return "n/a" if math.isnan(v) else format(v, spec)


def _seed_cell(r: dict, m: str, digits: int) -> str:
    """mean +- seed sd for rows averaged over training seeds, else the usual mean [CI]."""
    if str(r.get("kind")) != "seeds":
        return _cell(r, m, digits)
    v, sd = number(r.get(m)), number(r.get(f"{m}_seed_sd"))
    return "n/a" if math.isnan(v) else f"{v:.{digits}f} +- {sd:.{digits}f} (seeds)"


def _floor_cell(r: dict, m: str, floor: str) -> str:
    v = number(r.get(m))
    return "n/a" if math.isnan(v) else f"{v:.3f} ({_fmt(r.get(floor), '.3f')})"


def _report_table(sub: list[dict]) -> list[str]:
    """What each mode's reports say, scored against the truth, beside the majority-class floor."""
    with_text = [r for r in sub
                 if any(not math.isnan(number(r.get(c))) for c in REPORT_SCORE_COLUMNS)]
    if not with_text:
        return []
    names = [c for c in REPORT_SCORE_COLUMNS if c.startswith("findings_f1_")
             and column(c).role == "report" and c != "findings_f1_macro"]
    head = ["name", "DR kappa (floor)", "DR grade read", "quality acc. (floor)",
            "findings F1 macro (floor)",
            *[c[len("findings_f1_"):].replace("_", " ") for c in names]]
    out = ["", "Reports scored for what they say (greedy report of each test image against its "
           "ground truth; in brackets the majority-class floor: one answer for every image):", "",
           "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in with_text:
        out.append("| " + " | ".join([
            str(r.get("name", "")), _floor_cell(r, "dr_kappa", "dr_kappa_floor"),
            _fmt(r.get("dr_parsed"), ".2f"),
            _floor_cell(r, "quality_accuracy", floor_of("quality_accuracy")),
            _floor_cell(r, "findings_f1_macro", floor_of("findings_f1_macro")),
            *[_floor_cell(r, c, floor_of(c)) for c in names]]) + " |")
    return out


INTRO = ("Sorted by **{main}**: SSIM averaged over the windows that lie entirely inside the field "
         "of view (the SSIM loss's definition; the shared disc rim is not counted). Brackets: "
         "95 % bootstrap interval of the mean over images; `+- (seeds)`: standard deviation over "
         "training seeds. `constant` is the floor: the mean training target, returned for every "
         "input. LR-PSNR: the output downscaled with the task's operator against the "
         "low-resolution input (SR only; NTIRE asks >= 45 dB). Vessel Dice: Sato vessel maps of "
         "output and target inside the FOV (medq.vessels). n/a: undefined or not measured (see "
         "notes).")
COMPARISONS_INTRO = (
    "Per-image differences a - b on the images both scored; mean, 95 % bootstrap interval "
    "(seeded), two-sided Wilcoxon signed-rank p-value on the non-zero differences (n != 0), the "
    "same p Holm-adjusted over every test on this page, images where a is better / worse / equal. "
    "With one training seed per mode these say how consistently one trained model beats another "
    "on these images, not that the difference survives another seed: see the next section.")
SEEDS_INTRO = (
    "Differences across training seeds, paired by seed (and by image): mean over seeds and "
    "images, the standard deviation of the per-seed mean differences, and a 95 % interval over "
    "images x seeds (crossed random effects, t with Satterthwaite df) where per-image values "
    "exist, else the seed spread on this fixed test set (paired t over per-seed means); the note "
    "says which. A baseline has the same value for every seed.")
ONE_SEED = ("One training seed per mode (`make eval SEEDS=3` / `--seeds 3` trains and scores "
            "three): every difference above is a single-seed observation.")
FID_CAVEAT = ("FID (and any Frechet distance) on a few hundred images or fewer is strongly biased "
              "upwards and its bias depends on the sample count: compare FID values only at "
              "equal image counts, and prefer KID, whose estimator is unbiased, for small test "
              "sets.")


def _main_metric_order(r: dict) -> tuple:
    """Best first by ``MAIN_METRIC``, n/a last, then by name."""
    v = number(r.get(MAIN_METRIC))
    return (math.isnan(v), -v if not math.isnan(v) else 0, row_key(r))


def _task_row(r: dict, fd_cols: list[str]) -> str:
    seed = fmt(r.get("seed")) or (f"{fmt(r.get('n_seeds'))} seeds" if r.get("n_seeds") else "-")
    cells = [str(r.get("name", "")), str(r.get("status", "")), seed,
             fmt(r.get("step")) or "-", fmt(r.get("n_images")),
             _seed_cell(r, "ssim_fov", 4), _seed_cell(r, "psnr_eroded_fov", 2),
             _seed_cell(r, "lr_psnr", 2), _seed_cell(r, "vessel_dice", 3),
             _cell(r, "ssim", 4), _cell(r, "psnr", 2), _cell(r, "ms_ssim_fov", 4)]
    for c in fd_cols:
        v, lo, hi = number(r.get(c)), number(r.get(f"{c}_lo")), number(r.get(f"{c}_hi"))
        cells.append("n/a" if math.isnan(v) else f"{v:.4g}" + (
            "" if math.isnan(lo) else f" [{lo:.3g}, {hi:.3g}]"))
    cells += [_fmt(r.get("undecodable_rate"), ".3f"), _fmt(r.get("input_dependence"), "+.3f"),
              str(r.get("verdict") or "n/a"), _fmt(r.get("seconds_per_image"), ".3g")]
    return "| " + " | ".join(cells) + " |"


def _task_section(task: str, sub: list[dict], fd_cols: list[str]) -> list[str]:
    """One task's table (best first), its notes and its reports' scores."""
    head = ["name", "status", "seed", "step", "n", "SSIM fov", "PSNR eroded fov", "LR-PSNR",
            "vessel Dice", "SSIM", "PSNR", "MS-SSIM fov", *fd_cols, "undecodable",
            "input dep.", "verdict", "s/img"]
    out = [f"## {task}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    out += [_task_row(r, fd_cols) for r in sorted(sub, key=_main_metric_order)]
    notes = sorted({f"{r['name']}: {r['note']}" for r in sub if r.get("note")})
    if notes:
        out += [""] + [f"- {n}" for n in notes]
    return out + _report_table(sorted(sub, key=_main_metric_order)) + [""]


def _comparisons_section(comparisons: list[dict]) -> list[str]:
    out = ["## Paired comparisons", "", COMPARISONS_INTRO, ""]
    if not comparisons:
        return out + ["No pair of modes was scored on common images."]
    out += ["| task | a - b | metric | n | n != 0 | mean diff | 95 % CI | p (Wilcoxon) "
            "| p (Holm) | a>b / a<b / = | note |", "|" + "---|" * 11]
    for c in comparisons:
        p = _fmt(c.get("p_value"), ".3g")
        ci = "n/a" if math.isnan(c["ci_low"]) else f"[{c['ci_low']:+.4g}, {c['ci_high']:+.4g}]"
        md = "n/a" if math.isnan(c["mean_diff"]) else f"{c['mean_diff']:+.4g}"
        out.append(f"| {c['task']} | {c['a']} - {c['b']} | {c['metric']} | {c['n']} "
                   f"| {c.get('n_nonzero', '')} | {md} | {ci} | {p} "
                   f"| {_fmt(c.get('p_holm'), '.3g')} "
                   f"| {c['wins']} / {c['losses']} / {c['ties']} | {c.get('note', '')} |")
    return out


def _seeds_section(seed_comparisons: Sequence[dict]) -> list[str]:
    out = ["", "## Across training seeds", ""]
    if not seed_comparisons:
        return out + [ONE_SEED]
    out += [SEEDS_INTRO, "",
            "| task | a - b | metric | seeds | mean diff | seed sd | 95 % CI | note |",
            "|---|---|---|---|---|---|---|---|"]
    for c in seed_comparisons:
        ci = ("n/a" if math.isnan(number(c.get("ci_low")))
              else f"[{c['ci_low']:+.4g}, {c['ci_high']:+.4g}]")
        out.append(f"| {c['task']} | {c['a']} - {c['b']} | {c['metric']} | {c['n_seeds']} "
                   f"| {_fmt(c.get('mean_diff'), '+.4g')} | {_fmt(c.get('sd_diff'), '.3g')} "
                   f"| {ci} | {c.get('note', '')} |")
    return out


def markdown(rows: list[dict], comparisons: list[dict], protocol: dict,
             seed_comparisons: Sequence[dict] = ()) -> str:
    """The leaderboard page: one table per task sorted by SSIM in the FOV (best first; n/a last),
    the reports' scores, the paired comparisons (Holm-adjusted), the comparisons across training
    seeds, the protocol, and the FID caveat."""
    fd_cols = [c for c in leaderboard_columns(rows) if column(c).role == "distribution"]
    out = ["# Leaderboard", "", INTRO.format(main=MAIN_METRIC), ""]
    for task in sorted({r["task"] for r in rows}):
        out += _task_section(task, [r for r in rows if r["task"] == task], fd_cols)
    out += _comparisons_section(comparisons) + _seeds_section(seed_comparisons)
    out += ["", "## Protocol", ""] + [f"- **{k}**: {v}" for k, v in protocol.items()]
    out += ["", FID_CAVEAT, "", "Perception-distortion planes (PSNR eroded fov against KID, every "
            "mode and baseline): `pd_<task>.png`.", ""]
    return "\n".join(out)


def write_markdown(rows: list[dict], comparisons: list[dict], protocol: dict, out_dir: Path,
                   seed_comparisons: Sequence[dict] = ()) -> Path:
    path = Path(out_dir) / "leaderboard.md"
    text = markdown(sorted(rows, key=row_key), comparisons, protocol, seed_comparisons)
    write_text_atomic(path, text)
    return path


# ---------------------------------------------------------------------------------------------
# plots


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_bars(rows: list[dict], out_dir: Path,
              metrics=("ssim_fov", "psnr_eroded_fov")) -> list[Path]:
    """One PNG per task: the mean of each metric per row, with its 95 % bootstrap interval."""
    plt = _plt()
    paths = []
    for task in sorted({r["task"] for r in rows}):
        sub = sorted(
            [r for r in rows if r["task"] == task and not math.isnan(number(r.get(metrics[0])))],
            key=row_key,
        )
        if not sub:
            continue
        fig, axes = plt.subplots(1, len(metrics), figsize=(4 + 1.2 * len(sub), 4), squeeze=False)
        for ax, m in zip(axes[0], metrics):
            means = [number(r.get(m)) for r in sub]
            err = [
                [
                    max(0.0, v - number(r.get(f"{m}_lo")))
                    if not math.isnan(number(r.get(f"{m}_lo")))
                    else 0
                    for v, r in zip(means, sub)
                ],
                [
                    max(0.0, number(r.get(f"{m}_hi")) - v)
                    if not math.isnan(number(r.get(f"{m}_hi")))
                    else 0
                    for v, r in zip(means, sub)
                ],
            ]
            ax.bar(range(len(sub)), means, yerr=err, capsize=4, color="tab:blue")
            ax.set_xticks(range(len(sub)))
            ax.set_xticklabels([str(r["name"]) for r in sub], rotation=30, ha="right", fontsize=7)
            ax.set_title(f"{task}: {m} (95 % CI)")
            finite = [v for v in means if not math.isnan(v)]
            if finite and m.startswith("ssim"):
                ax.set_ylim(max(0.0, min(finite) - 0.1), 1.0)
        paths.append(_save_figure(plt, fig, Path(out_dir) / f"bars_{task}.png"))
    return paths


def _save_figure(plt, fig, path: Path) -> Path:
    """Lay out, write (100 dpi) and close ``fig``; returns ``path``."""
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_perception_distortion(rows: list[dict], out_dir: Path) -> list[Path]:
    """One PNG per task: the perception-distortion plane, PSNR over the eroded FOV (distortion, up
    is better) against KID (perception, left is better), every mode, output kind and baseline a
    point (KID's bootstrap interval as a horizontal bar). Rows without a KID (features off) or a
    PSNR are left out; no plot for a task without any such row."""
    plt = _plt()
    paths = []
    for task in sorted({r["task"] for r in rows}):
        sub = [r for r in rows if r["task"] == task and str(r.get("kind")) != "seeds"]
        kid_col = next((k for r in sub for k in sorted(r) if k.startswith("kid_")
                        and not k.endswith(("_lo", "_hi"))), None)
        pts = [r for r in sub if kid_col and not math.isnan(number(r.get(kid_col)))
               and not math.isnan(number(r.get("psnr_eroded_fov")))]
        if not pts:
            continue
        fig, ax = plt.subplots(figsize=(6.5, 4.5))
        for r in sorted(pts, key=row_key):
            x, y = number(r.get(kid_col)), number(r.get("psnr_eroded_fov"))
            lo, hi = number(r.get(f"{kid_col}_lo")), number(r.get(f"{kid_col}_hi"))
            base = str(r.get("kind")) == "baseline"
            xerr = None if math.isnan(lo) else [[max(0.0, x - lo)], [max(0.0, hi - x)]]
            ax.errorbar([x], [y], xerr=xerr, fmt="s" if base else "o", capsize=3,
                        color="tab:gray" if base else None)
            ax.annotate(str(r.get("name")), (x, y), fontsize=6, xytext=(3, 3),
                        textcoords="offset points")
        ax.set_xlabel(f"{kid_col} (perception: lower is better)")
        ax.set_ylabel("PSNR eroded fov, dB (distortion: higher is better)")
        ax.set_title(f"{task}: perception-distortion plane")
        paths.append(_save_figure(plt, fig, Path(out_dir) / f"pd_{task}.png"))
    return paths


def plot_steps(rows: list[dict], out_dir: Path) -> list[Path]:
    """PSNR and SSIM (FOV) against training step, one line per run, where a run has > 1
    checkpoint."""
    plt = _plt()
    paths = []
    for task in sorted({r["task"] for r in rows}):
        by_run: dict[str, list[dict]] = {}
        for r in rows:
            if (
                r["task"] == task
                and r.get("kind") == "run"
                and not math.isnan(number(r.get("step")))
            ):
                by_run.setdefault(f"{r['run']}/{r.get('weights')}", []).append(r)
        by_run = {k: v for k, v in by_run.items() if len(v) > 1}
        if not by_run:
            continue
        fig, axes = plt.subplots(1, 2, figsize=(10, 4))
        for ax, m in zip(axes, ("psnr_eroded_fov", "ssim_fov")):
            for run, rs in sorted(by_run.items()):
                rs = sorted(rs, key=lambda r: number(r["step"]))
                ax.plot(
                    [number(r["step"]) for r in rs],
                    [number(r.get(m)) for r in rs],
                    marker="o",
                    label=run,
                )
            ax.set_xlabel("step")
            ax.set_title(f"{task}: {m}")
        axes[0].legend(fontsize=7)
        paths.append(_save_figure(plt, fig, Path(out_dir) / f"steps_{task}.png"))
    return paths


def plot_losses(run_dirs: Sequence[Path], out_dir: Path) -> Path | None:
    """Training loss curves (``loss/*`` keys of each run's logs/metrics.csv), one panel per run."""
    series = {}
    for run in sorted(run_dirs):
        rows = read_csv(Path(run) / "logs" / "metrics.csv")
        curves: dict[str, list[tuple[float, float]]] = {}
        for r in rows:
            if str(r.get("key", "")).startswith("loss/"):
                v, s = number(r.get("value")), number(r.get("step"))
                # An exact 0 is a gated image term with no sample under its max_t in that log
                # window (not a perfect loss): left out, or the log axis plunges to the floor.
                if not (math.isnan(v) or math.isnan(s)) and v > 0:
                    curves.setdefault(r["key"], []).append((s, v))
        if curves:
            series[Path(run).name] = curves
    if not series:
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, len(series), figsize=(5 * len(series), 4), squeeze=False)
    for ax, (run, curves) in zip(axes[0], series.items()):
        for key, pts in sorted(curves.items()):
            pts.sort()
            ax.plot(
                [p[0] for p in pts],
                [p[1] for p in pts],
                label=key,
                **({"marker": ".", "linestyle": ":"} if key in ("loss/ssim", "loss/pixel") else {}),
            )
        ax.set_yscale("log")
        ax.set_title(run, fontsize=8)
        ax.set_xlabel("step")
        ax.legend(fontsize=7)
    return _save_figure(plt, fig, Path(out_dir) / "losses.png")


def write_reports(rows: list[dict], per_image: list[dict], out_dir, *, protocol: dict,
                  comparisons: list[dict], run_dirs: Sequence[Path] = (), plots: bool = True,
                  seed_comparisons: Sequence[dict] = ()) -> dict:
    """Every report file into ``out_dir``; returns {kind: path or list of paths}."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    lb, pi = write_csvs(rows, per_image, out_dir)
    md = write_markdown(rows, comparisons, protocol, out_dir, seed_comparisons)
    out = {"leaderboard_csv": lb, "per_image_csv": pi, "markdown": md,
           "comparisons_csv": write_comparison_csvs(out_dir, comparisons, list(seed_comparisons))}
    if plots:
        out["pd"] = plot_perception_distortion(rows, out_dir)
        out["bars"] = plot_bars(rows, out_dir)
        out["steps"] = plot_steps(rows, out_dir)
        out["losses"] = plot_losses(run_dirs, out_dir)
    return out
