"""Self-attention over the positions of a feature map (Ho et al., 2020, appendix B; the non-local block
of Wang et al., 2018): the H·W pixels are the tokens, the channels their features.

    X = GN(x) reshaped (B, C, H, W) -> (B, H·W, C)
    y = x + reshape(Attention(X))          (Attention: :class:`genmodels.nn.attention.SelfAttention`)

with C / head_dim heads, biased q, k, v and output projections, no mask and no positions (convolutions
carry the geometry). This is diffusers' ``Attention`` as its UNet blocks build it
(``residual_connection=True``, ``rescale_output_factor=1``).

The ``"native"`` kernel (the default) runs heads of width 8 or 16 (diffusers' default UNet has 8) through
genmodels' CPU kernel, forward and backward (:mod:`genmodels.native.attention`, 4–5× PyTorch's fused
kernel there); other widths, devices and dtypes run ``F.scaled_dot_product_attention``.
"""
from __future__ import annotations

import torch
from torch import nn

from .attention import AttentionInputs, SelfAttention

_NO_MASK = AttentionInputs()  # every pixel attends to every pixel


class SpatialSelfAttention(nn.Module):
    """(B, C, H, W) -> (B, C, H, W)."""

    def __init__(self, channels: int, head_dim: int, groups: int, eps: float, kernel: str = "native"):
        super().__init__()
        heads = channels // head_dim
        self.norm = nn.GroupNorm(groups, channels, eps=eps)
        self.attn = SelfAttention(channels, heads, heads, head_dim, bias=True, out_bias=True, kernel=kernel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        tokens = self.norm(x).view(b, c, h * w).transpose(1, 2)  # (B, HW, C)
        y = self.attn(tokens, _NO_MASK)  # (B, HW, C)
        return x + y.transpose(1, 2).reshape(b, c, h, w)
