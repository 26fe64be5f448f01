"""Reusing a decode session's cache rows: a request that leaves frees its rows of the shared KV cache, and a
request that joins at the next tick is written into them, instead of the cache being compacted (a copy into
new buffers) and then extended (another), and the native step being bound again.

Cache protocol v2 (:mod:`genmodels.nn.kv_cache`): all rows share the slot count ``pos``; each row keeps its
own next position (``row_pos``) and its padding (``key_mask``, 1 = a token). A new request's ``T`` prefilled
slots go right-aligned into the freed row, at slots ``[pos - T, pos)``, the slots before them masked — the
front padding :meth:`KVCache.extend` gives a shorter cache — so its tokens keep their own positions and the
keys it sees are exactly its own: what it generates does not depend on the row it lands in.
"""
from __future__ import annotations

import torch

from ..nn.kv_cache import KVCache


def reusable(cache) -> bool:
    """Rows of ``cache`` can be taken by a joining request (a KV cache without a sliding window, whose
    compaction moves slots)."""
    return type(cache) is KVCache and cache.window is None


def placeable(cache, new) -> bool:
    """``new``'s rows fit into rows of ``cache``: both plain KV caches that may grow (a ``limit``), ``new`` no
    longer than ``cache``."""
    return (reusable(cache) and reusable(new) and new.pos <= cache.pos and cache.offset == 0 == new.offset
            and cache.limit is not None and new.limit is not None)


@torch.inference_mode()
def place(cache: KVCache, new: KVCache, src: list[int], dst: list[int]) -> None:
    """Rows ``src`` of ``new`` become rows ``dst`` of ``cache`` (in place: its buffers keep their storage),
    right-aligned at ``cache.pos``; their keys/values, padding, positions; ``cache.limit`` grows to theirs."""
    p, t = cache.pos, new.pos
    device = cache.row_pos.device
    s, d = torch.tensor(src, device=device), torch.tensor(dst, device=device)
    for mine, theirs in zip(cache.layers, new.layers):
        mine.k[d, :, p - t:p] = theirs.k.index_select(0, s)[:, :, :t]
        mine.v[d, :, p - t:p] = theirs.v.index_select(0, s)[:, :, :t]
    km = cache.key_mask
    if km is None:
        km = torch.ones(cache.batch, cache.max_len, dtype=torch.long, device=device)
    km[d] = 1  # (slots from pos on count as tokens)
    km[d, :p - t] = 0
    if new.key_mask is not None:
        km[d, p - t:p] = new.key_mask.index_select(0, s)[:, :t].to(km)
    cache.key_mask = km
    cache.row_pos[d] = new.row_pos.index_select(0, s).to(cache.row_pos)
    cache.limit = max(cache.limit, new.limit + p - t)
