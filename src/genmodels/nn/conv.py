"""Convolutional parts of a diffusion UNet: the time-conditioned residual block and the 2× resamplers
(Ho et al., 2020, "Denoising Diffusion Probabilistic Models", appendix B, after the Wide ResNet of
Zagoruyko & Komodakis, 2016, with GroupNorm of Wu & He, 2018).

Residual block, with τ = SiLU(emb(t)) the activated time embedding:

    h = Conv₃ₓ₃(SiLU(GN₁(x))) + W_t·τ        (the time projection is broadcast over H × W)
    h = Conv₃ₓ₃(Dropout(SiLU(GN₂(h))))
    y = S(x) + h,   S = 1×1 conv when the channel count changes, else the identity

Without a time embedding (``temb_dim=0``, an autoencoder's blocks: SPAE's encoder and decoder) the block has no
``time_proj`` and ``tau`` is None: the same block with the W_t·τ term left out.

Downsampling is a 3×3 convolution of stride 2; upsampling is nearest-neighbour ×2, then a 3×3
convolution. These are diffusers' ``ResnetBlock2D`` (``time_embedding_norm="default"``),
``Downsample2D`` and ``Upsample2D`` with ``use_conv=True``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ResnetBlock2D(nn.Module):
    """``x`` (B, C_in, H, W), ``tau`` = SiLU(time embedding) (B, T) -> (B, C_out, H, W).

    The model computes ``tau`` once per forward and hands it to every block (None with ``temb_dim=0``)."""

    def __init__(self, c_in: int, c_out: int, temb_dim: int, groups: int, eps: float, dropout: float = 0.0):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, c_in, eps=eps)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.time_proj = nn.Linear(temb_dim, c_out) if temb_dim else None
        self.norm2 = nn.GroupNorm(groups, c_out, eps=eps)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.shortcut = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor, tau: torch.Tensor | None = None) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))  # (B, C_out, H, W)
        if self.time_proj is not None:
            h = h + self.time_proj(tau)[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.shortcut(x) + h


class Downsample2D(nn.Module):
    """(B, C, H, W) -> (B, C, H/2, W/2): a stride-2 3×3 convolution.

    ``padding=1`` pads every side; ``padding=0`` pads only the right and bottom by one (the original
    DDPM checkpoints, diffusers' ``downsample_padding=0``)."""

    def __init__(self, channels: int, padding: int = 1):
        super().__init__()
        self.pad = (0, 1, 0, 1) if padding == 0 else None
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x if self.pad is None else F.pad(x, self.pad))


class Upsample2D(nn.Module):
    """(B, C, H, W) -> (B, C, 2H, 2W): nearest-neighbour ×2, then a 3×3 convolution."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))
