"""Undecodable-token statistics over id sequences: the text collapse signal.

Shared by the inference harness (``infer``) and the scoring of external generations
(``python -m bench score-text``), so both report the same numbers the same way.

    res = check_ids([5, 9, 130], vocab_size=100)      # DecodeResult: id 130 is undecodable
    stats = text_stats([res, ...])                     # TextStats: rate, fraction of samples, ...
    vocab = load_vocab("vocab.json")                   # JSON list | JSON {token: id} | one per line

A token id is *undecodable* when it has no piece in the vocabulary: outside ``range(vocab_size)``
(the padded rows of a language head) or a hole in the vocabulary. Text that is only available as
a string (no ids) is checked for U+FFFD, which byte-level decoders emit for undecodable bytes.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Sequence

from medq.protocol import DecodeResult, decode_with_vocab

log = logging.getLogger(__name__)

REPLACEMENT_CHAR = "\ufffd"


def check_ids(ids: Sequence[int], *, vocab: Sequence[str | None] | None = None,
              vocab_size: int | None = None, skip: frozenset[int] = frozenset()) -> DecodeResult:
    """Flag the undecodable ids of one sequence; never raises on ids.

    With ``vocab`` (index = id, ``None`` = no piece) the text is decoded too; with only
    ``vocab_size`` the text is empty (there is nothing to decode with) and every id outside
    ``[0, vocab_size)`` is flagged."""
    if vocab is not None:
        return decode_with_vocab(ids, vocab, skip=skip)
    if vocab_size is None:
        raise ValueError("check_ids: give vocab or vocab_size")
    bad_pos = [p for p, i in enumerate(ids) if int(i) not in skip and not 0 <= int(i) < vocab_size]
    return DecodeResult("", [int(i) for i in ids], bad_pos, [int(ids[p]) for p in bad_pos])


def safe_decode(model, ids: Sequence[int]) -> DecodeResult:
    """``model.decode(ids)``, guarded: a model whose ``decode`` raises (e.g. the original
    ``"".join`` over ``None`` pieces) or returns something else is decoded id by id, and the ids
    that fail alone are flagged undecodable. ``model`` is any ``ImageTextModel``."""
    ids = [int(i) for i in ids]
    try:
        res = model.decode(ids)
        if isinstance(res, DecodeResult):
            return res
        log.warning("%s.decode returned %s, not a DecodeResult; decoding id by id",
                    type(model).__name__, type(res).__name__)
    except Exception as e:  # noqa: BLE001 - a user's decode may raise anything; we fall back
        log.warning("%s.decode raised %s: %s; decoding id by id", type(model).__name__,
                    type(e).__name__, e)
    pieces, bad_pos, bad_ids = [], [], []
    for pos, tok in enumerate(ids):
        try:
            one = model.decode([tok])
            ok = isinstance(one, DecodeResult) and not one.collapsed and isinstance(one.text, str)
        except Exception:  # noqa: BLE001 - this id is the one that does not decode
            ok = False
        if ok:
            if one.text:
                pieces.append(one.text)
        else:
            bad_pos.append(pos)
            bad_ids.append(tok)
    return DecodeResult(" ".join(pieces), ids, bad_pos, bad_ids)


def replacement_chars(text: str) -> int:
    """Number of U+FFFD characters: what byte-level decoders write for undecodable bytes."""
    return text.count(REPLACEMENT_CHAR)


@dataclass
class TextStats:
    """Per-checkpoint (or per-file) text statistics. Rates are ``None`` when nothing was counted."""

    n_samples: int
    n_tokens: int
    n_undecodable: int
    n_samples_with_undecodable: int
    undecodable_rate: float | None
    """Undecodable ids / all ids, over every sample."""
    frac_samples_with_undecodable: float | None
    n_text_only: int = 0
    """Samples given as text without ids; they count toward the sample fraction via U+FFFD."""

    def as_dict(self) -> dict:
        return asdict(self)


def text_stats(results: Iterable[DecodeResult], texts_only: Iterable[str] = ()) -> TextStats:
    """Aggregate ``DecodeResult``s (and strings without ids) into ``TextStats``."""
    n = n_tok = n_bad = n_any = 0
    for r in results:
        n += 1
        n_tok += len(r.ids)
        n_bad += r.n_bad
        n_any += r.collapsed
    n_text = 0
    for t in texts_only:
        n_text += 1
        n_any += replacement_chars(t) > 0
    n_all = n + n_text
    return TextStats(n_all, n_tok, n_bad, n_any,
                     n_bad / n_tok if n_tok else None, n_any / n_all if n_all else None, n_text)


def load_vocab(path: str | Path) -> list[str | None]:
    """Read a tokenizer vocabulary as a list indexed by id (``None`` = no token at that id).

    Accepted: a JSON list of tokens; a JSON object token -> id (Hugging Face ``vocab.json``; ids
    not mapped are holes); a text file with one token per line (line number = id). Raises
    ValueError naming the file and what is wrong."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: vocabulary file not found")
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json" or text.lstrip()[:1] in ("[", "{"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON ({e}); expected a list of tokens or an "
                             f"object token -> id") from e
        if isinstance(data, dict) and "model" in data and isinstance(data["model"], dict) \
                and isinstance(data["model"].get("vocab"), dict):
            data = data["model"]["vocab"]   # a full tokenizer.json: its vocab lives here
        if isinstance(data, list):
            if not all(isinstance(t, str) or t is None for t in data):
                raise ValueError(f"{path}: a JSON vocabulary list must hold strings (or null)")
            return list(data)
        if isinstance(data, dict):
            bad = [(k, v) for k, v in data.items()
                   if not isinstance(v, int) or isinstance(v, bool) or v < 0]
            if bad:
                raise ValueError(f"{path}: token {bad[0][0]!r} maps to {bad[0][1]!r}; expected a "
                                 f"non-negative integer id")
            vocab: list[str | None] = [None] * (max(data.values(), default=-1) + 1)
            for tok, i in data.items():
                vocab[i] = tok
            return vocab
        raise ValueError(f"{path}: JSON {type(data).__name__}; expected a list of tokens or an "
                         f"object token -> id")
    return text.splitlines()
