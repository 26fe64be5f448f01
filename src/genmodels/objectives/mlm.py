"""Masked language modelling (Devlin et al., 2019, §3.1): predict the original token at the ~15% of
positions the masking transform chose (80% [MASK], 10% random, 10% kept; the transform is
:func:`genmodels.data.objectives.mask_tokens`).

    L = 1/|M| Σ_{n∈M} −log softmax(mlm(h_n))_{x_n}

Batch: ``input_ids (B, T)`` — the clean window; the masks draw from the global torch RNG (seeded and
checkpointed by the trainer). Only chosen positions go through the MLM head.

Options (``train.objective: {name: mlm, mlm_prob: 0.15}``); requires a model that embeds, with an MLM
head (``model.mlm_head: true``).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..config import ConfigError
from ..data.objectives import IGNORE, mask_tokens
from ..registry import EMBEDS
from .base import Batch, Metrics, Objective, ObjectiveOptions, check_number


@dataclass
class MLMOptions(ObjectiveOptions):
    name: str = "mlm"
    mlm_prob: float = 0.15  # share of tokens to predict (80% [MASK], 10% random, 10% kept)

    def validate(self) -> None:
        check_number(self, "mlm_prob", lo=0.0, hi=1.0, lo_open=True, hi_open=True)


class MaskedLM(Objective):
    name = "mlm"
    Options = MLMOptions
    requires = (EMBEDS, "config:mlm_head")
    extra_tokens = 1  # [MASK]: the first id after the tokenizer's n_tokens ordinary ones
    usage = "embed"

    def __init__(self, model, n_tokens: int, prob: float = 0.15):
        super().__init__(model)
        self.n_tokens, self.prob = n_tokens, prob

    @classmethod
    def build(cls, model, options: MLMOptions, *, n_tokens: int = 0, eos_id: int | None = None,
              loss_chunk: int = 256) -> "MaskedLM":
        return cls(model, n_tokens, options.mlm_prob)

    @classmethod
    def check(cls, options: MLMOptions, model_config, recipe) -> None:
        if not model_config.mlm_head:
            raise ConfigError("train.objective=mlm needs a masked-LM head, but model.mlm_head=false; "
                              "set model.mlm_head: true")

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
