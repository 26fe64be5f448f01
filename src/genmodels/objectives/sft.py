"""Supervised fine-tuning: the causal loss on examples, on the tokens the examples mark for the loss only.

    L = Σ_{n ∈ labelled} −log p(y_n | x_{≤n}) / N_labelled

The batch is the ``examples`` data kind's (:mod:`genmodels.data.example_pack`): ``labels`` hold the next
token where the record trains it — an assistant turn of ``messages`` (rendered by the model's chat
template, or the plain one), a ``response`` — and −100 everywhere else (prompts, user and system turns,
the template's own marks around them, padding). So the loss, and its gradient, never depend on what the
model predicts at a prompt position: a prompt token only matters as context.

**Per-token normalisation.** ``N_labelled`` counts the labelled tokens of the *global* batch (every
micro-batch of the accumulation, on every process), not of each micro-batch: the step's loss is the sum
over all labelled tokens divided by their number, so a long reply weighs by its tokens wherever it falls,
and accumulating 4 micro-batches computes what one batch 4 times as large computes (to float rounding;
tested to 1e-6), on one process or N. The objective says so through the contract: its phase's
``tokens(batch)`` counts what each micro-batch's mean is over, and the train step
(:class:`genmodels.training.steps.TrainStep`) weighs micro-batch ``m`` by ``count_m · world / total``
(data parallelism then averages the gradients over the processes). The causal objective keeps the mean
of micro-batch means (its token windows hold equal counts). Validation reports the mean over the
validation batches of each batch's per-token loss.

**Examples over the context** are refused, naming the file and line (the reply's last tokens, its end of
turn included, would be cut and the model would learn replies that never end), unless the option
``truncate: true`` (then they are cut to ``data.seq_len + 1`` tokens, one line says how many).

Options (``train.objective: {name: sft, truncate: false}``), and the causal objective's router options
for a sparse MoE model. LoRA adapters, where wanted, are the run's (``train.lora``: docs/training.md).
"""
from __future__ import annotations

from dataclasses import dataclass

from ..config import ConfigError
from ..data.examples import ExampleError
from .base import Batch, PhaseSpec
from .causal import CausalLM, CausalOptions
from .losses import IGNORE_INDEX


@dataclass
class SFTOptions(CausalOptions):
    name: str = "sft"
    truncate: bool = False  # an example over data.seq_len + 1 tokens: refused (false) or cut to fit (true)

    def validate(self) -> None:
        super().validate()
        if not isinstance(self.truncate, bool):
            raise ConfigError(f"{self.where('truncate')}={self.truncate!r} must be true or false")


class SFT(CausalLM):
    name = "sft"
    Options = SFTOptions
    data_kinds = ("examples",)

    def __init__(self, model, chunk: int = 1024, truncate: bool = False, **router):
        super().__init__(model, chunk, **router)
        self.truncate = truncate

    @classmethod
    def build(cls, model, options: SFTOptions, *, n_tokens: int = 0, eos_id: int | None = None,
              loss_chunk: int = 256) -> "SFT":
        return cls(model, loss_chunk, options.truncate, **options.router_losses())

    def label_tokens(self, batch: Batch) -> int:
        """The labelled tokens of ``batch`` (what its loss is the mean over)."""
        return int((batch["labels"] != IGNORE_INDEX).sum())

    def phases(self) -> list[PhaseSpec]:
        """One phase whose micro-batches weigh by their labelled tokens (the module docstring)."""
        return [PhaseSpec("model", self, tokens=self.label_tokens)]

    def check_data(self, data) -> None:
        """ExampleError naming the file and line of the longest example over ``data.seq_len + 1`` tokens (unless
        ``truncate``; then one line says how many were cut)."""
        for name, split in (("train", data.train), ("validation", data.val)):
            cut = getattr(split, "truncated", [])
            if cut and not self.truncate:
                line, n = max(cut, key=lambda t: t[1])
                where = getattr(data, "path", None) or "the examples file"
                raise ExampleError(
                    f"{where}, line {line}: the example is {n} tokens, over data.seq_len + 1 = {split.seq_len + 1} "
                    f"({len(cut)} {name} example(s) are); its reply would be cut short, so it is refused: raise "
                    "data.seq_len, shorten or drop it, or set train.objective.truncate: true to cut such examples")


__all__ = ["SFT", "SFTOptions"]
