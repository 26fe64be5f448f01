"""Parameter counts of the SPAE family (the registry's ``counts``), from the modules built on the ``meta`` device."""
from __future__ import annotations

import torch

from .config import SPAEConfig


class SPAECounts:
    @staticmethod
    def parameter_count(cfg: SPAEConfig) -> int:
        """Trained parameters (the encoder, the decoder, the codebook's projection; the LM vectors are buffers)."""
        from .model import SPAE
        with torch.device("meta"):
            model = SPAE(cfg)
        return sum(p.numel() for p in model.parameters())

    @staticmethod
    def describe(cfg: SPAEConfig) -> str:
        """One line for ``genmodels info``."""
        grids = " + ".join(f"{g}×{g}" for g in cfg.levels)
        return (f"SPAE {cfg.image_size}×{cfg.image_size}×{cfg.channels}; {grids} = {cfg.tokens} words per image "
                f"({cfg.quantizer}); codebook {cfg.codebook_size} words of {cfg.lexicon} ({cfg.lexicon_rule}, "
                f"{cfg.lm_dim}→{cfg.dim}); width {cfg.width}")
