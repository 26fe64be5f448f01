"""Parameter and FLOP counts of the diffusion family (the registry's ``counts``).

Both come from the modules themselves, built on PyTorch's ``meta`` device (shapes only: nothing is
allocated, so a config too large for the machine is still counted before it is refused), so the
counts can never drift from the architecture:
- ``parameter_count``: the parameters of the built model;
- ``forward_flops_per_image``: the FLOPs of one image's forward pass (batch 1) as
  ``torch.utils.flop_counter`` counts them — convolutions, matmuls and attention, 2 FLOPs per
  multiply-add; norms, activations and additions are not counted (the MFU convention).
"""
from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

from ...registry import build_model
from .config import DiffusionConfig


def _meta_model(cfg: DiffusionConfig) -> torch.nn.Module:
    """The denoiser of ``cfg`` on the meta device (built through the registry, as every model is)."""
    with torch.device("meta"):
        return build_model(cfg)


class DiffusionCounts:
    @staticmethod
    def parameter_count(cfg: DiffusionConfig) -> int:
        return sum(p.numel() for p in _meta_model(cfg).parameters())

    @staticmethod
    def forward_flops_per_image(cfg: DiffusionConfig) -> int:
        """Forward FLOPs for one image (the class-embedding lookup costs none, so it is left out)."""
        model = _meta_model(cfg.replace(num_classes=0))
        x = torch.empty(1, cfg.in_channels, cfg.image_size, cfg.image_size, device="meta")
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            model(x, torch.zeros(1, dtype=torch.long, device="meta"))
        return counter.get_total_flops()

    @staticmethod
    def describe(cfg: DiffusionConfig) -> str:
        """One line for ``genmodels info``."""
        img = f"{cfg.image_size}×{cfg.image_size}×{cfg.in_channels} -> {cfg.output_channels} channels"
        if cfg.backbone == "unet":
            net = (f"UNet2D widths {cfg.block_out_channels}, {cfg.layers_per_block} resnet(s) per level, attention "
                   f"at levels {cfg.attention_levels}{' + middle' if cfg.mid_attention else ''}")
        else:
            net = (f"DiT patch {cfg.patch_size}, hidden {cfg.hidden_size}, depth {cfg.depth}, "
                   f"heads {cfg.num_heads}")
        labels = (f"{cfg.num_classes} classes{' + null' if cfg.null_label is not None else ''}"
                  if cfg.num_classes else "unconditional")
        return (f"{net}; {img}; {labels}; schedule {cfg.beta_schedule} T={cfg.num_train_timesteps}, "
                f"predicts {cfg.prediction_type}")
