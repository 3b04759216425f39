"""The study's plots (matplotlib, Agg), from ``bench.study_report.tables``:

- ``curves_<task>.png``: learning curves of each preset's one-step output over the checkpoints of
its
  check-length run (one panel per metric), from step 0 (the init checkpoint);
- ``stability_<task>.png``: the same for the long stability runs;
- ``pd_<task>.png``: the perception-distortion plane at the check length: PSNR over the eroded
  FOV (distortion, right is better) against KID on the Inception features (perception, down is
  better), each preset's one-step output and sample, the init checkpoint and the reference baseline;
- ``gradient_ratio.png``: SSIM's gradient over L2's at the VAE decoder's input over training,
  without and with the per-element clamp, beside the original's 200-2000x.
"""

from __future__ import annotations

import math
from pathlib import Path

from bench.study_plan import INIT
from bench.study_report import CURVE_METRICS

LABELS = {"ssim_fov": "SSIM fov", "psnr_eroded_fov": "PSNR eroded fov (dB)",
          "vessel_dice": "vessel Dice", "kid_inception": "KID (Inception)",
          "dr_kappa": "report DR kappa"}
ORIGINAL_RATIO = (200.0, 2000.0)
"""The original team's SSIM / L2 gradient ratio through the decoder (docs/BACKGROUND.md)."""


def _num(v) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    """Write the figure under a temp name, then rename it: a reader never sees half a PNG."""
    from medq.files import atomic_path

    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110)
    _pyplot().close(fig)
    return path


def _curve_figure(rows: list[dict], init: list[dict], task: str, title: str, path: Path,
                  stage: str) -> Path | None:
    plt = _pyplot()
    runs = sorted({(r["preset"], r["run"]) for r in rows if r["stage"] == stage
                   and r["task"] == task and r["output"] == "onestep"})
    if not runs:
        return None
    start = {r["output"]: r for r in init if r["task"] == task}
    fig, axes = plt.subplots(1, len(CURVE_METRICS), figsize=(4 * len(CURVE_METRICS), 3.4))
    for ax, metric in zip(axes, CURVE_METRICS):
        for preset, run in runs:
            pts = sorted((r for r in rows if r["run"] == run and r["task"] == task
                          and r["output"] == "onestep"), key=lambda r: _num(r["step"]))
            xs = [0] + [int(r["step"]) for r in pts]
            ys = [_num(start.get("onestep", {}).get(metric))] + [_num(r[metric]) for r in pts]
            ax.plot(xs, ys, marker=".", label=preset)
        ax.set_title(LABELS[metric], fontsize=9)
        ax.set_xlabel("step")
    axes[0].legend(fontsize=7)
    fig.suptitle(f"{title}: {task}, one-step output, validation subset", fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def _pd_figure(board: list[dict], task: str, path: Path) -> Path | None:
    plt = _pyplot()
    rows = [r for r in board if r.get("task") == task
            and not math.isnan(_num(r.get("kid_inception")))]
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for r in rows:
        name = str(r["name"])
        marker = "^" if "/sample" in name else ("s" if r.get("kind") == "baseline" else "o")
        ax.scatter(_num(r.get("psnr_eroded_fov")), _num(r.get("kid_inception")), marker=marker)
        ax.annotate(name, (_num(r.get("psnr_eroded_fov")), _num(r.get("kid_inception"))),
                    fontsize=6, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel("PSNR eroded fov (dB), higher = less distortion")
    ax.set_ylabel("KID (Inception), lower = more realistic")
    ax.set_title(f"perception-distortion, {task} (o one-step output, ^ sample, s baseline)",
                 fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


def _ratio_figure(rows: list[dict], path: Path) -> Path | None:
    plt = _pyplot()
    rows = [r for r in rows if r["where"] == "x0_hat" and r["stage"] in ("curve", INIT)]
    runs = sorted({(r["preset"], r["run"]) for r in rows if r["stage"] == "curve"})
    if not rows:
        return None
    init = [r for r in rows if r["run"] == INIT]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.axhspan(*ORIGINAL_RATIO, color="0.85", label="original, through the decoder")
    for preset, run in runs:
        pts = init + sorted((r for r in rows if r["run"] == run), key=lambda r: _num(r["step"]))
        line, = ax.plot([_num(r["step"]) for r in pts], [_num(r["ssim_over_l2"]) for r in pts],
                        marker=".", label=preset)
        ax.plot([_num(r["step"]) for r in pts], [_num(r["ssim_clamped_over_l2"]) for r in pts],
                linestyle="--", color=line.get_color())
    if not runs and init:
        ax.scatter([0], [_num(init[0]["ssim_over_l2"])], label="init")
    ax.set_yscale("log")
    ax.set_xlabel("step (at each checkpoint's weights)")
    ax.set_ylabel("|grad SSIM| / |grad L2| at the decoder input")
    ax.set_title("SSIM vs L2 gradient (weight 1, grad scale 1); dashed: per-element clamp",
                 fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, path)


def write_plots(out: Path, tables: dict, state: dict) -> dict[str, Path]:
    """Every plot that has data; {name: path}."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    curves = tables["curves"]
    init = [r for r in curves if r["run"] == INIT]
    written = {}
    for task in sorted({r["task"] for r in curves}):
        for stage, title in (("curve", "learning curves"), ("stability", "stability runs")):
            name = "curves" if stage == "curve" else "stability"
            p = _curve_figure(curves, init, task, title, out / f"{name}_{task}.png", stage)
            if p:
                written[f"{name}_{task}"] = p
        p = _pd_figure(tables["check_length"], task, out / f"pd_{task}.png")
        if p:
            written[f"pd_{task}"] = p
    p = _ratio_figure(tables["gradient_ratios"], out / "gradient_ratio.png")
    if p:
        written["gradient_ratio"] = p
    return written
