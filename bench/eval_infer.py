"""``bench eval``, step 3: the test items, and inference into output directories keyed by the data.

    items = EvalItems(split="test", tasks=["sr4"], cap=None)
    items.items(cfg)                              # the data source, once, before any model
    out_dir = claim_outputs(target.out_dir(model), cfg, split)
    infer(model, target, meta, items.items(cfg), out_dir, args)
    tidy_outputs(runs_dir)                        # retention: no directory without outputs

The test items are built once per (data config, image size) and shared by every model. A data
source that cannot be built fails once: the first failure is remembered and every later request
raises ``DataSourceError`` at once (no rebuild, no traceback per model). Outputs go to the
target's default directory keyed by the data (``medq.harness.records.keyed_eval_dir``: ``eval``
for the embedded test split, ``eval-<source>-<split>-<sha8>`` for any other), claimed by rank 0.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import asdict
from pathlib import Path

from medq.dist import barrier, current
from medq.harness.records import DATA_FILE, RECORDS, remove_unfilled

log = logging.getLogger("bench.eval")


class DataSourceError(ValueError):
    """The data of this evaluation cannot be built (the message names the file and why)."""


def image_size(cfg) -> int:
    """The working size of the evaluation's images for ``cfg``."""
    return cfg.data.image_size


def image_size_override(size: int) -> str:
    """The ``--set`` that gives a config the working size ``size`` (``image_size``)."""
    return f"data.image_size={size}"


class EvalItems:
    """Test-split (or ``--split all``) items per (data config, image size), at most ``cap`` per
    task, built once."""

    def __init__(self, split: str, tasks: list[str], cap: int | None):
        self.split, self.tasks, self.cap = split, list(tasks), cap
        self.cache: dict[str, list[dict]] = {}
        self.failures: dict[str, str] = {}  # data key -> why building the items failed

    def _key(self, cfg) -> str:
        return json.dumps([asdict(cfg.data), image_size(cfg)], sort_keys=True)

    def items(self, cfg) -> list[dict]:
        """The items of ``cfg``'s data; DataSourceError (said once) when they cannot be built."""
        key = self._key(cfg)
        if key in self.failures:
            raise DataSourceError(self.failures[key])
        if key not in self.cache:
            from medq.data import build_dataset

            try:
                ds = build_dataset(cfg.data, self.split)
            except Exception as e:  # noqa: BLE001 - the data failed, not one model: said once
                self.failures[key] = f"{type(e).__name__}: {e}"
                raise DataSourceError(self.failures[key]) from None
            counts: dict[str, int] = {}
            kept = []
            for i in range(len(ds)):
                it = ds[i]
                if it["task"] in self.tasks and (self.cap is None
                                                 or counts.get(it["task"], 0) < self.cap):
                    counts[it["task"]] = counts.get(it["task"], 0) + 1
                    kept.append(it)
            self.cache[key] = kept
        return self.cache[key]


def claim_outputs(out_dir: Path, cfg, split: str) -> Path:
    """``out_dir`` keyed by the data of this evaluation, with outputs of other data cleared from
    it (rank 0; the other ranks wait)."""
    from medq.harness.records import claim_eval_dir, data_key, keyed_eval_dir

    key = data_key(cfg.data, image_size(cfg), split)
    out_dir = keyed_eval_dir(out_dir, key)
    group = current()
    if group.is_main:
        claim_eval_dir(out_dir, key, replace_stale=True)
    barrier(group)
    return out_dir


def infer(model, target, meta: dict, items: list[dict], out_dir: Path, args) -> None:
    """Run the harness for ``model`` on ``items`` into ``out_dir`` (``claim_outputs``); finished
    outputs there are reused."""
    from medq.harness import run_harness

    print(f"[eval] {meta['name']}: inference on {len(items)} test samples -> {out_dir}", flush=True)
    run_harness(model, items, out_dir, tasks=target.tasks, seed=target.cfg.sample.seed,
                batch_size=args.batch_size,
                text=(not args.no_text) if target.text is None else target.text,
                progress=not args.no_progress,
                meta={k: meta[k] for k in ("run", "checkpoint", "weights")})


def remove_if_unfilled(out_dir: Path, runs_dir: Path) -> None:
    """After a failure: ``out_dir`` goes when it holds no output (rank 0)."""
    if current().is_main and remove_unfilled(out_dir, stop=Path(runs_dir)):
        log.info("%s: removed (no output written)", out_dir)


def _old_init_layout(d: Path) -> bool:
    """A directory of the base model's outputs from before they were laid out like a run's:
    ``_init/<sha8>/eval[-<source>...]`` holding the task folders itself, or ``eval-onestep``,
    which was never keyed by the data."""
    return d.name == "eval-onestep" or (d / DATA_FILE).is_file() or any(d.glob(f"*/{RECORDS}"))


def tidy_outputs(runs_dir: Path) -> list[Path]:
    """Rank 0, before an evaluation: remove evaluation directories that hold no output (left by a
    failed or killed evaluation) and the base model's outputs of the old layout (redone keyed
    by the data). Returns what was removed; what cannot be removed is logged and left."""
    runs_dir = Path(runs_dir)
    removed = []
    try:
        for pattern in ("*/eval*/data.json", "*/eval*/*/data.json", "_*/*/eval*/data.json",
                        "_*/*/eval*/*/data.json"):
            for path in sorted(runs_dir.glob(pattern)):
                if remove_unfilled(path.parent, stop=runs_dir):
                    log.info("%s: removed (no output in it)", path.parent)
                    removed.append(path.parent)
        for d in sorted(runs_dir.glob("_init/*/eval*")):
            if d.is_dir() and _old_init_layout(d):
                shutil.rmtree(d)
                log.info("%s: removed (the old layout; redone keyed by the data)", d)
                removed.append(d)
    except OSError as e:
        log.warning("%s: could not tidy the output directories (%s); left as they are",
                    runs_dir, e)
    return removed
