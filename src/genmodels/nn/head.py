"""Unembedding: logits = h · Wᵀ (+ b), W ∈ R^{V×D}; tied to the token embedding (Press & Wolf, 2017)
or a separate matrix."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .linear import LinearFactory, is_plain, plain_linear


class LMHead(nn.Module):
    """Projects hidden states ``(B, T, D)`` to logits ``(B, T, V)``.

    When ``tie_to`` is given the head owns no weight: it reads the embedding module's weight at
    call time (a reference to the *module*, as torchtune's TiedLinear, so tying survives FSDP and
    ``.to()``), and the state dict holds the matrix once.

    ``linear`` (a factory of :mod:`genmodels.nn.linear`, role ``head``; untied heads only — a tied
    head reads the embedding): ``None`` builds the weight here as always. A factory that returns a
    plain ``nn.Linear`` gives its weight and bias to the head (same keys ``weight`` / ``bias``);
    anything else (an adapter, a quantised linear) becomes ``proj`` and computes the logits, and
    :meth:`get_weight` then refuses (there is no plain matrix to read).
    """

    def __init__(self, d_model: int, vocab_size: int, tie_to: nn.Embedding | None = None, bias: bool = False,
                 *, linear: LinearFactory | None = None):
        super().__init__()
        self.proj = None
        if tie_to is not None:
            self.__dict__["_tied"] = tie_to  # not registered: avoids a duplicate key and parameter
        elif linear is not None and linear is not plain_linear:  # the plain factory: today's weight, same draws
            lin = linear(d_model, vocab_size, bias, role="head")
            if not is_plain(lin):
                self.proj, self.bias = lin, None
                return
            self.weight, self.bias = lin.weight, lin.bias
            return
        else:
            self.weight = nn.Parameter(torch.empty(vocab_size, d_model))
            nn.init.normal_(self.weight, std=0.02)
        self.bias = nn.Parameter(torch.zeros(vocab_size)) if bias else None

    @property
    def tied(self) -> bool:
        return "_tied" in self.__dict__

    def get_weight(self) -> torch.Tensor:
        """The ``(V, D)`` matrix (the embedding's when tied); refused for a head built as another module."""
        if self.proj is not None:
            raise ValueError(f"the LM head is a {type(self.proj).__name__}, not a plain weight: "
                             "compute logits with head(h)")
        if not self.tied:
            return self.weight
        tied = self.__dict__["_tied"]  # a TokenEmbedding's table holds its trainable rows (nn/trainable_tokens.py)
        return tied.table() if callable(getattr(tied, "table", None)) else tied.weight

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        if self.proj is not None:
            return self.proj(h)
        return F.linear(h, self.get_weight(), self.bias)


class Pooler(nn.Module):
    """BERT's sentence output: ``tanh(W · h[:, 0] + b)`` over the first ([CLS]) position.
    ``(B, T, D) -> (B, D)``."""

    def __init__(self, d_model: int, *, linear: LinearFactory = plain_linear):
        super().__init__()
        self.dense = linear(d_model, d_model, True, role="pooler")

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.dense(h[:, 0]))


class MLMHead(nn.Module):
    """Masked-LM head (Devlin et al., 2019): ``logits = Norm(act(W h + b)) · Eᵀ + b_out``.

    A transform (dense, activation, norm) followed by an :class:`LMHead` with an output bias,
    usually tied to the token embedding. ``(B, T, D) -> (B, T, V)``. ``linear``: the factory of the
    transform (role ``mlm_dense``) and of an untied head (see :class:`LMHead`); ``None``: plain.
    """

    def __init__(self, d_model: int, vocab_size: int, act, norm: nn.Module, tie_to: nn.Embedding | None = None,
                 *, linear: LinearFactory | None = None):
        super().__init__()
        self.dense = (linear or plain_linear)(d_model, d_model, True, role="mlm_dense")
        self.act = act
        self.norm = norm
        self.head = LMHead(d_model, vocab_size, tie_to=tie_to, bias=True, linear=linear)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(self.act(self.dense(h))))
