"""Diffusion timestep embedding: a sinusoid of t, then an MLP (Ho et al., 2020, "Denoising Diffusion
Probabilistic Models", §4 and appendix B; the transformer's sinusoid of Vaswani et al., 2017, applied to t).

    ω_i = exp(−ln(P) · i / (h − s)),  i = 0 … h−1,  h = ⌊D/2⌋, P = max_period (10⁴), s = freq_shift
    e(t) = [cos(t·ω), sin(t·ω)]   (flip_sin_to_cos; else [sin, cos]); zero-padded when D is odd
    emb(t) = W₂ · SiLU(W₁ · e(t) + b₁) + b₂

diffusers' ``get_timestep_embedding(flip_sin_to_cos=True, downscale_freq_shift=0)`` is this formula
with the same float32 operation order; DiT (Peebles & Xie, 2023) uses the same [cos, sin] form with
D = 256. The original DDPM checkpoints use [sin, cos] with s = 1.
"""
from __future__ import annotations

import math
from numbers import Real

import torch
import torch.nn.functional as F
from torch import nn


def timestep_embedding(t: torch.Tensor, dim: int, flip_sin_to_cos: bool = True, freq_shift: float = 0.0,
                       max_period: float = 10000.0) -> torch.Tensor:
    """``t`` (B,) (integer or fractional) -> ``e(t)`` (B, dim) in float32."""
    half = dim // 2
    exponent = -math.log(max_period) * torch.arange(0, half, dtype=torch.float32, device=t.device)
    exponent = exponent / (half - freq_shift)  # (h,)
    args = t[:, None].float() * torch.exp(exponent)[None, :]  # (B, h)
    sin, cos = torch.sin(args), torch.cos(args)
    emb = torch.cat([cos, sin] if flip_sin_to_cos else [sin, cos], dim=-1)  # (B, 2h)
    return F.pad(emb, (0, 1)) if dim % 2 else emb


def batch_timesteps(timestep, batch: int, device: torch.device | str | None = None) -> torch.Tensor:
    """The timestep argument of a denoiser as a (B,) tensor: a Python int or float, a 0-d tensor, or a
    (B,) / (1,) tensor, broadcast over the batch. Anything else is a ValueError naming ``timestep``.

    (diffusers truncates a Python float to an integer; here it stays fractional, as a tensor does.)"""
    if isinstance(timestep, bool) or (isinstance(timestep, torch.Tensor) and timestep.dtype == torch.bool):
        raise ValueError(f"timestep={timestep!r} must be a number or a tensor of numbers, not a boolean")
    if isinstance(timestep, Real):
        kind = torch.long if isinstance(timestep, int) else torch.float32
        return torch.full((batch,), timestep, dtype=kind, device=device)
    if not isinstance(timestep, torch.Tensor):
        raise ValueError(f"timestep={timestep!r} must be an int, a 0-d tensor or a (B,) tensor")
    if timestep.dim() == 0 or (timestep.dim() == 1 and timestep.shape[0] == 1):
        return timestep.reshape(1).to(device).expand(batch)
    if timestep.dim() != 1 or timestep.shape[0] != batch:
        raise ValueError(f"timestep has shape {tuple(timestep.shape)}; it must be an int, a 0-d tensor or a "
                         f"(B,) tensor with B={batch} (the sample's batch)")
    return timestep.to(device)


class TimestepEmbedding(nn.Module):
    """``t`` (B,) -> ``emb(t)`` (B, dim): the sinusoid of width ``freq_dim``, then fc1 → SiLU → fc2.

    The sinusoid is computed in float32 and cast to the weights' dtype before the MLP (as diffusers)."""

    def __init__(self, freq_dim: int, dim: int, flip_sin_to_cos: bool = True, freq_shift: float = 0.0):
        super().__init__()
        self.freq_dim, self.flip_sin_to_cos, self.freq_shift = freq_dim, flip_sin_to_cos, freq_shift
        self.fc1 = nn.Linear(freq_dim, dim)
        self.fc2 = nn.Linear(dim, dim)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        e = timestep_embedding(t, self.freq_dim, self.flip_sin_to_cos, self.freq_shift)  # (B, F)
        return self.fc2(F.silu(self.fc1(e.to(self.fc1.weight.dtype))))  # (B, D)
