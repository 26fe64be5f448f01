"""SPAE presets: data, each with its source."""
from __future__ import annotations

from typing import Any

from .config import SPAEConfig


def spae_digits(**kw: Any) -> SPAEConfig:
    """scikit-learn's 8×8 digits (../shared/reference/diffusion.md §6, "smallest faithful version"): SmolLM2-135M's
    frozen input embeddings of its first 2,048 whole lower-case words (the ten digit names always among them) as
    the codebook, projected to D = 64; a 1 + 2×2 + 4×4 = 21-word pyramid with SAQ; encoder and decoder of width
    64 with one resolution step (8×8 ↔ 4×4)."""
    return SPAEConfig(**{**dict(image_size=8, channels=1, width=64, groups=8, dim=64, levels=[1, 2, 4],
                               quantizer="saq", lexicon="smollm2", codebook_size=2048, lm_dim=576), **kw})


def spae_tiny(**kw: Any) -> SPAEConfig:
    """The smallest working shape, for tests: width 8, D = 8, 64 words of SmolLM2's lexicon."""
    return SPAEConfig(**{**dict(image_size=8, channels=1, width=8, groups=2, dim=8, levels=[1, 2, 4],
                               codebook_size=64, lm_dim=576), **kw})


PRESETS = {"spae-digits": spae_digits, "spae-tiny": spae_tiny}
