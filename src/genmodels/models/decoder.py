"""Decoder-only language model (GPT-2, Llama 2, Mistral — Radford et al., 2019; Touvron et al., 2023;
Jiang et al., 2023), assembled from components chosen by a :class:`ModelConfig`.

    ids (B, T) ─ TokenEmbedding ─(+ learned/sinusoidal positions)─▶ x (B, T, D)
      └─ N × Block[ x += Attn(Norm(x)) (causal; RoPE / ALiBi / window via the shared inputs)
                    x += FFN(Norm(x)) ]
      └─ Norm ─ LMHead (tied or separate) ─▶ logits (B, T, V)
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .config import ModelConfig
from ..nn import (ALiBi, AttentionInputs, KVCache, LMHead, RotaryEmbedding,
                  TokenEmbedding, build_mask, padding_position_ids)
from .blocks import (DecoderView, ModelParts, build_block, check_length, norm_of,
                     position_embedding_of)


class DecoderLM(ModelParts, nn.Module):
    family = "decoder"

    def __init__(self, config: ModelConfig):
        super().__init__()
        c = self.config = config
        self.embed = TokenEmbedding(c.vocab_size, c.d_model)
        # Exactly one of these carries position information (chosen by config.position).
        self.pos_embed = position_embedding_of(c)
        self.rotary = (RotaryEmbedding(c.dim_head, c.rope_theta, c.rotary_fraction, c.max_seq_len)
                       if c.position == "rope" else None)
        self.score_bias = ALiBi(c.n_heads) if c.position == "alibi" else None
        self.drop = nn.Dropout(c.dropout) if c.dropout > 0 else nn.Identity()
        self.blocks = nn.ModuleList(build_block(c, i) for i in range(c.n_layers))
        self.norm = norm_of(c) if c.final_norm else nn.Identity()
        self.head = LMHead(c.d_model, c.vocab_size, tie_to=self.embed if c.tie_embeddings else None)
        self.init_weights()

    # ---- parts, by name (other modules ask these, never guess attributes) -------------------
    def transformer_blocks(self) -> list[nn.Module]:
        return list(self.blocks)

    def decoder_view(self) -> DecoderView:
        """The decoder's parts as the native decode step reads them."""
        return DecoderView(self.blocks, self.norm, self.pos_embed, self.rotary, self.score_bias)

    # ---- construction helpers -------------------------------------------------------------
    def init_weights(self, std: float = 0.02) -> None:
        """GPT-2 init: N(0, 0.02) for matrices and embeddings, residual outputs (the projections each
        block names: :meth:`residual_output_weights`) scaled by 1/√(2L)."""
        residual = {id(p) for p in self.residual_output_weights()}
        for name, p in self.named_parameters():
            if p.dim() >= 2:
                scale = 1 / math.sqrt(2 * self.config.n_layers) if id(p) in residual else 1.0
                nn.init.normal_(p, std=std * scale)
            elif name.endswith("bias"):
                nn.init.zeros_(p)
            else:
                nn.init.ones_(p)

    def new_cache(self, batch: int, max_len: int | None = None, *, limit: int | None = None) -> KVCache:
        """A KV cache for ``batch`` sequences of ``max_len`` slots (default ``max_seq_len``).

        ``limit`` (generation): :meth:`KVCache.reserve` may grow it up to ``limit`` slots or, with a
        sliding window, compact it (see :mod:`genmodels.nn.kv_cache`); None: a fixed cache."""
        c = self.config
        p = self.embed.weight
        return KVCache(c.n_layers, batch, c.kv_heads, max_len or c.max_seq_len, c.dim_head, p.dtype, p.device,
                       limit=limit, window=c.sliding_window)

    def set_attention_kernel(self, kernel: str) -> None:
        """``"sdpa"`` (fused, default) or ``"reference"`` (plain matmuls) in every layer."""
        for m in self.modules():
            if hasattr(m, "kernel"):
                m.kernel = kernel

    # ---- forward --------------------------------------------------------------------------
    def hidden_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                      position_ids: torch.Tensor | None = None, cache: KVCache | None = None) -> torch.Tensor:
        """Final hidden states ``(B, T, D)`` (after the final norm).

        ``attention_mask (B, start+T)``: 1 for tokens, 0 for (left) padding, covering the cache's
        filled slots too (``cache.key_mask`` keeps it in slot coordinates across compactions).
        ``position_ids`` default to the count of real tokens before each one.
        """
        b, t = input_ids.shape
        start = cache.pos if cache is not None else 0  # cache slot of the first new token
        offset = cache.offset if cache is not None else 0  # absolute position of slot 0
        if position_ids is None:
            if attention_mask is not None:
                position_ids = padding_position_ids(attention_mask, start)
            else:
                position_ids = torch.arange(offset + start, offset + start + t, device=input_ids.device)[None]
                position_ids = position_ids.expand(b, t)
        x = self.embed(input_ids)  # (B, T, D)
        check_length(self.config, offset + start + t)
        if self.pos_embed is not None:
            x = x + self.pos_embed(position_ids)
        x = self.drop(x)
        ctx = self._attention_inputs(t, start, attention_mask, position_ids, x.dtype)
        for i, block in enumerate(self.blocks):
            x = block(x, ctx, cache[i] if cache is not None else None)
        if cache is not None:
            cache.pos = start + t
        return self.norm(x)

    def _attention_inputs(self, t: int, start: int, attention_mask, position_ids, dtype) -> AttentionInputs:
        c = self.config
        device = position_ids.device
        k_len = start + t
        if attention_mask is not None and bool(attention_mask.all()):
            attention_mask = None  # nothing padded: keep the fast, mask-free kernels
        bias = None
        if self.score_bias is not None:
            bias = self.score_bias(torch.arange(start, k_len, device=device), torch.arange(k_len, device=device))
        mask, is_causal = build_mask(t, k_len, start=start, causal=True, window=c.sliding_window,
                                     key_padding=attention_mask, score_bias=bias, dtype=dtype, device=device)
        rope = self.rotary(position_ids, dtype) if self.rotary is not None else None
        return AttentionInputs(mask=mask, is_causal=is_causal, rope=rope, start=start)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None, cache: KVCache | None = None) -> torch.Tensor:
        """Logits ``(B, T, V)``."""
        return self.head(self.hidden_states(input_ids, attention_mask, position_ids, cache))
