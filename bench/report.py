"""Writing the leaderboard: CSV (byte-stable), Markdown (sorted, with comparisons and protocol), plots.

    write_reports(rows, per_image, out_dir, protocol=..., comparisons=..., runs=[run dirs])
    merge_csv(path, new_rows, key=("name", "task"))     # bench score: replace same name+task

Numbers are written with ``repr``-free fixed formatting (``%.7g``), rows in a fixed order, NaN and
None as an empty cell, so the same inputs give the same bytes. Timing columns (``TIMING_COLUMNS``)
are the only ones expected to change between identical runs.
"""

from __future__ import annotations

import csv
import io
import math
import os
from pathlib import Path
from typing import Iterable, Sequence

from medq.metrics import IMAGE_METRICS

ID_COLUMNS = ["status", "name", "kind", "run", "preset", "config_hash", "checkpoint", "step",
              "weights", "task", "n_images"]
METRIC_COLUMNS = [c for m in IMAGE_METRICS for c in (m, f"{m}_lo", f"{m}_hi")]
TAIL_COLUMNS = ["fd_n", "undecodable_rate", "report_accuracy", "input_dependence", "verdict",
                "seconds_per_image", "note"]
PER_IMAGE_COLUMNS = ["name", "task", "id", *IMAGE_METRICS, "undecodable", "seconds"]
TIMING_COLUMNS = ("seconds_per_image", "seconds")
MAIN_METRIC = "ssim_fov"


def leaderboard_columns(rows: Iterable[dict]) -> list[str]:
    """Fixed columns plus the distribution-metric columns the rows carry (named after the
    backbone: fid_inception / fd_randresnet18, kid_*), in sorted order."""
    extra = sorted({k for r in rows for k in r if k.startswith(("fid_", "fd_", "kid_")) and k != "fd_n"})
    return ID_COLUMNS + METRIC_COLUMNS + extra + TAIL_COLUMNS


def fmt(v) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return "" if math.isnan(v) else ("inf" if math.isinf(v) else "%.7g" % v)
    return str(v)


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


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
    _atomic_write(lb, csv_text(rows, leaderboard_columns(rows)))
    _atomic_write(pi, csv_text(per_image, PER_IMAGE_COLUMNS))
    return lb, pi


def _num(v) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def _cell(r: dict, m: str, digits: int) -> str:
    v = _num(r.get(m))
    if math.isnan(v):
        return "n/a"
    lo, hi = _num(r.get(f"{m}_lo")), _num(r.get(f"{m}_hi"))
    ci = "" if math.isnan(lo) else f" [{lo:.{digits}f}, {hi:.{digits}f}]"
    return f"{v:.{digits}f}{ci}"


def markdown(rows: list[dict], comparisons: list[dict], protocol: dict) -> str:
    """The leaderboard page: one table per task sorted by SSIM in the FOV (best first; n/a last),
    the paired comparisons, the protocol, and the FID caveat."""
    fd_cols = [c for c in leaderboard_columns(rows) if c.startswith(("fid_", "fd_", "kid_"))]
    out = ["# Leaderboard", "",
           f"Sorted by **{MAIN_METRIC}** (SSIM inside the field of view), best first. "
           "Brackets: 95 % bootstrap interval of the mean over images. n/a: not measured "
           "(see notes).", ""]
    for task in sorted({r["task"] for r in rows}):
        sub = [r for r in rows if r["task"] == task]
        sub.sort(key=lambda r: (math.isnan(_num(r.get(MAIN_METRIC))), -_num(r.get(MAIN_METRIC))
                                if not math.isnan(_num(r.get(MAIN_METRIC))) else 0, row_key(r)))
        head = ["name", "status", "step", "n", "SSIM fov", "PSNR fov", "MS-SSIM fov", "SSIM",
                "PSNR", "MS-SSIM", *fd_cols, "undecodable", "report acc.", "verdict", "s/img"]
        out += [f"## {task}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for r in sub:
            cells = [str(r.get("name", "")), str(r.get("status", "")), fmt(r.get("step")) or "-",
                     fmt(r.get("n_images")), _cell(r, "ssim_fov", 4), _cell(r, "psnr_fov", 2),
                     _cell(r, "ms_ssim_fov", 4), _cell(r, "ssim", 4), _cell(r, "psnr", 2),
                     _cell(r, "ms_ssim", 4)]
            cells += [("n/a" if math.isnan(_num(r.get(c))) else f"{_num(r.get(c)):.4g}") for c in fd_cols]
            for c in ("undecodable_rate", "report_accuracy"):
                cells.append("n/a" if math.isnan(_num(r.get(c))) else f"{_num(r.get(c)):.3f}")
            cells += [str(r.get("verdict") or "n/a"),
                      "n/a" if math.isnan(_num(r.get("seconds_per_image")))
                      else f"{_num(r.get('seconds_per_image')):.3g}"]
            out.append("| " + " | ".join(cells) + " |")
        notes = sorted({f"{r['name']}: {r['note']}" for r in sub if r.get("note")})
        if notes:
            out += [""] + [f"- {n}" for n in notes]
        out.append("")
    out += ["## Paired comparisons", "",
            "Per-image differences a - b on the images both scored; mean, 95 % bootstrap interval "
            "(seeded), two-sided Wilcoxon signed-rank p-value, images where a is better / worse / "
            "equal.", ""]
    if comparisons:
        out += ["| task | a - b | metric | n | mean diff | 95 % CI | p (Wilcoxon) | a>b / a<b / = | note |",
                "|---|---|---|---|---|---|---|---|---|"]
        for c in comparisons:
            p = "n/a" if math.isnan(c["p_value"]) else f"{c['p_value']:.3g}"
            ci = "n/a" if math.isnan(c["ci_low"]) else f"[{c['ci_low']:+.4g}, {c['ci_high']:+.4g}]"
            md = "n/a" if math.isnan(c["mean_diff"]) else f"{c['mean_diff']:+.4g}"
            out.append(f"| {c['task']} | {c['a']} - {c['b']} | {c['metric']} | {c['n']} | {md} | {ci} "
                       f"| {p} | {c['wins']} / {c['losses']} / {c['ties']} | {c.get('note', '')} |")
    else:
        out.append("No pair of modes was scored on common images.")
    out += ["", "## Protocol", ""]
    out += [f"- **{k}**: {v}" for k, v in protocol.items()]
    out += ["", "FID (and any Frechet distance) on a few hundred images or fewer is strongly biased "
            "upwards and its bias depends on the sample count: compare FID values only at equal "
            "image counts, and prefer KID, whose estimator is unbiased, for small test sets.", ""]
    return "\n".join(out)


def write_markdown(rows: list[dict], comparisons: list[dict], protocol: dict, out_dir: Path) -> Path:
    path = Path(out_dir) / "leaderboard.md"
    _atomic_write(path, markdown(sorted(rows, key=row_key), comparisons, protocol))
    return path


# ---------------------------------------------------------------------------------------------
# plots


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_bars(rows: list[dict], out_dir: Path, metrics=("ssim_fov", "psnr_fov")) -> list[Path]:
    """One PNG per task: the mean of each metric per row, with its 95 % bootstrap interval."""
    plt = _plt()
    paths = []
    for task in sorted({r["task"] for r in rows}):
        sub = sorted([r for r in rows if r["task"] == task and not math.isnan(_num(r.get(metrics[0])))],
                     key=row_key)
        if not sub:
            continue
        fig, axes = plt.subplots(1, len(metrics), figsize=(4 + 1.2 * len(sub), 4), squeeze=False)
        for ax, m in zip(axes[0], metrics):
            means = [_num(r.get(m)) for r in sub]
            err = [[max(0.0, v - _num(r.get(f"{m}_lo"))) if not math.isnan(_num(r.get(f"{m}_lo"))) else 0
                    for v, r in zip(means, sub)],
                   [max(0.0, _num(r.get(f"{m}_hi")) - v) if not math.isnan(_num(r.get(f"{m}_hi"))) else 0
                    for v, r in zip(means, sub)]]
            ax.bar(range(len(sub)), means, yerr=err, capsize=4, color="tab:blue")
            ax.set_xticks(range(len(sub)))
            ax.set_xticklabels([str(r["name"]) for r in sub], rotation=30, ha="right", fontsize=7)
            ax.set_title(f"{task}: {m} (95 % CI)")
            finite = [v for v in means if not math.isnan(v)]
            if finite and m.startswith("ssim"):
                ax.set_ylim(max(0.0, min(finite) - 0.1), 1.0)
        fig.tight_layout()
        path = Path(out_dir) / f"bars_{task}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        paths.append(path)
    return paths


def plot_steps(rows: list[dict], out_dir: Path) -> list[Path]:
    """PSNR and SSIM (FOV) against training step, one line per run, where a run has > 1 checkpoint."""
    plt = _plt()
    paths = []
    for task in sorted({r["task"] for r in rows}):
        by_run: dict[str, list[dict]] = {}
        for r in rows:
            if r["task"] == task and r.get("kind") == "run" and not math.isnan(_num(r.get("step"))):
                by_run.setdefault(f"{r['run']}/{r.get('weights')}", []).append(r)
        by_run = {k: v for k, v in by_run.items() if len(v) > 1}
        if not by_run:
            continue
        fig, axes = plt.subplots(1, 2, figsize=(10, 4))
        for ax, m in zip(axes, ("psnr_fov", "ssim_fov")):
            for run, rs in sorted(by_run.items()):
                rs = sorted(rs, key=lambda r: _num(r["step"]))
                ax.plot([_num(r["step"]) for r in rs], [_num(r.get(m)) for r in rs], marker="o", label=run)
            ax.set_xlabel("step")
            ax.set_title(f"{task}: {m}")
        axes[0].legend(fontsize=7)
        fig.tight_layout()
        path = Path(out_dir) / f"steps_{task}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        paths.append(path)
    return paths


def plot_losses(run_dirs: Sequence[Path], out_dir: Path) -> Path | None:
    """Training loss curves (``loss/*`` keys of each run's logs/metrics.csv), one panel per run."""
    series = {}
    for run in sorted(run_dirs):
        rows = read_csv(Path(run) / "logs" / "metrics.csv")
        curves: dict[str, list[tuple[float, float]]] = {}
        for r in rows:
            if str(r.get("key", "")).startswith("loss/"):
                v, s = _num(r.get("value")), _num(r.get("step"))
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
            ax.plot([p[0] for p in pts], [p[1] for p in pts], label=key,
                     **({"marker": ".", "linestyle": ":"} if key in ("loss/ssim", "loss/pixel") else {}))
        ax.set_yscale("log")
        ax.set_title(run, fontsize=8)
        ax.set_xlabel("step")
        ax.legend(fontsize=7)
    fig.tight_layout()
    path = Path(out_dir) / "losses.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_reports(rows: list[dict], per_image: list[dict], out_dir, *, protocol: dict,
                  comparisons: list[dict], run_dirs: Sequence[Path] = (), plots: bool = True) -> dict:
    """Every report file into ``out_dir``; returns {kind: path or list of paths}."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    lb, pi = write_csvs(rows, per_image, out_dir)
    md = write_markdown(rows, comparisons, protocol, out_dir)
    out = {"leaderboard_csv": lb, "per_image_csv": pi, "markdown": md}
    if plots:
        out["bars"] = plot_bars(rows, out_dir)
        out["steps"] = plot_steps(rows, out_dir)
        out["losses"] = plot_losses(run_dirs, out_dir)
    return out
