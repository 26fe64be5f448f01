"""What the pairwise objectives (DPO, reward models) share: one forward over a batch of packed pairs.

The ``pairs`` data kind (:mod:`genmodels.data.pairs`) lays each pair out as ``[prompt | chosen | rejected]``
in one row; here the model runs once over it, the rejected reply kept from seeing the chosen one:

    allowed[b, i, j] = ¬(branch[b, i] = rejected ∧ branch[b, j] = chosen)

(ANDed with causality and the pairs' segments by the model), so each reply sees the prompt and itself only,
at the positions it would have after the prompt alone: each side's hidden states are those of the prompt
and that reply run alone (tested to 1e-5), and the prompt is computed once.

Pairs are numbered in the batch by ``(row, segment)`` order: :func:`pair_keys`.
"""
from __future__ import annotations

import torch

from .base import Batch
from .losses import IGNORE_INDEX, token_logprobs

CHOSEN, REJECTED = 1, 2  # the data kind's branch values
# what the pairs' one forward asks of the model (an objective's ``requires``: nn/masks.RULES a model implements)
MASK_NEEDS = ("mask:segments", "mask:allowed", "mask:positions")
PAIR_KEYS = ("input_ids", "position_ids", "segment_ids", "branch", "chosen_labels", "rejected_labels")


def pair_hidden(model, batch: Batch) -> torch.Tensor:
    """Hidden states ``(B, T, D)`` of a pairs batch, one forward (module docstring)."""
    branch = batch["branch"]  # (B, T)
    allowed = ~((branch[:, :, None] == REJECTED) & (branch[:, None, :] == CHOSEN))  # (B, T, T)
    return model.hidden_states(batch["input_ids"], position_ids=batch["position_ids"],
                               segment_ids=batch["segment_ids"], allowed=allowed)


def pair_keys(batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """``(key (B, T), pairs (P,))``: each slot's pair key ``row · (T + 1) + segment`` and the batch's pairs' keys,
    sorted (pair ``k`` of the batch is ``pairs[k]``)."""
    seg = batch["segment_ids"]
    b, t = seg.shape
    key = torch.arange(b, device=seg.device)[:, None] * (t + 1) + seg  # (B, T)
    return key, torch.unique(key[seg > 0])


def count_pairs(batch: Batch) -> int:
    """The pairs in a batch."""
    return int(pair_keys(batch)[1].numel())


def reply_logps(h: torch.Tensor, head, batch: Batch, chunk: int) -> tuple[torch.Tensor, ...]:
    """``(chosen, rejected, n_chosen, n_rejected)``, each ``(P,)``: every reply's log-probability summed over its
    tokens (the head applied only at the slots that predict a reply token, ``chunk`` rows at a time: logits are
    never whole), and its number of tokens."""
    key, pairs = pair_keys(batch)
    sides = [batch["chosen_labels"] != IGNORE_INDEX, batch["rejected_labels"] != IGNORE_INDEX]  # (B, T) each
    rows = torch.cat([h[m] for m in sides])  # (N_c + N_r, D)
    targets = torch.cat([batch["chosen_labels"][sides[0]], batch["rejected_labels"][sides[1]]])
    lp = token_logprobs(rows, head.get_weight(), head.bias, targets, chunk)  # (N_c + N_r,)
    out, start = [], 0
    for m in sides:
        n = int(m.sum())
        idx = torch.searchsorted(pairs, key[m])  # (n,) the pair of each token
        out.append(torch.zeros(len(pairs), dtype=lp.dtype, device=lp.device).index_add(0, idx, lp[start:start + n]))
        start += n
    counts = [torch.zeros(len(pairs), device=h.device).index_add(0, torch.searchsorted(pairs, key[m]),
                                                                 torch.ones(int(m.sum()), device=h.device))
              for m in sides]
    return out[0], out[1], counts[0], counts[1]


def last_slots(batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """``(chosen, rejected)``: boolean ``(B, T)`` masks of each reply's last slot (its last real token), one per
    pair, in the batch's pair order."""
    branch = batch["branch"]
    after = torch.cat([branch[:, 1:], torch.zeros_like(branch[:, :1])], dim=1)  # (B, T) the next slot's branch
    return (branch == CHOSEN) & (after != CHOSEN), (branch == REJECTED) & (after != REJECTED)
