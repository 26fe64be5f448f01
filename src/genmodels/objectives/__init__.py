"""Every way of training, one file per objective (:mod:`.base` holds the contract; losses in :mod:`.losses`).

    causal     next-token cross-entropy (decoders, RetNet)        causal.py   (+ router.py: MoE router losses)
    sft        causal loss on examples' labelled (assistant) tokens,  sft.py
               normalised per token over the global batch
    mlm        masked LM, BERT's 80/10/10 masking (encoders)      mlm.py
    span       T5 span corruption (encoder–decoders)              span.py
    diffusion  denoising loss, label dropout, EMA (images)        diffusion.py (+ images.py)
    gan        two players, D then G (images)                     gan.py (+ gan_losses, gan_ema, gan_watch)
    gist       SFT under the gist mask: instruction → <GIST>×k → input,  gist.py
               output (mask gist | pos_control | neg_control); T5: prompt = source
    dpo        DPO / IPO / hinge on preference pairs against a     dpo.py (+ pairwise.py: one forward per pair)
               frozen or adapters-off reference
    reward     Bradley–Terry on preference pairs, a score head    reward.py (final/: a reward folder)
               over the decoder (a reward model)
    spae       pixel + VQ terms per pyramid depth + semantic loss  spae.py (a frozen LM's words as the codebook)

An objective states what a model must offer (``requires``: registry capabilities, methods, config fields);
any objective that fits trains any family, and a family names the default one (``train.objective: auto``).
:func:`build_objective` is the one way to make one (the trainer's, the arena's, the tests').
"""
from __future__ import annotations

from typing import Any

from torch import nn

from ..config import ConfigError
from .base import Batch, Metrics, Objective, ObjectiveOptions, PhaseSpec, Watch, fits
from .causal import CausalLM
from .diffusion import DiffusionObjective
from .dpo import DPO
from .gan import GANObjective
from .gist import Gist
from .mlm import MaskedLM
from .reward import RewardObjective
from .sft import SFT
from .spae import SPAEObjective
from .span import SpanCorruption

OBJECTIVES: dict[str, type[Objective]] = {cls.name: cls for cls in (CausalLM, MaskedLM, SpanCorruption,
                                                                   DiffusionObjective, GANObjective, SFT, DPO, Gist,
                                                                   RewardObjective, SPAEObjective)}


def objective_for(family: str, objective: str = "auto") -> str:
    """The objective a model family trains with (``auto``: the family's default), or a check that ``objective``
    fits it: a one-line ConfigError naming train.objective and what the model lacks."""
    from ..registry import get_family
    fam = get_family(family)
    if objective == "auto":
        return fam.objective
    if not isinstance(objective, str) or objective not in OBJECTIVES:
        raise ConfigError(f"train.objective={objective!r} is not allowed; choose one of auto, {', '.join(OBJECTIVES)}")
    lacks = fits(OBJECTIVES[objective], fam)
    if lacks is not None:
        raise ConfigError(f"train.objective={objective!r} does not fit model.family={family!r}: it needs {lacks}; "
                          f"use {fam.objective!r} (or auto)")
    return objective


def extra_tokens(objective: str) -> int:
    """Ids the objective adds after the tokenizer's vocabulary ([MASK]; T5's 100 sentinels)."""
    cls = OBJECTIVES.get(objective)
    return cls.extra_tokens if cls is not None else 0


def build_objective(objective: str, model: nn.Module, options: ObjectiveOptions | None = None, *, n_tokens: int = 0,
                    eos_id: int | None = None, loss_chunk: int = 256, **option_values: Any) -> Objective:
    """The trainer's module for ``objective`` (a name in :data:`OBJECTIVES`) around ``model``: from ``options``
    (its Options), or from ``option_values`` over the defaults (``mlm_prob=0.3``)."""
    if objective not in OBJECTIVES:
        raise ValueError(f"unknown objective {objective!r}; have {', '.join(OBJECTIVES)}")
    cls = OBJECTIVES[objective]
    if options is None:
        options = cls.Options(**option_values)
    return cls.build(model, options, n_tokens=n_tokens, eos_id=eos_id, loss_chunk=loss_chunk)


__all__ = ["Batch", "CausalLM", "DPO", "DiffusionObjective", "GANObjective", "MaskedLM", "Metrics", "OBJECTIVES",
           "Objective", "ObjectiveOptions", "PhaseSpec", "RewardObjective", "SFT", "SPAEObjective", "SpanCorruption", "Watch",
           "build_objective", "extra_tokens", "objective_for"]
