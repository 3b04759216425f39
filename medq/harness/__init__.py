"""The inference harness: any ``medq.protocol.ImageTextModel`` over a dataset -> PNGs, records.

Shared by three stages: ``python -m infer`` (the command line), ``bench eval`` (which scores what
it writes) and the demo (which runs it on one test image or upload), so it lives in the library.

    run.py       run_harness, edit_one, derive_seed, data_fingerprint (re-exported here)
    summary.py   summarize: per-checkpoint text statistics and the verdict (``medq.verdict``)
    text.py      report generation with undecodable-id detection; greedy / sampled decoding
    images.py    PNG I/O and the any-size preprocessing policy (``prepare``)
    records.py   the records.jsonl schema (``FIELDS``): atomic writes, per-rank parts, merge,
                 what counts as finished; which data an evaluation directory holds
    load.py      models by name: our checkpoints (``load_run``), ``module:Class``, baselines
    split_scores.py  split_fov_scores: in-memory PSNR/SSIM-fov on the first images of a split
"""

from medq.harness.run import (
                              data_fingerprint,
                              default_instruction,
                              derive_seed,
                              edit_one,
                              model_settings,
                              run_harness,
)
from medq.harness.summary import summarize

__all__ = ["data_fingerprint", "default_instruction", "derive_seed", "edit_one", "model_settings",
           "run_harness", "summarize"]
