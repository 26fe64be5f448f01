"""The RetNet family (Sun et al., 2023): config, model with recurrent decoding, presets, registry entry."""
from __future__ import annotations

from ... import registry
from ...registry import GENERATES, Family
from .config import RetNetConfig
from .counts import RetNetCounts
from .model import RetentionCache, RetNetLM
from .presets import PRESETS, retnet_tiny

RETNET = registry.register(Family(
    name="retnet", config_class=RetNetConfig, model_class=RetNetLM, presets=dict(PRESETS),
    objective="causal", capabilities=frozenset({GENERATES}), counts=RetNetCounts), replace=True)

__all__ = ["RETNET", "RetNetConfig", "RetNetLM", "RetentionCache", "RetNetCounts", "retnet_tiny"]
