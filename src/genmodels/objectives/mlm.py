"""Masked language modelling (Devlin et al., 2019, §3.1): predict the original token at the ~15% of
positions the masking transform chose (80% [MASK], 10% random, 10% kept; the transform is
:func:`genmodels.data.objectives.mask_tokens`).

    L = 1/|M| Σ_{n∈M} −log softmax(mlm(h_n))_{x_n}

Batch: ``input_ids (B, T)`` — the clean window; the masks draw from the global torch RNG (seeded and
checkpointed by the trainer). Only chosen positions go through the MLM head.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..data.objectives import IGNORE, mask_tokens
from .base import Batch, Metrics, Objective


class MaskedLM(Objective):
    name = "mlm"
    extra_tokens = 1  # [MASK]: the first id after the tokenizer's n_tokens ordinary ones
    usage = "embed"

    def __init__(self, model, n_tokens: int, prob: float = 0.15):
        super().__init__(model)
        self.n_tokens, self.prob = n_tokens, prob

    def forward(self, batch: Batch) -> tuple[torch.Tensor, Metrics]:
        inputs, labels = mask_tokens(batch["input_ids"], mask_token_id=self.n_tokens, vocab_size=self.n_tokens,
                                     prob=self.prob)
        return mlm_loss(self.model, {"input_ids": inputs, "labels": labels}), {}


def mlm_loss(model, batch: Batch) -> torch.Tensor:
    """Mean cross-entropy over the chosen positions. ``batch``: ``input_ids``, ``labels`` and
    optionally ``attention_mask``. Only chosen positions go through the MLM head."""
    h = model.encode(batch["input_ids"], batch.get("attention_mask"))  # (B, T, D)
    labels = batch["labels"]
    chosen = labels != IGNORE
    if not bool(chosen.any()):
        return h.sum() * 0.0
    logits = model.mlm(h[chosen])  # (N, V)
    return F.cross_entropy(logits.float(), labels[chosen])
