"""The fused native decode step a decoder-only model takes, chosen by what the model is: RetNet's recurrent step
(:mod:`.retnet`, over a RetentionCache) or the transformer decoder's KV-cache step (:mod:`.decoder`). Both are
called the same way, ``step(ids (B,), positions (B,), key_mask) -> logits (B, V)``, so the decode loop
(:mod:`genmodels.generation.decode`) needs no branch."""
from __future__ import annotations

from torch import nn

from . import decoder, retnet


def _module(model: nn.Module):
    from ..models.retnet.model import RetNetLM
    return retnet if isinstance(model, RetNetLM) else decoder


def unsupported(model: nn.Module) -> str | None:
    """Why ``model`` cannot decode natively (``None``: it can). Never raises."""
    return _module(model).unsupported(model)


def fused_step(model: nn.Module, cache, batch: int):
    """The native step for ``model`` over its ``cache`` (:class:`.retnet.FusedRetNetStep` or
    :class:`.decoder.FusedDecodeStep`)."""
    m = _module(model)
    return (m.FusedRetNetStep if m is retnet else m.FusedDecodeStep)(model, cache, batch)
