"""Benchmarks and leaderboards.

    python -m bench eval                      # make eval: infer + score every run, write reports/
    python -m bench score --pred DIR --target DIR [--mask DIR] [--name NAME] [--task sr4]
    python -m bench score-text --jsonl FILE (--vocab-size N | --vocab FILE)
    python -m bench perf ssim                 # our SSIM kernel against the reference libraries
    python -m bench perf data                 # synthetic fundus images per second
    python -m bench perf train                # step time, FLOPs, utilisation per preset
    python -m bench perf infer                # inference images per second and utilisation
    python -m bench perf main                 # stage times of the last train-v3 + eval job
    python -m bench onestep-t                 # the one-step output at several t (onestep_t)
    python -m bench sample-temperature        # the sample at several noise temperatures
    python -m bench results [--check]         # docs/RESULTS.md from the reports in results/
    python -m bench record NAME --title T -- COMMAND   # a printed table kept as a report
    python -m bench study [--plan | --quick]  # SSIM vs pixel at length (issue 28), resumable

Each subcommand lives in its own module exposing ``add_arguments(parser)`` and ``main(args)``,
imported only when chosen (``medq.cli.run_subcommand``).
"""

import sys

from medq.cli import run_subcommand

SUBCOMMANDS = {
    "eval": ("bench.eval", "score every run and the baselines; write reports/"),
    "score": ("bench.score", "score a folder of external predictions into the leaderboard"),
    "score-text": ("bench.score_text", "undecodable-token statistics of external generations"),
    "perf": ("bench.perf", "performance tables of the project's own kernels"),
    "onestep-t": ("bench.onestep_t",
                  "the one-step output at several t: how sample.onestep_t was chosen"),
    "sample-temperature": ("bench.sample_temperature",
                           "the sample at several noise temperatures: how "
                           "sample.noise_temperature was chosen"),
    "results": ("bench.results", "docs/RESULTS.md from the reports committed under results/"),
    "record": ("bench.record", "keep what a table-printing command printed as a results/ report"),
    "study": ("bench.study", "SSIM vs pixel at length: curves, seeds, stability (make study)"),
}


def main(argv=None) -> int:
    return run_subcommand("python -m bench", __doc__, SUBCOMMANDS,
                          sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    sys.exit(main())
