"""Trainable token rows (PEFT's ``trainable_token_indices`` / TrainableTokensLayer): a few rows of a
frozen token embedding trained apart, the rest of the table untouched.

    E'[i] = T[j]   for i = ids[j]        E'[i] = E[i] otherwise         (a replacement, not a sum)

=================================  ===========================  ===================================
PEFT                               here                         shape
=================================  ===========================  ===================================
``token_indices``                  ``ids`` (buffer, not saved)  (n,) long: the adapter config's list
``trainable_tokens_delta``         ``weight``                   (n, D): the rows' values (PEFT's name
                                                                 says delta; it holds the rows)
``trainable_tokens_original``      ``original`` (not saved)     (n, D): E[ids] while merged
=================================  ===========================  ===================================

Why: under LoRA the base is frozen, so a token the run adds to the vocabulary (a gist token, a chat
control token; ``model.init_from`` grows its row as the vocabulary mean) would stay a constant vector.
Only the ``n`` rows train (an optimizer state of ``n × D``, not ``V × D``).

The rows start as the table's own (``weight = E[ids]``: a no-op until trained, as PEFT's
``init_weights=True``). A tied head reads the same table (:meth:`TokenEmbedding.table`,
``LMHead.get_weight``), so the rows are the head's too — what PEFT does when it ties the lm_head's
token adapter to the embedding's. ``merged``: the rows are written into ``E`` (the old rows kept in
``original``; unmerge restores them exactly); ``enabled`` False: the table ``E`` alone.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn


class TrainableTokens(nn.Module):
    """The trainable rows of one embedding table ``(V, D)``; :meth:`table` is the table they give."""

    def __init__(self, ids: Sequence[int], table: torch.Tensor):
        super().__init__()
        ids = [int(i) for i in ids]
        n_rows = table.shape[0]
        if not ids or len(set(ids)) != len(ids) or min(ids) < 0 or max(ids) >= n_rows:
            raise ValueError(f"trainable tokens {ids!r}: must be distinct token ids in [0, {n_rows})")
        self.register_buffer("ids", torch.tensor(ids, dtype=torch.long, device=table.device), persistent=False)
        self.weight = nn.Parameter(table.detach()[self.ids].clone())  # (n, D): E[ids] at the start
        self.register_buffer("original", torch.zeros_like(self.weight), persistent=False)
        self.merged, self.enabled = False, True

    @property
    def token_ids(self) -> list[int]:
        return self.ids.tolist()

    def table(self, weight: torch.Tensor) -> torch.Tensor:
        """The ``(V, D)`` table the model reads: ``weight`` with rows ``ids`` replaced (differentiable in the
        rows only); ``weight`` itself when merged or disabled."""
        if self.merged or not self.enabled:
            return weight
        return weight.index_copy(0, self.ids, self.weight.to(weight.dtype))

    def base_table(self, weight: torch.Tensor) -> torch.Tensor:
        """The frozen table without the rows (``weight``, or its original rows put back when merged)."""
        return weight.index_copy(0, self.ids, self.original) if self.merged else weight

    @torch.no_grad()
    def merge(self, weight: torch.Tensor) -> None:
        """E[ids] = T, keeping the old rows (no-op when merged)."""
        if not self.merged:
            self.original.copy_(weight[self.ids])
            weight.index_copy_(0, self.ids, self.weight.to(weight.dtype))
            self.merged = True

    @torch.no_grad()
    def unmerge(self, weight: torch.Tensor) -> None:
        """E[ids] = the rows kept at merge (exactly; no-op when not merged)."""
        if self.merged:
            weight.index_copy_(0, self.ids, self.original)
            self.merged = False

    def extra_repr(self) -> str:
        return f"ids={self.token_ids}, dim={self.weight.shape[1]}{', merged' if self.merged else ''}"


# ---- whole-model operations (genmodels.nn.lora's merge / unmerge / disabled call them) ----------------
def token_tables(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(path, embedding)`` of every embedding of ``model`` that holds trainable rows, in module order."""
    return [(n, m) for n, m in model.named_modules() if isinstance(getattr(m, "trainable_tokens", None), TrainableTokens)]


def add(model: nn.Module, ids: Sequence[int]) -> TrainableTokens:
    """Rows ``ids`` of ``model``'s input embedding (``model.embedding()``) made trainable (their start: the table's
    own rows). One set per model; a one-line ``ValueError`` otherwise."""
    emb = model.embedding() if callable(getattr(model, "embedding", None)) else None
    if emb is None or not hasattr(emb, "trainable_tokens"):
        raise ValueError(f"trainable tokens: {type(model).__name__} has no token embedding (model.embedding())")
    if emb.trainable_tokens is not None:
        raise ValueError(f"trainable tokens: the embedding already has trainable rows {emb.trainable_tokens.token_ids}")
    emb.trainable_tokens = TrainableTokens(ids, emb.weight)
    return emb.trainable_tokens


def token_ids(model: nn.Module) -> list[int]:
    """The trainable rows' ids of ``model`` ([] when none)."""
    tables = token_tables(model)
    return tables[0][1].trainable_tokens.token_ids if tables else []


def merge(model: nn.Module) -> None:
    for _, emb in token_tables(model):
        emb.trainable_tokens.merge(emb.weight)


def unmerge(model: nn.Module) -> None:
    for _, emb in token_tables(model):
        emb.trainable_tokens.unmerge(emb.weight)


def remove(model: nn.Module) -> None:
    """Merge the rows into their tables and drop the row modules (the plain embedding, trained rows in it)."""
    merge(model)
    for _, emb in token_tables(model):
        emb.trainable_tokens = None
