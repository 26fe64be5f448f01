"""A reward model trained on preference pairs: a score head over the decoder, the Bradley–Terry loss.

    r(x, y) = score(h_last(x, y))                 the score head at the reply's last token
    L = −log σ(r(x, y_w) − r(x, y_l))             mean over the global batch's pairs

(:mod:`genmodels.models.score_head`). Both replies of a pair come from one forward (:mod:`.pairwise`): the
score is read at each reply's last slot. Metrics: ``accuracy`` (the share of pairs scored the right way round)
and ``margin`` (the mean ``r_w − r_l``). The head is the objective's own parameter (``score.weight`` in
checkpoints, beside the model's keys); ``final/`` is a genmodels reward folder (the decoder's files and
``score.safetensors``: :func:`genmodels.reward.save_reward`), which ``genmodels score`` reads.

Options: ``train.objective: reward`` (none of its own). Data: the ``pairs`` kind.
"""
from __future__ import annotations

from pathlib import Path

import torch

from ..models.score_head import RewardModel, bradley_terry
from ..registry import GENERATES
from .base import Batch, Metrics, Objective, PhaseSpec
from .pairwise import MASK_NEEDS, count_pairs, last_slots, pair_hidden

SCORE_KEY = "score.weight"


class RewardObjective(Objective):
    name = "reward"
    requires = (GENERATES, "method:hidden_states", *MASK_NEEDS)  # (one forward per pair: .pairwise)
    data_kinds = ("pairs",)
    unit = "pairs"
    flops_apply = False
    perplexity = False
    usage = "score"

    def __init__(self, model):
        super().__init__(model)
        self.score = RewardModel(model).score  # Linear(d_model, 1, bias=False), the reward model's init
        self._final_score: torch.Tensor | None = None

    def forward(self, batch: Batch) -> tuple[torch.Tensor, Metrics]:
        h = pair_hidden(self.model, batch)  # (B, T, D)
        last_chosen, last_rejected = last_slots(batch)  # (B, T) bool each, one True per pair
        chosen = self.score(h[last_chosen]).squeeze(-1).float()  # (P,)
        rejected = self.score(h[last_rejected]).squeeze(-1).float()
        return bradley_terry(chosen, rejected)

    def units(self, batch: Batch) -> int:
        return count_pairs(batch)

    def phases(self) -> list[PhaseSpec]:
        """One phase whose micro-batches weigh by their pairs."""
        return [PhaseSpec("model", self, tokens=count_pairs)]

    def final_state(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The decoder's keys; the score head is kept for :meth:`save_final`."""
        self._final_score = state[SCORE_KEY]
        return {k: v for k, v in state.items() if k != SCORE_KEY}

    def save_final(self, model, folder: Path, tokenizer) -> Path:
        """``final/``: a genmodels reward folder (the decoder and its score head)."""
        from ..reward import save_reward
        reward = RewardModel(model)
        with torch.no_grad():
            reward.score.weight.copy_(self._final_score)
        return save_reward(reward, folder, tokenizer)

    def next_command(self, run_dir, program: str, sample_cfg) -> str:
        import shlex
        return f"  score:      {program} score {shlex.quote(str(run_dir))} --prompt \"…\" --response \"…\""


__all__ = ["RewardObjective"]
