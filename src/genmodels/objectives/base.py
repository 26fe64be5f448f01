"""The objective contract: what every loss in :mod:`genmodels.objectives` declares.

An objective is a module holding the model it trains (as ``.model``, so checkpoints keep the
genmodels keys) whose ``forward(batch)`` gives ``(loss, metrics)`` for a dict batch:

    loss     a scalar tensor, the mean over the batch (what backward() is called on)
    metrics  name → scalar tensor, averaged by the train step over micro-steps and processes,
             written to metrics.jsonl and shown in the progress bar (empty for most objectives)

DDP and FSDP2 wrap the objective, so its ``forward`` is the one entry point (their hooks fire).
Besides the loss it declares its throughput unit (``tokens``, ``images``, ``pairs``), whether the
per-token FLOP count (and so MFU) applies, how it evaluates (mean validation loss; perplexity for
token objectives) and its end-of-run samples.
"""
from __future__ import annotations

import torch
from torch import nn

Batch = dict[str, torch.Tensor]
Metrics = dict[str, torch.Tensor]


class Objective(nn.Module):
    """Base class: subclasses set the class attributes and implement :meth:`forward`."""

    name = ""
    unit = "tokens"  # what throughput counts: tokens, images, pairs
    flops_apply = True  # whether FLOPs per token (and MFU) describe a step
    perplexity = True  # whether exp(validation loss) means something
    extra_tokens = 0  # ids added after the tokenizer's ordinary ones ([MASK], sentinels)
    usage = "generate"  # what the run summary suggests doing with the model: generate | embed

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, batch: Batch) -> tuple[torch.Tensor, Metrics]:
        raise NotImplementedError

    def units(self, batch: Batch) -> int:
        """How many throughput units ``batch`` holds (tokens: every input id)."""
        return batch["input_ids"].numel()

    def bar_metrics(self, metrics: dict[str, float]) -> dict[str, float]:
        """The metrics the progress bar shows (all of them unless the objective logs many)."""
        return metrics

    def after_step(self, step: int) -> None:
        """Called after optimizer step number ``step`` (1-based) is applied: an EMA of the weights updates here."""

    def final_state(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The state dict ``final/`` holds, from the objective's full state (model keys): all of it by default."""
        return state

    def samples(self, model: nn.Module, tokenizer, sample_cfg, eos: int | None, seed: int, say) -> list[str]:
        """End-of-run samples of the final ``model`` (none unless the objective generates)."""
        return []
