"""Attention masks, built in one place.

Every mask is *additive*: 0 where a query may attend, ``finfo.min`` where it may not (as HF does,
so a fully masked row — a left-pad query — softmaxes to uniform instead of NaN). Query i sits at
absolute cache position ``start + i``; key j at position j. The rules compose:

* causal:          j ≤ start + i
* sliding window:  (start + i) − j < window        (Mistral)
* key padding:     key_padding[b, j] is True        (1 = real token, 0 = pad)
* allowed pairs:   allowed[b, i, j] is True         (packed examples: same document; gist masks)
* score bias:      ALiBi / T5 relative bias, added on top.

SDPA's own ``is_causal`` is top-left aligned, which is wrong when queries are fewer than keys
(chunked prefill); :func:`build_mask` therefore returns ``(None, True)`` only for the square,
unpadded, window-free case and an explicit mask otherwise.
"""
from __future__ import annotations

import torch


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
