"""Gist caching for encoder–decoders (T5; Mu, Li, Goodman 2023, §3 "encoder–decoder"): the source is laid out
``[P | G | X]`` (instruction, k gist tokens, input) and, under the gist mask (:mod:`genmodels.nn.gist_mask`),
the encoder's ``X`` queries never see ``P``, ``P ∪ G`` queries never see ``X``, and the decoder cross-attends
to ``G ∪ X`` only.

So ``P ∪ G``'s encoder states do not depend on ``X``: :func:`compress_seq2seq` encodes ``[P, G]`` once and keeps,
per encoder layer, ``G``'s keys and values (what ``X``'s queries read at that layer) and ``G``'s encoder outputs
(what the decoder reads). :func:`encode_after` then encodes an input ``X`` alone against those keys and values and
puts ``G``'s outputs in front of its memory: the memory and memory mask of the full masked forward, so the decoder
gives its tokens and logits. Positions: T5's relative bias reads distances only, and ``X_i − G_j = k + i − j``
whatever the instruction's length, so ``X`` takes positions ``k, k+1, …`` after the gist's ``0 … k−1``; absolute
embeddings (the original Transformer) take each row's own ``|P| + k + i`` (``next_pos``).

Rows may have different instructions (``[P, G]`` right-padded, the gist gathered per row) and inputs of
different lengths (right-padded as T5 sources are, ``attention_mask``). ``neg_control`` keeps nothing (``X``
sees neither ``P`` nor ``G``); ``pos_control`` is refused: there the instruction's encoder states read the input
(bidirectional), so no part of the encoder can be computed before the input is known.
"""
from __future__ import annotations

import torch

from .nn.attention import AttentionInputs
from .nn.kv_cache import LayerKVCache
from .nn.masks import build_mask


def _encoder(model, x: torch.Tensor, key_mask: torch.Tensor | None, q_pos: torch.Tensor, k_pos: torch.Tensor,
             caches: list[LayerKVCache], start: int) -> torch.Tensor:
    """The encoder stack over ``x (B, T, D)`` (embedded), keys ``[cached slots | x]``: each layer's keys and values
    written into ``caches[i]`` at ``start``; bidirectional, ``key_mask (B, start + T)`` padding, T5's relative bias
    of query positions ``q_pos (T,)`` and key positions ``k_pos (start + T,)``. Returns ``enc_norm`` of the output."""
    bias = model.enc_rel_bias(q_pos, k_pos) if model.enc_rel_bias is not None else None  # (1, H, T, start + T)
    if key_mask is not None and bool(key_mask.all()):
        key_mask = None
    mask, _ = build_mask(x.shape[1], start + x.shape[1], start=start, causal=False, key_padding=key_mask,
                         score_bias=bias, dtype=x.dtype, device=x.device)
    ctx = AttentionInputs(mask=mask, start=start)
    for block, cache in zip(model.enc_blocks, caches):
        x = block(x, ctx, cache)
    return model.enc_norm(x)


def _caches(model, batch: int, length: int, like: torch.Tensor) -> list[LayerKVCache]:
    attn = model.enc_blocks[0].attn
    return [LayerKVCache(batch, attn.n_kv_heads, length, attn.head_dim, like.dtype, like.device)
            for _ in model.enc_blocks]


def _embed(model, ids: torch.Tensor, positions: torch.Tensor | None) -> torch.Tensor:
    """Token embeddings ``(B, T, D)`` plus absolute positions ``positions (B|1, T)`` when the model has them."""
    x = model.embed(ids)
    if model.pos_embed is not None:
        x = x + model.pos_embed(positions)
    return model.drop(x)


@torch.inference_mode()
def compress_seq2seq(model, rows: list[list[int]], gist_id: int, k: int, mode: str) -> dict:
    """The parts of a :class:`genmodels.gist.GistCache` for an encoder–decoder: ``keys``/``values`` per encoder
    layer ``(B, H_kv, S, D)``, ``memory (B, S, D)`` (``G``'s encoder outputs) and ``next_pos (B,)`` = ``|P| + k``;
    S = k (``gist``) or 0 (``neg_control``)."""
    if mode == "pos_control":
        raise ValueError("compress: mode='pos_control' on an encoder–decoder caches nothing: its instruction's "
                         "encoder states read the input (bidirectional attention); run the full forward instead")
    device = next(model.parameters()).device
    b, width = len(rows), max(len(r) for r in rows) + k
    ids = torch.zeros(b, width, dtype=torch.long, device=device)
    mask = torch.zeros_like(ids)
    for i, r in enumerate(rows):  # right-padded, as T5 sources are: every row's positions start at 0
        ids[i, :len(r) + k] = torch.tensor(r + [gist_id] * k, device=device)
        mask[i, :len(r) + k] = 1
    pos = torch.arange(width, device=device)
    was = model.training
    model.eval()
    try:
        x = _embed(model, ids, pos[None])
        caches = _caches(model, b, width, x)
        out = _encoder(model, x, mask, pos, pos, caches, 0)  # (B, W, D): what P ∪ G are under the gist mask
    finally:
        model.train(was)
    starts = torch.tensor([len(r) for r in rows], device=device)
    slots = starts[:, None] + torch.arange(k if mode == "gist" else 0, device=device)  # (B, S): each row's gist
    pick = slots[:, None, :, None]  # (B, 1, S, 1) over (B, H_kv, W, D)
    keys = [c.k.gather(2, pick.expand(-1, c.k.shape[1], -1, c.k.shape[3])).clone() for c in caches]
    values = [c.v.gather(2, pick.expand(-1, c.v.shape[1], -1, c.v.shape[3])).clone() for c in caches]
    memory = out.gather(1, slots[:, :, None].expand(-1, -1, out.shape[2])).clone()
    return {"keys": keys, "values": values, "memory": memory, "next_pos": starts + k}


@torch.inference_mode()
def encode_after(model, gist, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(memory (B, S + T, D), memory mask (B, S + T) or None)`` of the inputs ``input_ids (B, T)`` (right-padded,
    ``attention_mask``) after ``gist``: what the full gist-masked forward's decoder reads (module doc)."""
    gist.check_model(model)
    b, t = input_ids.shape
    if b != gist.batch and gist.batch != 1:
        raise ValueError(f"input_ids has {b} rows; the gist cache holds {gist.batch} (one per row, or one for every row)")
    if attention_mask is not None and not bool(attention_mask[:, 0].all()):
        raise ValueError("attention_mask: an encoder–decoder's inputs after a gist are right-padded (the first "
                         "column all 1), so each input follows its gist directly")
    s, device = gist.slots, input_ids.device
    was = model.training
    model.eval()
    try:
        positions = gist.next_pos.to(device)[:, None] + torch.arange(t, device=device)  # (B|1, T) absolute
        x = _embed(model, input_ids, positions)
        caches = _caches(model, b, s + t, x)
        for cache, key, value in zip(caches, gist.keys, gist.values):
            cache.k[:, :, :s], cache.v[:, :, :s] = key.to(cache.k), value.to(cache.v)
        key_mask = torch.ones(b, s + t, dtype=torch.long, device=device)
        if attention_mask is not None:
            key_mask[:, s:] = attention_mask
        pos = torch.arange(s + t, device=device)  # relative: the gist at 0 … k−1, the input from k on
        out = _encoder(model, x, key_mask, pos[s:], pos, caches, s)
    finally:
        model.train(was)
    memory = torch.cat([gist.memory.to(out).expand(b, -1, -1), out], dim=1)
    return memory, (None if bool(key_mask.all()) else key_mask)
