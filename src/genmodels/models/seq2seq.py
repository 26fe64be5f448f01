"""Encoder–decoder transformer (the original Transformer — Vaswani et al., 2017; T5 — Raffel et al.,
2020), assembled from components chosen by a :class:`ModelConfig`.

    src (B, S) ─ Embed ─▶ N × Block[self-attn (bidirectional), FFN] ─ Norm ─▶ memory m (B, S, D)
    tgt (B, T) ─ Embed ─▶ M × CrossBlock[self-attn (causal), cross-attn over m, FFN] ─ Norm
               ─(× output_scale)─ LMHead ─▶ logits (B, T, V)

Positions: T5 adds a learned relative bias (buckets of key − query; bidirectional in the encoder,
causal in the decoder) to the attention scores, computed once per forward and shared by all
layers; the original Transformer adds sinusoidal positions to the (√D-scaled) embeddings. The
embedding is shared by encoder, decoder and (when tied) the output head.

Incremental decoding keeps a :class:`Seq2SeqCache`: the decoder's self-attention keys/values in a
:class:`KVCache` (grown as tokens come during generation), and each layer's cross-attention
keys/values of the memory, projected once.
"""
from __future__ import annotations

import torch
from torch import nn

from .config import ModelConfig
from ..nn import (AttentionInputs, KVCache, LMHead, RelativePositionBias,
                  TokenEmbedding, build_mask)
from ..nn.linear import LinearFactory
from ..nn.masks import segment_allowed, segment_position_ids
from .blocks import (DecoderView, ModelParts, build_block, build_cross_block, check_length, norm_of,
                     position_embedding_of)
from .decoder import DecoderLM


class Seq2SeqCache:
    """Decoder state between steps: self-attention KV cache + per-layer memory k/v + memory mask."""

    def __init__(self, self_kv: KVCache, memory_kv: list[tuple[torch.Tensor, torch.Tensor]],
                 memory_mask: torch.Tensor | None, rel_bias: RelativePositionBias | None = None):
        self.self_kv, self.memory_kv, self.memory_mask = self_kv, memory_kv, memory_mask
        self.rel_bias = rel_bias  # the decoder's T5 relative bias, a function of the distance q − k only
        self.dist_bias: torch.Tensor | None = None  # (H, L): bias by distance 0 … L−1, sized to the cache
        self._size_bias()

    @property
    def pos(self) -> int:
        return self.self_kv.pos

    def _size_bias(self) -> None:
        n = self.self_kv.max_len
        if self.rel_bias is not None and (self.dist_bias is None or self.dist_bias.shape[1] < n):
            k = self.self_kv.layers[0].k
            dist = torch.arange(n, device=k.device)
            self.dist_bias = self.rel_bias(dist.new_zeros(1), -dist)[0, :, 0].to(k.dtype)  # (H, L)

    def reserve(self, n: int) -> None:
        """Room for ``n`` more target positions (:meth:`KVCache.reserve`: grows up to its limit)."""
        self.self_kv.reserve(n)
        self._size_bias()

    def self_mask(self, start: int, k_len: int) -> torch.Tensor:
        """Causal mask + relative bias ``(1, H, k_len − start, k_len)`` for queries at ``[start, k_len)``."""
        d = torch.arange(start, k_len, device=self.dist_bias.device)[:, None] - torch.arange(k_len,
                                                                                           device=self.dist_bias.device)
        bias = self.dist_bias[:, d.clamp(min=0)][None]  # (1, H, Tq, Tk)
        mask, _ = build_mask(k_len - start, k_len, start=start, causal=True, score_bias=bias,
                             dtype=self.dist_bias.dtype, device=self.dist_bias.device)
        return mask

    def reorder(self, index: torch.Tensor) -> None:
        """Keep rows ``index (B·K,)`` of the self-attention cache (beam search). Beams only move
        within their source, whose memory k/v every beam row shares, so those stay as they are.
        In place: the buffers keep their storage (the native decode step holds pointers to them)."""
        self.self_kv.reorder(index)


class Seq2SeqLM(ModelParts, nn.Module):
    """``Seq2SeqLM(config, *, linear=None)``: ``linear`` is the projection factory
    (:mod:`genmodels.nn.linear`; ``None``: plain ``nn.Linear``) of every attention, MLP and untied head."""

    family = "seq2seq"
    build_parts = ("linear",)  # what build_model(config, **parts) may pass in
    mask_rules = frozenset({"causal", "padding", "segments", "allowed", "memory", "positions", "embeddings"})

    def __init__(self, config: ModelConfig, *, linear: LinearFactory | None = None):
        super().__init__()
        c = self.config = config
        n_dec = c.n_decoder_layers or c.n_layers
        self.embed = TokenEmbedding(c.vocab_size, c.d_model, scale=c.embed_scale)
        self.pos_embed = position_embedding_of(c)
        rel = c.position == "relative"
        self.enc_rel_bias = RelativePositionBias(c.n_heads, c.rel_buckets, c.rel_max_distance, True) if rel else None
        self.dec_rel_bias = RelativePositionBias(c.n_heads, c.rel_buckets, c.rel_max_distance, False) if rel else None
        self.drop = nn.Dropout(c.dropout) if c.dropout > 0 else nn.Identity()
        self.enc_blocks = nn.ModuleList(build_block(c, i, linear=linear) for i in range(c.n_layers))
        self.enc_norm = norm_of(c) if c.final_norm else nn.Identity()
        self.dec_blocks = nn.ModuleList(build_cross_block(c, i, linear=linear) for i in range(n_dec))
        self.dec_norm = norm_of(c) if c.final_norm else nn.Identity()
        self.head = LMHead(c.d_model, c.vocab_size, tie_to=self.embed if c.tie_embeddings else None, linear=linear)
        self.init_weights()

    set_attention_kernel = DecoderLM.set_attention_kernel

    # ---- parts, by name -------------------------------------------------------------------
    def transformer_blocks(self) -> list[nn.Module]:
        return [*self.enc_blocks, *self.dec_blocks]

    def decoder_view(self) -> DecoderView:
        """The decoder's parts as the native decode step reads them (T5 relative bias, no rotary)."""
        return DecoderView(self.dec_blocks, self.dec_norm, self.pos_embed, None, self.dec_rel_bias)

    def init_weights(self, std: float = 0.02) -> None:
        """GPT-2 init; T5 (relative positions) uses Mesh TensorFlow's instead: unit-variance
        embedding, every projection N(0, 1/fan_in), queries a further 1/√d (the attention scale
        T5 folds into the init), relative-bias tables N(0, 1/D)."""
        DecoderLM.init_weights(self, std)
        if self.config.position != "relative":
            return
        c = self.config
        with torch.no_grad():
            nn.init.normal_(self.embed.weight, std=1.0)
            for name, p in self.named_parameters():
                if p.dim() != 2 or name == "embed.weight":
                    continue
                if name.endswith("rel_bias.embedding.weight"):
                    nn.init.normal_(p, std=c.d_model ** -0.5)
                    continue
                nn.init.normal_(p, std=p.shape[1] ** -0.5)
                if name.endswith(("attn.qkv.weight", "cross.q.weight")):
                    p[: c.n_heads * c.dim_head].mul_(c.dim_head ** -0.5)

    def _embed(self, ids: torch.Tensor | None, start: int = 0, inputs_embeds: torch.Tensor | None = None,
               segment_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Token (or ``inputs_embeds``) + absolute positions (restarting per segment), dropout."""
        x = self.embed(ids) if inputs_embeds is None else inputs_embeds  # (B, T, D)
        check_length(self.config, start + x.shape[1])
        if self.pos_embed is not None:
            pos = (segment_position_ids(segment_ids) if segment_ids is not None
                   else torch.arange(start, start + x.shape[1], device=x.device)[None])
            x = x + self.pos_embed(pos)
        return self.drop(x)

    # ---- encoder --------------------------------------------------------------------------
    def encode(self, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None, *,
               inputs_embeds: torch.Tensor | None = None, segment_ids: torch.Tensor | None = None,
               allowed: torch.Tensor | None = None) -> torch.Tensor:
        """Encoder output (memory) ``(B, S, D)``; ``attention_mask (B, S)``: 1 = token, 0 = pad.

        ``inputs_embeds (B, S, D)`` replaces ``input_ids`` (``model.embed(ids)``); ``segment_ids (B, S)``:
        packed sources, a token sees only its own segment (absolute positions restart per segment;
        T5's relative bias depends on distances only); ``allowed (B, S, S)`` bool: the pairs a
        query may see, ANDed with the padding."""
        x = self._embed(input_ids, 0, inputs_embeds, segment_ids)
        s = x.shape[1]
        if segment_ids is not None:
            allowed = segment_allowed(segment_ids, allowed)
        if attention_mask is not None and bool(attention_mask.all()):
            attention_mask = None
        if allowed is not None and bool(allowed.all()):
            allowed = None
        bias = None
        if self.enc_rel_bias is not None:
            pos = torch.arange(s, device=x.device)
            bias = self.enc_rel_bias(pos, pos)  # (1, H, S, S), shared by every layer
        mask, _ = build_mask(s, s, causal=False, key_padding=attention_mask, allowed=allowed, score_bias=bias,
                             dtype=x.dtype, device=x.device)
        ctx = AttentionInputs(mask=mask)
        for block in self.enc_blocks:
            x = block(x, ctx)
        return self.enc_norm(x)

    # ---- decoder --------------------------------------------------------------------------
    def memory_kv(self, memory: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Each decoder layer's cross-attention keys/values of ``memory``: computed once per source."""
        return [block.cross.memory_kv(memory) for block in self.dec_blocks]

    def new_cache(self, memory: torch.Tensor, memory_mask: torch.Tensor | None = None,
                  max_len: int | None = None, *, limit: int | None = None) -> Seq2SeqCache:
        """A decoding cache for ``memory (B, S, D)``: self-attention k/v for ``max_len`` target
        positions (:meth:`Seq2SeqCache.reserve` may grow it up to ``limit``; None: fixed) and the
        memory's cross-attention k/v."""
        c = self.config
        if memory_mask is not None and memory_mask.dim() != 2:
            raise ValueError(f"memory_mask {tuple(memory_mask.shape)}: a decoding cache takes a key mask (B, S); "
                             "per-query memory masks (B, T, S) need the full forward")
        max_len = max_len or c.max_seq_len
        self_kv = KVCache(len(self.dec_blocks), memory.shape[0], c.kv_heads, max_len, c.dim_head,
                          memory.dtype, memory.device, limit=limit)
        return Seq2SeqCache(self_kv, self.memory_kv(memory), self._memory_mask(memory_mask, memory.dtype),
                            self.dec_rel_bias)

    @staticmethod
    def _memory_mask(memory_mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
        """Additive cross-attention mask of ``memory_mask``: a key mask ``(B, S)`` (1 = token) ->
        ``(B, 1, 1, S)``, or allowed pairs ``(B, T, S)`` bool -> ``(B, 1, T, S)``."""
        if memory_mask is None or bool(memory_mask.all()):
            return None
        if memory_mask.dim() == 3:
            mask, _ = build_mask(memory_mask.shape[1], memory_mask.shape[2], causal=False, allowed=memory_mask,
                                 dtype=dtype, device=memory_mask.device)
            return mask
        mask, _ = build_mask(1, memory_mask.shape[1], causal=False, key_padding=memory_mask, dtype=dtype,
                             device=memory_mask.device)
        return mask  # (B, 1, 1, S): the same for every query

    def decode_hidden(self, decoder_input_ids: torch.Tensor | None = None, memory: torch.Tensor | None = None,
                      memory_mask: torch.Tensor | None = None, decoder_attention_mask: torch.Tensor | None = None,
                      cache: Seq2SeqCache | None = None, *, inputs_embeds: torch.Tensor | None = None,
                      segment_ids: torch.Tensor | None = None, allowed: torch.Tensor | None = None) -> torch.Tensor:
        """Decoder hidden states ``(B, T, D)`` (after the final norm). With a ``cache`` the memory
        and its mask come from the cache and ``decoder_input_ids`` continue at ``cache.pos``.

        ``memory_mask``: ``(B, S)`` 1 = source token, or ``(B, T, S)`` bool pairs (target i may
        see source j: packed examples). ``inputs_embeds (B, T, D)`` replaces ``decoder_input_ids``;
        ``segment_ids (B, T)`` (no cache): a target token sees only its own segment (positions
        restart); ``allowed (B, T, start+T)`` bool: the pairs a query may see, ANDed with causal
        and padding."""
        start = cache.pos if cache is not None else 0
        if segment_ids is not None:
            if cache is not None:
                raise ValueError("segment_ids (packed examples) cannot continue a decoding cache")
            allowed = segment_allowed(segment_ids, allowed)
        x = self._embed(decoder_input_ids, start, inputs_embeds, segment_ids)
        b, t = x.shape[:2]
        k_len = start + t
        if decoder_attention_mask is not None and bool(decoder_attention_mask.all()):
            decoder_attention_mask = None
        if allowed is not None and bool(allowed.all()):
            allowed = None
        if cache is not None and cache.dist_bias is not None and decoder_attention_mask is None and allowed is None:
            mask, is_causal = cache.self_mask(start, k_len), False
        else:
            bias = None
            if self.dec_rel_bias is not None:
                bias = self.dec_rel_bias(torch.arange(start, k_len, device=x.device),
                                         torch.arange(k_len, device=x.device))
            mask, is_causal = build_mask(t, k_len, start=start, causal=True, key_padding=decoder_attention_mask,
                                         allowed=allowed, score_bias=bias, dtype=x.dtype, device=x.device)
        ctx = AttentionInputs(mask=mask, is_causal=is_causal, start=start)
        if cache is not None:
            mem_kv, mem_mask = cache.memory_kv, cache.memory_mask
        else:
            mem_kv, mem_mask = self.memory_kv(memory), self._memory_mask(memory_mask, x.dtype)
        for i, block in enumerate(self.dec_blocks):
            x = block(x, ctx, mem_kv[i], mem_mask, cache.self_kv[i] if cache is not None else None)
        if cache is not None:
            cache.self_kv.pos = k_len
        return self.dec_norm(x)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Decoder hidden ``(B, T, D)`` -> logits ``(B, T, V)`` (T5 v1.0 scales by d^-1/2 first)."""
        if self.config.output_scale is not None:
            hidden = hidden * self.config.output_scale
        return self.head(hidden)

    def decode(self, decoder_input_ids: torch.Tensor | None = None, memory: torch.Tensor | None = None,
               memory_mask: torch.Tensor | None = None, decoder_attention_mask: torch.Tensor | None = None,
               cache: Seq2SeqCache | None = None, **inputs) -> torch.Tensor:
        """Logits ``(B, T, V)`` of the decoder over ``memory`` (or the memory held by ``cache``);
        ``inputs``: :meth:`decode_hidden`'s ``inputs_embeds``, ``segment_ids``, ``allowed``."""
        return self.logits(self.decode_hidden(decoder_input_ids, memory, memory_mask, decoder_attention_mask, cache,
                                              **inputs))

    def forward(self, input_ids: torch.Tensor | None, decoder_input_ids: torch.Tensor | None,
                attention_mask: torch.Tensor | None = None, decoder_attention_mask: torch.Tensor | None = None, *,
                allowed: torch.Tensor | None = None, decoder_allowed: torch.Tensor | None = None,
                memory_mask: torch.Tensor | None = None, segment_ids: torch.Tensor | None = None,
                decoder_segment_ids: torch.Tensor | None = None, inputs_embeds: torch.Tensor | None = None,
                decoder_inputs_embeds: torch.Tensor | None = None) -> torch.Tensor:
        """Teacher-forced logits ``(B, T, V)`` of ``decoder_input_ids`` given ``input_ids``.

        ``allowed (B, S, S)``: the encoder's visible pairs (:meth:`encode`); ``decoder_allowed
        (B, T, T)``: the decoder's (:meth:`decode_hidden`); ``memory_mask (B, S)`` or ``(B, T, S)``:
        what cross-attention may see, ANDed with ``attention_mask`` and — when both are given — with
        equal ``segment_ids`` / ``decoder_segment_ids`` (packed pairs: target segment k reads source
        segment k)."""
        memory = self.encode(input_ids, attention_mask, inputs_embeds=inputs_embeds, segment_ids=segment_ids,
                             allowed=allowed)
        cross = self._cross_mask(attention_mask, memory_mask, segment_ids, decoder_segment_ids)
        return self.decode(decoder_input_ids, memory, cross, decoder_attention_mask, inputs_embeds=decoder_inputs_embeds,
                           segment_ids=decoder_segment_ids, allowed=decoder_allowed)

    @staticmethod
    def _cross_mask(attention_mask, memory_mask, segment_ids, decoder_segment_ids) -> torch.Tensor | None:
        """The memory mask of :meth:`forward`: source padding ``(B, S)``, ``memory_mask`` and equal
        segments, ANDed (``(B, S)`` while every part is a key mask, else ``(B, T, S)`` bool)."""
        if (segment_ids is None) != (decoder_segment_ids is None):
            raise ValueError("segment_ids and decoder_segment_ids go together (target segment k reads source "
                             "segment k); pass both or neither")
        parts = [m for m in (attention_mask, memory_mask) if m is not None]
        if segment_ids is not None:
            parts.append(decoder_segment_ids[:, :, None] == segment_ids[:, None, :])  # (B, T, S)
        if len(parts) <= 1:
            return parts[0] if parts else None
        if all(p.dim() == 2 for p in parts):
            return torch.stack([p.bool() for p in parts]).all(0)
        pairs = [p.bool()[:, None, :] if p.dim() == 2 else p.bool() for p in parts]
        out = pairs[0]
        for p in pairs[1:]:
            out = out & p
        return out

    def shift_right(self, labels: torch.Tensor) -> torch.Tensor:
        """Decoder inputs for teacher forcing: ``[start, y₀, …, y_{T−2}]`` (ignored −100 → pad)."""
        c = self.config
        start = c.decoder_start_token_id if c.decoder_start_token_id is not None else (c.pad_token_id or 0)
        out = labels.new_full(labels.shape, start)
        out[:, 1:] = labels[:, :-1]
        return out.masked_fill(out == -100, c.pad_token_id or 0)
