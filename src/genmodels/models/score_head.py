"""A reward model: a scalar score head over any decoder, read at the last real token.

    h = decoder.hidden_states(input_ids)          (B, T, D)
    r = score(h[b, last_b])                       (B,)   score: Linear(D, 1, bias=False)

as transformers' ``LlamaForSequenceClassification(num_labels=1)`` computes it. ``last_b``, the last real
token of row ``b``, is found as transformers finds it (:func:`last_real_token`): with a ``pad_token_id``, the
rightmost position whose id is not the pad id (right or left padding; a row of pads only: position 0); without
one, the last position, and a batch of more than one row is refused (its padding could not be told apart).
A caller that knows where each sequence ends (the ``pairs`` batches) passes ``last`` (a boolean mask, one True
per row or pair) instead.

:func:`bradley_terry` is the loss of a chosen score ``r_c`` over a rejected ``r_r`` (Bradley–Terry):
``−log σ(r_c − r_r)``, with the accuracy (share of pairs with ``r_c > r_r``) and the mean margin ``r_c − r_r``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["RewardModel", "bradley_terry", "last_real_token"]


def last_real_token(input_ids: torch.Tensor, pad_token_id: int | None) -> torch.Tensor:
    """``(B,)`` the index of each row's last real token (module docstring: transformers' rule)."""
    b, t = input_ids.shape
    if pad_token_id is None:
        if b != 1:
            raise ValueError("cannot score a batch of more than one row without a pad token id (model.pad_token_id): "
                             "its padding cannot be told from its tokens")
        return torch.full((b,), t - 1, dtype=torch.long, device=input_ids.device)
    real = (input_ids != pad_token_id).long()  # (B, T)
    return (torch.arange(t, device=input_ids.device) * real).argmax(-1)


class RewardModel(nn.Module):
    """``lm`` (a model with ``hidden_states``: any decoder, RetNet) and ``score``, a ``Linear(d_model, 1)``
    without bias; ``forward(input_ids) -> (B,)`` scores. ``pad_token_id``: the model config's by default."""

    def __init__(self, lm: nn.Module, pad_token_id: int | None = None):
        super().__init__()
        self.lm = lm
        self.config = lm.config
        self.pad_token_id = pad_token_id if pad_token_id is not None else getattr(lm.config, "pad_token_id", None)
        self.score = nn.Linear(lm.config.d_model, 1, bias=False)
        nn.init.normal_(self.score.weight, std=lm.config.d_model ** -0.5)

    def scores(self, h: torch.Tensor, last: torch.Tensor) -> torch.Tensor:
        """The score of each True slot of ``last (B, T)`` in row-major order, from hidden states ``h (B, T, D)``."""
        return self.score(h[last]).squeeze(-1).float()  # (N,)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                last: torch.Tensor | None = None, **inputs) -> torch.Tensor:
        """``(B,)`` scores of ``input_ids (B, T)`` (``last``: a ``(B, T)`` mask of the slots to read, else each
        row's last real token); other keyword inputs (``position_ids``, ``segment_ids``, ``allowed``) go to the
        decoder."""
        h = self.lm.hidden_states(input_ids, attention_mask=attention_mask, **inputs)  # (B, T, D)
        if last is None:
            idx = last_real_token(input_ids, self.pad_token_id)
            last = torch.zeros(input_ids.shape, dtype=torch.bool, device=input_ids.device)
            last[torch.arange(len(idx), device=idx.device), idx] = True
        return self.scores(h, last)


def bradley_terry(chosen: torch.Tensor, rejected: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``(mean −log σ(r_c − r_r), {"accuracy", "margin"})`` over pairs of scores ``(P,)``."""
    margin = chosen - rejected
    return -F.logsigmoid(margin).mean(), {"accuracy": (margin.detach() > 0).float().mean(),
                                          "margin": margin.detach().mean()}
