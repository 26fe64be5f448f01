"""The SPAE family: a semantic pyramid autoencoder writing images in a frozen LM's words (models/spae/model.py),
its config, presets and registry entry. The lexicon comes from genmodels.lexicon; the losses from
genmodels.objectives.spae; image_to_words / words_to_image from genmodels.spae."""
from __future__ import annotations

from ... import registry
from ...registry import Family
from .config import SPAEConfig
from .counts import SPAECounts
from .model import SPAE
from .presets import PRESETS

SPAE_FAMILY = registry.register(Family(
    name="spae", config_class=SPAEConfig, model_class=SPAE, presets=dict(PRESETS), objective="spae",
    counts=SPAECounts), replace=True)

__all__ = ["SPAE", "SPAECounts", "SPAEConfig", "SPAE_FAMILY"]
