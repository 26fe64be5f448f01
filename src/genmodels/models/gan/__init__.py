"""The GAN family: DCGAN generator + discriminator (models/gan/dcgan.py), its config, presets and registry
entry. pytorch/examples DCGAN checkpoints are read by genmodels.interop.torch_dcgan (``from_torch_dcgan``);
the losses and regularisers are in genmodels.objectives (gan_losses, gan_ema, gan)."""
from __future__ import annotations

from ... import registry
from ...registry import Family
from .config import GANConfig
from .counts import GANCounts
from .dcgan import DCGAN, Discriminator, Generator
from .presets import PRESETS

GAN = registry.register(Family(
    name="gan", config_class=GANConfig, model_class=DCGAN, presets=dict(PRESETS), objective="gan",
    counts=GANCounts, capabilities=frozenset({registry.SAMPLES})), replace=True)

__all__ = ["DCGAN", "Discriminator", "GAN", "GANConfig", "GANCounts", "Generator"]
