"""Benchmarks and leaderboards.

    python -m bench eval                      # make eval: infer + score every run, write reports/
    python -m bench score --pred DIR --target DIR [--mask DIR] [--name NAME] [--task sr4]
    python -m bench score-text --jsonl FILE (--vocab-size N | --vocab FILE)
    python -m bench perf ssim                 # our SSIM kernel against the reference libraries
    python -m bench perf data                 # synthetic fundus images per second
    python -m bench perf train                # step time, FLOPs, utilisation per preset
    python -m bench perf infer                # inference images per second and utilisation
    python -m bench perf main                 # stage times of the last train-v3 + eval job

Each subcommand lives in its own module exposing ``add_arguments(parser)`` and ``main(args)``.
"""

import argparse
import importlib
import inspect
import sys

SUBCOMMANDS = {
    "eval": ("bench.eval", "score every run and the baselines; write reports/"),
    "score": ("bench.score", "score a folder of external predictions into the leaderboard"),
    "score-text": ("bench.score_text", "undecodable-token statistics of external generations"),
    "perf": ("bench.perf", "performance tables of the project's own kernels"),
}


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    # Only the chosen subcommand's module is imported: `bench score` must not pay for (or break
    # on) the imports of `bench eval`. The others get a stub parser so --help still lists them.
    chosen = next((a for a in argv if not a.startswith("-")), None)
    module = None
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        if name != chosen:
            sub.add_parser(name, help=help_text)
            continue
        module = importlib.import_module(module_name)
        p = sub.add_parser(name, help=help_text, description=module.__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        if "argv" in inspect.signature(module.add_arguments).parameters:
            module.add_arguments(p, argv=argv)
        else:
            module.add_arguments(p)
    args = parser.parse_args(argv)
    return module.main(args) or 0


if __name__ == "__main__":
    sys.exit(main())
