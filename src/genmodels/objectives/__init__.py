"""Every training loss, one file per objective (:mod:`.base` holds the contract).

    causal  next-token cross-entropy (decoders)             causal.py
    mlm     masked LM, BERT's 80/10/10 masking (encoders)   mlm.py
    span    T5 span corruption (encoder–decoders)           span.py
    diffusion  denoising loss, label dropout, EMA (images)  diffusion.py
    gan     two players, D then G (images)                  gan.py

:func:`build_objective` makes the trainer's module for a recipe; data transforms (masking, span
noising) stay in :mod:`genmodels.data.objectives`.
"""
from __future__ import annotations

from torch import nn

from .base import Batch, Metrics, Objective
from .causal import CausalLM
from .diffusion import DiffusionObjective
from .gan import GANObjective
from .mlm import MaskedLM
from .span import SpanCorruption

OBJECTIVES = {"causal": CausalLM, "mlm": MaskedLM, "span": SpanCorruption, "diffusion": DiffusionObjective,
              "gan": GANObjective}
_FAMILY_OBJECTIVE = {"decoder": "causal", "encoder": "mlm", "seq2seq": "span"}


def objective_for(family: str, objective: str = "auto") -> str:
    """The objective a model family trains with (``auto``), or a check that ``objective`` fits it."""
    from ..config import ConfigError
    want = _FAMILY_OBJECTIVE.get(family)
    if want is None:  # a family registered later (RetNet, …) names its own in its registry entry
        from ..registry import families
        fam = families().get(family)
        want = fam.objective if fam is not None else None
    if objective == "auto":
        return want
    if objective != want:
        raise ConfigError(f"train.objective={objective!r} does not fit model.family={family!r}; "
                          f"use {want!r} (or auto)")
    return objective


def extra_tokens(objective: str) -> int:
    """Ids the objective adds after the tokenizer's vocabulary ([MASK]; T5's 100 sentinels)."""
    cls = OBJECTIVES.get(objective)
    return cls.extra_tokens if cls is not None else 0


def build_objective(objective: str, model: nn.Module, *, n_tokens: int, eos_id: int | None, chunk: int = 1024,
                    mlm_prob: float = 0.15, noise_density: float = 0.15, mean_span_length: float = 3.0,
                    router_aux_loss: str = "switch", router_aux_coef: float = 1e-2,
                    router_z_coef: float = 1e-3) -> Objective:
    """The trainer's module for ``objective`` (a name in :data:`OBJECTIVES`) around ``model``
    (``router_*``: the sparse-MoE router losses of a causal objective, :mod:`.router`)."""
    if objective == "causal":
        return CausalLM(model, chunk, router_aux_loss, router_aux_coef, router_z_coef)
    if objective == "mlm":
        return MaskedLM(model, n_tokens, mlm_prob)
    if objective == "span":
        return SpanCorruption(model, n_tokens, eos_id, noise_density, mean_span_length)
    raise ValueError(f"unknown objective {objective!r}; have {', '.join(OBJECTIVES)}")


__all__ = ["Batch", "CausalLM", "DiffusionObjective", "MaskedLM", "Metrics", "OBJECTIVES", "Objective",
           "SpanCorruption", "build_objective", "extra_tokens", "objective_for"]
