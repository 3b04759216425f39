"""The clinicians' comparison page.

    python -m demo                                  # http://127.0.0.1:7860, runs/ and reports/
    python -m demo --runs runs --reports reports --port 7860 --host 127.0.0.1
    MEDQ_DEMO_AUTH=alice:secret python -m demo      # require a login
    MEDQ_DEMO_AUTH_FILE=logins.txt python -m demo   # one user:password per line
    python -m demo calibrate-ood                    # re-fit the report out-of-distribution check
    python -m demo bench-memory                     # server memory after 20 and 200 uploads

Shows, for an evaluated test image (from ``make eval``) or an uploaded fundus photograph, the
input, each mode's output and the target side by side, a before/after slider, a zoom applied to
every panel, SSIM error maps on a fixed 0..1 scale, per-image PSNR/SSIM, each model's text report
beside the test image's reference report (agree / disagree per finding, warnings on undecodable
tokens, collapsed verdicts and outputs that ignore their input) and, in a second tab, the
leaderboard from reports/. Research models trained on synthetic images: not for diagnosis.

Safe by default: binds 127.0.0.1, no share link, no analytics, works offline, serves only the
pictures it writes (nothing under --runs or --reports by path), uploads limited to 25 MB / 40 Mpx
and refused unless they look like a colour fundus photograph, login attempts throttled.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from pathlib import Path

from medq.cli import run_subcommand

SUBCOMMANDS = {
    "calibrate-ood": ("demo.calibrate_ood", "re-fit the report out-of-distribution check "
                      "(demo/report_ood.json)"),
    "bench-memory": ("demo.bench_memory", "server memory (RSS) after 20 and after 200 uploads"),
}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m demo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=Path, default=Path("runs"),
                   help="folder of training runs and their eval/ records (default: runs)")
    p.add_argument("--reports", type=Path, default=Path("reports"),
                   help="folder of leaderboard.csv, leaderboard.md and plots (default: reports)")
    p.add_argument("--real-reports", type=Path, default=Path("reports-drive"),
                   help="folder of a leaderboard of real photographs for the Results tab "
                        "(bench eval --data drive ... --out reports-drive; default: "
                        "reports-drive, when it exists)")
    p.add_argument("--ood-calibration", type=Path, default=None,
                   help="the report out-of-distribution calibration (default: "
                        "demo/report_ood.json, written by python -m demo calibrate-ood)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default: 127.0.0.1, this machine only; 0.0.0.0 exposes "
                        "the page to the network: set MEDQ_DEMO_AUTH first)")
    p.add_argument("--port", type=int, default=7860, help="TCP port (default: 7860)")
    return p.parse_args(argv)


def serve(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from demo import hygiene

    # Before Gradio and torch are imported (their default folders are fixed at import): the
    # page's private folder, removed at the stop, is the process's temp folder; torch's kernel
    # cache is kept in the user's cache folder instead.
    hygiene.own_temp_folder()
    hygiene.keep_compiler_cache_out_of_temp()
    from demo.app import build_app, launch  # after demo/__init__ switched analytics off
    from demo.handlers import Demo
    from demo.security import auth_from_env

    try:
        auth = auth_from_env()
    except ValueError as e:
        print(f"python -m demo: {e}", file=sys.stderr)
        return 2
    if args.host not in ("127.0.0.1", "localhost", "::1") and auth is None:
        logging.warning("binding %s without a login: anyone on the network can open the page "
                        "(set MEDQ_DEMO_AUTH=user:password)", args.host)
    from demo.handlers import OOD_CALIBRATION

    demo = Demo.from_folders(args.runs, args.reports,
                             ood_calibration=args.ood_calibration or OOD_CALIBRATION,
                             real_reports=args.real_reports if args.real_reports.is_dir()
                             else None)
    logging.info("modes found in %s: %s (working size %d px)", args.runs,
                 ", ".join(demo.modes) or "none", demo.size)
    if demo.ood_problem:
        logging.warning("reports will not be assessed: %s", demo.ood_problem)
    # SIGTERM (a service manager's stop) ends the server like Ctrl-C, so the uploads go with it.
    signal.signal(signal.SIGTERM, _interrupt)
    app = build_app(demo, login=auth is not None)
    try:
        launch(app, demo, host=args.host, port=args.port, auth=auth)
    finally:
        # Closed first (no new request or upload can arrive), then the folder goes; a request
        # still running cannot re-create it, and whatever it left is swept again at exit.
        app.close(verbose=False)
        hygiene.remove_temp_root()
    return 0


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def main(argv=None) -> int:
    return run_subcommand("python -m demo", __doc__, SUBCOMMANDS,
                          sys.argv[1:] if argv is None else argv, default=serve)


if __name__ == "__main__":
    sys.exit(main())
