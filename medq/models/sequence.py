"""Text packing and the block attention mask of the mini-BAGEL sequence.

Roles of positions (one sequence per sample, padded to equal length; text = [BOS instruction
SEP][BOS question SEP report EOS], either part may be absent)::

    PAD      attends only to itself (keeps softmax rows finite); nobody attends to it
    COND     condition image seen by everything: full attention within COND (inference:
             [cond | text | gen], ``sequence_mask``)
    GCOND    condition seen by the image only (training: the tile being generated)
    RCOND    condition seen by the report only (training: the whole input image at tile size)
    PROMPT   BOS instruction SEP: COND + GCOND + earlier-or-same PROMPT (causal)
    QUESTION BOS question SEP: COND + RCOND + earlier-or-same QUESTION (causal)
    REPORT   report EOS: COND + RCOND + QUESTION + earlier-or-same REPORT (causal); never the
             instruction
    GEN      generated image: COND + GCOND + PROMPT + GEN (full within the image; never
             QUESTION/REPORT)

Why two text parts: training puts an editing instruction (for the image) and a report question
(for the text) in one sequence, while inference asks for a report with the question alone. Because
the report never sees the instruction and positions restart at 0 for the question, the report is
trained in exactly the context it is generated in.

Why two conditions in training (``training_mask``: [RCOND | GCOND | text | gen]): the image is
generated tile by tile, the report from the whole image resized to one tile. Each part of the
training sequence sees the condition it has at inference, where it is COND: the attention each
token receives is the same function of the same inputs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

PAD, COND, PROMPT, REPORT, GEN, QUESTION, GCOND, RCOND = 0, 1, 2, 3, 4, 5, 6, 7
IGNORE = -100


@dataclass
class TextBatch:
    """ids, pos, roles, targets: (B, T); targets hold the next report token (-100 elsewhere)."""

    ids: torch.Tensor
    pos: torch.Tensor
    roles: torch.Tensor
    targets: torch.Tensor


def pack_text(tokenizer, prompts: list[str] | None, reports: list[str] | None, max_len: int,
              device=None, questions: list[str] | None = None) -> TextBatch:
    """Tokenise ``BOS prompt SEP`` (role PROMPT) + ``BOS question SEP`` (QUESTION) + ``report EOS``
    (REPORT) per sample and right-pad to the longest; ``None`` (a list, or one sample's entry)
    leaves a part out.

    Each of prompt, question and report is truncated to ``max_len`` tokens, specials included.
    Positions count from 0 in the instruction and again from 0 in question + report. Targets: the
    logit at position i is trained to predict token i + 1 when that token is a report token (EOS
    included), so CE covers exactly the report."""
    n = len(next(x for x in (prompts, questions, reports) if x is not None))
    rows = []
    for j in range(n):
        p = (
            tokenizer.encode(prompts[j], bos=True, sep=True, max_len=max_len)
            if prompts is not None
            else []
        )
        q = (
            tokenizer.encode(questions[j], bos=True, sep=True, max_len=max_len)
            if questions is not None and questions[j] is not None
            else []
        )
        r = (tokenizer.encode(reports[j], eos=True, max_len=max_len)
             if reports is not None and reports[j] is not None else [])
        rows.append((p, q, r))
    T = max(len(p) + len(q) + len(r) for p, q, r in rows)
    ids = torch.full((n, T), tokenizer.pad_id, dtype=torch.long)
    roles = torch.full((n, T), PAD, dtype=torch.long)
    targets = torch.full((n, T), IGNORE, dtype=torch.long)
    pos = torch.zeros((n, T), dtype=torch.long)
    for j, (p, q, r) in enumerate(rows):
        seq = p + q + r
        a, b = len(p), len(p) + len(q)
        ids[j, :len(seq)] = torch.tensor(seq)
        roles[j, :a], roles[j, a:b], roles[j, b:len(seq)] = PROMPT, QUESTION, REPORT
        pos[j, :a] = torch.arange(a)
        pos[j, a:len(seq)] = torch.arange(len(seq) - a) if q else torch.arange(a, len(seq))
        if r and b > 0:
            targets[j, b - 1:len(seq) - 1] = torch.tensor(r)
        pos[j, len(seq):] = torch.arange(len(seq), T)
    return TextBatch(*(x.to(device) for x in (ids, pos, roles, targets)))


def block_mask(roles: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """roles, order (B, L) -> bool mask (B, L, L), True where query (row) may attend key (column).
    ``order`` is the causal index of text positions (its value at image positions is unused)."""
    q, k = roles[:, :, None], roles[:, None, :]
    causal = order[:, None, :] <= order[:, :, None]
    img_cond = (k == COND) | (k == GCOND)
    rep_cond = (k == COND) | (k == RCOND)
    allow = ((q == COND) & (k == COND)) | ((q == GCOND) & (k == GCOND)) \
        | ((q == RCOND) & (k == RCOND)) \
        | ((q == PROMPT) & (img_cond | ((k == PROMPT) & causal))) \
        | ((q == QUESTION) & (rep_cond | ((k == QUESTION) & causal))) \
        | ((q == REPORT) & (rep_cond | (k == QUESTION) | ((k == REPORT) & causal))) \
        | ((q == GEN) & (img_cond | (k == PROMPT) | (k == GEN)))
    eye = torch.eye(roles.shape[1], dtype=torch.bool, device=roles.device)
    return allow | eye


def sequence_mask(text: TextBatch, n_cond: int, n_gen: int) -> torch.Tensor:
    """The (B, L, L) mask of the layout [cond (n_cond) | text (T) | gen (n_gen)]."""
    B, T = text.roles.shape
    dev = text.roles.device
    roles = torch.cat([torch.full((B, n_cond), COND, device=dev), text.roles,
                       torch.full((B, n_gen), GEN, device=dev)], dim=1)
    order = torch.cat([torch.zeros(B, n_cond, dtype=torch.long, device=dev), text.pos,
                       torch.zeros(B, n_gen, dtype=torch.long, device=dev)], dim=1)
    return block_mask(roles, order)


def training_mask(text: TextBatch, n_cond: int, n_gen: int, report_cond: torch.Tensor | None,
                  n_report: int | None = None) -> torch.Tensor:
    """The (B, L, L) mask of the training layout [RCOND (n_report) | GCOND (n_cond) | text (T) |
    gen (n_gen)], the image condition seen only by the prompt and the image, the report
    condition only by the question and the report. ``report_cond`` (B,) bool: which samples have
    a report (the others' RCOND positions are PAD); None = no RCOND segment at all (the layout
    [GCOND | text | gen]). ``n_report``: the report view's tokens (default ``n_cond``: a view of
    one tile)."""
    B, T = text.roles.shape
    dev = text.roles.device
    parts, orders = [], []
    if report_cond is not None:
        n_r = n_cond if n_report is None else n_report
        r = torch.where(report_cond.to(dev)[:, None], RCOND, PAD).expand(B, n_r)
        parts.append(r)
        orders.append(torch.zeros(B, n_r, dtype=torch.long, device=dev))
    parts += [torch.full((B, n_cond), GCOND, device=dev), text.roles,
              torch.full((B, n_gen), GEN, device=dev)]
    orders += [torch.zeros(B, n_cond, dtype=torch.long, device=dev), text.pos,
               torch.zeros(B, n_gen, dtype=torch.long, device=dev)]
    return block_mask(torch.cat(parts, dim=1), torch.cat(orders, dim=1))
