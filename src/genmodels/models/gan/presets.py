"""GAN presets: data, each with its source."""
from __future__ import annotations

from typing import Any

from .config import GANConfig


def dcgan_64(**kw: Any) -> GANConfig:
    """The pytorch/examples DCGAN script's defaults (``dcgan/main.py``: ``--imageSize 64 --nz 100 --ngf 64
    --ndf 64``, nc = 3): Radford et al. (2016)'s 64×64 layout, unconditional, BN in D, non-saturating loss."""
    return GANConfig(**{**dict(z_dim=100, image_size=64, channels=3, g_width=64, d_width=64), **kw})


def dcgan_32(**kw: Any) -> GANConfig:
    """The same script's widths (nz 100, ngf = ndf = 64) at 32×32 (CIFAR-10 size): one resolution step fewer
    in each network (G: 256→128→64→3 channels; D: 64→128→256→logit)."""
    return GANConfig(**{**dict(z_dim=100, image_size=32, channels=3, g_width=64, d_width=64), **kw})


def dcgan_digits(**kw: Any) -> GANConfig:
    """scikit-learn's 8×8 digits (../shared/reference/diffusion.md §5; values in [−1, 1]), our sizing: a small
    class-conditional DCGAN (z 32, G 1→4→8 with 128 hidden channels, D 8→4→logit with 64) with the SNGAN
    stabilisers — spectral norm in D (which then has no BN), a projection discriminator over the 10 digits,
    hinge loss (Miyato & Koyama, 2018) — and an EMA of G's weights (decay 0.999)."""
    return GANConfig(**{**dict(z_dim=32, image_size=8, channels=1, g_width=128, d_width=64, d_batchnorm=False,
                               spectral_norm=True, conditioning="projection", n_classes=10, loss="hinge",
                               ema_decay=0.999), **kw})


PRESETS = {"dcgan-digits": dcgan_digits, "dcgan-32": dcgan_32, "dcgan-64": dcgan_64}
