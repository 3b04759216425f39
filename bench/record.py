"""``python -m bench record``: run a command that prints a table and keep what it printed as a
report of ``results/``, with the command, the machine's calibration and the date, so that
docs/RESULTS.md (``python -m bench results``) shows a measurement only as its command wrote it.

    python -m bench record perf-ssim --title "SSIM loss speed" -- python -m bench perf ssim
    python -m bench record probe-pixel --title "How the pixel weight was chosen" -- \\
        python -m train probe --preset pixel
    python -m bench results                     # regenerate docs/RESULTS.md

The command runs with this project's Python (``python`` is replaced by ``sys.executable``); its
standard output becomes ``results/<name>/table.md`` and ``meta.json`` records the command line,
the machine line (``bench.perf_machine``: CPU, threads, matmul and copy calibration, load) measured
just before it, and the date. Nothing is written unless the command exits 0; the folder is
replaced whole (temporary folder, then rename).
"""

from __future__ import annotations

import datetime
import json
import shlex
import subprocess
import sys
from pathlib import Path

from bench.results import DEFAULT_RESULTS, TABLE
from medq.files import atomic_dir


def add_arguments(p) -> None:
    p.add_argument("name", help="the report's folder name under --results (e.g. perf-ssim)")
    p.add_argument("--title", required=True, help="the report's heading in docs/RESULTS.md")
    p.add_argument("--description", default="", help="a sentence under the heading")
    p.add_argument("--results", type=Path, default=DEFAULT_RESULTS,
                   help="folder of committed reports (default results/)")
    p.add_argument("command", nargs="+", metavar="-- COMMAND",
                   help="the command whose standard output is the table (after --)")


def main(args) -> int:
    from bench.perf_machine import machine_line, measure_machine

    if "/" in args.name or args.name.startswith("."):
        print(f"error: report name {args.name!r}: one folder name expected", file=sys.stderr)
        return 2
    command = list(args.command)
    shown = " ".join(shlex.quote(c) for c in command)
    if command[0] in ("python", "python3"):
        command[0] = sys.executable
    measured_on = machine_line(measure_machine())
    date = datetime.date.today().isoformat()
    print(f"recording {args.name}: {shown}", file=sys.stderr)
    try:
        done = subprocess.run(command, stdout=subprocess.PIPE, text=True)
    except OSError as e:
        print(f"error: cannot run {shown}: {e}", file=sys.stderr)
        return 2
    sys.stdout.write(done.stdout)
    if done.returncode != 0:
        print(f"error: {shown} exited {done.returncode}; nothing recorded", file=sys.stderr)
        return 1
    meta = {"title": args.title, "command": shown, "measured_on": measured_on, "date": date}
    if args.description:
        meta["description"] = args.description
    with atomic_dir(args.results / args.name) as tmp:
        (tmp / TABLE).write_text(done.stdout, encoding="utf-8")
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
    print(f"recorded results/{args.name}/ ({len(done.stdout.splitlines())} lines); run python -m "
          f"bench results", file=sys.stderr)
    return 0
