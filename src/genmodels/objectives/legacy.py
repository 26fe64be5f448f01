"""The trainer modules of before issue #9, kept for code that imports them from
``genmodels.data.objectives``: ``forward(x, y) -> loss`` (no metrics) over the objectives here."""
from __future__ import annotations

import torch
from torch import nn

from .mlm import MaskedLM
from .span import SpanCorruption


class MLMLoss(MaskedLM):
    """``forward(x, y)`` -> masked-LM loss of the window ``x (B, T)`` (``y`` unused)."""

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        return super().forward({"input_ids": x})[0]


class SpanCorruptionLoss(SpanCorruption):
    """``forward(x, y)`` -> span-corruption loss of the window ``x (B, T)`` (``y`` unused)."""

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        return super().forward({"input_ids": x})[0]


def objective_module(objective: str, model: nn.Module, *, n_tokens: int, eos_id: int | None, mlm_prob: float = 0.15,
                     noise_density: float = 0.15, mean_span_length: float = 3.0) -> nn.Module:
    """The old trainer's loss module (``forward(x, y) -> loss``) for a non-causal objective."""
    if objective == "mlm":
        return MLMLoss(model, n_tokens, mlm_prob)
    if objective == "span":
        return SpanCorruptionLoss(model, n_tokens, eos_id, noise_density, mean_span_length)
    raise ValueError(f"unknown objective {objective!r}; have mlm, span")
