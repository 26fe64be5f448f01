"""Transformer blocks: a residual wrapping of attention and feed-forward, with the norm placed
before (pre-norm: GPT-2, Llama, T5) or after (post-norm: the original Transformer, BERT).

Pre-norm:   x ← x + Attn(N₁(x));   x ← x + FFN(N₂(x))
Post-norm:  x ← N₁(x + Attn(x));   x ← N₂(x + FFN(x))

Decoder blocks of an encoder–decoder add cross-attention over the encoder's output m between the
two (T5: pre-norm; the original Transformer: post-norm):

Pre-norm:   x ← x + Attn(N₁(x));   x ← x + Cross(Nₓ(x), m);   x ← x + FFN(N₂(x))
Post-norm:  x ← N₁(x + Attn(x));   x ← Nₓ(x + Cross(x, m));   x ← N₂(x + FFN(x))
"""
from __future__ import annotations

import torch
from torch import nn

from ..config import ModelConfig
from ..nn import (AttentionInputs, CrossAttention, LayerKVCache, LearnedPositionalEmbedding, SelfAttention,
                  SinusoidalPositionalEmbedding, make_mlp, make_norm)


class PreNormBlock(nn.Module):
    def __init__(self, attn: nn.Module, mlp: nn.Module, norm1: nn.Module, norm2: nn.Module, dropout: float = 0.0):
        super().__init__()
        self.norm1, self.attn, self.norm2, self.mlp = norm1, attn, norm2, mlp
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, ctx: AttentionInputs, cache: LayerKVCache | None = None) -> torch.Tensor:
        x = x + self.drop(self.attn(self.norm1(x), ctx, cache))  # (B, T, D)
        return x + self.drop(self.mlp(self.norm2(x)))


class PostNormBlock(PreNormBlock):
    def forward(self, x: torch.Tensor, ctx: AttentionInputs, cache: LayerKVCache | None = None) -> torch.Tensor:
        x = self.norm1(x + self.drop(self.attn(x, ctx, cache)))
        return self.norm2(x + self.drop(self.mlp(x)))


class PreNormCrossBlock(nn.Module):
    """Self-attention, cross-attention over ``memory_kv`` (keys/values of the encoder output), FFN."""

    def __init__(self, attn: nn.Module, cross: nn.Module, mlp: nn.Module, norm1: nn.Module, norm_cross: nn.Module,
                 norm2: nn.Module, dropout: float = 0.0):
        super().__init__()
        self.norm1, self.attn, self.norm_cross, self.cross, self.norm2, self.mlp = (norm1, attn, norm_cross, cross,
                                                                                    norm2, mlp)
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, ctx: AttentionInputs, memory_kv: tuple[torch.Tensor, torch.Tensor],
                memory_mask: torch.Tensor | None = None, cache: LayerKVCache | None = None) -> torch.Tensor:
        x = x + self.drop(self.attn(self.norm1(x), ctx, cache))  # (B, T, D)
        x = x + self.drop(self.cross(self.norm_cross(x), memory_kv, memory_mask))
        return x + self.drop(self.mlp(self.norm2(x)))


class PostNormCrossBlock(PreNormCrossBlock):
    def forward(self, x: torch.Tensor, ctx: AttentionInputs, memory_kv: tuple[torch.Tensor, torch.Tensor],
                memory_mask: torch.Tensor | None = None, cache: LayerKVCache | None = None) -> torch.Tensor:
        x = self.norm1(x + self.drop(self.attn(x, ctx, cache)))
        x = self.norm_cross(x + self.drop(self.cross(x, memory_kv, memory_mask)))
        return self.norm2(x + self.drop(self.mlp(x)))


def position_embedding_of(c: ModelConfig) -> nn.Module | None:
    """The input-side position embedding a config names (learned / sinusoidal), else ``None``
    (RoPE, ALiBi and T5 buckets act inside attention instead)."""
    if c.position == "learned":
        return LearnedPositionalEmbedding(c.max_seq_len, c.d_model)
    if c.position == "sinusoidal":
        return SinusoidalPositionalEmbedding(c.max_seq_len, c.d_model)
    return None


def check_length(c: ModelConfig, n: int) -> None:
    """Absolute-position tables hold ``max_seq_len`` rows: name the limit instead of an IndexError."""
    if n > c.max_seq_len and c.position in ("learned", "sinusoidal"):
        raise ValueError(f"sequence of {n} positions exceeds the model's {c.max_seq_len} {c.position} "
                         "positions (max_seq_len)")


def norm_of(c: ModelConfig) -> nn.Module:
    return make_norm(c.norm, c.d_model, c.norm_eps, c.norm_bias)


def self_attention_of(c: ModelConfig) -> SelfAttention:
    return SelfAttention(c.d_model, c.n_heads, c.kv_heads, c.dim_head, bias=c.attn_bias,
                         out_bias=c.out_bias, scale=c.attn_scale)


def block_of(c: ModelConfig) -> nn.Module:
    """One self-attention block as the config describes it."""
    cls = PreNormBlock if c.norm_placement == "pre" else PostNormBlock
    return cls(self_attention_of(c), make_mlp(c.mlp, c.d_model, c.d_ff, c.mlp_bias), norm_of(c), norm_of(c),
               c.dropout)


def cross_block_of(c: ModelConfig) -> nn.Module:
    """One decoder block of an encoder–decoder: self-attention, cross-attention, feed-forward."""
    cls = PreNormCrossBlock if c.norm_placement == "pre" else PostNormCrossBlock
    cross = CrossAttention(c.d_model, c.n_heads, c.kv_heads, c.dim_head, bias=c.attn_bias, out_bias=c.out_bias,
                           scale=c.attn_scale)
    return cls(self_attention_of(c), cross, make_mlp(c.mlp, c.d_model, c.d_ff, c.mlp_bias), norm_of(c), norm_of(c),
               norm_of(c), c.dropout)
