"""Parameter counts of the GAN family (the registry's ``counts``), from the modules built on PyTorch's
``meta`` device (shapes only: nothing is allocated), so the count can never drift from the architecture."""
from __future__ import annotations

import torch

from .config import GANConfig


class GANCounts:
    @staticmethod
    def parameter_count(cfg: GANConfig) -> int:
        """Both players' parameters (spectral norm's u, v are buffers, not counted)."""
        from .dcgan import DCGAN
        with torch.device("meta"):
            model = DCGAN(cfg)
        return sum(p.numel() for p in model.parameters())

    @staticmethod
    def describe(cfg: GANConfig) -> str:
        """One line for ``genmodels info``."""
        k = cfg.resolution_steps
        g = [cfg.g_width * 2 ** (k - 1 - i) for i in range(k)]
        d = [cfg.d_width * 2 ** i for i in range(k)]
        labels = f"{cfg.n_classes} classes ({cfg.conditioning})" if cfg.conditional else "unconditional"
        stab = [s for s, on in (("spectral norm", cfg.spectral_norm), ("BN in D", cfg.d_batchnorm),
                                (f"R1 γ={cfg.r1_gamma} every {cfg.r1_every}", cfg.r1_gamma > 0),
                                (f"EMA {cfg.ema_decay}", cfg.ema_decay is not None)) if on]
        return (f"DCGAN {cfg.image_size}×{cfg.image_size}×{cfg.channels}; G z{cfg.z_dim}→{g}→{cfg.channels}, "
                f"D {d}→logit; {labels}; {cfg.loss} loss{'; ' + ', '.join(stab) if stab else ''}")
