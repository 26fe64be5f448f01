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
from ..nn.linear import LinearFactory
from ..nn.masks import segment_allowed, segment_position_ids
from .blocks import (DecoderView, ModelParts, build_block, check_length, norm_of,
                     position_embedding_of)


class DecoderLM(ModelParts, nn.Module):
    """``DecoderLM(config, *, linear=None)``: ``linear`` is the projection factory
    (:mod:`genmodels.nn.linear`) every attention, MLP and untied head linear is built with
    (``None``: plain ``nn.Linear``, today's modules, init and keys)."""

    family = "decoder"
    build_parts = ("linear",)  # what build_model(config, **parts) may pass in
    mask_rules = frozenset({"causal", "window", "padding", "segments", "allowed", "positions", "embeddings"})

    def __init__(self, config: ModelConfig, *, linear: LinearFactory | None = None):
        super().__init__()
        c = self.config = config
        self.embed = TokenEmbedding(c.vocab_size, c.d_model)
        # Exactly one of these carries position information (chosen by config.position).
        self.pos_embed = position_embedding_of(c)
        self.rotary = (RotaryEmbedding(c.dim_head, c.rope_theta, c.rotary_fraction, c.max_seq_len)
                       if c.position == "rope" else None)
        self.score_bias = ALiBi(c.n_heads) if c.position == "alibi" else None
        self.drop = nn.Dropout(c.dropout) if c.dropout > 0 else nn.Identity()
        self.blocks = nn.ModuleList(build_block(c, i, linear=linear) for i in range(c.n_layers))
        self.norm = norm_of(c) if c.final_norm else nn.Identity()
        self.head = LMHead(c.d_model, c.vocab_size, tie_to=self.embed if c.tie_embeddings else None, linear=linear)
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
    def hidden_states(self, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                      position_ids: torch.Tensor | None = None, cache: KVCache | None = None, *,
                      inputs_embeds: torch.Tensor | None = None, segment_ids: torch.Tensor | None = None,
                      allowed: torch.Tensor | None = None) -> torch.Tensor:
        """Final hidden states ``(B, T, D)`` (after the final norm).

        ``input_ids (B, T)``, or ``inputs_embeds (B, T, D)`` (what ``model.embed(input_ids)`` gives).
        ``attention_mask (B, start+T)``: 1 for tokens, 0 for (left) padding, covering the cache's
        filled slots too (``cache.key_mask`` keeps it in slot coordinates across compactions).
        ``segment_ids (B, T)`` (packed examples; no cache): a query sees only keys of its own segment.
        ``allowed (B, T, start+T)`` bool: the (query, key) pairs a query may see, ANDed with causal,
        window and padding (:func:`genmodels.nn.build_mask`).
        ``position_ids (B, T)`` default to the count of real tokens before each one in its row — or
        in its segment, with ``segment_ids``: a left-padded row's positions start at its first real
        token (as transformers' ``generate`` does, unlike its plain forward with learned absolute
        positions, which counts the pads).
        """
        x = self.embed(input_ids) if inputs_embeds is None else inputs_embeds  # (B, T, D)
        b, t = x.shape[:2]
        start = cache.pos if cache is not None else 0  # cache slot of the first new token
        offset = cache.offset if cache is not None else 0  # absolute position of slot 0
        if segment_ids is not None:
            if cache is not None:
                raise ValueError("segment_ids (packed examples) cannot continue a cache; pass allowed pairs "
                                 "in slot coordinates instead")
            allowed = segment_allowed(segment_ids, allowed)
        if cache is not None:  # cache protocol v2: each row continues at its own position (cache.row_pos)
            position_ids = cache.advance(t, attention_mask, position_ids)
        elif position_ids is None:
            position_ids = self._position_ids(b, t, start, offset, attention_mask, segment_ids, x.device)
        check_length(self.config, offset + start + t)
        if self.pos_embed is not None:
            x = x + self.pos_embed(position_ids)
        x = self.drop(x)
        ctx = self._attention_inputs(t, start, attention_mask, position_ids, x.dtype, allowed)
        for i, block in enumerate(self.blocks):
            x = block(x, ctx, cache[i] if cache is not None else None)
        if cache is not None:
            cache.pos = start + t
        return self.norm(x)

    @staticmethod
    def _position_ids(b: int, t: int, start: int, offset: int, attention_mask, segment_ids, device) -> torch.Tensor:
        """Default positions ``(B, T)``: per segment, else past the pads, else the cache slots' own."""
        if segment_ids is not None:
            return segment_position_ids(segment_ids, attention_mask)
        if attention_mask is not None:
            return padding_position_ids(attention_mask, start)
        return torch.arange(offset + start, offset + start + t, device=device)[None].expand(b, t)

    def _attention_inputs(self, t: int, start: int, attention_mask, position_ids, dtype,
                          allowed: torch.Tensor | None = None) -> AttentionInputs:
        c = self.config
        device = position_ids.device
        k_len = start + t
        if attention_mask is not None and bool(attention_mask.all()):
            attention_mask = None  # nothing padded: keep the fast, mask-free kernels
        if allowed is not None and bool(allowed.all()):
            allowed = None  # every pair allowed: the same
        bias = None
        if self.score_bias is not None:
            bias = self.score_bias(torch.arange(start, k_len, device=device), torch.arange(k_len, device=device))
        mask, is_causal = build_mask(t, k_len, start=start, causal=True, window=c.sliding_window,
                                     key_padding=attention_mask, allowed=allowed, score_bias=bias, dtype=dtype,
                                     device=device)
        rope = self.rotary(position_ids, dtype) if self.rotary is not None else None
        return AttentionInputs(mask=mask, is_causal=is_causal, rope=rope, start=start)

    def forward(self, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None, cache: KVCache | None = None, *,
                inputs_embeds: torch.Tensor | None = None, segment_ids: torch.Tensor | None = None,
                allowed: torch.Tensor | None = None) -> torch.Tensor:
        """Logits ``(B, T, V)``; the arguments as in :meth:`hidden_states` (positions of a left-padded
        row start at its first real token, as transformers' ``generate`` counts them)."""
        return self.head(self.hidden_states(input_ids, attention_mask, position_ids, cache,
                                            inputs_embeds=inputs_embeds, segment_ids=segment_ids, allowed=allowed))
