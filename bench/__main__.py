"""Benchmarks and leaderboards.

    python -m bench eval                      # make eval: infer + score every run, write reports/
    python -m bench score --pred DIR --target DIR [--mask DIR] [--name NAME] [--task sr4]
    python -m bench score-text --jsonl FILE (--vocab-size N | --vocab FILE)
    python -m bench perf ssim                 # our SSIM kernel against the reference libraries
    python -m bench perf data                 # synthetic fundus images per second
    python -m bench perf train                # step time per preset, memory per decode chunk

Each subcommand lives in its own module exposing ``add_arguments(parser)`` and ``main(args)``.
"""

import argparse
import importlib
import sys

SUBCOMMANDS = {
    "eval": ("bench.eval", "score every run and the baselines; write reports/"),
    "score": ("bench.score", "score a folder of external predictions into the leaderboard"),
    "score-text": ("bench.score_text", "undecodable-token statistics of external generations"),
    "perf": ("bench.perf", "performance tables of the project's own kernels"),
}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    modules = {}
    for name, (module, help_text) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_text)
        modules[name] = importlib.import_module(module)
        modules[name].add_arguments(p)
    args = parser.parse_args(argv)
    return modules[args.command].main(args) or 0


if __name__ == "__main__":
    sys.exit(main())
