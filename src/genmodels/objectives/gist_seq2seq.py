"""Gist training for encoder–decoders (T5; Mu, Li, Goodman 2023, §3): each example's prompt — instruction →
``<GIST>`` × k → input — is the source, its response the target, and the loss falls on the target:

    L = Σ_{n ∈ target} −log p(y_n | y_{<n}, enc(source) under the gist mask) / N_target

Under the gist mask the encoder's input queries never see the instruction, the instruction and gist never
see the input, and the decoder cross-attends to the gist and the input only (``gist_allowed`` as the
encoder's ``allowed``, ``gist_cross_allowed`` as ``memory_mask``: :mod:`genmodels.nn.gist_mask`).

The batch is the ``examples`` kind's packed causal rows (``input_ids``, next-token ``labels`` −100 outside the
responses, ``segment_ids``), unpacked here: an example's source is its tokens up to the one whose label is
the first response token, its target the labelled tokens. The normalisation is SFT's (the labelled tokens,
counted the same way), so a decoder and an encoder–decoder run the same data and recipe.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..nn.gist_mask import find_gists, gist_allowed, gist_cross_allowed
from .losses import IGNORE_INDEX


def unpack(batch: dict) -> tuple[list[list[int]], list[list[int]]]:
    """``(sources, targets)``: each packed example's prompt tokens and response tokens (module doc)."""
    ids, labels = batch["input_ids"], batch["labels"]
    seg = batch.get("segment_ids")
    if seg is None:
        seg = (labels != IGNORE_INDEX).any(-1, keepdim=True).long().expand_as(ids)  # one example a row
    sources, targets = [], []
    for b in range(ids.shape[0]):
        for s in seg[b].unique().tolist():
            if s == 0:
                continue
            cols = (seg[b] == s).nonzero()[:, 0]
            lab, tok = labels[b, cols], ids[b, cols]
            out = (lab != IGNORE_INDEX).nonzero()[:, 0]
            if len(out) == 0:
                continue
            sources.append(tok[:int(out[0]) + 1].tolist())
            targets.append(lab[out].tolist())
    return sources, targets


def _padded(rows: list[list[int]], fill: int, device) -> torch.Tensor:
    out = torch.full((len(rows), max(map(len, rows))), fill, dtype=torch.long, device=device)
    for i, r in enumerate(rows):
        out[i, :len(r)] = torch.tensor(r, device=device)
    return out


def seq2seq_gist_loss(model, batch: dict, gist_id: int, mode: str) -> torch.Tensor:
    """The mean cross-entropy of every target token under ``mode``'s mask (module doc)."""
    sources, targets = unpack(batch)
    device = batch["input_ids"].device
    src = _padded(sources, 0, device)  # (N, S) right-padded
    src_mask = _padded([[1] * len(r) for r in sources], 0, device)
    labels = _padded(targets, IGNORE_INDEX, device)  # (N, T)
    masks = {}
    if mode != "pos_control":
        g, k = find_gists(src, gist_id)
        masks = {"allowed": gist_allowed(g, k.clamp(min=1), src.shape[1], mode=mode),
                 "memory_mask": gist_cross_allowed(g, k.clamp(min=1), src.shape[1], labels.shape[1], mode=mode)}
    logits = model(src, model.shift_right(labels), attention_mask=src_mask, **masks)  # (N, T, V)
    return F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=IGNORE_INDEX)
