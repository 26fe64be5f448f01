"""Normalisation layers.

LayerNorm (Ba et al., 2016):  y = (x − μ) / √(σ² + ε) · γ + β   over the last dimension.
RMSNorm  (Zhang & Sennrich, 2019): y = x / √(mean(x²) + ε) · γ  — no centring, no bias.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class LayerNorm(nn.Module):
    """LayerNorm with an optional bias (GPT-2/BERT use one; some recent models drop it)."""

    def __init__(self, dim: int, eps: float = 1e-5, bias: bool = True):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, (x.shape[-1],), self.weight, self.bias, self.eps)


class RMSNorm(nn.Module):
    """RMSNorm in Hugging Face's cast order: normalise in fp32, cast back, *then* scale.

    ``y = cast(x·rsqrt(mean(x²)+ε)) · γ``. Multiplying before the cast (litgpt) differs in bf16.
    """

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        if dtype == torch.float32 and self.weight.dtype == torch.float32:
            # the same arithmetic in fp32 (no casts to order), as one fused op: half the overhead
            return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(dtype)


def make_norm(kind: str, dim: int, eps: float, bias: bool = True) -> nn.Module:
    """Build the norm a config names (``layernorm`` | ``rmsnorm``)."""
    if kind == "layernorm":
        return LayerNorm(dim, eps, bias)
    if kind == "rmsnorm":
        return RMSNorm(dim, eps)
    raise ValueError(f"unknown norm {kind!r}; choose layernorm or rmsnorm")
