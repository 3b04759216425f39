"""``python -m infer``: the command line of the inference harness (``python -m infer --help``).

The harness itself (running a model over a dataset, records.jsonl, loading models by name) is the
library ``medq.harness``, which ``bench`` and ``demo`` call too; the verdict and the image sanity
statistics it records are ``medq.verdict``'s. This package only parses arguments, shows progress
and names the output files.
"""
