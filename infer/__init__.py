"""Inference harness: any ``medq.protocol.ImageTextModel`` over a dataset -> PNGs, records, verdict.

    harness.py   run_harness, edit_one, derive_seed (the importable API; summarize re-exported)
    summary.py   summarize: per-checkpoint text statistics, image sanity, verdict
    text.py      report generation with undecodable-id detection; greedy / sampled decoding
    images.py    PNG I/O, image sanity statistics, the any-size preprocessing policy
    records.py   records.jsonl: atomic writes, per-rank parts, merge, what counts as finished
    load.py      --run (our checkpoints), --model module:Class, --baseline
    __main__.py  the command line (``python -m infer --help``)
"""
