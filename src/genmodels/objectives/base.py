"""The objective contract: an objective owns its run; training/ only asks it.

An objective is a module holding the model it trains (as ``.model``, so checkpoints keep the
genmodels keys) whose ``forward(batch)`` gives ``(loss, metrics)`` for a dict batch:

    loss     a scalar tensor, the mean over the batch (what backward() is called on)
    metrics  name → scalar tensor, averaged by the train step over micro-steps and processes,
             written to metrics.jsonl and shown in the progress bar (empty for most objectives)

DDP and FSDP wrap the objective, so its ``forward`` is the one entry point (their hooks fire).
Besides the loss it declares, and the trainer asks (never a branch on a family or a class):

    Options      its recipe options, a StrictConfig (``train.objective: {name: …, <options>}``)
    data_kinds   the data it reads (:mod:`genmodels.data.kinds`: tokens, examples, images)
    requires     what the model must offer: registry capabilities (``generates``, …) and methods
    build        the one way to make it: ``cls.build(model, options, n_tokens=, eos_id=)``
    check        its options against the model config (ConfigError naming the field), before any work
    phases()     the optimizer phases of a step (one by default; a GAN's D then G)
    watch()      what stops a run that diverges (nothing by default)
    units(b)     what the loop counts (tokens, images, pairs)
    evaluate()   validation (mean loss over the validation batches by default), extra metrics
    samples()    end-of-run samples;  final_state()  what ``final/`` holds;  next_command()  the summary's hint
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from ..config import StrictConfig
from ..values import number

Batch = dict[str, torch.Tensor]
Metrics = dict[str, torch.Tensor]


@dataclass
class ObjectiveOptions(StrictConfig):
    """Base of every objective's options (``train.objective`` in a recipe): ``name`` and, in subclasses,
    the options only that objective reads (each validated by its ``validate``, named by dotted path)."""

    section = "train.objective"
    name: str = ""


@dataclass
class PhaseSpec:
    """One optimizer's part of a step, as an objective declares it. ``loss`` None: the (DDP/FSDP-wrapped,
    compiled) objective itself; ``lr``, ``betas``, ``grad_clip`` None: the recipe's ``train.*`` value."""

    name: str
    module: nn.Module  # whose parameters this phase's optimizer updates (and whose gradients it clips)
    loss: Callable | None = None  # batch -> (loss, metrics)
    lr: float | None = None
    betas: list[float] | None = None
    grad_clip: float | None = None
    # tokens(batch): what the loss of ``batch`` is a mean over (labelled tokens). Set: the step's loss is the sum
    # over the GLOBAL batch's tokens / their number (each micro-batch weighed by its share); None: the mean of
    # the micro-batches' means (each weighs 1/n)
    tokens: Callable[[dict], int] | None = None


class Watch:
    """What stops a run that diverges. This one watches nothing: a non-finite loss or gradient stops the run
    (NonFiniteError) with the last good checkpoint intact. A subclass (the GAN's) sets ``error`` — the
    exception it stops with, after saving what can be saved — and reads each step's losses."""

    error: type[Exception] | None = None
    stuck = False

    def update(self, losses: dict[str, float]) -> str | None:
        """The reason to stop after a step with these phase losses (a sentence), or None."""
        return None

    def state(self) -> dict[str, Any]:
        """What a checkpoint's state.json keeps, so a resumed run continues it."""
        return {}

    def load_state(self, state: dict) -> None:
        """Continue from a checkpoint's state."""

    def advice(self, model_config) -> str:
        """What to try after the run stopped."""
        return ""


class Objective(nn.Module):
    """Base class: subclasses set the class attributes and implement :meth:`forward`."""

    name = ""
    Options: type[ObjectiveOptions] = ObjectiveOptions
    data_kinds: tuple[str, ...] = ("tokens",)  # the data kinds it reads; a recipe's data.kind picks (default: first)
    requires: tuple[str, ...] = ()  # registry capabilities, "method:<name>" of the model class, "config:<field>",
    # "mask:<rule>" a mask rule its forward implements (nn/masks.RULES, the class's mask_rules)
    unit = "tokens"  # what throughput counts: tokens, images, pairs
    flops_apply = True  # whether FLOPs per token (and MFU) describe a step
    perplexity = True  # whether exp(validation loss) means something
    extra_tokens = 0  # ids added after the tokenizer's ordinary ones ([MASK], sentinels)
    usage = "generate"  # what the run summary suggests doing with the model: generate | embed | sample
    distributed = True  # whether DDP / FSDP runs it (False: one process, said in one line)
    initial_weights = False  # whether it keeps the run's starting weights (DPO's frozen reference): a resume loads
    # model.init_from again before the checkpoint, so what it kept is what the fresh run kept

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    @classmethod
    def build(cls, model: nn.Module, options: ObjectiveOptions, *, n_tokens: int = 0,
              eos_id: int | None = None, loss_chunk: int = 256) -> "Objective":
        """The objective ``options`` describe around ``model`` (``n_tokens``: the tokenizer's ordinary ids;
        ``loss_chunk``: rows per chunk of a fused head + cross-entropy, ``train.loss_chunk``)."""
        return cls(model)

    @classmethod
    def check(cls, options: ObjectiveOptions, model_config, recipe) -> None:
        """ConfigError naming the option (or model / data / sample field) this model or the recipe's data
        (``recipe.data``, ``recipe.sample``) cannot use, before any work."""

    def check_data(self, data) -> None:
        """ConfigError when the prepared data (a RunData) does not fit the model."""

    def trainable_tokens(self) -> list[int]:
        """Token ids whose embedding rows must learn even when the base is frozen (a LoRA run trains them:
        ``train.lora.trainable_tokens: auto``): the tokens this objective adds (gist's ``<GIST>``). Known after
        :meth:`check_data`; none by default."""
        return []

    def forward(self, batch: Batch) -> tuple[torch.Tensor, Metrics]:
        raise NotImplementedError

    def units(self, batch: Batch) -> int:
        """How many throughput units ``batch`` holds (tokens: every input id)."""
        return batch["input_ids"].numel()

    def phases(self) -> list[PhaseSpec]:
        """The phases of one optimizer step, in order: one over the whole objective by default."""
        return [PhaseSpec("model", self)]

    def watch(self) -> Watch:
        return Watch()

    def before_step(self, step: int) -> None:
        """Called before step ``step`` (0-based: the steps done so far) runs."""

    def after_step(self, step: int) -> None:
        """Called after optimizer step number ``step`` (1-based) is applied: an EMA of the weights updates here."""

    def bar_metrics(self, metrics: dict[str, float]) -> dict[str, float]:
        """The metrics the progress bar shows (all of them unless the objective logs many)."""
        return metrics

    def evaluate(self, ctx) -> tuple[float | None, dict[str, float]]:
        """``(validation loss, extra metrics)``: the mean loss of the (wrapped) objective over the first
        validation batches (``ctx.mean_loss``: training/loop.py's EvalContext) and no extra metrics."""
        return ctx.mean_loss(), {}

    def final_state(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The state dict ``final/`` holds, from the objective's full state (model keys): all of it by default."""
        return state

    def save_final(self, model: nn.Module, folder, tokenizer):
        """Write the final ``model`` (built from :meth:`final_state`) to ``folder`` (``RUN/final``): a genmodels
        folder by default; an objective whose model has more than the family's files (a reward model's score
        head) writes its own. Returns the folder."""
        from ..io import save
        return save(model, folder, tokenizer)

    def samples(self, model: nn.Module, ctx) -> list[str]:
        """End-of-run samples of the final ``model`` (none unless the objective generates); ``ctx`` holds
        ``tokenizer``, ``sample`` (the recipe's sample: section), ``eos_id``, ``seed``, ``say``, ``run_dir``."""
        return []

    def prepare_evaluation(self, data) -> None:
        """Before the first step of a run under a time budget: load what evaluation needs once (so the budget's
        fit counts it)."""

    def next_command(self, run_dir, program: str, sample_cfg) -> str:
        """The summary's last line: how to use the trained model."""
        import shlex
        where = shlex.quote(str(run_dir))
        if self.usage == "embed":
            return f"  embed:      {program} embed {where} \"some text\""
        return f"  sample:     {program} generate {where}"


def fits(objective: type[Objective], family) -> str | None:
    """What ``family`` (a registry Family) lacks that ``objective`` requires (one phrase), or None when it fits."""
    for need in objective.requires:
        kind, _, what = need.partition(":")
        if kind == "method" and not callable(getattr(family.model_class, what, None)):
            return f"{what}() ({family.model_class.__name__} has none)"
        if kind == "config" and what not in {f.name for f in dataclasses.fields(family.config_class)}:
            return f"the model field {what!r} ({family.config_class.__name__} has none)"
        if kind == "mask" and what not in getattr(family.model_class, "mask_rules", ()):
            return f"the {what!r} mask rule ({family.model_class.__name__} does not implement it)"
        if kind in ("method", "config", "mask"):
            continue
        if not family.can(need):
            return f"the {need!r} capability"
    return None


def check_number(options: StrictConfig, name: str, lo: float | None = None, hi: float | None = None,
                 lo_open: bool = False, hi_open: bool = False, allow_none: bool = False) -> None:
    """ConfigError naming option ``name`` (its dotted path) unless it is a number in the range (or None, where allowed)."""
    v = getattr(options, name)
    if not (v is None and allow_none):
        number(options.where(name), v, lo, hi, lo_open, hi_open)
