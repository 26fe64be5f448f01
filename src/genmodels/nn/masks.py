"""Attention masks, built in one place.

Every mask is *additive*: 0 where a query may attend, ``finfo.min`` where it may not (as HF does,
so a fully masked row — a left-pad query — softmaxes to uniform instead of NaN). Query i sits at
absolute cache position ``start + i``; key j at position j. The rules compose:

* causal:          j ≤ start + i
* sliding window:  (start + i) − j < window        (Mistral)
* key padding:     key_padding[b, j] is True        (1 = real token, 0 = pad)
* allowed pairs:   allowed[b, i, j] is True         (packed examples: same document; gist masks)
* segments:        segment_ids[b, i] == segment_ids[b, j]  (packing; :func:`segment_allowed` turns it
                   into allowed pairs, :func:`segment_position_ids` restarts positions per segment)
* score bias:      ALiBi / T5 relative bias, added on top.

Models declare the rules and inputs their forward implements (``mask_rules``, names from
:data:`RULES`); a path that implements fewer (a native kernel) refuses the others with
:func:`refusal` — it never ignores them.

SDPA's own ``is_causal`` is top-left aligned, which is wrong when queries are fewer than keys
(chunked prefill); :func:`build_mask` therefore returns ``(None, True)`` only for the square,
unpadded, window-free case and an explicit mask otherwise.
"""
from __future__ import annotations

import torch

# rule / input names a model lists in its ``mask_rules``, and the forward argument carrying each
RULES = {"causal": None, "window": None, "padding": "attention_mask", "segments": "segment_ids",
         "allowed": "allowed", "memory": "memory_mask", "positions": "position_ids", "embeddings": "inputs_embeds"}


def refusal(where: str, rules, **inputs) -> str | None:
    """A one-line reason naming the first input given (not ``None``) whose rule ``where`` does not
    implement (``rules``: names of :data:`RULES`), else ``None``. ``inputs``: forward arguments by name."""
    by_input = {arg: rule for rule, arg in RULES.items() if arg is not None}
    for name, value in inputs.items():
        rule = by_input.get(name, name)
        if value is not None and rule not in rules:
            return (f"{where} does not implement {name} ({rule}); it implements: "
                    f"{', '.join(r for r in RULES if r in rules)}")
    return None


def build_mask(
    q_len: int,
    k_len: int,
    *,
    start: int = 0,
    causal: bool = True,
    window: int | None = None,
    key_padding: torch.Tensor | None = None,  # (B, Tk) bool/int, 1 = keep
    allowed: torch.Tensor | None = None,  # (B|1, Tq, Tk) bool: query i may see key j
    score_bias: torch.Tensor | None = None,  # (1|B, H, Tq, Tk)
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> tuple[torch.Tensor | None, bool]:
    """Return ``(additive_mask or None, use_sdpa_is_causal)``; mask shape ``(B|1, H|1, Tq, Tk)``, or
    ``(B, 1, 1, Tk)`` (broadcast over queries) when only key padding applies.

    ``allowed`` (per-row pairs, in the cache's slot coordinates like the other rules) is ANDed with
    causal / window / padding: a pair is visible only when every rule allows it."""
    needs_window = window is not None and start + q_len > window
    if score_bias is None and key_padding is None and allowed is None and not needs_window:
        if not causal or q_len == 1:
            return None, False  # every key visible (one decode token sees the whole past)
        if start == 0 and q_len == k_len:
            return None, True  # square causal: SDPA's top-left alignment is right here
    if not causal and window is None and score_bias is None and allowed is None:
        # padding only: one row serves every query
        visible = key_padding.bool()[:, None, None, :k_len]  # (B, 1, 1, Tk)
        mask = torch.zeros(visible.shape, dtype=dtype, device=device)
        return mask.masked_fill(~visible, torch.finfo(dtype).min), False
    visible = torch.ones(q_len, k_len, dtype=torch.bool, device=device)
    q_pos = torch.arange(start, start + q_len, device=device)[:, None]
    k_pos = torch.arange(k_len, device=device)[None, :]
    if causal:
        visible = visible & (k_pos <= q_pos)
    if window is not None:
        visible = visible & (q_pos - k_pos < window)
    visible = visible[None, None]  # (1, 1, Tq, Tk)
    if key_padding is not None:
        visible = visible & key_padding.bool()[:, None, None, :k_len]
    if allowed is not None:
        visible = visible & allowed.bool()[:, None, :, :k_len]  # (B, 1, Tq, Tk)
    mask = torch.zeros(visible.shape, dtype=dtype, device=device)
    mask = mask.masked_fill(~visible, torch.finfo(dtype).min)
    if score_bias is not None:
        mask = mask + score_bias.to(dtype)
    return mask, False


def padding_position_ids(attention_mask: torch.Tensor, start: int = 0) -> torch.Tensor:
    """Position ids for a left-padded batch: count real tokens (cumsum − 1), pads get 0.

    ``attention_mask (B, S)`` covers the cache and the new tokens; returns the ids of the last
    ``S − start`` columns.
    """
    pos = attention_mask.long().cumsum(-1) - 1
    pos = pos.masked_fill(attention_mask == 0, 0)
    return pos[:, start:]


def segment_allowed(segment_ids: torch.Tensor, allowed: torch.Tensor | None = None) -> torch.Tensor:
    """Packed examples: query i may see key j only within its own segment, ``(B, T) -> (B, T, T)``
    bool (ANDed with ``allowed (B|1, T, T)`` when given). Causality still comes from :func:`build_mask`."""
    same = segment_ids[:, :, None] == segment_ids[:, None, :]  # (B, T, T)
    return same if allowed is None else same & allowed.bool()


def segment_position_ids(segment_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Positions that restart at 0 where each segment starts, counting real tokens only (pads get
    0): ``(B, T) -> (B, T)`` long. A segment is a run of equal ids; row ``[7 7 7 2 2]`` -> ``[0 1 2 0 1]``."""
    b, t = segment_ids.shape
    real = (torch.ones_like(segment_ids) if attention_mask is None else attention_mask).long()
    idx = torch.arange(t, device=segment_ids.device).expand(b, t)
    new = torch.ones_like(segment_ids, dtype=torch.bool)
    new[:, 1:] = segment_ids[:, 1:] != segment_ids[:, :-1]
    first = torch.where(new, idx, torch.zeros_like(idx)).cummax(-1).values  # (B, T): index where my segment starts
    count = real.cumsum(-1)  # real tokens up to and including t
    before = (count - real).gather(-1, first)  # real tokens before my segment starts
    return (count - before - 1).clamp(min=0).masked_fill(real == 0, 0)
