"""Word-level tokenizer for instructions and reports, saved as ``tokenizer.json``.

Text is lower-cased and split into words and single punctuation marks (``WORD_RE``). The vocabulary
is the special tokens followed by the sorted words of ``medq.data.vocabulary()`` (every word the
report and instruction templates can produce) or of a list given explicitly.

The model's text head has ``padded_vocab_size(vocab_size, multiple)`` rows (Qwen2-style padding),
more than the tokenizer has ids: an untrained or collapsed model can emit ids that do not decode.
``decode`` never raises on them; it lists them in the ``DecodeResult``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Iterable, Sequence

from medq.protocol import DecodeResult, decode_with_vocab

PAD, BOS, EOS, SEP, UNK = "<pad>", "<bos>", "<eos>", "<sep>", "<unk>"
SPECIALS = (PAD, BOS, EOS, SEP, UNK)
WORD_RE = re.compile(r"[a-z0-9]+(?:[-'][a-z0-9]+)*|[^\sa-z0-9]")
_NO_SPACE_BEFORE = re.compile(r" ([.,;:!?%)])")
_NO_SPACE_AFTER = re.compile(r"([(]) ")
FORMAT = "medq-word-tokenizer/1"


def split_words(text: str) -> list[str]:
    """'Grade 2, no DR.' -> ['grade', '2', ',', 'no', 'dr', '.']"""
    return WORD_RE.findall(text.lower())


def padded_vocab_size(vocab_size: int, multiple: int) -> int:
    """Rows of the text head: ``vocab_size`` rounded up to a multiple of ``multiple``."""
    return -(-vocab_size // multiple) * multiple


def default_words() -> list[str]:
    """Words of ``medq.data.vocabulary()`` (the data package owns the text templates)."""
    from medq.data import vocabulary

    return list(vocabulary())


class Tokenizer:
    """Word-level tokenizer. ``Tokenizer()`` uses ``medq.data.vocabulary()``;
    ``Tokenizer(words=[...])`` any list of words or phrases (they are split with
    ``split_words``)."""

    def __init__(self, words: Iterable[str] | None = None):
        words = default_words() if words is None else list(words)
        vocab = sorted({w for phrase in words for w in split_words(phrase)} - set(SPECIALS))
        self._set_pieces(list(SPECIALS) + vocab)

    def _set_pieces(self, pieces: list[str]) -> None:
        if len(set(pieces)) != len(pieces):
            raise ValueError("tokenizer pieces are not unique")
        self.pieces = pieces
        self.index = {p: i for i, p in enumerate(pieces)}
        self.pad_id, self.bos_id, self.eos_id, self.sep_id, self.unk_id = (
            self.index[s] for s in SPECIALS
        )
        self.special_ids = frozenset(self.index[s] for s in SPECIALS)

    @property
    def vocab_size(self) -> int:
        """Number of ids that decode."""
        return len(self.pieces)

    def encode(self, text: str, *, bos: bool = False, eos: bool = False, sep: bool = False,
               max_len: int | None = None) -> list[int]:
        """Ids of ``text`` (unknown words -> UNK), optionally wrapped as BOS ... SEP / ... EOS.
        With ``max_len`` the words are truncated so that the whole, specials included, fits."""
        ids = [self.index.get(w, self.unk_id) for w in split_words(text)]
        tail = [self.sep_id] * sep + [self.eos_id] * eos
        if max_len is not None:
            room = max_len - bos - len(tail)
            if room < 0:
                raise ValueError(f"max_len = {max_len} leaves no room for the special tokens")
            ids = ids[:room]
        return [self.bos_id] * bos + ids + tail

    def decode(self, ids: Sequence[int], *, stop_at_eos: bool = True) -> DecodeResult:
        """Text of ``ids``; never raises. Ids >= ``vocab_size`` (the text head's padding rows) or
        negative are flagged in the result (``bad_positions``/``bad_ids``) and left out of the text;
        special tokens are left out; with ``stop_at_eos`` nothing after the first EOS is decoded
        (the returned ``ids`` are still all of them)."""
        ids = [int(i) for i in ids]
        upto = ids.index(self.eos_id) if stop_at_eos and self.eos_id in ids else len(ids)
        res = decode_with_vocab(ids[:upto], self.pieces, skip=self.special_ids)
        text = _NO_SPACE_AFTER.sub(r"\1", _NO_SPACE_BEFORE.sub(r"\1", res.text))
        return DecodeResult(text, ids, res.bad_positions, res.bad_ids)

    # -- files --------------------------------------------------------------------------------

    def to_json(self) -> str:
        return json.dumps(
            {"format": FORMAT, "specials": list(SPECIALS), "pieces": self.pieces}, indent=0
        )

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_json())

    @classmethod
    def load(cls, path: str | Path) -> "Tokenizer":
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ValueError(f"{path}: cannot read a tokenizer ({e})") from e
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ValueError(
                f"{path}: 'format' is {data.get('format') if isinstance(data, dict) else None!r}, "
                f"expected {FORMAT!r}"
            )
        pieces = data.get("pieces")
        if not isinstance(pieces, list) or not all(isinstance(p, str) for p in pieces) \
                or pieces[:len(SPECIALS)] != list(SPECIALS):
            raise ValueError(
                f"{path}: 'pieces' must be a list of strings starting with {list(SPECIALS)}"
            )
        tok = cls.__new__(cls)
        tok._set_pieces(pieces)
        return tok

    def __eq__(self, other) -> bool:
        return isinstance(other, Tokenizer) and self.pieces == other.pieces

    def __repr__(self) -> str:
        return f"Tokenizer(vocab_size={self.vocab_size})"
