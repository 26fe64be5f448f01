"""Beam search: the one implementation behind decoder-only and encoder–decoder generation.

It follows transformers' vectorised beam search (``generate(num_beams=K, do_sample=False)``,
transformers 5.x ``GenerationMixin._beam_search``), so the same weights give the same token ids.
Notation: B sources, K beams each, V tokens, P prompt tokens (decoder-only: the left-padded prompt;
encoder–decoder: the start token), n = tokens generated so far.

At every step, for each source:

1. accumulated scores of the K·V continuations: ``a_{j,v} = s_j + log p(v | y_j)`` (``s_j``: beam j's
   running score; ``log p`` after the repetition penalty, when one is set);
2. the best ``2K`` of them (``max(2, 1 + #eos)·K``: enough for K to stay unfinished even if many end);
3. continuations that end (an end token, or the length limit) among the K best become finished
   hypotheses scored ``a / n^length_penalty`` (Wu et al., 2016, without their +5 offset; a larger
   ``length_penalty`` favours longer ones); the K best finished hypotheses are kept;
4. the K best continuations that did not end keep running; the cache follows them
   (``cache.reorder(rows)``, :mod:`genmodels.nn.kv_cache`).

The search for a source is over when no running beam can beat its worst finished hypothesis
(``early_stopping=False``: the best running score divided by ``n^length_penalty``; ``"never"`` with
``length_penalty > 0``: by ``max_new_tokens^length_penalty``), or, with ``early_stopping=True``, once
K hypotheses are finished. The best hypothesis of each source is returned; shorter ones are filled
with transformers' fill value (``pad_token_id``, or the first end token when that is 0 or unset).

The model is driven through two things only — next-token logits, and ``advance(rows, tokens)`` —
so a KV cache (growing, or a sliding window that compacts) and a recurrent state (RetNet) are
searched the same way.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch

from ..nn.kv_cache import CHUNK
from .sampling import repetition_penalty as apply_repetition_penalty

NEG = -1.0e9  # transformers' "impossible" score

Advance = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (rows (B·K,), tokens (B·K,)) -> logits (B·K, V)


def expand_beams(x: torch.Tensor | None, k: int) -> torch.Tensor | None:
    """One copy per beam, beams of a source adjacent: ``(B, ...) -> (B·K, ...)``."""
    return None if x is None else x.repeat_interleave(k, dim=0)


def _grow(ids: torch.Tensor, limit: int, fill: int) -> torch.Tensor:
    """``ids (B, K, W)`` widened to ``min(2·W, limit)`` positions, the new ones ``fill``: the token buffers
    grow geometrically with the tokens produced (``max_new_tokens`` is a limit, not an allocation)."""
    b, k, w = ids.shape
    return torch.cat([ids, ids.new_full((b, k, min(2 * w, limit) - w), fill)], dim=2)


def fill_value(pad: int | None, ends: Sequence[int]) -> int:
    """transformers' filler for positions a hypothesis did not reach (``pad or eos[0]``; -1 without EOS)."""
    return (pad or ends[0]) if ends else -1


@torch.inference_mode()
def beam_search(logits: torch.Tensor, advance: Advance, prompt: torch.Tensor, max_new_tokens: int, *,
                num_beams: int, ends: Sequence[int], pad: int | None, length_penalty: float = 1.0,
                early_stopping: bool | str = False, repetition_penalty: float | None = None) -> torch.Tensor:
    """The best hypothesis per source: ``(B, P + n)`` ids, the prompt first.

    ``logits (B·K, V)``: next-token logits after the prompt for every beam row (the K rows of a source
    are equal). ``advance(rows, tokens)``: keep the model state's batch rows ``rows (B·K,)``, in that
    order, feed ``tokens (B·K,)`` and return the next logits ``(B·K, V)``. ``prompt (B, P)``.
    ``ends``: token ids that end a hypothesis. Arguments are checked by the callers (:mod:`.checks`).
    """
    b, p = prompt.shape
    k, device = num_beams, prompt.device
    if max_new_tokens == 0:
        return prompt
    length = p + max_new_tokens                                            # the limit; buffers hold W <= length
    keep = min(max(2, 1 + len(ends)) * k, k * logits.shape[-1])            # candidates per source and step
    top_k_mask = torch.zeros(keep, dtype=torch.bool, device=device)
    top_k_mask[:k] = True
    end_ids = torch.tensor(list(ends), dtype=torch.long, device=device)
    offset = torch.arange(b, device=device)[:, None] * k                   # first flat row of each source

    fill = fill_value(pad, ends)
    running = torch.full((b, k, p + min(max_new_tokens, CHUNK)), fill, dtype=torch.long, device=device)
    running[:, :, :p] = prompt[:, None]
    finished = running.clone()                                             # (B, K, W)
    running_scores = torch.zeros(b, k, device=device)
    running_scores[:, 1:] = NEG                                            # all beams start equal: one is live
    finished_scores = torch.full((b, k), NEG, device=device)
    is_finished = torch.zeros(b, k, dtype=torch.bool, device=device)
    finished_len = torch.zeros(b, k, dtype=torch.long, device=device)      # tokens generated per hypothesis
    improvable = torch.ones(b, 1, dtype=torch.bool, device=device)
    cur = p                                                                # index of the token chosen now
    while True:
        if cur == running.shape[2]:                                        # full: room for as many again
            running, finished = _grow(running, length, fill), _grow(finished, length, fill)
        width = running.shape[2]
        logp = torch.log_softmax(logits.float(), dim=-1)                   # (B·K, V)
        if repetition_penalty is not None and repetition_penalty != 1.0:
            logp = apply_repetition_penalty(logp, running[:, :, :cur].reshape(b * k, cur), repetition_penalty)
        v = logp.shape[-1]
        acc = (logp.view(b, k, v) + running_scores[:, :, None]).view(b, k * v)
        top_scores, top_idx = torch.topk(acc, keep)                         # (B, 2K)
        beam, tok = top_idx // v, top_idx % v
        cand = running.gather(1, beam[:, :, None].expand(b, keep, width)).clone()  # (B, 2K, W)
        cand[:, :, cur] = tok
        hits = torch.isin(tok, end_ids) if len(end_ids) else torch.zeros_like(tok, dtype=torch.bool)
        if cur + 1 >= length:
            hits = torch.ones_like(hits)                                    # the length limit ends every one
        # the K best continuations that did not end run on
        live_scores = top_scores + hits.float() * NEG
        nxt = torch.topk(live_scores, k)[1]                                 # (B, K)
        running = cand.gather(1, nxt[:, :, None].expand(b, k, width))
        running_scores = live_scores.gather(1, nxt)
        rows = (beam.gather(1, nxt) + offset).reshape(-1)                   # (B·K,) flat rows continued
        # finished hypotheses: the new ones (among the K best only) merged with the old
        new_fin = hits & top_k_mask[None]
        n = cur + 1 - p                                                     # tokens generated, the new one included
        fin_scores = top_scores / (n ** length_penalty)
        full = is_finished.all(dim=-1, keepdim=True) & (early_stopping is True)
        fin_scores = fin_scores + full.float() * NEG + (~improvable).float() * NEG + (~new_fin).float() * NEG
        merged = torch.cat([finished_scores, fin_scores], dim=1)
        best = torch.topk(merged, k)[1]
        finished = torch.cat([finished, cand], dim=1).gather(1, best[:, :, None].expand(b, k, width))
        finished_scores = merged.gather(1, best)
        is_finished = torch.cat([is_finished, new_fin], dim=1).gather(1, best)
        finished_len = torch.cat([finished_len, torch.full_like(tok, n)], dim=1).gather(1, best)
        # can a running beam still beat the worst finished hypothesis?
        cur += 1
        hyp_len = max_new_tokens if early_stopping == "never" and length_penalty > 0.0 else cur - p
        best_possible = running_scores[:, :1] / (hyp_len ** length_penalty)
        worst = torch.where(is_finished, finished_scores.min(dim=1, keepdim=True)[0],
                            torch.full_like(finished_scores, NEG))
        improvable = improvable & (best_possible > worst).any(dim=-1, keepdim=True)
        if (not bool(improvable.any()) or (bool(is_finished.all()) and early_stopping is True)
                or bool(hits.all())):
            break
        logits = advance(rows, running[:, :, cur - 1].reshape(b * k))
    return finished[:, 0, :p + int(finished_len[:, 0].max())]
