"""Key/value cache for incremental decoding.

Each layer owns a ``(B, H_kv, L, D)`` buffer for keys and one for values. A forward over new
tokens writes them at slots ``[start, start + T)`` and attends over ``[0, start + T)``, so a
one-token decode step and a chunked prefill are the same code path.

Generation does not preallocate prompt + ``max_new_tokens`` slots: it starts at about the prompt
plus :data:`CHUNK` and calls :meth:`KVCache.reserve` before each forward, which

* grows the buffers geometrically (copy into buffers twice as long: amortised O(1) per token),
  never beyond ``limit`` (the model's context ``max_seq_len`` for models without a window);
* for a sliding window W (Mistral), compacts instead once the buffer holds at least twice what
  must be kept: the last W − 1 positions move to slots ``[0, W − 1)`` in place and ``offset``
  (the absolute position of slot 0) advances. Slots stay in position order with no gaps, so every
  mask rule (causal, window, ALiBi distances) reads the same in slot coordinates as in absolute
  positions, and keys — cached after RoPE — stay valid. (A ring buffer would save the O(W) copy
  every ~W steps but would put slots out of position order, which the masks, SDPA and the native
  kernels' contiguous key ranges would all have to learn about.)

``key_mask`` (optional, ``(B, L)`` int64, 1 = real token) is the padding mask in slot coordinates;
it grows and compacts with the keys.

The protocol :func:`genmodels.generate` relies on (:class:`DecodingCache`, :class:`CachingModel`)
is written below: a KV cache is one way to hold it; a recurrent state (retention, a running sum)
is another, and generation does not know the difference.
"""
from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch

CHUNK = 64  # slots beyond the prompt that a generation cache starts with


@runtime_checkable
class DecodingCache(Protocol):
    """What generation reads and calls on a model's cache between forwards.

    * ``pos``: positions already consumed (the model advances it in ``hidden_states``); the next
      token continues at ``pos``.
    * ``reserve(n)``: make room for ``n`` more positions before the next forward (grow, compact —
      or nothing, for a state of fixed size); raises ValueError past the model's context.
    * ``set_key_mask(mask (B, pos))`` after a padded prefill, and ``key_mask`` (``(B, ≥ pos + 1)``
      int, 1 = real token, or ``None``): the padding in the cache's coordinates; generation slices
      ``key_mask[:, :pos + 1]`` as the next step's ``attention_mask``.
    * ``reorder(index (B,))`` (beam search, :mod:`genmodels.generation.beam`): keep batch rows
      ``index`` of the state, in place.
    """

    pos: int
    key_mask: torch.Tensor | None

    def reserve(self, n: int) -> None: ...

    def set_key_mask(self, mask: torch.Tensor) -> None: ...


@runtime_checkable
class CachingModel(Protocol):
    """A decoder that :func:`genmodels.generate` drives (the PyTorch path; the native step also
    needs ``decoder_view()``, see :mod:`genmodels.native.decoder`).

    * ``new_cache(batch, max_len, *, limit)``: an empty :class:`DecodingCache` for ``batch`` rows,
      room for ``max_len`` positions at first, growing (``reserve``) to at most ``limit``.
    * ``hidden_states(input_ids (B, T), attention_mask=, position_ids=, cache=)`` -> ``(B, T, D)``:
      consumes T tokens after ``cache.pos`` (prefill: T = prompt; decode: T = 1) and sets
      ``cache.pos += T``.
    * ``head(hidden (B, D)) -> logits (B, V)``.
    """

    def new_cache(self, batch: int, max_len: int | None = None, *, limit: int | None = None) -> DecodingCache: ...

    def hidden_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                      position_ids: torch.Tensor | None = None,
                      cache: DecodingCache | None = None) -> torch.Tensor: ...


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

    def resize(self, capacity: int, filled: int) -> None:
        """New buffers of ``capacity`` slots holding the first ``filled`` slots of the old ones."""
        k = self.k.new_zeros(*self.k.shape[:2], capacity, self.k.shape[3])
        v = torch.zeros_like(k)
        k[:, :, :filled] = self.k[:, :, :filled]
        v[:, :, :filled] = self.v[:, :, :filled]
        self.k, self.v = k, v

    def drop_front(self, drop: int, keep: int) -> None:
        """Move slots ``[drop, drop + keep)`` to ``[0, keep)`` in place (the storage stays put)."""
        self.k[:, :, :keep] = self.k[:, :, drop:drop + keep].clone()
        self.v[:, :, :keep] = self.v[:, :, drop:drop + keep].clone()


class KVCache:
    """The cache of a whole model: one :class:`LayerKVCache` per attention layer, plus the number
    of slots already filled (``pos``), which the model advances after each forward, and the
    absolute position of slot 0 (``offset``, > 0 only after a sliding-window compaction).

    ``limit``: the most slots :meth:`reserve` may grow to (None: it never grows; a fixed cache).
    ``window``: the model's sliding window (positions a query sees, itself included), or None.
    """

    def __init__(self, n_layers: int, batch: int, n_kv_heads: int, max_len: int, head_dim: int,
                 dtype: torch.dtype = torch.float32, device: torch.device | str | None = None, *,
                 limit: int | None = None, window: int | None = None):
        self.layers = [LayerKVCache(batch, n_kv_heads, max_len, head_dim, dtype, device) for _ in range(n_layers)]
        self.pos = 0
        self.offset = 0
        self.limit, self.window = limit, window
        self.key_mask: torch.Tensor | None = None

    @property
    def max_len(self) -> int:
        return self.layers[0].max_len

    def __getitem__(self, i: int) -> LayerKVCache:
        return self.layers[i]

    def reset(self) -> None:
        self.pos = 0
        self.offset = 0

    def set_key_mask(self, mask: torch.Tensor) -> None:
        """Padding mask of the filled slots ``(B, pos)`` (1 = token); later slots count as tokens."""
        km = torch.ones(mask.shape[0], self.max_len, dtype=torch.long, device=mask.device)
        km[:, :mask.shape[1]] = mask
        self.key_mask = km

    def reorder(self, index: torch.Tensor) -> None:
        """Keep batch rows ``index (B,)`` (beam search), in place: the buffers keep their storage
        (the native decode step holds pointers to them)."""
        n = self.pos
        for layer in self.layers:
            layer.k[:, :, :n] = layer.k[:, :, :n].index_select(0, index)
            layer.v[:, :, :n] = layer.v[:, :, :n].index_select(0, index)
        if self.key_mask is not None:
            self.key_mask.copy_(self.key_mask.index_select(0, index))

    def reserve(self, n: int) -> None:
        """Make room for ``n`` more positions: compact (sliding window) or grow, as the module doc says.

        Raises ValueError when ``n`` more positions would pass ``limit`` without a window."""
        need = self.pos + n
        if need <= self.max_len:
            return
        if self.window is not None:
            keep = min(self.pos, self.window - 1)  # what the next query still sees
            if 2 * (keep + n) <= self.max_len:
                self._compact(self.pos - keep, keep)
                return
        cap = self.limit if self.limit is not None else self.max_len  # no limit: a fixed cache
        if self.window is not None and self.limit is not None:  # the window bounds it (compaction above)
            cap = max(cap, need, 2 * (self.window + n))
        if need > cap:
            raise ValueError(f"KV cache overflow: {need} positions > capacity {cap} (the model's context, "
                             "max_seq_len)")
        self._grow(min(max(need, 2 * self.max_len), cap))

    def _grow(self, capacity: int) -> None:
        for layer in self.layers:
            layer.resize(capacity, self.pos)
        if self.key_mask is not None:
            km = self.key_mask.new_ones(self.key_mask.shape[0], capacity)
            km[:, :self.pos] = self.key_mask[:, :self.pos]
            self.key_mask = km

    def _compact(self, drop: int, keep: int) -> None:
        for layer in self.layers:
            layer.drop_front(drop, keep)
        if self.key_mask is not None:
            self.key_mask[:, :keep] = self.key_mask[:, drop:drop + keep].clone()
            self.key_mask[:, keep:] = 1
        self.pos, self.offset = keep, self.offset + drop
