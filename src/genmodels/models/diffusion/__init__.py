"""The diffusion family: denoisers (UNet2D, DiT) with their noise schedule as data, presets, registry entry.

``build_diffusion(config)`` builds the backbone the config names (the family's ``model_class``); diffusers
UNet2DModel folders are read and written by genmodels.interop.diffusers_unet.
"""
from __future__ import annotations

from torch import nn

from ... import registry
from ...registry import Family
from .config import DiffusionConfig
from .counts import DiffusionCounts
from .dit import DiT
from .presets import PRESETS
from .unet import UNet2D

BACKBONE_CLASSES: dict[str, type[nn.Module]] = {"unet": UNet2D, "dit": DiT}


def build_diffusion(config: DiffusionConfig) -> nn.Module:
    """The denoiser of ``config.backbone``."""
    return BACKBONE_CLASSES[config.backbone](config)


DIFFUSION = registry.register(Family(
    name="diffusion", config_class=DiffusionConfig, model_class=build_diffusion, presets=dict(PRESETS),
    objective="diffusion", counts=DiffusionCounts, capabilities=frozenset({registry.SAMPLES})), replace=True)

__all__ = ["BACKBONE_CLASSES", "DIFFUSION", "DiT", "DiffusionConfig", "DiffusionCounts", "UNet2D", "build_diffusion"]
