"""GANConfig: a DCGAN generator / discriminator pair and the recipe that trains it, as data.

The network fields follow the pytorch/examples DCGAN script (``dcgan/main.py``: ``nz`` → ``z_dim``,
``ngf`` → ``g_width``, ``ndf`` → ``d_width``, ``nc`` → ``channels``); its layout is the 64×64 one,
and the other sizes keep the same rule with fewer resolution steps (models/gan/dcgan.py). The
stabilisers (spectral norm, hinge loss, R1, EMA of G) and class conditioning are the options the
issue asks for; the loss and regulariser fields are read by the GAN objective
(objectives/gan.py), not by the networks.
"""
from __future__ import annotations

from dataclasses import dataclass

from ...config import ConfigError, StrictConfig

IMAGE_SIZES = (8, 16, 32, 64)  # 4·2^k: a 4×4 seed, then k doublings (k = 1 … 4)
CHANNELS = (1, 3)
CONDITIONINGS = ("none", "projection", "embedding")
LOSSES = ("non_saturating", "hinge")


@dataclass
class GANConfig(StrictConfig):
    family: str = "gan"
    # ---- the networks (pytorch/examples DCGAN's nz, ngf, ndf, nc) ----
    z_dim: int = 100  # noise width
    image_size: int = 64  # H = W
    channels: int = 3
    g_width: int = 64  # channels of G's last hidden layer; ×2 per layer toward the noise
    d_width: int = 64  # channels of D's first layer; ×2 per layer toward the logit
    d_batchnorm: bool = True  # BatchNorm in D after every conv but the first (DCGAN); off with spectral norm
    spectral_norm: bool = False  # W/σ(W) on every weight of D (Miyato et al., 2018)
    # ---- class conditioning: labels 0 … n_classes−1 ----
    # none: unconditional; projection: D(x, y) = ψ(φ(x)) + ⟨V_y, Σφ(x)⟩ (Miyato & Koyama, 2018);
    # embedding: D reads a learned S×S label plane as one more input channel. Both conditional modes
    # give G the label as a learned embedding concatenated to z.
    conditioning: str = "none"
    n_classes: int = 0
    # ---- the training recipe (read by objectives/gan.py) ----
    loss: str = "non_saturating"  # non_saturating | hinge
    r1_gamma: float = 0.0  # R1 weight γ (0: off)
    r1_every: int = 16  # lazy R1: every N discriminator steps, weighted by N (StyleGAN2)
    ema_decay: float | None = None  # EMA of G's weights (None: off), e.g. 0.999

    # ---- derived -------------------------------------------------------------------------------
    @property
    def conditional(self) -> bool:
        return self.conditioning != "none"

    @property
    def num_classes(self) -> int:
        """``n_classes`` under the name the image tools read (data checks, sampling, metrics)."""
        return self.n_classes

    @property
    def in_channels(self) -> int:
        """``channels`` under the diffusion configs' name (what the image tools read)."""
        return self.channels

    @property
    def resolution_steps(self) -> int:
        """k with image_size = 4·2^k: G's doubling layers after the 4×4 seed, D's halving layers."""
        return self.image_size.bit_length() - 3

    # ---- validation ----------------------------------------------------------------------------
    def validate(self) -> None:
        if self.family != "gan":
            raise ConfigError(f"{self.where('family')}={self.family!r} must be 'gan' for a GANConfig")
        self.check_choice("image_size", IMAGE_SIZES)
        self.check_choice("channels", CHANNELS)
        self.check_choice("conditioning", CONDITIONINGS)
        self.check_choice("loss", LOSSES)
        for name in ("z_dim", "g_width", "d_width", "r1_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{self.where(name)}={getattr(self, name)} must be >= 1")
        if self.conditional and self.n_classes < 2:
            raise ConfigError(f"{self.where('n_classes')}={self.n_classes} must be >= 2 with "
                              f"conditioning={self.conditioning!r}")
        if not self.conditional and self.n_classes != 0:
            raise ConfigError(f"{self.where('n_classes')}={self.n_classes} means nothing with conditioning='none'; "
                              "leave it at 0 or choose conditioning projection or embedding")
        if self.r1_gamma < 0:
            raise ConfigError(f"{self.where('r1_gamma')}={self.r1_gamma} must be >= 0")
        if self.ema_decay is not None and not 0.0 <= self.ema_decay < 1.0:
            raise ConfigError(f"{self.where('ema_decay')}={self.ema_decay} must be in [0, 1) (or null: no EMA)")
