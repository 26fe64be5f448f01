"""SPAE: an image written as a pyramid of a frozen LM's words, and read back (Yu et al. 2023, arXiv 2306.17842).

    encoder      x (B, C, H, W) -> z (B, D, G, G)       conv_in, ResBlock, k × (Downsample, ResBlock), GN-SiLU-1×1
    quantizer    z -> words per layer, ẑ per depth       nn/pyramid.PyramidQuantizer over nn/codebook.LexicalCodebook
    decoder      ẑ_l (B, D, G, G) -> x̂_l (B, C, H, W)   conv_in, ResBlock, k × (Upsample, ResBlock), GN-SiLU-conv

The blocks are nn/conv.py's ResnetBlock2D without a time embedding (temb_dim = 0), Downsample2D, Upsample2D.
``model.tokenizer`` is the word list (data/words.word_tokenizer: entry k ↔ word k), attached from the lexicon
at the start of a run and saved as the folder's tokenizer.json; the codebook's LM vectors and token ids are
buffers of the state dict. Losses are the objective's (objectives/spae.py).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ...nn.codebook import LexicalCodebook
from ...nn.conv import Downsample2D, ResnetBlock2D, Upsample2D
from ...nn.pyramid import RULES, PyramidOutput, PyramidQuantizer
from .config import SPAEConfig

EPS = 1e-6


def _block(c: SPAEConfig) -> ResnetBlock2D:
    return ResnetBlock2D(c.width, c.width, 0, c.groups, EPS)


class Encoder(nn.Module):
    """(B, C, H, W) -> (B, D, G, G), G = H / 2^k."""

    def __init__(self, c: SPAEConfig):
        super().__init__()
        self.conv_in = nn.Conv2d(c.channels, c.width, 3, padding=1)
        layers: list[nn.Module] = [_block(c)]
        for _ in range(c.downsamples):
            layers += [Downsample2D(c.width), _block(c)]
        self.blocks = nn.Sequential(*layers)
        self.norm_out = nn.GroupNorm(c.groups, c.width, eps=EPS)
        self.conv_out = nn.Conv2d(c.width, c.dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_out(F.silu(self.norm_out(self.blocks(self.conv_in(x)))))


class Decoder(nn.Module):
    """(B, D, G, G) -> (B, C, H, W)."""

    def __init__(self, c: SPAEConfig):
        super().__init__()
        self.conv_in = nn.Conv2d(c.dim, c.width, 3, padding=1)
        layers: list[nn.Module] = [_block(c)]
        for _ in range(c.downsamples):
            layers += [Upsample2D(c.width), _block(c)]
        self.blocks = nn.Sequential(*layers)
        self.norm_out = nn.GroupNorm(c.groups, c.width, eps=EPS)
        self.conv_out = nn.Conv2d(c.width, c.channels, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.conv_out(F.silu(self.norm_out(self.blocks(self.conv_in(z)))))


class SPAE(nn.Module):
    family = "spae"

    def __init__(self, config: SPAEConfig):
        super().__init__()
        self.config = config
        self.encoder, self.decoder = Encoder(config), Decoder(config)
        codebook = LexicalCodebook(config.codebook_size, config.lm_dim, config.dim)
        self.quantizer = PyramidQuantizer(codebook, tuple(config.levels), rule=RULES[config.quantizer]())
        self.tokenizer = None  # the word list (tokenizers.Tokenizer), attached from the lexicon

    @property
    def codebook(self) -> LexicalCodebook:
        return self.quantizer.codebook

    def attach_lexicon(self, lexicon) -> "SPAE":
        """Copy a lexicon (``words``, ``vectors`` (K, d_lm), ``lm_ids`` (K,)) into the codebook and keep its words."""
        from ...data.words import word_tokenizer
        if len(lexicon.words) != self.config.codebook_size or lexicon.vectors.shape[1] != self.config.lm_dim:
            raise ValueError(f"the lexicon holds {len(lexicon.words)} × {lexicon.vectors.shape[1]} vectors; the model "
                             f"takes model.codebook_size={self.config.codebook_size} × model.lm_dim={self.config.lm_dim}")
        self.codebook.fill(lexicon.vectors.to(self.codebook.vectors), lexicon.lm_ids.to(self.codebook.lm_ids.device))
        self.tokenizer = word_tokenizer(list(lexicon.words))
        return self

    def forward(self, images: torch.Tensor) -> tuple[PyramidOutput, list[torch.Tensor]]:
        """``images`` (B, C, H, W) -> the pyramid (tokens, VQ terms) and the reconstruction of every depth
        (each (B, C, H, W)), decoded from the straight-through inputs."""
        out = self.quantizer(self.encoder(images))
        return out, [self.decoder(z) for z in out.inputs]

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> list[torch.Tensor]:
        """``images`` (B, C, H, W) -> the codebook ids of each layer, (B, g_l²) each."""
        return self.quantizer(self.encoder(images)).ids

    @torch.no_grad()
    def decode(self, ids: list[torch.Tensor], depth: int | None = None) -> torch.Tensor:
        """The image of the first ``depth`` layers of ``ids`` (default: all given): (B, C, H, W) in [-1, 1]."""
        return self.decoder(self.quantizer.embed(ids, depth)).clamp(-1.0, 1.0)
