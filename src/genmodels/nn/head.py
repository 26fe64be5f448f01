"""Unembedding: logits = h · Wᵀ (+ b), W ∈ R^{V×D}; tied to the token embedding (Press & Wolf, 2017)
or a separate matrix."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class LMHead(nn.Module):
    """Projects hidden states ``(B, T, D)`` to logits ``(B, T, V)``.

    When ``tie_to`` is given the head owns no weight: it reads the embedding module's weight at
    call time (a reference to the *module*, as torchtune's TiedLinear, so tying survives FSDP and
    ``.to()``), and the state dict holds the matrix once.
    """

    def __init__(self, d_model: int, vocab_size: int, tie_to: nn.Embedding | None = None, bias: bool = False):
        super().__init__()
        if tie_to is None:
            self.weight = nn.Parameter(torch.empty(vocab_size, d_model))
            nn.init.normal_(self.weight, std=0.02)
        else:
            self.__dict__["_tied"] = tie_to  # not registered: avoids a duplicate key and parameter
        self.bias = nn.Parameter(torch.zeros(vocab_size)) if bias else None

    @property
    def tied(self) -> bool:
        return "_tied" in self.__dict__

    def get_weight(self) -> torch.Tensor:
        return self.__dict__["_tied"].weight if self.tied else self.weight

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return F.linear(h, self.get_weight(), self.bias)


class Pooler(nn.Module):
    """BERT's sentence output: ``tanh(W · h[:, 0] + b)`` over the first ([CLS]) position.
    ``(B, T, D) -> (B, D)``."""

    def __init__(self, d_model: int):
        super().__init__()
        self.dense = nn.Linear(d_model, d_model)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.dense(h[:, 0]))


class MLMHead(nn.Module):
    """Masked-LM head (Devlin et al., 2019): ``logits = Norm(act(W h + b)) · Eᵀ + b_out``.

    A transform (dense, activation, norm) followed by an :class:`LMHead` with an output bias,
    usually tied to the token embedding. ``(B, T, D) -> (B, T, V)``.
    """

    def __init__(self, d_model: int, vocab_size: int, act, norm: nn.Module, tie_to: nn.Embedding | None = None):
        super().__init__()
        self.dense = nn.Linear(d_model, d_model)
        self.act = act
        self.norm = norm
        self.head = LMHead(d_model, vocab_size, tie_to=tie_to, bias=True)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(self.act(self.dense(h))))
