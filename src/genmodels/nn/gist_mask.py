"""Gist masks (Mu, Li, Goodman 2023, "Learning to Compress Prompts with Gist Tokens"): allowed pairs
for :func:`genmodels.nn.masks.build_mask`, built per row.

A row is laid out ``[pre | P | G | X]``: an untouched prefix ``[0, a)`` (usually empty), the instruction
``P = [a, g)``, ``k`` gist tokens ``G = [g, g + k)`` and the rest ``X = [g + k, T)`` (input and output).
The rule (the reference's ``make_gist_mask``), one pattern for every kind of attention:

* a query in ``X`` never sees ``P`` (``neg_control``: neither ``P`` nor ``G``) — so everything the
  instruction says reaches ``X`` through the gist positions' activations;
* a query before ``X`` never sees ``X`` (only matters where attention is bidirectional: the encoder);
* ``pos_control``: nothing is hidden; a row without a gist (``g < 0``) is unrestricted.

Causality and padding are separate rules ANDed in by :func:`build_mask` (decoders pass the pairs as
``allowed``; T5's encoder as its ``allowed``, its decoder's cross-attention as ``memory_mask (B, T, S)``
from :func:`gist_cross_allowed`). A gist mask is an ``allowed`` input, so a path that does not implement
``allowed`` (the native kernels) refuses it; after :func:`genmodels.gist.compress` only the gist slots are
cached and the rest is plain causal attention, which those paths serve.
"""
from __future__ import annotations

import torch

MODES = ("gist", "pos_control", "neg_control")


def _per_row(value, b: int, name: str, device) -> torch.Tensor:
    """``value`` (int or ``(B,)``) as a ``(B,)`` long tensor."""
    t = torch.as_tensor(value, dtype=torch.long, device=device)
    if t.dim() == 0:
        return t.expand(b)
    if t.shape != (b,):
        raise ValueError(f"{name}: expected an int or a ({b},) tensor, got shape {tuple(t.shape)}")
    return t


def _zones(gist_start, k, length: int, instruction_start, mode: str):
    """Per row and position: ``(hidden_from_x (B, T), x (B, T), has (B,))`` — the keys a query of ``X``
    may not see, the positions of ``X``, and whether the row is restricted at all."""
    if mode not in MODES:
        raise ValueError(f"gist mask mode={mode!r}: expected one of {', '.join(MODES)}")
    g = torch.as_tensor(gist_start, dtype=torch.long)
    if g.dim() != 1:
        raise ValueError(f"gist_start: expected a (B,) tensor of gist positions (-1 = no gist), got {tuple(g.shape)}")
    b, device = g.shape[0], g.device
    k = _per_row(k, b, "k", device)
    a = _per_row(0 if instruction_start is None else instruction_start, b, "instruction_start", device)
    has = (g >= 0) & (mode != "pos_control")
    if bool(((g >= 0) & ((k < 1) | (a > g) | (g + k > length))).any()):
        raise ValueError(f"gist spans: each row with a gist needs k >= 1 and 0 <= instruction_start <= "
                         f"gist_start <= T - k (T={length})")
    pos = torch.arange(length, device=device)[None, :]  # (1, T)
    end = (g + k)[:, None]
    hide_end = g[:, None] if mode == "gist" else end  # neg_control also hides the gist
    hidden = (pos >= a[:, None]) & (pos < hide_end)  # (B, T)
    x = pos >= end  # (B, T)
    return hidden & has[:, None], x & has[:, None], has


def gist_allowed(gist_start, k, length: int, *, mode: str = "gist", instruction_start=None) -> torch.Tensor:
    """Self-attention pairs ``(B, T, T)`` bool (query i, key j) for rows laid out ``[pre | P | G | X]``.

    ``gist_start (B,)``: each row's first gist position (``g``; -1 = no gist: the row is unrestricted);
    ``k``: gist tokens per row (int or ``(B,)``); ``instruction_start`` (int or ``(B,)``, default 0): ``a``.
    Causality is not in it (the decoder adds it); the encoder uses it as is (bidirectional)."""
    hidden, x, _ = _zones(gist_start, k, length, instruction_start, mode)
    q_x, k_x = x[:, :, None], x[:, None, :]  # (B, T, 1), (B, 1, T)
    return ~(q_x & hidden[:, None, :]) & ~(~q_x & k_x)


def gist_cross_allowed(gist_start, k, source_len: int, target_len: int, *, mode: str = "gist",
                       instruction_start=None) -> torch.Tensor:
    """Cross-attention pairs ``(B, T_target, S)`` bool: every decoder query sees the encoder positions a
    query of ``X`` sees (``G ∪ X`` for ``gist``, ``X`` for ``neg_control``, all for ``pos_control``).
    Pass it as ``memory_mask`` (AND the source padding in yourself)."""
    hidden, _, _ = _zones(gist_start, k, source_len, instruction_start, mode)
    return (~hidden)[:, None, :].expand(-1, target_len, -1)


def find_gists(input_ids: torch.Tensor, gist_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(gist_start (B,), k (B,))`` of the gist tokens in each row of ``input_ids (B, T)``: the first
    gist position (-1 without one) and how many. A row's gist tokens must be contiguous (else ValueError)."""
    is_gist = input_ids == gist_id  # (B, T)
    k = is_gist.sum(-1)
    first = torch.where(k > 0, is_gist.long().argmax(-1), torch.full_like(k, -1))
    last = torch.where(k > 0, input_ids.shape[1] - 1 - is_gist.flip(-1).long().argmax(-1), first)
    bad = (k > 0) & (last - first + 1 != k)
    if bool(bad.any()):
        row = int(bad.nonzero()[0, 0])
        raise ValueError(f"input_ids row {row}: the gist tokens (id {gist_id}) are not contiguous; lay a row out as "
                         "instruction, gist tokens, then the rest")
    return first, k


def gist_allowed_for(input_ids: torch.Tensor, gist_id: int, *, mode: str = "gist",
                     attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """:func:`gist_allowed` for ``input_ids (B, T)`` holding the gist tokens themselves; the instruction
    starts at each row's first real token (``attention_mask``, left padding) or at 0."""
    g, k = find_gists(input_ids, gist_id)
    a = None if attention_mask is None else attention_mask.long().argmax(-1)
    a = None if a is None else torch.minimum(a, g.clamp(min=0))
    return gist_allowed(g, k.clamp(min=1), input_ids.shape[1], mode=mode, instruction_start=a)


def gist_allowed_packed(input_ids: torch.Tensor, gist_id: int, segment_ids: torch.Tensor | None = None, *,
                        mode: str = "gist") -> torch.Tensor:
    """:func:`gist_allowed` for packed rows (training): ``input_ids (B, T)`` holding several examples, told apart
    by ``segment_ids (B, T)`` (a run of equal ids; None: one per row). In each example everything before its
    gist tokens is its instruction; an example without a gist token is unrestricted. ``(B, T, T)`` bool."""
    if mode not in MODES:
        raise ValueError(f"gist mask mode={mode!r}: expected one of {', '.join(MODES)}")
    b, t = input_ids.shape
    seg = torch.zeros_like(input_ids) if segment_ids is None else segment_ids
    same = seg[:, :, None] == seg[:, None, :]  # (B, T, T)
    if mode == "pos_control":
        return torch.ones(b, t, t, dtype=torch.bool, device=input_ids.device)
    is_gist = input_ids == gist_id  # (B, T)
    # gist tokens of my example up to me, and in all of it (per query position, via the same-segment pairs)
    upto = (same & is_gist[:, None, :]).tril().sum(-1)  # (B, T): upto[i] = gists j <= i in i's example
    total = (same & is_gist[:, None, :]).sum(-1)  # (B, T)
    x = (total > 0) & (upto == total) & ~is_gist  # after the example's last gist token
    hide = ~x & ~is_gist if mode == "gist" else ~x  # keys an X query of the same example may not see
    q_x = x[:, :, None]
    return ~(q_x & same & hide[:, None, :]) & ~(~q_x & same & x[:, None, :])
