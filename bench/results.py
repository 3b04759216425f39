"""``python -m bench results``: docs/RESULTS.md generated from the reports committed under
``results/``, so that none of its numbers can drift from the report that measured it.

    python -m bench results                  # (re)write docs/RESULTS.md
    python -m bench results --check          # exit 1 naming the first difference when out of date
    python -m bench results --results DIR --out FILE

One folder per report, ``results/<name>/``, holding what ``bench eval --out results/<name>``
writes plus a small ``meta.json``, or a table report: the ``table.md`` and ``meta.json`` that
``python -m bench record <name> -- <command>`` writes (what any table-printing command measured:
a benchmark, a probe, a sweep), rendered verbatim. A leaderboard report holds:

- ``leaderboard.csv`` (required): the leaderboard rows. Each task gets a table: the task's
  reference (``medq.scoring.REFERENCE``: bicubic for SR, identity for enhance), the floor
  (``constant``), then every other row, each metric as ``mean [95 % interval]`` (rows averaged
  over training seeds: ``mean +- seed sd``).
- ``comparisons.csv`` (optional): the paired differences a - b (``medq.scoring.comparisons``),
  one table.
- ``seed_comparisons.csv`` (optional): the differences across training seeds
  (``medq.scoring.seed_summary``), one table, each interval named (images x seeds, or the seed
  spread on the fixed test set).
- ``meta.json`` (required): ``{"title", "command", "measured_on", "date"}``: the command that
  produced the report, the machine line with its calibration (``bench/perf_machine.py``) and the
  date, printed once under the report's heading; optional ``"description"``, ``"columns"`` (the
  leaderboard columns to show, default ``DEFAULT_COLUMNS`` present), ``"tasks"`` (which tasks, in
  order), ``"comparison_metrics"`` (filter the two comparison tables).

Reports are rendered in folder-name order. Bad input (a missing file or key, a column the
leaderboard lacks) is one line naming the file and what was expected; docs/RESULTS.md is written
atomically and only when every report reads.
"""

from __future__ import annotations

import csv
import json
import math
import sys
from dataclasses import fields
from pathlib import Path

from medq.files import write_text_atomic
from medq.leaderboard import number
from medq.scoring import FLOOR, REFERENCE
from medq.stats import PairedResult, SeedResult

DEFAULT_RESULTS = Path("results")
DEFAULT_OUT = Path("docs") / "RESULTS.md"
TABLE = "table.md"
"""A table report's body: what the recording command printed (``bench record``)."""
META_KEYS = ("title", "command", "measured_on", "date")
# (label, digits) per leaderboard column; the order is the tables' column order.
COLUMN_FORMATS = {
    "ssim_fov": ("SSIM fov", ".4f"),
    "psnr_eroded_fov": ("PSNR eroded fov (dB)", ".2f"),
    "psnr_fov": ("PSNR fov (dB)", ".2f"),
    "ms_ssim_fov": ("MS-SSIM fov", ".4f"),
    "vessel_dice": ("vessel Dice", ".3f"),
    "lr_psnr": ("LR-PSNR (dB)", ".2f"),
    "kid_inception": ("KID (Inception)", ".4g"),
    "fid_inception": ("FID (Inception)", ".2f"),
    "kid_randresnet18": ("KID (random ResNet-18)", ".4g"),
    "fd_randresnet18": ("FD (random ResNet-18)", ".3g"),
    "dr_kappa": ("DR kappa", ".3f"),
    "ssim": ("SSIM", ".4f"),
    "psnr": ("PSNR (dB)", ".2f"),
    "ms_ssim": ("MS-SSIM", ".4f"),
}
DEFAULT_COLUMNS = ("ssim_fov", "psnr_eroded_fov", "psnr_fov", "vessel_dice", "lr_psnr",
                   "kid_inception", "fid_inception", "kid_randresnet18", "dr_kappa")
COMPARISON_COLUMNS = ["task", "a", "b", "metric", *(f.name for f in fields(PairedResult))]
SEED_COMPARISON_COLUMNS = ["task", "a", "b", "metric", *(f.name for f in fields(SeedResult))]


class ResultsError(ValueError):
    """A report folder that cannot be rendered (one line naming the file)."""


def add_arguments(p) -> None:
    p.add_argument("--results", type=Path, default=DEFAULT_RESULTS,
                   help="folder of committed reports, one sub-folder each (default results/)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT,
                   help="the generated page (default docs/RESULTS.md)")
    p.add_argument("--check", action="store_true",
                   help="do not write: exit 1 naming the first difference when --out is stale")


# ---------------------------------------------------------------------------------------------
# reading


def read_csv_rows(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def read_meta(folder: Path) -> dict:
    path = folder / "meta.json"
    if not path.is_file():
        raise ResultsError(f"{path}: missing (expected {{{', '.join(META_KEYS)}}})")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ResultsError(f"{path}: not JSON ({e.msg} at line {e.lineno})") from None
    if not isinstance(meta, dict):
        raise ResultsError(f"{path}: expected a JSON object with {', '.join(META_KEYS)}")
    for key in META_KEYS:
        if not isinstance(meta.get(key), str) or not meta[key].strip():
            raise ResultsError(f"{path}: key {key!r} missing or empty (a string is expected)")
    for key in ("columns", "tasks", "comparison_metrics"):
        value = meta.get(key)
        if value is not None and not (isinstance(value, list)
                                      and all(isinstance(v, str) for v in value)):
            raise ResultsError(f"{path}: key {key!r} must be a list of strings, got {value!r}")
    return meta


def read_report(folder: Path) -> dict:
    """One report folder -> {"name", "meta", "rows", "comparisons", "seed_comparisons"}, or for a
    table report (``table.md``, written by ``python -m bench record``) {"name", "meta",
    "table"}."""
    meta = read_meta(folder)
    if (folder / TABLE).is_file():
        return {"name": folder.name, "meta": meta,
                "table": (folder / TABLE).read_text(encoding="utf-8").strip("\n")}
    board = folder / "leaderboard.csv"
    if not board.is_file():
        raise ResultsError(f"{board}: missing (the leaderboard.csv bench eval writes)")
    rows = read_csv_rows(board)
    for key in ("name", "task"):
        if rows and key not in rows[0]:
            raise ResultsError(f"{board}: no {key!r} column (not a bench eval leaderboard)")
    report = {"name": folder.name, "meta": meta, "rows": rows}
    for kind, columns in (("comparisons", COMPARISON_COLUMNS),
                          ("seed_comparisons", SEED_COMPARISON_COLUMNS)):
        path = folder / f"{kind}.csv"
        found = read_csv_rows(path) if path.is_file() else []
        need = [c for c in ("task", "a", "b", "metric", "mean_diff", "ci_low", "ci_high")
                if found and c not in found[0]]
        if need:
            raise ResultsError(f"{path}: no column {need[0]!r} (expected {', '.join(columns)})")
        report[kind] = found
    missing = [c for c in meta.get("columns") or [] if not any(c in r for r in rows[:1])]
    if missing:
        raise ResultsError(f"{folder / 'meta.json'}: column {missing[0]!r} is not in "
                           f"{board.name}")
    return report


def read_reports(results: Path) -> list[dict]:
    if not results.is_dir():
        raise ResultsError(f"{results}: no such folder (one sub-folder per committed report)")
    return [read_report(d) for d in sorted(results.iterdir()) if d.is_dir()
            and not d.name.startswith(".")]


# ---------------------------------------------------------------------------------------------
# rendering


def _fmt(v, spec: str) -> str:
    x = number(v)
    return "n/a" if math.isnan(x) else format(x, spec)


def metric_cell(row: dict, column: str) -> str:
    """``mean [low, high]``; rows averaged over seeds: ``mean +- seed sd (n seeds)``."""
    spec = COLUMN_FORMATS.get(column, (column, ".4g"))[1]
    value = _fmt(row.get(column), spec)
    if value == "n/a":
        return value
    if str(row.get("kind")) == "seeds":
        sd = _fmt(row.get(f"{column}_seed_sd"), spec)
        seeds = _fmt(row.get("n_seeds"), ".0f")
        return value if sd == "n/a" else f"{value} +- {sd} ({seeds} seeds)"
    lo, hi = _fmt(row.get(f"{column}_lo"), spec), _fmt(row.get(f"{column}_hi"), spec)
    return value if "n/a" in (lo, hi) else f"{value} [{lo}, {hi}]"


def _role(row: dict, task: str) -> tuple[int, str]:
    name = str(row.get("name"))
    if name == REFERENCE.get(task):
        return 0, "reference"
    if name == FLOOR:
        return 1, "floor"
    return 2, str(row.get("kind") or "mode")


def markdown_table(head: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head),
            *("| " + " | ".join(r) + " |" for r in rows)]


def task_table(rows: list[dict], task: str, columns: list[str]) -> list[str]:
    """The task's table: reference, floor, then every other row (by name), ok rows only; the
    others are listed under it with their status."""
    sub = [r for r in rows if str(r.get("task")) == task]
    ok = sorted((r for r in sub if str(r.get("status", "")).startswith("ok")),
                key=lambda r: (_role(r, task)[0], str(r.get("name"))))
    head = ["mode", "role", "n", *(COLUMN_FORMATS.get(c, (c,))[0] for c in columns)]
    cells = [[str(r.get("name")), _role(r, task)[1], _fmt(r.get("n_images"), ".0f"),
              *(metric_cell(r, c) for c in columns)] for r in ok]
    skipped = [f"- not scored: {r.get('name')} ({r.get('status')})" for r in sub if r not in ok]
    return [f"### {task}", "", *markdown_table(head, cells), ""] + (
        skipped + [""] if skipped else [])


def _interval(c: dict, low: str, high: str) -> str:
    lo, hi = _fmt(c.get(low), "+.4g"), _fmt(c.get(high), "+.4g")
    return "n/a" if "n/a" in (lo, hi) else f"[{lo}, {hi}]"


def _pair_cells(c: dict) -> list[str]:
    return [str(c["task"]), f"{c['a']} - {c['b']}", str(c["metric"])]


def comparison_table(comps: list[dict]) -> list[str]:
    if not comps:
        return []
    head = ["task", "a - b", "metric", "n", "mean diff", "95 % CI", "p", "p (Holm)"]
    cells = [[*_pair_cells(c), str(c.get("n", "")), _fmt(c.get("mean_diff"), "+.4g"),
              _interval(c, "ci_low", "ci_high"), _fmt(c.get("p_value"), ".3g"),
              _fmt(c.get("p_holm"), ".3g")] for c in comps]
    return ["Paired differences a - b on the images both scored: mean, 95 % interval (per-image "
            "metrics: bootstrap over images; KID: jackknife), p, and p Holm-adjusted over every "
            "test of the report.", "", *markdown_table(head, cells), ""]


def seed_table(comps: list[dict]) -> list[str]:
    if not comps:
        return []
    head = ["task", "a - b", "metric", "seeds", "images", "mean diff", "95 % CI", "interval",
            "seed spread (fixed test set)"]
    cells = [[*_pair_cells(c), str(c.get("n_seeds", "")), str(c.get("n_images") or "n/a"),
              _fmt(c.get("mean_diff"), "+.4g"), _interval(c, "ci_low", "ci_high"),
              str(c.get("interval") or "n/a"), _interval(c, "spread_low", "spread_high")]
             for c in comps]
    return ["Across training seeds, a - b: mean over seeds and images, the 95 % interval that "
            "column names (images x seeds: a new draw of both; seed spread: seeds only, on this "
            "fixed test set), and the seed spread beside it.", "", *markdown_table(head, cells),
            ""]


def table_section(report: dict) -> list[str]:
    """A table report: its heading, command and machine, then what the command printed."""
    meta = report["meta"]
    out = [f"## {meta['title']}", ""]
    if meta.get("description"):
        out += [str(meta["description"]).strip(), ""]
    return out + [f"Command: `{meta['command']}`. Measured on: {meta['measured_on']}, "
                  f"{meta['date']}. Report: `results/{report['name']}/`.", "", "```",
                  report["table"], "```", ""]


def report_section(report: dict) -> list[str]:
    if "table" in report:
        return table_section(report)
    meta, rows = report["meta"], report["rows"]
    present = {c for r in rows for c, v in r.items() if str(v).strip() not in ("", "nan")}
    columns = meta.get("columns") or [c for c in DEFAULT_COLUMNS if c in present]
    tasks = meta.get("tasks") or sorted({str(r.get("task")) for r in rows})
    keep = set(meta.get("comparison_metrics") or [])
    out = [f"## {meta['title']}", ""]
    if meta.get("description"):
        out += [str(meta["description"]).strip(), ""]
    out += [f"Command: `{meta['command']}`. Measured on: {meta['measured_on']}, {meta['date']}. "
            f"Report: `results/{report['name']}/`.", ""]
    for task in tasks:
        out += task_table(rows, task, columns)
    for kind, render in (("comparisons", comparison_table), ("seed_comparisons", seed_table)):
        comps = [c for c in report[kind] if str(c.get("task")) in tasks
                 and (not keep or str(c.get("metric")) in keep)]
        out += render(comps)
    return out


def render(reports: list[dict]) -> str:
    out = ["# Results", "",
           "Generated by `python -m bench results` from the reports committed under `results/` "
           "(each section names its report folder, the command that produced it and the machine "
           "it was measured on); `python -m bench results --check` fails when this page and the "
           "reports disagree. Do not edit by hand: change the report and regenerate.", ""]
    if not reports:
        out += ["No report is committed yet.", ""]
    for report in reports:
        out += report_section(report)
    return "\n".join(out).rstrip("\n") + "\n"


def first_difference(expected: str, found: str) -> str:
    """'line N: expected ..., found ...' for the first line where the two texts differ."""
    a, b = expected.splitlines(), found.splitlines()
    for i in range(max(len(a), len(b))):
        x = a[i] if i < len(a) else "<end of file>"
        y = b[i] if i < len(b) else "<end of file>"
        if x != y:
            return f"line {i + 1}: expected {x[:120]!r}, found {y[:120]!r}"
    return "trailing whitespace or newlines differ"


def write_comparison_csvs(out_dir: Path, comparisons: list[dict],
                          seed_comparisons: list[dict]) -> list[Path]:
    """``comparisons.csv`` and ``seed_comparisons.csv`` beside a leaderboard (what this command
    reads; ``bench eval`` writes them with its reports): one row per comparison, the fields of
    ``medq.stats.PairedResult`` / ``SeedResult`` after task, a, b, metric."""
    from bench.report import csv_text

    paths = []
    for name, rows, columns in (("comparisons.csv", comparisons, COMPARISON_COLUMNS),
                                ("seed_comparisons.csv", seed_comparisons,
                                 SEED_COMPARISON_COLUMNS)):
        paths.append(write_text_atomic(Path(out_dir) / name, csv_text(list(rows), columns)))
    return paths


def main(args) -> int:
    try:
        reports = read_reports(args.results)
        text = render(reports)
    except (ResultsError, OSError, csv.Error) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.check:
        current = args.out.read_text(encoding="utf-8") if args.out.is_file() else ""
        if current != text:
            where = ("missing" if not args.out.is_file()
                     else first_difference(text, current))
            print(f"{args.out} is out of date with {args.results}/ ({where}); run python -m "
                  f"bench results", file=sys.stderr)
            return 1
        print(f"{args.out} is up to date with {args.results}/")
        return 0
    write_text_atomic(args.out, text)
    print(f"wrote {args.out} from {len(reports)} report(s) in {args.results}/")
    return 0
