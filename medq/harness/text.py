"""Report generation with undecodable-id detection, greedy and sampled.

    results = generate_reports(model, images, prompt, seeds)    # one DecodeResult per image
    with decoding(model, temperature=1.0, top_p=0.9): ...        # sampled reports

Ids come from ``model.generate_report`` and are decoded with ``medq.textcheck.safe_decode``: an
id the tokenizer cannot decode (the original ``TypeError: sequence item 600: expected str
instance, NoneType found``) is counted with its position, never joined into a string.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Callable

import torch

from medq.protocol import DecodeResult
from medq.textcheck import safe_decode

log = logging.getLogger(__name__)

# Sampled reports use the model's own distribution unless cfg.sample.temperature says otherwise:
# temperature 1 shows the padding rows of an untrained head at their true probability.
DEFAULT_SAMPLED_TEMPERATURE = 1.0


class InferError(RuntimeError):
    """Bad input or a model that breaks the protocol; the message says which and what is
    expected."""


def _sampling_holder(model):
    """The object holding ``temperature`` / ``top_p``: the model itself, or its ``sample_cfg``
    (``MiniBagelAdapter`` keeps cfg.sample there); None when the model cannot sample."""
    if hasattr(model, "temperature") and hasattr(model, "top_p"):
        return model
    sc = getattr(model, "sample_cfg", None)
    if sc is not None and hasattr(sc, "temperature") and hasattr(sc, "top_p"):
        return sc
    return None


def supports_sampling(model) -> bool:
    return _sampling_holder(model) is not None


@contextlib.contextmanager
def decoding(model, *, temperature: float, top_p: float):
    """The model with other text sampling settings, for the duration of the block.

    A model that offers ``with_sample`` (``MiniBagelAdapter``) yields a copy with the settings
    changed; the model itself is never modified. Any other model exposing ``temperature`` and
    ``top_p`` attributes (the protocol's option for outside models) has them set and restored on
    exit."""
    if hasattr(model, "with_sample"):
        yield model.with_sample(temperature=temperature, top_p=top_p)
        return
    holder = _sampling_holder(model)
    if holder is not model:
        raise InferError(f"model {model.name!r} has no temperature/top_p settings to sample with")
    old = (model.temperature, model.top_p)
    model.temperature, model.top_p = temperature, top_p
    try:
        yield model
    finally:
        model.temperature, model.top_p = old


def call_per_image_seeds(
    fn: Callable, model, images: torch.Tensor, seeds: list[int], *args
) -> list:
    """Call ``fn(images, *args, seed)`` so that every image gets its own seed.

    A model with ``seed_per_image = True`` takes the list of seeds in one batched call; any other
    model is called one image at a time with an int seed, so its outputs never depend on which
    other images shared its batch (batching and sharding do not change results)."""
    if getattr(model, "seed_per_image", False):
        return [fn(images, *args, seeds)]
    out = []
    for i, s in enumerate(seeds):
        one = [a[i:i + 1] for a in args]
        out.append(fn(images[i:i + 1], *one, s))
    return out


def generate_reports(
    model, images: torch.Tensor, prompt: str, seeds: list[int]
) -> list[DecodeResult]:
    """Reports for images (N, 3, H, W): one ``DecodeResult`` per image, undecodable ids flagged."""
    n = images.shape[0]
    chunks = call_per_image_seeds(lambda im, pr, s: model.generate_report(im, pr, seed=s),
                                  model, images, seeds, [prompt] * n)
    ids = [seq for chunk in chunks for seq in chunk]
    if len(ids) != n:
        raise InferError(f"model {model.name!r}: generate_report returned {len(ids)} id lists for "
                         f"{n} images")
    out = []
    for seq in ids:
        seq = seq.tolist() if isinstance(seq, torch.Tensor) else list(seq)
        try:
            seq = [int(i) for i in seq]
        except (TypeError, ValueError) as e:
            raise InferError(f"model {model.name!r}: generate_report returned a non-integer id "
                             f"({e})") from e
        out.append(safe_decode(model, seq))
    return out


def text_fields(result: DecodeResult | None, parse: Callable[[str], int | None] | None) -> dict:
    """Record fields of one report; all null when the model writes no text (shown as n/a)."""
    if result is None:
        return {"report_text": None, "report_ids": None, "undecodable": None,
                "undecodable_positions": None, "collapsed": None, "report_quality": None}
    return {"report_text": result.text, "report_ids": result.ids, "undecodable": result.n_bad,
            "undecodable_positions": result.bad_positions, "collapsed": result.collapsed,
            "report_quality": parse(result.text) if parse is not None else None}
