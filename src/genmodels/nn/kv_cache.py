"""Key/value cache for incremental decoding, and the cache protocol (v2) generation relies on.

Each layer owns a ``(B, H_kv, L, D)`` buffer for keys and one for values. A forward over new
tokens writes them at slots ``[start, start + T)`` and attends over ``[0, start + T)``, so a
one-token decode step and a chunked prefill are the same code path.

Generation does not preallocate prompt + ``max_new_tokens`` slots: it starts at about the prompt
plus :data:`CHUNK` and calls :meth:`KVCache.reserve` before each forward, which

* grows the buffers geometrically (copy into buffers twice as long: amortised O(1) per token),
  never beyond ``limit`` (the model's context ``max_seq_len`` for models without a window);
* for a sliding window W (Mistral), compacts instead once the buffer holds at least twice what
  must be kept: the last W − 1 slots move to slots ``[0, W − 1)`` in place (:meth:`KVCache.keep`).
  Slots stay in position order with no gaps, so every mask rule (causal, window, ALiBi distances)
  reads the same in slot coordinates as in positions, and keys — cached after RoPE — stay valid.
  (A ring buffer would save the O(W) copy every ~W steps but would put slots out of position order,
  which the masks, SDPA and the native kernels' contiguous key ranges would all have to learn about.)

The methods that change a cache run in inference mode (a cache that ``generate`` returned holds
inference tensors, which may change only there).

Rows. Every row has its own next position (``row_pos (B,)``); ``pos`` counts the filled *slots*,
which all rows share. Rows of different lengths live in one cache left-padded in slot coordinates:
``key_mask`` (``(B, L)`` int64, 1 = real token) marks the pads, and it grows, compacts and moves
with the keys. A row's real tokens are contiguous and end at slot ``pos − 1``, so within a row slot
distances are position distances. Rows can be selected (dropped, reordered, repeated for beams:
:meth:`KVCache.select`) and appended from another cache of the same model (:meth:`KVCache.extend`,
which pads the shorter side at the front). The native decode step holds pointers into the buffers:
it rebinds when the buffers are new (grow, extend, a select that changes the batch) and needs
nothing when they change in place (compaction, :meth:`keep`, a select that keeps the batch size).

The protocol (:class:`DecodingCache`, :class:`CachingModel`) is written below: a KV cache is one
way to hold it; a recurrent state (retention, a running sum) is another, and generation does not
know the difference.
"""
from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch

CHUNK = 64  # slots beyond the prompt that a generation cache starts with


@runtime_checkable
class DecodingCache(Protocol):
    """What generation reads and calls on a model's cache between forwards (protocol v2).

    * ``pos``: slots already filled (the model advances it in ``hidden_states``; a recurrent state
      counts the longest row); ``row_pos (B,)`` int64: each row's next position, which the model
      also advances (by each row's real new tokens) — the positions of the next tokens.
    * ``limit``: the most slots ``reserve`` may grow to (None: a fixed size); a caller that
      continues a cache beyond what it was made for raises it.
    * ``reserve(n)``: make room for ``n`` more slots before the next forward (grow, compact —
      or nothing, for a state of fixed size); raises ValueError past ``limit``.
    * ``set_key_mask(mask (B, pos))`` after a padded prefill, and ``key_mask`` (``(B, ≥ pos + 1)``
      int, 1 = real token, or ``None``): the padding in slot coordinates; generation passes
      ``key_mask[:, :pos + T]`` as the ``attention_mask`` of T new tokens. A recurrent state keeps
      no pads (``key_mask`` stays None).
    * ``select(rows (R,))``: keep batch rows ``rows`` in that order (drop, reorder, repeat);
      ``reorder(index (B,))`` is the same for beam search (same size: in place).
    * ``extend(other)``: append the rows of ``other`` (a cache of the same model, consumed), the
      side with fewer filled slots padded at the front; ``pos`` becomes the larger.
    * ``keep(slots (S,))`` (slot caches only): keep those filled slots, in order, as slots
      ``[0, S)`` in place; ``pos = S``. Dropping front slots every row has as padding, or the
      sliding window's compaction, is ``keep(arange(first, pos))``; ``truncate(n)`` (slot caches
      only) forgets slots ``[n, pos)`` and moves ``row_pos`` back (a recurrent state cannot).
    """

    pos: int
    row_pos: torch.Tensor
    limit: int | None
    key_mask: torch.Tensor | None

    def reserve(self, n: int) -> None: ...

    def set_key_mask(self, mask: torch.Tensor) -> None: ...

    def select(self, rows: torch.Tensor) -> None: ...

    def reorder(self, index: torch.Tensor) -> None: ...

    def extend(self, other) -> None: ...


@runtime_checkable
class CachingModel(Protocol):
    """A decoder that :func:`genmodels.generate` drives (the PyTorch path; the native step also
    needs ``decoder_view()``, see :mod:`genmodels.native.decoder`).

    * ``new_cache(batch, max_len, *, limit)``: an empty :class:`DecodingCache` for ``batch`` rows,
      room for ``max_len`` positions at first, growing (``reserve``) to at most ``limit``.
    * ``hidden_states(input_ids (B, T), attention_mask=, position_ids=, cache=)`` -> ``(B, T, D)``:
      consumes T tokens after ``cache.pos`` (prefill: T = prompt; decode: T = 1), sets
      ``cache.pos += T`` and advances ``cache.row_pos``; without ``position_ids`` the tokens take
      each row's next positions (``row_pos`` onwards, pads skipped).
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

    def keep(self, slots: torch.Tensor) -> None:
        """Slots ``slots (S,)`` (increasing) become slots ``[0, S)``, in place (the storage stays put)."""
        n = slots.shape[0]
        self.k[:, :, :n] = self.k.index_select(2, slots)
        self.v[:, :, :n] = self.v.index_select(2, slots)

    def select(self, rows: torch.Tensor, filled: int) -> None:
        """Batch rows ``rows (R,)``: in place when R is the batch size, else new buffers."""
        k, v = self.k[:, :, :filled].index_select(0, rows), self.v[:, :, :filled].index_select(0, rows)
        if rows.shape[0] != self.k.shape[0]:
            self.k = self.k.new_zeros(rows.shape[0], *self.k.shape[1:])
            self.v = torch.zeros_like(self.k)
        self.k[:, :, :filled], self.v[:, :, :filled] = k, v

    def stack(self, other: LayerKVCache, shift: int, other_shift: int, filled: int, capacity: int) -> None:
        """New buffers: this cache's rows then ``other``'s, each moved ``shift`` slots later (front padding)."""
        k = self.k.new_zeros(self.k.shape[0] + other.k.shape[0], *self.k.shape[1:2], capacity, self.k.shape[3])
        v = torch.zeros_like(k)
        b = self.k.shape[0]
        for rows, src, s in ((slice(0, b), self, shift), (slice(b, None), other, other_shift)):
            k[rows, :, s:filled] = src.k[:, :, :filled - s]
            v[rows, :, s:filled] = src.v[:, :, :filled - s]
        self.k, self.v = k, v


class KVCache:
    """The cache of a whole model: one :class:`LayerKVCache` per attention layer, the number of
    slots already filled (``pos``), each row's next position (``row_pos (B,)``), and the absolute
    position of slot 0 of an unpadded row (``offset``, > 0 only after a sliding-window compaction;
    the length check of learned positions reads it).

    ``limit``: the most slots :meth:`reserve` may grow to (None: it never grows; a fixed cache).
    ``window``: the model's sliding window (positions a query sees, itself included), or None.
    """

    def __init__(self, n_layers: int, batch: int, n_kv_heads: int, max_len: int, head_dim: int,
                 dtype: torch.dtype = torch.float32, device: torch.device | str | None = None, *,
                 limit: int | None = None, window: int | None = None):
        self.layers = [LayerKVCache(batch, n_kv_heads, max_len, head_dim, dtype, device) for _ in range(n_layers)]
        self.pos = 0
        self.offset = 0
        self.row_pos = torch.zeros(batch, dtype=torch.long, device=device)
        self.limit, self.window = limit, window
        self.key_mask: torch.Tensor | None = None

    @property
    def max_len(self) -> int:
        return self.layers[0].max_len

    @property
    def batch(self) -> int:
        return self.row_pos.shape[0]

    def __getitem__(self, i: int) -> LayerKVCache:
        return self.layers[i]

    def reset(self) -> None:
        self.pos = 0
        self.offset = 0
        self.row_pos = torch.zeros_like(self.row_pos)
        self.key_mask = None

    def advance(self, t: int, attention_mask: torch.Tensor | None,
                position_ids: torch.Tensor | None) -> torch.Tensor:
        """Positions ``(B, T)`` of ``t`` new tokens, and ``row_pos`` moved past them (the model calls this
        before its forward). ``attention_mask (B, pos + T)`` marks the new tokens' pads: they do not count
        (at prefill they take position 0). Given ``position_ids`` are used as they are (the last is real)."""
        if position_ids is not None:
            self.row_pos = position_ids[:, -1].to(self.row_pos.device) + 1
            return position_ids
        if t == 1:  # a decode step: no reduction, no sync
            position_ids = self.row_pos[:, None]
            real = attention_mask[:, self.pos].to(self.row_pos) if attention_mask is not None else 1
            self.row_pos = self.row_pos + real
            return position_ids
        new = attention_mask[:, self.pos:].to(self.row_pos.device).long() if attention_mask is not None else None
        if new is None or bool(new.all()):
            position_ids = self.row_pos[:, None] + torch.arange(t, device=self.row_pos.device)
            self.row_pos = self.row_pos + t
        else:
            position_ids = (self.row_pos[:, None] + new.cumsum(-1) - 1).masked_fill(new == 0, 0)
            self.row_pos = self.row_pos + new.sum(-1)
        return position_ids

    def set_key_mask(self, mask: torch.Tensor) -> None:
        """Padding mask of the filled slots ``(B, pos)`` (1 = token); later slots count as tokens."""
        km = torch.ones(mask.shape[0], self.max_len, dtype=torch.long, device=mask.device)
        km[:, :mask.shape[1]] = mask
        self.key_mask = km

    @torch.inference_mode()
    def select(self, rows: torch.Tensor) -> None:
        """Keep batch rows ``rows (R,)`` in that order (drop, reorder, repeat). With R equal to the
        batch size the buffers keep their storage (the native decode step holds pointers to them)."""
        rows = rows.to(self.row_pos.device)
        for layer in self.layers:
            layer.select(rows, self.pos)
        self.row_pos = self.row_pos.index_select(0, rows)
        if self.key_mask is not None:
            km = self.key_mask.index_select(0, rows)
            if km.shape == self.key_mask.shape:
                self.key_mask.copy_(km)
            else:
                self.key_mask = km

    def reorder(self, index: torch.Tensor) -> None:
        """Keep batch rows ``index (B,)`` (beam search), in place: :meth:`select` at the same batch size."""
        self.select(index)

    @torch.inference_mode()
    def extend(self, other: KVCache) -> None:
        """Append the rows of ``other`` (a cache of the same model; it is consumed). The cache with fewer
        filled slots is padded at the front so both end at slot ``pos``, the larger of the two."""
        mine, theirs = self.layers[0].k.shape, other.layers[0].k.shape
        if len(other.layers) != len(self.layers) or (mine[1], mine[3]) != (theirs[1], theirs[3]):
            raise ValueError("extend: the caches belong to different models (layers, heads or head size differ)")
        filled = max(self.pos, other.pos)
        shifts = (filled - self.pos, filled - other.pos)
        room = [c.max_len - c.pos for c in (self, other)]
        capacity = filled + max(room)
        for mine, theirs in zip(self.layers, other.layers):
            mine.stack(theirs, *shifts, filled, capacity)
        masks = []
        for c, s in zip((self, other), shifts):
            km = torch.ones(c.batch, capacity, dtype=torch.long, device=self.row_pos.device)
            km[:, :s] = 0
            if c.key_mask is not None:
                km[:, s:filled] = c.key_mask[:, :c.pos]
            masks.append(km)
        km = torch.cat(masks)
        self.key_mask = None if bool(km.all()) else km
        limits = [None if c.limit is None else c.limit + s for c, s in zip((self, other), shifts)]
        self.limit = None if None in limits else max(limits)
        self.row_pos = torch.cat([self.row_pos, other.row_pos.to(self.row_pos.device)])
        self.pos, self.offset = filled, max(self.offset - shifts[0], other.offset - shifts[1], 0)

    @torch.inference_mode()
    def keep(self, slots: torch.Tensor) -> None:
        """Keep the filled slots ``slots (S,)`` (increasing) as slots ``[0, S)``, in place; ``pos = S``.
        ``offset`` advances by ``slots[0]`` (it is exact when the kept slots are a suffix, as here)."""
        slots = slots.to(self.row_pos.device)
        n = slots.shape[0]
        for layer in self.layers:
            layer.keep(slots)
        if self.key_mask is not None:
            self.key_mask[:, :n] = self.key_mask.index_select(1, slots)
            self.key_mask[:, n:] = 1
        self.offset += int(slots[0]) if n else self.pos
        self.pos = n

    @torch.inference_mode()
    def truncate(self, n: int) -> None:
        """Forget the filled slots from ``n`` on (a conversation rolled back to a common prefix); each row's
        next position moves back by the real tokens it loses. Nothing is copied."""
        if not 0 <= n <= self.pos:
            raise ValueError(f"truncate({n}): the cache holds {self.pos} slots; keep 0 to {self.pos}")
        if self.key_mask is not None:
            self.row_pos = self.row_pos - self.key_mask[:, n:self.pos].sum(1).to(self.row_pos.device)
            self.key_mask[:, n:] = 1
        else:
            self.row_pos = self.row_pos - (self.pos - n)
        self.pos = n

    def reserve(self, n: int) -> None:
        """Make room for ``n`` more positions: compact (sliding window) or grow, as the module doc says.

        Raises ValueError when ``n`` more positions would pass ``limit`` without a window."""
        need = self.pos + n
        if need <= self.max_len:
            return
        if self.window is not None:
            keep = min(self.pos, self.window - 1)  # what the next query still sees
            if 2 * (keep + n) <= self.max_len:
                self.keep(torch.arange(self.pos - keep, self.pos, device=self.row_pos.device))
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
