"""T5 span corruption (Raffel et al., 2020, §3.1.4): the noising transform
(:func:`genmodels.data.objectives.span_corrupt`) replaces ~15% of the tokens, in spans of mean
length 3, by sentinels; the decoder reconstructs each sentinel and the tokens it hid, then EOS.

    L = 1/|y| Σ_t −log p(y_t | x̃, y_<t)

Batch: ``input_ids (B, T)`` — the clean window; the noise pattern draws from a numpy generator
seeded from the global torch RNG (seeded and checkpointed by the trainer).

Options (``train.objective: {name: span, span_noise_density: 0.15, span_mean_length: 3.0}``); requires an
encoder–decoder (the ``seq2seq`` capability).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..config import ConfigError
from ..data.objectives import IGNORE, N_SENTINELS, span_corrupt, span_counts
from ..registry import SEQ2SEQ
from .base import Batch, Metrics, Objective, ObjectiveOptions, check_number


@dataclass
class SpanOptions(ObjectiveOptions):
    name: str = "span"
    span_noise_density: float = 0.15  # share of tokens corrupted
    span_mean_length: float = 3.0  # mean corrupted-span length

    def validate(self) -> None:
        check_number(self, "span_noise_density", lo=0.0, hi=1.0, lo_open=True, hi_open=True)
        check_number(self, "span_mean_length", lo=1.0)


class SpanCorruption(Objective):
    name = "span"
    Options = SpanOptions
    requires = (SEQ2SEQ,)
    extra_tokens = N_SENTINELS  # T5's 100 sentinels after the tokenizer's ids, highest first

    def __init__(self, model, n_tokens: int, eos_id: int | None, noise_density: float = 0.15,
                 mean_span_length: float = 3.0):
        super().__init__(model)
        self.n_tokens, self.eos_id = n_tokens, eos_id
        self.noise_density, self.mean_span_length = noise_density, mean_span_length

    @classmethod
    def build(cls, model, options: SpanOptions, *, n_tokens: int = 0, eos_id: int | None = None,
              loss_chunk: int = 256) -> "SpanCorruption":
        return cls(model, n_tokens, eos_id, options.span_noise_density, options.span_mean_length)

    @classmethod
    def check(cls, options: SpanOptions, model_config, recipe) -> None:
        """The windows must make at most as many spans as there are sentinel ids."""
        seq_len = recipe.data.seq_len
        if seq_len < 2:
            raise ConfigError(f"data.seq_len={seq_len} must be >= 2 for train.objective=span")
        n_spans = span_counts(seq_len, options.span_noise_density, options.span_mean_length)[1]
        if n_spans > N_SENTINELS:
            raise ConfigError(
                f"span corruption of data.seq_len={seq_len} with {options.where('span_noise_density')}="
                f"{options.span_noise_density} and {options.where('span_mean_length')}={options.span_mean_length} "
                f"makes {n_spans} spans, more than the {N_SENTINELS} sentinel ids; lower data.seq_len or "
                f"{options.where('span_noise_density')}, or raise {options.where('span_mean_length')}")

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
