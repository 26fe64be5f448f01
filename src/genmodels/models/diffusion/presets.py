"""Diffusion presets: data, each with its source."""
from __future__ import annotations

from typing import Any

from .config import DiffusionConfig


def unet_digits(**kw: Any) -> DiffusionConfig:
    """The digits anchor of ../shared/reference/diffusion.md §5 (scikit-learn's 8×8 digits, values in [−1, 1]):
    a diffusers UNet2DModel with widths 32/64, one resnet per level and no attention (635,681 parameters),
    class-conditional on 10 digits with the null label 10 (11 embedding rows), cosine schedule
    (``squaredcos_cap_v2``, T = 1000), ε-prediction."""
    return DiffusionConfig(**{**dict(
        backbone="unet", image_size=8, in_channels=1, num_classes=10, null_class=True,
        block_out_channels=[32, 64], layers_per_block=1, attention_levels=[], mid_attention=False,
        beta_schedule="squaredcos_cap_v2", prediction_type="epsilon"), **kw})


def dit_digits(**kw: Any) -> DiffusionConfig:
    """A DiT for the same 8×8 digits (our sizing; DiT has no digits reference): patch 2 (16 tokens),
    hidden 128, depth 4, 4 heads, MLP ratio 4 (DiT-S's head width of 32 and ratio; about 1.2M parameters),
    class-conditional on 10 digits + null, cosine schedule, ε-prediction."""
    return DiffusionConfig(**{**dict(
        backbone="dit", image_size=8, in_channels=1, num_classes=10, null_class=True,
        patch_size=2, hidden_size=128, depth=4, num_heads=4, mlp_ratio=4.0,
        beta_schedule="squaredcos_cap_v2", prediction_type="epsilon"), **kw})


def unet_ddpm_cifar10(**kw: Any) -> DiffusionConfig:
    """google/ddpm-cifar10-32 (Ho et al., 2020, the CIFAR-10 model; 35,746,307 parameters), its diffusers
    ``UNet2DModel`` config.json: widths 128/256/256/256, two resnets per level, attention at 16×16 (level 1)
    and in the middle with one head as wide as the level (``attention_head_dim: null``), GroupNorm 32 with
    ε 1e-6, ``downsample_padding: 0``, [sin, cos] sinusoid with ``freq_shift: 1``, unconditional; its
    DDPMScheduler: linear betas 1e-4 … 0.02 over T = 1000, ε-prediction. (The paper trained with dropout
    0.1; the diffusers config leaves it at 0.)"""
    return DiffusionConfig(**{**dict(
        backbone="unet", image_size=32, in_channels=3, num_classes=0,
        block_out_channels=[128, 256, 256, 256], layers_per_block=2, attention_levels=[1], mid_attention=True,
        attention_head_dim=None, norm_num_groups=32, norm_eps=1e-6, downsample_padding=0,
        flip_sin_to_cos=False, freq_shift=1,
        num_train_timesteps=1000, beta_schedule="linear", beta_start=0.0001, beta_end=0.02,
        prediction_type="epsilon"), **kw})


PRESETS = {"unet-digits": unet_digits, "dit-digits": dit_digits, "unet-ddpm-cifar10": unet_ddpm_cifar10}
