"""Encoder-only transformer (BERT — Devlin et al., 2019; MiniLM sentence encoders), assembled from
components chosen by a :class:`ModelConfig`.

    ids (B, T) ─ TokenEmbedding ─(+ token types)─(+ learned positions)─ LayerNorm ─▶ x (B, T, D)
      └─ N × Block[ x = Norm(x + Attn(x))  (bidirectional; padded keys masked)
                    x = Norm(x + FFN(x)) ]                       (post-norm, as BERT)
      ├─ Pooler: tanh(W x[:, 0] + b) ─▶ (B, D)                    (config.pooler)
      └─ MLMHead: Norm(GELU(W x + b)) · Eᵀ + b ─▶ logits (B, T, V) (config.mlm_head, tied to E)
"""
from __future__ import annotations

import torch
from torch import nn

from .config import ModelConfig
from ..nn import (AttentionInputs, MLMHead, PackedRows, Pooler,
                  TokenEmbedding, build_mask)
from ..nn.linear import LinearFactory, plain_linear
from ..nn.masks import segment_allowed, segment_position_ids
from ..nn.mlp import ACTIVATIONS, GATED
from .blocks import ModelParts, build_block, check_length, norm_of, position_embedding_of
from .decoder import DecoderLM


class EncoderModel(ModelParts, nn.Module):
    """Bidirectional encoder. ``forward`` returns MLM logits ``(B, T, V)`` when the config has an
    MLM head, else the final hidden states ``(B, T, D)``; :meth:`encode` and :meth:`pool` give the
    hidden states and the pooled ``(B, D)`` output explicitly. ``linear``: the projection factory
    (:mod:`genmodels.nn.linear`; ``None``: plain ``nn.Linear``) of attention, MLPs, pooler and MLM head."""

    family = "encoder"
    build_parts = ("linear",)  # what build_model(config, **parts) may pass in
    mask_rules = frozenset({"padding", "segments", "allowed", "positions", "embeddings"})

    def __init__(self, config: ModelConfig, *, linear: LinearFactory | None = None):
        super().__init__()
        c = self.config = config
        self.embed = TokenEmbedding(c.vocab_size, c.d_model, scale=c.embed_scale)
        self.type_embed = nn.Embedding(c.type_vocab_size, c.d_model) if c.type_vocab_size else None
        self.pos_embed = position_embedding_of(c)
        self.embed_norm = norm_of(c) if c.embedding_norm else nn.Identity()
        self.drop = nn.Dropout(c.dropout) if c.dropout > 0 else nn.Identity()
        self.blocks = nn.ModuleList(build_block(c, i, linear=linear) for i in range(c.n_layers))
        self.norm = norm_of(c) if c.final_norm else nn.Identity()
        self.pooler = Pooler(c.d_model, linear=linear or plain_linear) if c.pooler else None
        # the MLM transform uses the FFN's activation (BERT: exact GELU; a gated FFN's gate activation)
        act = ACTIVATIONS[GATED.get(c.mlp, c.mlp)]
        self.mlm = (MLMHead(c.d_model, c.vocab_size, act, norm_of(c), tie_to=self.embed if c.tie_embeddings else None,
                            linear=linear) if c.mlm_head else None)
        self.init_weights()

    init_weights = DecoderLM.init_weights
    set_attention_kernel = DecoderLM.set_attention_kernel
    transformer_blocks = DecoderLM.transformer_blocks

    def output_head(self) -> nn.Module | None:
        """The MLM head (``None`` without one: the output is the hidden states)."""
        return self.mlm

    # ---- forward --------------------------------------------------------------------------
    def embed_tokens(self, input_ids: torch.Tensor | None, token_type_ids: torch.Tensor | None = None,
                     position_ids: torch.Tensor | None = None, *,
                     inputs_embeds: torch.Tensor | None = None) -> torch.Tensor:
        """word (or ``inputs_embeds``) + token type + position, then the embedding norm: ``(B, T) -> (B, T, D)``."""
        x = self.embed(input_ids) if inputs_embeds is None else inputs_embeds
        t = x.shape[1]
        check_length(self.config, t)
        if self.type_embed is not None:  # no type ids: every token is type 0
            x = x + (self.type_embed(token_type_ids) if token_type_ids is not None else self.type_embed.weight[0])
        if self.pos_embed is not None:
            if position_ids is None:
                position_ids = torch.arange(t, device=x.device)[None]
            x = x + self.pos_embed(position_ids)
        return self.drop(self.embed_norm(x))

    def encode(self, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
               token_type_ids: torch.Tensor | None = None, position_ids: torch.Tensor | None = None,
               skip_padding: bool = False, *, inputs_embeds: torch.Tensor | None = None,
               segment_ids: torch.Tensor | None = None, allowed: torch.Tensor | None = None) -> torch.Tensor:
        """Final hidden states ``(B, T, D)``. ``attention_mask (B, T)``: 1 = token, 0 = padding.

        ``inputs_embeds (B, T, D)`` replaces ``input_ids`` (the word embeddings ``model.embed(ids)``;
        token types and positions are still added). ``segment_ids (B, T)``: packed examples — a token
        sees only its own segment, and positions restart at each segment unless ``position_ids`` are
        given (default: 0 … T−1, padding included, as BERT). ``allowed (B, T, T)`` bool: the pairs a
        query may see, ANDed with the padding (:func:`genmodels.nn.build_mask`).
        ``skip_padding=True`` runs every token-wise layer on the real tokens only (packed rows;
        attention still sees the padded layout): less work for ragged batches, and the hidden
        states at padded positions are then zeros instead of computed values.
        """
        if segment_ids is not None:
            allowed = segment_allowed(segment_ids, allowed)
            if position_ids is None:
                position_ids = segment_position_ids(segment_ids, attention_mask)
        x = self.embed_tokens(input_ids, token_type_ids, position_ids, inputs_embeds=inputs_embeds)
        t = x.shape[1]
        if attention_mask is not None and bool(attention_mask.all()):
            attention_mask = None  # nothing padded: mask-free kernels
        if allowed is not None and bool(allowed.all()):
            allowed = None
        mask, _ = build_mask(t, t, causal=False, key_padding=attention_mask, allowed=allowed, dtype=x.dtype,
                             device=x.device)
        packed = PackedRows.from_mask(attention_mask) if skip_padding and attention_mask is not None else None
        ctx = AttentionInputs(mask=mask, packed=packed)
        if packed is not None:
            x = packed.pack(x)  # (1, N, D)
        for block in self.blocks:
            x = block(x, ctx)
        x = self.norm(x)
        return packed.pad(x) if packed is not None else x

    def pool(self, hidden: torch.Tensor) -> torch.Tensor:
        """The pooler output ``(B, D)`` of hidden states ``(B, T, D)``."""
        if self.pooler is None:
            raise ValueError("this encoder has no pooler (config.pooler=False)")
        return self.pooler(hidden)

    def forward(self, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None, position_ids: torch.Tensor | None = None, *,
                inputs_embeds: torch.Tensor | None = None, segment_ids: torch.Tensor | None = None,
                allowed: torch.Tensor | None = None) -> torch.Tensor:
        """MLM logits ``(B, T, V)`` (hidden states without an MLM head); arguments as in :meth:`encode`."""
        h = self.encode(input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds=inputs_embeds,
                        segment_ids=segment_ids, allowed=allowed)
        return self.mlm(h) if self.mlm is not None else h
