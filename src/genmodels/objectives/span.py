"""T5 span corruption (Raffel et al., 2020, §3.1.4): the noising transform
(:func:`genmodels.data.objectives.span_corrupt`) replaces ~15% of the tokens, in spans of mean
length 3, by sentinels; the decoder reconstructs each sentinel and the tokens it hid, then EOS.

    L = 1/|y| Σ_t −log p(y_t | x̃, y_<t)

Batch: ``input_ids (B, T)`` — the clean window; the noise pattern draws from a numpy generator
seeded from the global torch RNG (seeded and checkpointed by the trainer).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..data.objectives import IGNORE, N_SENTINELS, span_corrupt
from .base import Batch, Metrics, Objective


class SpanCorruption(Objective):
    name = "span"
    extra_tokens = N_SENTINELS  # T5's 100 sentinels after the tokenizer's ids, highest first

    def __init__(self, model, n_tokens: int, eos_id: int | None, noise_density: float = 0.15,
                 mean_span_length: float = 3.0):
        super().__init__(model)
        self.n_tokens, self.eos_id = n_tokens, eos_id
        self.noise_density, self.mean_span_length = noise_density, mean_span_length

    def forward(self, batch: Batch) -> tuple[torch.Tensor, Metrics]:
        x = batch["input_ids"]
        rng = np.random.default_rng(int(torch.randint(0, 2 ** 62, (1,))))
        inp, tgt = span_corrupt(x, sentinel_start=self.n_tokens + self.extra_tokens - 1, eos_id=self.eos_id,
                                noise_density=self.noise_density, mean_span_length=self.mean_span_length, rng=rng,
                                n_sentinels=self.extra_tokens)
        return span_loss(self.model, {"input_ids": torch.from_numpy(inp).to(x.device),
                                      "targets": torch.from_numpy(tgt).to(x.device)}), {}


def span_loss(model, batch: Batch) -> torch.Tensor:
    """Teacher-forced cross-entropy of ``targets`` given ``input_ids`` (an encoder–decoder)."""
    targets = batch["targets"]
    logits = model(batch["input_ids"], model.shift_right(targets), batch.get("attention_mask"))
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1), ignore_index=IGNORE)
