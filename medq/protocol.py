"""The model protocol the inference harness drives, and robust decoding of token ids.

Any model, ours or a user's 7-14B BAGEL fine-tune wrapped in a few lines, enters the harness, the
leaderboard and the demo through ``ImageTextModel``. The built-in mini-BAGEL is its first
implementation (``medq.models.MiniBagelAdapter``); the bicubic / Lanczos / identity baselines are
others (``medq.baselines``).

Images are float32 RGB in [0, 1], NCHW, everywhere in this package; uint8 only at file boundaries.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, Sequence, runtime_checkable

import torch


@dataclass
class DecodeResult:
    """Text decoded from token ids, with the ids that do not decode flagged instead of raised.

    The original system crashed with ``TypeError: sequence item 600: expected str instance,
    NoneType found`` when ``"".join`` met an id in the padded part of the vocabulary. Here such
    ids are left out of ``text`` and listed with their positions in the id sequence.
    """

    text: str
    ids: list[int]
    bad_positions: list[int] = field(default_factory=list)
    bad_ids: list[int] = field(default_factory=list)

    @property
    def n_bad(self) -> int:
        return len(self.bad_positions)

    @property
    def collapsed(self) -> bool:
        """Any undecodable id is the collapse signal of the original v1/v2 runs."""
        return self.n_bad > 0


def decode_with_vocab(ids: Sequence[int], vocab: Sequence[str | None], *, sep: str = " ",
                      skip: frozenset[int] = frozenset()) -> DecodeResult:
    """Join the pieces of ``ids`` from ``vocab`` (index = id; ``None`` = no piece), never raising.

    Ids outside ``range(len(vocab))``, negative ids, or ids whose piece is ``None`` are
    undecodable: they are recorded in ``bad_positions`` / ``bad_ids`` and left out of the text.
    Ids in ``skip`` (special tokens such as BOS/EOS/PAD) are silently left out."""
    pieces, bad_pos, bad_ids = [], [], []
    for pos, raw in enumerate(ids):
        tok = int(raw)
        if tok in skip:
            continue
        piece = vocab[tok] if 0 <= tok < len(vocab) else None
        if piece is None:
            bad_pos.append(pos)
            bad_ids.append(tok)
        else:
            pieces.append(piece)
    return DecodeResult(sep.join(pieces), [int(i) for i in ids], bad_pos, bad_ids)


@runtime_checkable
class ImageTextModel(Protocol):
    """What the harness needs of a model. Batched: N images at a time.

    - ``name``: shown in reports (e.g. 'ssim_v3-1a2b3c4d@step300/ema', 'bicubic').
    - ``edit(images, instructions, tasks, out_size, seed)``: images (N, 3, h, w) in [0, 1] (the
      degraded or low-resolution inputs), one instruction and task ('sr2', 'sr4', 'enhance') per
      image, the output size (H, W); returns (N, 3, H, W) in [0, 1]. Deterministic for a seed.
    - ``generate_report(images, prompts, seed)``: images (N, 3, H, W); returns one list of token
      ids per image. Ids need not be decodable: the harness checks them with ``decode``.
    - ``decode(ids)``: never raises; flags undecodable ids (``DecodeResult``).
    - ``vocab_size``: number of ids that decode (the text head may have more rows).

    Optional attributes the harness reads when present:

    - ``seed_per_image = True``: ``edit`` / ``generate_report`` accept ``seed`` as a list with one
      seed per image, so the harness batches them; otherwise it calls one image at a time with an
      int seed (outputs never depend on which images shared a batch).
    - ``has_text = False``: the model writes no text (the baselines); its text fields are n/a.
    - ``settings``: a dict recorded in every ``records.jsonl`` row (e.g. sampler steps).
    - ``temperature`` and ``top_p`` (or a ``sample_cfg`` holding them): the harness sets them for
      greedy and sampled reports; without them only greedy reports are asked for.
    """

    name: str
    vocab_size: int

    def edit(self, images: torch.Tensor, instructions: list[str], tasks: list[str],
             out_size: tuple[int, int], seed: int) -> torch.Tensor: ...

    def generate_report(
        self, images: torch.Tensor, prompts: list[str], seed: int
    ) -> list[list[int]]: ...

    def decode(self, ids: Sequence[int]) -> DecodeResult: ...
