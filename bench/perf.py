"""``python -m bench perf WHAT``: performance tables of the project's own kernels (never timed tests).

Each target is a module ``bench.perf_<what>`` exposing ``add_arguments(parser)`` and ``main(args)``.
"""

import argparse
import importlib
import sys

TARGETS = {
    "ssim": "forward+backward time and peak memory of our SSIM loss against the reference libraries",
    "data": "synthetic fundus images per second",
    "train": "step time, model FLOPs and utilisation per preset; peak memory per decode chunk",
    "infer": "inference harness images per second and utilisation at the default config",
    "main": "stage times of the last make train-v3 && make eval, read from its files",
}


def add_arguments(parser: argparse.ArgumentParser, argv: list[str] | None = None) -> None:
    sub = parser.add_subparsers(dest="target", required=True)
    argv = list(sys.argv[1:] if argv is None else argv)
    # Import only the chosen target (see bench/__main__.py); the others are listed in --help.
    chosen = next((a for a in argv[argv.index("perf") + 1:] if not a.startswith("-")), None) \
        if "perf" in argv else None
    for name, help_text in TARGETS.items():
        if name != chosen:
            sub.add_parser(name, help=help_text)
            continue
        module = importlib.import_module(f"bench.perf_{name}")
        module.add_arguments(sub.add_parser(name, help=help_text, description=module.__doc__,
                                            formatter_class=argparse.RawDescriptionHelpFormatter))


def main(args) -> int:
    return importlib.import_module(f"bench.perf_{args.target}").main(args) or 0
