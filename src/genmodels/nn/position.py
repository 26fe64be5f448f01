"""Positional information: added to the input, rotated into q/k, or added to attention scores.

* Learned absolute (GPT-2, BERT): x_t += P[t], P ∈ R^{L×D} learned.
* Sinusoidal (Vaswani et al., 2017): PE[t, 2i] = sin(t / θ^{2i/D}), PE[t, 2i+1] = cos(t / θ^{2i/D}).
* RoPE (Su et al., 2021, RoFormer): rotate pairs of q/k channels by angle t·θ^{-2i/d}. We use
  Hugging Face's half-split pairing — channel i pairs with i + d/2 (``rotate_half``) — with
  cos/sin = cat(freqs, freqs) computed in fp32; a partial rotary fraction rotates only the first
  ``fraction·d`` channels (GPT-NeoX / Phi).
* ALiBi (Press et al., 2022): score(i, j) += −m_h · (i − j), slopes m_h = 2^{−8h/H} (geometric,
  with the interleaved extension when H is not a power of two).
* T5 relative buckets (Raffel et al., 2020): a learned scalar per (bucket(j − i), head).
"""
from __future__ import annotations

import math

import torch
from torch import nn


class LearnedPositionalEmbedding(nn.Embedding):
    """Absolute positions ``(B, T)`` -> vectors ``(B, T, D)``, added to the token embedding."""

    def __init__(self, max_len: int, d_model: int):
        super().__init__(max_len, d_model)


def sinusoidal_table(max_len: int, d_model: int, theta: float = 10000.0) -> torch.Tensor:
    """The (max_len, D) table of Vaswani et al.: sin on even channels, cos on odd ones."""
    pos = torch.arange(max_len, dtype=torch.float64)[:, None]
    inv = theta ** (-torch.arange(0, d_model, 2, dtype=torch.float64) / d_model)
    table = torch.zeros(max_len, d_model, dtype=torch.float64)
    table[:, 0::2] = torch.sin(pos * inv)
    table[:, 1::2] = torch.cos(pos * inv[: d_model // 2])
    return table.float()


class SinusoidalPositionalEmbedding(nn.Module):
    """Fixed sinusoidal positions ``(B, T)`` -> ``(B, T, D)``; no parameters."""

    def __init__(self, max_len: int, d_model: int, theta: float = 10000.0):
        super().__init__()
        self.register_buffer("table", sinusoidal_table(max_len, d_model, theta), persistent=False)

    def forward(self, position_ids: torch.Tensor) -> torch.Tensor:
        return self.table[position_ids]


class RotaryEmbedding(nn.Module):
    """Computes the RoPE tables for given positions; :func:`apply_rotary` applies them.

    ``forward(position_ids (B, T))`` -> ``(cos, sin)`` each ``(B, 1, T, d_rot)`` in the model dtype.
    Angles are computed in fp32 exactly as HF does (``pos · inv_freq``), once per model for
    ``max_len`` positions and looked up afterwards; positions beyond the table are computed directly.
    """

    def __init__(self, head_dim: int, theta: float = 10000.0, fraction: float = 1.0, max_len: int = 4096):
        super().__init__()
        self.rot_dim = int(head_dim * fraction)
        inv_freq = 1.0 / (theta ** (torch.arange(0, self.rot_dim, 2, dtype=torch.int64).float() / self.rot_dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        cos, sin = self._angles(torch.arange(max_len)[None])
        self.register_buffer("cos_table", cos[0], persistent=False)  # (max_len, d_rot)
        self.register_buffer("sin_table", sin[0], persistent=False)

    def _angles(self, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        freqs = position_ids[:, :, None].float() * self.inv_freq[None, None, :].float()  # (B, T, d_rot/2)
        emb = torch.cat((freqs, freqs), dim=-1)  # (B, T, d_rot)
        return emb.cos(), emb.sin()

    def forward(self, position_ids: torch.Tensor, dtype: torch.dtype = torch.float32):
        if int(position_ids.max()) < self.cos_table.shape[0]:
            cos, sin = self.cos_table[position_ids], self.sin_table[position_ids]
        else:
            cos, sin = self._angles(position_ids)
        return cos.to(dtype)[:, None], sin.to(dtype)[:, None]  # (B, 1, T, d_rot)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """(x₁, x₂) -> (−x₂, x₁) over the two halves of the last dimension."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the first ``cos.shape[-1]`` channels of ``x (B, H, T, D)``; the rest pass through."""
    d = cos.shape[-1]
    if d == x.shape[-1]:
        return torch.addcmul(x * cos, rotate_half(x), sin)  # x·cos + rotate_half(x)·sin
    rot, rest = x[..., :d], x[..., d:]
    return torch.cat((torch.addcmul(rot * cos, rotate_half(rot), sin), rest), dim=-1)


def alibi_slopes(n_heads: int) -> torch.Tensor:
    """ALiBi head slopes: 2^{−8/n·(h+1)} for the nearest power of two n ≤ H, then the odd
    multiples of the next power's slopes for the remaining heads (Press et al., 2022, §3)."""
    closest = 2 ** math.floor(math.log2(n_heads))
    base = 2.0 ** (-(2.0 ** -(math.log2(closest) - 3)))
    slopes = [base ** (i + 1) for i in range(closest)]
    if closest != n_heads:
        extra = 2.0 ** (-(2.0 ** -(math.log2(2 * closest) - 3)))
        n_extra = n_heads - closest
        slopes += [extra ** (i + 1) for i in range(0, 2 * n_extra, 2)]
    return torch.tensor(slopes, dtype=torch.float32)


class ALiBi(nn.Module):
    """Linear score biases: ``bias[h, i, j] = −m_h · (q_pos_i − k_pos_j)`` -> ``(1, H, Tq, Tk)``.

    Causal use only needs j ≤ i; the bias differs from BLOOM's ``m_h · j`` by a per-row constant,
    which softmax ignores.
    """

    def __init__(self, n_heads: int):
        super().__init__()
        self.register_buffer("slopes", alibi_slopes(n_heads), persistent=False)

    def forward(self, q_pos: torch.Tensor, k_pos: torch.Tensor) -> torch.Tensor:
        rel = (k_pos[None, :] - q_pos[:, None]).float()  # (Tq, Tk), ≤ 0 for the past
        return (self.slopes[:, None, None] * rel)[None]


def relative_position_bucket(relative_position: torch.Tensor, bidirectional: bool = True,
                             num_buckets: int = 32, max_distance: int = 128) -> torch.Tensor:
    """T5's bucketing of ``relative_position = key_pos − query_pos``.

    Bidirectional: half the buckets for each sign. Within a sign, the first half of the buckets
    hold exact distances 0..n/2−1 and the rest are log-spaced up to ``max_distance`` (clamped).
    Causal: only non-positive offsets (the past) get distinct buckets; the future maps to 0.
    """
    buckets = torch.zeros_like(relative_position)
    if bidirectional:
        num_buckets //= 2
        buckets = buckets + (relative_position > 0).long() * num_buckets
        n = relative_position.abs()
    else:
        n = (-relative_position).clamp(min=0)
    max_exact = num_buckets // 2
    is_small = n < max_exact
    large = max_exact + (
        torch.log(n.float() / max_exact) / math.log(max_distance / max_exact) * (num_buckets - max_exact)
    ).long()
    large = large.clamp(max=num_buckets - 1)
    return buckets + torch.where(is_small, n, large)


class RelativePositionBias(nn.Module):
    """T5 relative attention bias: a learned ``(num_buckets, H)`` table -> ``(1, H, Tq, Tk)``.

    Computed once per forward (by the first layer in HF; here by the model) and shared by all layers.
    """

    def __init__(self, n_heads: int, num_buckets: int = 32, max_distance: int = 128, bidirectional: bool = True):
        super().__init__()
        self.num_buckets, self.max_distance, self.bidirectional = num_buckets, max_distance, bidirectional
        self.embedding = nn.Embedding(num_buckets, n_heads)

    def forward(self, q_pos: torch.Tensor, k_pos: torch.Tensor) -> torch.Tensor:
        rel = k_pos[None, :] - q_pos[:, None]  # (Tq, Tk)
        b = relative_position_bucket(rel, self.bidirectional, self.num_buckets, self.max_distance)
        return self.embedding(b).permute(2, 0, 1)[None]  # (1, H, Tq, Tk)
