"""Gist training (Mu, Li, Goodman 2023): the SFT loss on examples laid out instruction → ``<GIST>`` × k →
input → output, under the gist mask, so the output reads the instruction only through the gist tokens.

    L = Σ_{n ∈ output} −log p(y_n | x_{≤n} allowed by the mask) / N_output

The data is the ``examples`` kind's prompt/response form with ``k`` ``<GIST>`` tokens in the prompt
(:func:`genmodels.data.gist_examples.gist_record` writes such records; the run's tokenizer must have
``<GIST>`` as one token: :func:`~genmodels.data.gist_examples.add_gist_token`, and a model from
``model.init_from`` grows its row, the mean embedding). The loss, its per-token normalisation and the
refusal of over-long examples are :mod:`.sft`'s. Each packed example gets its own mask
(:func:`genmodels.nn.gist_mask.gist_allowed_packed`), passed to the model as ``allowed`` pairs:

* ``mask: gist``: tokens after the gist never see the instruction;
* ``mask: neg_control``: they see neither the instruction nor the gist (the instruction is lost);
* ``mask: pos_control``: nothing is hidden (the instruction is read directly).

The same data trains all three, so runs at equal steps and seeds compare. Options
``train.objective: {name: gist, k: 1, mask: gist}``. Requires a model whose forward takes ``allowed``
pairs (decoders; RetNet does not). Encoder–decoders (T5) train on the same data with the prompt as the
source and the response as the target (:mod:`.gist_seq2seq`). After training, :func:`genmodels.compress`
caches the gist and ``genmodels.generate(..., cache=)`` decodes after it.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..config import ConfigError
from ..data.examples import ExampleError
from ..data.gist_examples import GIST_TOKEN, gist_id
from ..nn.gist_mask import MODES, gist_allowed_packed
from ..registry import SEQ2SEQ, capabilities
from .base import Batch, Metrics
from .gist_seq2seq import seq2seq_gist_loss
from .sft import SFT, SFTOptions


@dataclass
class GistOptions(SFTOptions):
    name: str = "gist"
    k: int = 1  # gist tokens per example (the data's <GIST> tokens)
    mask: str = "gist"  # gist | pos_control | neg_control

    def validate(self) -> None:
        super().validate()
        if isinstance(self.k, bool) or not isinstance(self.k, int) or self.k < 1:
            raise ConfigError(f"{self.where('k')}={self.k!r} must be an integer >= 1 (gist tokens per example)")
        self.check_choice("mask", MODES)


class Gist(SFT):
    name = "gist"
    Options = GistOptions
    # the gist mask reaches the model as allowed pairs; decoders through SFT's path (hidden_states), encoder–decoders
    # through their forward (.gist_seq2seq)
    requires = (SFT.requires[0], "mask:allowed")

    def __init__(self, model, chunk: int = 1024, truncate: bool = False, k: int = 1, mask: str = "gist", **router):
        super().__init__(model, chunk, truncate, **router)
        self.k, self.mask = k, mask
        self.gist_id: int | None = None  # the tokenizer's <GIST> (check_data)

    @classmethod
    def build(cls, model, options: GistOptions, *, n_tokens: int = 0, eos_id: int | None = None,
              loss_chunk: int = 256) -> "Gist":
        return cls(model, loss_chunk, options.truncate, options.k, options.mask, **options.router_losses())

    def check_data(self, data) -> None:
        """SFT's checks; then the tokenizer's ``<GIST>`` (ConfigError naming data.tokenizer) and every example's
        k contiguous gist tokens before its output (ExampleError naming the file and line)."""
        super().check_data(data)
        self.gist_id = gist_id(getattr(data, "tokenizer", None))
        if self.gist_id is None:
            raise ConfigError(f"train.objective=gist: the run's tokenizer (data.tokenizer) has no {GIST_TOKEN} token; "
                              "save one with genmodels.data.gist_examples.add_gist_token and point data.tokenizer "
                              "at it")
        for split in (data.train, data.val):
            for j in getattr(split, "examples", ()):
                self._check_example(split.data, int(j), getattr(data, "path", None) or "the examples file")

    def trainable_tokens(self) -> list[int]:
        """``<GIST>``: its row is new (grown as the vocabulary mean) and must learn, under LoRA too (every mask
        trains it: the conditions differ in the mask alone)."""
        return [] if self.gist_id is None else [self.gist_id]

    def _check_example(self, examples, i: int, path: str) -> None:
        tokens, loss = examples.example(i)
        at = np.flatnonzero(tokens == self.gist_id)
        first_out = np.flatnonzero(loss)
        ok = len(at) == self.k and at[-1] - at[0] + 1 == self.k and (not len(first_out) or at[-1] < first_out[0])
        if not ok:
            raise ExampleError(f"{path}, line {int(examples.lines[i])}: the example has {len(at)} {GIST_TOKEN} "
                               f"token(s); train.objective.k={self.k} wants {self.k} contiguous ones between the "
                               "instruction and the input (genmodels.data.gist_examples.gist_record)")

    def allowed(self, batch: Batch):
        """The gist mask's pairs ``(B, T, T)`` of a batch (per packed example)."""
        if self.gist_id is None:
            raise RuntimeError("Gist.check_data(data) must run first: it reads the tokenizer's <GIST> id")
        return gist_allowed_packed(batch["input_ids"], self.gist_id, batch.get("segment_ids"), mode=self.mask)

    def forward(self, batch: Batch) -> tuple[torch.Tensor, Metrics]:
        """SFT's loss with the mask's pairs in the batch (``allowed``; none for ``pos_control``); an
        encoder–decoder's loss over its unpacked source/target pairs (:func:`.gist_seq2seq.seq2seq_gist_loss`)."""
        if SEQ2SEQ in capabilities(self.model):
            if self.gist_id is None:
                raise RuntimeError("Gist.check_data(data) must run first: it reads the tokenizer's <GIST> id")
            return seq2seq_gist_loss(self.model, batch, self.gist_id, self.mask), {}
        if self.mask == "pos_control":
            return super().forward(batch)
        return super().forward({**batch, "allowed": self.allowed(batch)})


__all__ = ["Gist", "GistOptions"]
