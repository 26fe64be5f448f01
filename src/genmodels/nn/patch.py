"""Images as token sequences (Dosovitskiy et al., 2021, "An Image is Worth 16x16 Words"; as DiT uses them,
Peebles & Xie, 2023, "Scalable Diffusion Models with Transformers", §3.2).

Patchify: a p×p convolution of stride p turns (B, C, H, W) into T = (H/p)·(W/p) tokens of width D,
numbered row by row (t = i·w + j for patch row i, column j).

Positions: the fixed 2-D sin-cos table of MAE / DiT. For patch (i, j), with D/4 frequencies
ω_k = 10000^(−k/(D/4)):

    pos(i, j) = [sin(j·ω), cos(j·ω), sin(i·ω), cos(i·ω)]      (D channels)

— the first half encodes the column j, the second half the row i (the reference code's ``emb_h`` is
built from the column grid; we keep its layout so checkpoints agree).

Unpatchify: (B, T, p·p·C) -> (B, C, H, W), each token's p·p·C values read in (p, q, c) order.
"""
from __future__ import annotations

import torch
from torch import nn


def sincos_1d(dim: int, pos: torch.Tensor) -> torch.Tensor:
    """``pos`` (N,) -> (N, dim): [sin(pos·ω), cos(pos·ω)], ω_k = 10000^(−k/(dim/2)), in float64."""
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim / 2.0))  # (dim/2,)
    out = pos.double()[:, None] * omega[None, :]  # (N, dim/2)
    return torch.cat([torch.sin(out), torch.cos(out)], dim=1)


def sincos_2d(dim: int, grid: int) -> torch.Tensor:
    """The (grid², dim) position table of a grid × grid patch layout (float32); ``dim`` divisible by 4."""
    rows = torch.arange(grid).repeat_interleave(grid)  # (T,) patch row i of token t
    cols = torch.arange(grid).repeat(grid)  # (T,) patch column j of token t
    return torch.cat([sincos_1d(dim // 2, cols), sincos_1d(dim // 2, rows)], dim=1).float()


class PatchEmbed(nn.Module):
    """(B, C, H, W) -> (B, T, D) with T = (H/p)·(W/p): a p×p convolution of stride p."""

    def __init__(self, in_channels: int, dim: int, patch_size: int):
        super().__init__()
        self.proj = nn.Conv2d(in_channels, dim, patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)  # (B, D, h, w) -> (B, T, D)


def unpatchify(x: torch.Tensor, patch_size: int, channels: int, grid: tuple[int, int]) -> torch.Tensor:
    """(B, h·w, p·p·C) -> (B, C, h·p, w·p) for a patch grid ``(h, w)``."""
    b, (h, w), p = x.shape[0], grid, patch_size
    x = x.reshape(b, h, w, p, p, channels)
    return torch.einsum("nhwpqc->nchpwq", x).reshape(b, channels, h * p, w * p)
