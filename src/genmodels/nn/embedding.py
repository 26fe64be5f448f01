"""Token embedding: a learned lookup table E ∈ R^{V×D}, x_t = E[id_t] (Vaswani et al., 2017, §3.4)."""
from __future__ import annotations

import torch
from torch import nn


class TokenEmbedding(nn.Embedding):
    """Maps token ids ``(B, T)`` to vectors ``(B, T, D)``; optionally scaled by a constant.

    The original Transformer multiplies by √D; GPT-2, Llama, BERT and T5 do not (scale=1).
    """

    def __init__(self, vocab_size: int, d_model: int, scale: float = 1.0, padding_idx: int | None = None):
        super().__init__(vocab_size, d_model, padding_idx=padding_idx)
        self.scale = scale

    def forward(self, ids: torch.Tensor) -> torch.Tensor:  # (B, T) -> (B, T, D)
        x = super().forward(ids)
        return x * self.scale if self.scale != 1.0 else x
