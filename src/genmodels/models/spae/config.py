"""SPAEConfig: a semantic pyramid autoencoder over a frozen LM's words (SPAE, Yu et al. 2023), as data.

The network: a conv encoder (nn/conv.py blocks without a time embedding) maps an image to a G×G map of width
``dim`` (G = the last of ``levels``); a :class:`~genmodels.nn.pyramid.PyramidQuantizer` writes it as 1 + 4 + 16
(for levels [1, 2, 4]) words of the lexical codebook; a conv decoder renders the reconstruction of any depth.
The codebook (``codebook_size`` × ``lm_dim``) is read from ``lexicon`` once, at the start of a run
(models/spae/lexicon.py); a saved model carries its subset, so it loads without the LM.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ...config import ConfigError, StrictConfig
from ...nn.pyramid import RULES

LEXICON_RULES = ("lower_words",)  # which LM tokens are codebook entries (models/spae/lexicon.py)


@dataclass
class SPAEConfig(StrictConfig):
    family: str = "spae"
    # ---- the images ----
    image_size: int = 8  # H = W; = levels[-1] · 2^k (k stride-2 convolutions down, k upsamplings back)
    channels: int = 1
    # ---- the networks ----
    width: int = 64  # conv channels of the encoder and decoder
    groups: int = 8  # GroupNorm groups (must divide width)
    dim: int = 64  # D: the token width (the encoder's output, the codebook's projected width)
    # ---- the pyramid ----
    levels: list[int] = field(default_factory=lambda: [1, 2, 4])  # grid sides per layer: 1 + 4 + 16 tokens
    quantizer: str = "saq"  # saq (streaming average, SPAE) | residual (plain residual quantisation)
    # ---- the lexical codebook ----
    lexicon: str = "smollm2"  # the LM: smollm2 (the installed SmolLM2-135M GGUF), minilm, or a .gguf / model folder
    lexicon_rule: str = "lower_words"  # whole lower-case words (a word-start token of letters a-z only)
    min_chars: int = 3  # shortest word kept
    codebook_size: int = 2048  # K: the first K words by token id (BPE ids rise as merges get rarer)
    lm_dim: int = 576  # the LM's embedding width (SmolLM2-135M: 576; MiniLM: 384)
    include: list[str] = field(default_factory=lambda: ["zero", "one", "two", "three", "four", "five", "six",
                                                        "seven", "eight", "nine"])  # words kept whatever their rank

    @property
    def in_channels(self) -> int:
        """``channels`` under the image tools' name."""
        return self.channels

    @property
    def num_classes(self) -> int:
        """An autoencoder is not conditioned on classes (the image objectives' check reads this)."""
        return 0

    @property
    def downsamples(self) -> int:
        """k with image_size = levels[-1]·2^k."""
        return (self.image_size // self.levels[-1]).bit_length() - 1

    @property
    def tokens(self) -> int:
        return sum(g * g for g in self.levels)

    def validate(self) -> None:
        if self.family != "spae":
            raise ConfigError(f"{self.where('family')}={self.family!r} must be 'spae' for a SPAEConfig")
        self.check_choice("channels", (1, 3))
        self.check_choice("quantizer", tuple(RULES))
        self.check_choice("lexicon_rule", LEXICON_RULES)
        for name in ("image_size", "width", "groups", "dim", "min_chars", "codebook_size", "lm_dim"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{self.where(name)}={getattr(self, name)} must be >= 1")
        if self.width % self.groups:
            raise ConfigError(f"{self.where('groups')}={self.groups} must divide model.width={self.width}")
        lv = self.levels
        if not lv or any(g < 1 for g in lv) or any(b % a or b <= a for a, b in zip(lv, lv[1:])):
            raise ConfigError(f"{self.where('levels')}={lv!r} must be grid sides >= 1, each dividing the next and "
                              "larger than it, e.g. [1, 2, 4]")
        n = self.image_size // lv[-1]
        if self.image_size % lv[-1] or n & (n - 1):
            raise ConfigError(f"{self.where('image_size')}={self.image_size} must be levels[-1]={lv[-1]} times a "
                              "power of two (the encoder halves it that many times)")
        if not self.lexicon:
            raise ConfigError(f"{self.where('lexicon')}='' must name the LM: smollm2, minilm, or a .gguf / folder")
        if len(self.include) > self.codebook_size:
            raise ConfigError(f"{self.where('include')} holds {len(self.include)} words, more than "
                              f"model.codebook_size={self.codebook_size}")
