"""Text packing and the block attention mask of the mini-BAGEL sequence.

Roles of positions (one sequence per sample, laid out [cond | text | gen], padded to equal length)::

    PAD    attends only to itself (keeps softmax rows finite); nobody attends to it
    COND   condition image: full attention within COND
    PROMPT BOS instruction SEP: COND + earlier-or-same PROMPT (causal)
    REPORT report EOS: COND + PROMPT + earlier-or-same REPORT (causal)
    GEN    generated image: COND + PROMPT + GEN (full within the image; never REPORT)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

PAD, COND, PROMPT, REPORT, GEN = 0, 1, 2, 3, 4
IGNORE = -100


@dataclass
class TextBatch:
    """ids, pos, roles, targets: (B, T); targets hold the next report token (-100 elsewhere)."""

    ids: torch.Tensor
    pos: torch.Tensor
    roles: torch.Tensor
    targets: torch.Tensor


def pack_text(tokenizer, prompts: list[str], reports: list[str] | None, max_len: int,
              device=None) -> TextBatch:
    """Tokenise ``BOS prompt SEP`` (+ ``report EOS``) per sample and right-pad to the longest.

    Each of prompt and report is truncated to ``max_len`` tokens, specials included. Targets: the
    logit at position i is trained to predict token i + 1 when that token is a report token (EOS
    included), so CE covers exactly the report."""
    rows = []
    for j, prompt in enumerate(prompts):
        p = tokenizer.encode(prompt, bos=True, sep=True, max_len=max_len)
        r = tokenizer.encode(reports[j], eos=True, max_len=max_len) if reports is not None else []
        rows.append((p, r))
    T = max(len(p) + len(r) for p, r in rows)
    B = len(rows)
    ids = torch.full((B, T), tokenizer.pad_id, dtype=torch.long)
    roles = torch.full((B, T), PAD, dtype=torch.long)
    targets = torch.full((B, T), IGNORE, dtype=torch.long)
    for j, (p, r) in enumerate(rows):
        seq = p + r
        ids[j, :len(seq)] = torch.tensor(seq)
        roles[j, :len(p)] = PROMPT
        roles[j, len(p):len(seq)] = REPORT
        if r:
            targets[j, len(p) - 1:len(seq) - 1] = torch.tensor(r)
    pos = torch.arange(T).expand(B, T).clone()
    return TextBatch(*(x.to(device) for x in (ids, pos, roles, targets)))


def block_mask(roles: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """roles, order (B, L) -> bool mask (B, L, L), True where query (row) may attend key (column).
    ``order`` is the causal index of text positions (its value at image positions is unused)."""
    q, k = roles[:, :, None], roles[:, None, :]
    causal = order[:, None, :] <= order[:, :, None]
    key_visible_to_text = (k == COND) | (k == PROMPT)
    allow = ((q == COND) & (k == COND)) \
        | ((q == PROMPT) & ((k == COND) | ((k == PROMPT) & causal))) \
        | ((q == REPORT) & (key_visible_to_text | ((k == REPORT) & causal))) \
        | ((q == GEN) & (key_visible_to_text | (k == GEN)))
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
