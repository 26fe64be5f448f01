"""Autoregressive decoding for decoder-only models through the KV cache.

Prefill runs the whole (left-padded) prompt once; every later step feeds one token per row.
Rows that emit an end token are finished: they keep receiving ``pad_token_id`` and stop counting.

The cache starts at the prompt plus :data:`genmodels.nn.kv_cache.CHUNK` slots and grows as tokens
come (:meth:`KVCache.reserve`), so ``max_new_tokens`` is a limit, not an allocation. The context:

* learned / sinusoidal positions: prompt + ``max_new_tokens`` beyond ``max_seq_len`` is refused;
* other models without a sliding window (RoPE, ALiBi): generation stops once the sequence fills
  ``max_seq_len`` (with a warning), so the cache never grows beyond the model's context;
* sliding-window models (Mistral) go on past ``max_seq_len`` with a cache bounded by the window.
"""
from __future__ import annotations

import warnings
from typing import Callable, Iterable

import torch

from ..native.step import fused_step, unsupported  # the transformer KV-cache step or RetNet's recurrent one
from ..nn import kv_cache
from ..nn.layout import decode_layout
from ..registry import GENERATES, SEQ2SEQ, capabilities
from .beam import beam_search, expand_beams
from .checks import check_generation_args, check_ids, check_mask, check_token_id, check_token_ids, vocab_size
from .sampling import choose_next


@torch.inference_mode()
def generate(model: torch.nn.Module, input_ids: torch.Tensor, max_new_tokens: int = 32, *,
             temperature: float = 0.0, top_k: int | None = None, top_p: float | None = None,
             repetition_penalty: float | None = None, eos_token_id: int | Iterable[int] | None = None,
             stop_tokens: Iterable[int] | None = None, pad_token_id: int | None = None, seed: int | None = None,
             attention_mask: torch.Tensor | None = None, num_beams: int = 1, length_penalty: float = 1.0,
             early_stopping: bool | str = False,
             streamer: Callable[[torch.Tensor], None] | None = None) -> torch.Tensor:
    """Generate up to ``max_new_tokens`` after each prompt; returns ``(B, T + n)`` token ids.

    ``input_ids (B, T)`` may be left-padded, with ``attention_mask`` 0 on the pads. ``temperature=0``
    is greedy; otherwise temperature / ``top_k`` / ``top_p`` sampling, reproducible with ``seed``.
    ``eos_token_id`` defaults to the config's; ``stop_tokens`` adds more ids that end a row.
    ``streamer`` receives each step's new tokens ``(B,)``.

    ``num_beams > 1`` (with ``temperature=0``): beam search (:mod:`.beam`, as transformers'
    ``generate(num_beams=K, do_sample=False)``, ``length_penalty`` and ``early_stopping`` too): the
    prompt is prefilled once per beam and the cache follows the beams (``cache.reorder``); each step
    takes the same native decode step as greedy when :mod:`genmodels.native` supports the model,
    else the PyTorch forward. No ``streamer`` (beams are only settled at the end).
    """
    can = capabilities(model)  # decoder-only here; genmodels.generate sends encoder–decoders to .seq2seq
    if GENERATES not in can or SEQ2SEQ in can:
        raise ValueError(f"decode.generate needs a decoder-only model; this one is "
                         f"family={getattr(model, 'family', None)!r} (use genmodels.generate, or "
                         "genmodels.embed for encoders)")
    cfg = model.config
    check_generation_args(temperature, top_k, top_p, repetition_penalty, max_new_tokens, seed=seed,
                          num_beams=num_beams, length_penalty=length_penalty, early_stopping=early_stopping)
    if num_beams > 1 and streamer is not None:
        raise ValueError(f"streamer: beam search (num_beams={num_beams}) settles the tokens only at the end; "
                         "pass streamer=None or num_beams=1")
    vocab = vocab_size(model)
    input_ids = check_ids("input_ids", input_ids, vocab)
    attention_mask = check_mask("attention_mask", attention_mask, tuple(input_ids.shape))
    ends = check_token_ids("eos_token_id", cfg.eos_token_id if eos_token_id is None else eos_token_id, vocab)
    ends = list(dict.fromkeys(ends + check_token_ids("stop_tokens", stop_tokens, vocab)))  # ordered, unique
    device = next(model.parameters()).device
    input_ids = input_ids.to(device)
    b, t = input_ids.shape
    if t + max_new_tokens > cfg.max_seq_len and cfg.position in ("learned", "sinusoidal"):
        raise ValueError(f"prompt ({t}) + max_new_tokens ({max_new_tokens}) exceeds the model's "
                         f"{cfg.max_seq_len} {cfg.position} positions (max_seq_len)")
    if t + max_new_tokens > cfg.max_seq_len and cfg.sliding_window is None and max_new_tokens > 0:
        if t >= cfg.max_seq_len:
            raise ValueError(f"input_ids: the prompt ({t} tokens) fills the model's context (max_seq_len="
                             f"{cfg.max_seq_len}); nothing can be generated")
        warnings.warn(f"generate: prompt ({t}) + max_new_tokens ({max_new_tokens}) exceeds the model's context "
                      f"(max_seq_len={cfg.max_seq_len}); generation stops at {cfg.max_seq_len} tokens",
                      stacklevel=3)
        max_new_tokens = cfg.max_seq_len - t
    end_ids = torch.tensor(ends, dtype=torch.long, device=device)
    pad = pad_token_id if pad_token_id is not None else (cfg.pad_token_id if cfg.pad_token_id is not None else
                                                         (min(ends) if ends else 0))
    check_token_id("pad_token_id", pad, vocab)  # the config's, when none is passed
    generator = torch.Generator(device=device).manual_seed(seed) if seed is not None else None
    if max_new_tokens == 0:
        return input_ids

    if attention_mask is not None and not bool(attention_mask[:, -1].all()):
        raise ValueError("attention_mask must be left-padded for generation (the last column all 1): "
                         "pad prompts on the left")
    padded = attention_mask is not None and not bool(attention_mask.all())
    mask = attention_mask.to(device).long() if padded else None
    if padded:
        positions = mask.cumsum(-1)[:, -1:] - 1  # (B, 1): position of each row's last prompt token
    else:
        positions = torch.full((b, 1), t - 1, dtype=torch.long, device=device)

    was_training = model.training
    model.eval()
    # On CPU each decode step is one native call when the kernels are available (genmodels.native);
    # otherwise column-major weights make PyTorch's GEMVs stream ~2x faster (the swap costs about
    # two decode steps).
    fused = device.type == "cpu" and max_new_tokens > 1 and unsupported(model) is None
    try:
        with decode_layout(model, enabled=device.type == "cpu" and max_new_tokens >= 16 and not fused):
            if num_beams > 1:
                return _beam(model, input_ids, max_new_tokens, mask, positions, ends, pad, num_beams,
                             length_penalty, early_stopping, repetition_penalty, fused)
            return _decode(model, input_ids, max_new_tokens, mask, positions, end_ids, pad, temperature, top_k,
                           top_p, repetition_penalty, generator, streamer, fused)
    finally:
        model.train(was_training)


def _prefill(model, input_ids, max_new_tokens, mask, fused):
    """The prompt through the model once: ``(cache, logits (B, V) of the next token, step)``, where
    ``step(tokens (B,), positions (B,)) -> logits (B, V)`` feeds one token per row after it."""
    b, t = input_ids.shape
    # the last new token is never fed back: t + max_new_tokens − 1 positions at most
    n_fed = t + max_new_tokens - 1  # within max_seq_len unless a sliding window bounds the cache (generate)
    cache = model.new_cache(b, min(t + kv_cache.CHUNK, n_fed), limit=n_fed)
    h = model.hidden_states(input_ids, attention_mask=mask, cache=cache)  # prefill (B, T, D)
    if mask is not None:
        cache.set_key_mask(mask)  # the padding, in slot coordinates from here on
    native = fused_step(model, cache, b) if fused else None

    def step(tokens, positions):
        cache.reserve(1)  # grow, or compact a sliding window
        if native is not None:
            return native(tokens, positions, cache.key_mask)
        step_mask = cache.key_mask[:, : cache.pos + 1] if cache.key_mask is not None else None
        h = model.hidden_states(tokens[:, None], attention_mask=step_mask, position_ids=positions[:, None],
                                cache=cache)
        return model.head(h[:, -1])
    return cache, model.head(h[:, -1]), step  # only the last position's logits are needed


def _decode(model, input_ids, max_new_tokens, mask, positions, end_ids, pad, temperature, top_k, top_p,
            repetition_penalty, generator, streamer, fused=False):
    """Prefill, then one token per step; returns the ids ``(B, T + n)``."""
    b, t = input_ids.shape
    device = input_ids.device
    _, logits, step_fn = _prefill(model, input_ids, max_new_tokens, mask, fused)
    positions = positions[:, 0].clone()  # (B,)
    out = input_ids.new_empty(b, t + min(max_new_tokens, kv_cache.CHUNK))  # grown geometrically as tokens come
    out[:, :t] = input_ids
    done = torch.zeros(b, dtype=torch.bool, device=device)
    n = 0
    for step in range(max_new_tokens):
        seen = out[:, : t + step] if repetition_penalty else None
        nxt = choose_next(logits, seen, temperature=temperature, top_k=top_k, top_p=top_p,
                          rep_penalty=repetition_penalty, generator=generator)
        nxt = torch.where(done, torch.full_like(nxt, pad), nxt)
        if t + step == out.shape[1]:
            out = torch.cat([out, out.new_empty(b, min(out.shape[1], max_new_tokens - step))], dim=1)
        out[:, t + step] = nxt
        n = step + 1
        if streamer is not None:
            streamer(nxt)
        if len(end_ids):
            done = done | torch.isin(nxt, end_ids)
            if bool(done.all()):
                break
        if step == max_new_tokens - 1:
            break
        positions += 1
        logits = step_fn(nxt, positions)
    return out[:, : t + n]


def _beam(model, input_ids, max_new_tokens, mask, positions, ends, pad, k, length_penalty, early_stopping,
          repetition_penalty, fused):
    """Beam search (:func:`.beam.beam_search`): K copies of each prompt prefilled, as transformers does."""
    cache, logits, step_fn = _prefill(model, expand_beams(input_ids, k), max_new_tokens, expand_beams(mask, k),
                                      fused)
    positions = expand_beams(positions[:, 0], k)  # (B·K,): beams of a source share their positions

    def advance(rows, tokens):
        nonlocal positions
        cache.reorder(rows)
        positions = positions.index_select(0, rows) + 1
        return step_fn(tokens, positions)
    return beam_search(logits, advance, input_ids, max_new_tokens, num_beams=k, ends=ends, pad=pad,
                       length_penalty=length_penalty, early_stopping=early_stopping,
                       repetition_penalty=repetition_penalty)
