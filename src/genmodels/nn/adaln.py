"""Adaptive layer norm with zero-initialised gates, adaLN-Zero (Peebles & Xie, 2023, "Scalable Diffusion
Models with Transformers", §3.2; after FiLM, Perez et al., 2018).

A conditioning vector c (timestep + class embedding) regresses, per block, shifts β, scales γ and
gates α instead of learning fixed LayerNorm parameters:

    (β₁, γ₁, α₁, β₂, γ₂, α₂) = W · SiLU(c) + b
    x ← x + α₁ ⊙ Attn(LN(x) ⊙ (1 + γ₁) + β₁)
    x ← x + α₂ ⊙ MLP(LN(x) ⊙ (1 + γ₂) + β₂)

W and b start at zero, so every α is 0 and each block is the identity at initialisation; LN has no
affine parameters (ε = 10⁻⁶).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``x ⊙ (1 + scale) + shift``; x (B, T, D), shift / scale (B, 1, D)."""
    return x * (1 + scale) + shift


class AdaLNModulation(nn.Module):
    """c (B, D_c) -> ``n`` tensors (B, 1, D): the chunks of ``W · SiLU(c) + b``, W and b zero at init."""

    def __init__(self, cond_dim: int, dim: int, n: int):
        super().__init__()
        self.n = n
        self.linear = nn.Linear(cond_dim, n * dim)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, c: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.linear(F.silu(c))[:, None, :].chunk(self.n, dim=-1)
