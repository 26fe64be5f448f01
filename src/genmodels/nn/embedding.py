"""Token embedding: a learned lookup table E ∈ R^{V×D}, x_t = E[id_t] (Vaswani et al., 2017, §3.4)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .trainable_tokens import TrainableTokens


class TokenEmbedding(nn.Embedding):
    """Maps token ids ``(B, T)`` to vectors ``(B, T, D)``; optionally scaled by a constant.

    The original Transformer multiplies by √D; GPT-2, Llama, BERT and T5 do not (scale=1).
    ``trainable_tokens`` (None, or :class:`~genmodels.nn.trainable_tokens.TrainableTokens`: a few rows
    trained apart from a frozen table, ``genmodels.lora.apply(..., trainable_tokens=)``) changes the
    table every reader sees: :meth:`table` (a tied head reads it too).
    """

    def __init__(self, vocab_size: int, d_model: int, scale: float = 1.0, padding_idx: int | None = None):
        super().__init__(vocab_size, d_model, padding_idx=padding_idx)
        self.scale = scale
        self.trainable_tokens: TrainableTokens | None = None

    def table(self) -> torch.Tensor:
        """The ``(V, D)`` table lookups and a tied head read: ``weight``, with the trainable rows if any."""
        rows = self.trainable_tokens
        return self.weight if rows is None else rows.table(self.weight)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:  # (B, T) -> (B, T, D)
        if self.trainable_tokens is None:
            x = super().forward(ids)
        else:
            x = F.embedding(ids, self.table(), self.padding_idx, self.max_norm, self.norm_type,
                            self.scale_grad_by_freq, self.sparse)
        return x * self.scale if self.scale != 1.0 else x
