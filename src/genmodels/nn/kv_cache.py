"""Preallocated key/value cache for incremental decoding.

Each layer owns a ``(B, H_kv, L_max, D)`` buffer for keys and one for values. A forward over new
tokens writes them at ``[start, start + T)`` and attends over ``[0, start + T)``, so a one-token
decode step and a chunked prefill are the same code path. Nothing is reallocated while decoding.
"""
from __future__ import annotations

import torch


class LayerKVCache:
    def __init__(self, batch: int, n_kv_heads: int, max_len: int, head_dim: int,
                 dtype: torch.dtype = torch.float32, device: torch.device | str | None = None):
        self.k = torch.zeros(batch, n_kv_heads, max_len, head_dim, dtype=dtype, device=device)
        self.v = torch.zeros_like(self.k)

    @property
    def max_len(self) -> int:
        return self.k.shape[2]

    def update(self, k: torch.Tensor, v: torch.Tensor, start: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Write ``k, v (B, H_kv, T, D)`` at ``start``; return the filled prefix ``(B, H_kv, start+T, D)``."""
        end = start + k.shape[2]
        if end > self.max_len:
            raise ValueError(f"KV cache overflow: {end} positions > capacity {self.max_len}; "
                             "allocate a larger cache (max_len)")
        self.k.narrow(2, start, k.shape[2]).copy_(k)
        self.v.narrow(2, start, v.shape[2]).copy_(v)
        return self.k.narrow(2, 0, end), self.v.narrow(2, 0, end)


class KVCache:
    """The cache of a whole model: one :class:`LayerKVCache` per attention layer, plus the number
    of positions already filled (``pos``), which the model advances after each forward."""

    def __init__(self, n_layers: int, batch: int, n_kv_heads: int, max_len: int, head_dim: int,
                 dtype: torch.dtype = torch.float32, device: torch.device | str | None = None):
        self.layers = [LayerKVCache(batch, n_kv_heads, max_len, head_dim, dtype, device) for _ in range(n_layers)]
        self.pos = 0

    @property
    def max_len(self) -> int:
        return self.layers[0].max_len

    def __getitem__(self, i: int) -> LayerKVCache:
        return self.layers[i]

    def reset(self) -> None:
        self.pos = 0
