"""Autoregressive decoding for decoder-only models through the cache.

:func:`generate` runs one request in a :class:`~.session.DecodeSession` (the loop chat and the
server share): the whole (left-padded) prompt is prefilled once, then every step feeds one token per
row. Rows that emit an end token, or whose text reaches a stop string (:mod:`.stop`), are finished:
they keep receiving ``pad_token_id`` and stop counting. Beam search (:mod:`.beam`) drives the same
prefill and step.

The cache starts at the prompt plus :data:`genmodels.nn.kv_cache.CHUNK` slots and grows as tokens
come (:meth:`KVCache.reserve`), so ``max_new_tokens`` is a limit, not an allocation. The context:

* learned / sinusoidal positions: prompt + ``max_new_tokens`` beyond ``max_seq_len`` is refused;
* other models without a sliding window (RoPE, ALiBi): generation stops once the sequence fills
  ``max_seq_len`` (with a warning), so the cache never grows beyond the model's context;
* sliding-window models (Mistral) go on past ``max_seq_len`` with a cache bounded by the window.
"""
from __future__ import annotations

import warnings
from typing import Callable, Iterable, Sequence

import torch

from ..native.step import fused_step, unsupported  # the transformer KV-cache step or RetNet's recurrent one
from ..nn.layout import decode_layout
from ..registry import GENERATES, SEQ2SEQ, capabilities
from .beam import beam_search, expand_beams
from .checks import check_generation_args, check_ids, check_mask, check_token_id, check_token_ids, vocab_size
from .sampling import choose_next
from .session import DecodeSession, Sampling
from .stop import check_stop


@torch.inference_mode()
def generate(model: torch.nn.Module, input_ids: torch.Tensor, max_new_tokens: int = 32, *,
             temperature: float = 0.0, top_k: int | None = None, top_p: float | None = None,
             repetition_penalty: float | None = None, eos_token_id: int | Iterable[int] | None = None,
             stop_tokens: Iterable[int] | None = None, pad_token_id: int | None = None, seed: int | None = None,
             attention_mask: torch.Tensor | None = None, num_beams: int = 1, length_penalty: float = 1.0,
             early_stopping: bool | str = False, streamer: Callable[[torch.Tensor], None] | None = None,
             stop: str | Sequence[str] | None = None, cache=None, return_cache: bool = False):
    """Generate up to ``max_new_tokens`` after each prompt; returns ``(B, T + n)`` token ids.

    ``input_ids (B, T)`` may be left-padded, with ``attention_mask`` 0 on the pads. ``temperature=0``
    is greedy; otherwise temperature / ``top_k`` / ``top_p`` sampling, reproducible with ``seed``.
    ``eos_token_id`` defaults to the config's; ``stop_tokens`` adds more ids that end a row.
    ``streamer`` receives each step's new tokens ``(B,)``.

    ``stop``: strings that end a row when its generated text (decoded by ``model.tokenizer``)
    contains one. As in OpenAI's API the stop string is not part of the text: decode the row's new
    ids with :class:`genmodels.generation.stop.StopStream` (``.text``), which cuts it where the stop
    string starts; the ids themselves run up to the token that completed it (tokens are not cut).

    ``cache`` (from an earlier ``return_cache=True`` call, e.g. ``generate(model, ids1, 0,
    return_cache=True)``): continue what it holds; ``input_ids`` are then only the NEW tokens, and the cache
    is used and advanced in place. New tokens of different lengths may be left-padded (``attention_mask``): the
    pads sit between the cached slots and each row's tokens, masked, and positions continue from each row's own
    (refused, with the reason, for ALiBi, sliding windows and recurrent states, which read slots, not positions).
    ``return_cache=True`` returns ``(ids (B, T + n), cache)`` instead of the ids alone: a cache that
    has consumed everything it was given and every returned token (the last one included), so the
    next call passes only the tokens after them. Rows that ended before the others consumed
    ``pad_token_id`` after their end. ``generate(ids2, cache=prefix(ids1))`` gives the tokens of
    ``generate(ids1 + ids2)``, with ``ids2`` (not ``ids1 + ids2``) first in the returned ids.

    ``cache`` may also be a :class:`genmodels.gist.GistCache` (an instruction compressed into its gist
    tokens): ``input_ids`` follow the gist, and each call decodes in a fresh copy (the gist cache is reused).

    ``num_beams > 1`` (with ``temperature=0``): beam search (:mod:`.beam`, as transformers'
    ``generate(num_beams=K, do_sample=False)``, ``length_penalty`` and ``early_stopping`` too): the
    prompt is prefilled once per beam and the cache follows the beams (``cache.reorder``); each step
    takes the same native decode step as greedy when :mod:`genmodels.native` supports the model,
    else the PyTorch forward. No ``streamer``, ``stop``, ``cache`` or ``return_cache`` (beams are
    only settled at the end).
    """
    if hasattr(cache, "decoding_cache"):  # a reusable prefix (genmodels.gist.GistCache): a fresh cache per call
        cache = cache.decoding_cache(model, len(input_ids), len(input_ids[0]) + max_new_tokens)
    input_ids, attention_mask, max_new_tokens, ends, pad = _checked(
        model, input_ids, max_new_tokens, temperature, top_k, top_p, repetition_penalty, eos_token_id, stop_tokens,
        pad_token_id, seed, attention_mask, num_beams, length_penalty, early_stopping, streamer, stop, cache,
        return_cache)
    device = input_ids.device
    generator = torch.Generator(device=device).manual_seed(seed) if seed is not None else None
    if max_new_tokens == 0 and not return_cache:
        return input_ids
    padded = attention_mask is not None and not bool(attention_mask.all())
    mask = attention_mask.to(device).long() if padded else None
    was_training = model.training
    model.eval()
    # On CPU each decode step is one native call when the kernels are available (genmodels.native);
    # otherwise column-major weights make PyTorch's GEMVs stream ~2x faster (the swap costs about
    # two decode steps).
    fused = device.type == "cpu" and max_new_tokens > 1 and unsupported(model) is None
    try:
        with decode_layout(model, enabled=device.type == "cpu" and max_new_tokens >= 16 and not fused):
            if num_beams > 1:
                return _beam(model, input_ids, max_new_tokens, mask, ends, pad, num_beams, length_penalty,
                             early_stopping, repetition_penalty, fused)
            session = DecodeSession(model, native=fused, native_step=fused_step, choose=choose_next)
            settings = Sampling(max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                                repetition_penalty=repetition_penalty, ends=tuple(ends), pad=pad, generator=generator,
                                stop=check_stop(stop), tokenizer=getattr(model, "tokenizer", None), streamer=streamer,
                                keep_cache=return_cache or cache is not None)
            request = session.add(input_ids, settings, attention_mask=mask, cache=cache)
            session.run()
            return (request.output, request.cache) if return_cache else request.output
    finally:
        model.train(was_training)


def _checked(model, input_ids, max_new_tokens, temperature, top_k, top_p, repetition_penalty, eos_token_id,
             stop_tokens, pad_token_id, seed, attention_mask, num_beams, length_penalty, early_stopping, streamer,
             stop, cache, return_cache):
    """Every argument checked before any work: ``(input_ids on the model's device, attention_mask,
    max_new_tokens (capped at the context), end token ids, pad id)``."""
    can = capabilities(model)  # decoder-only here; genmodels.generate sends encoder–decoders to .seq2seq
    if GENERATES not in can or SEQ2SEQ in can:
        raise ValueError(f"decode.generate needs a decoder-only model; this one is "
                         f"family={getattr(model, 'family', None)!r} (use genmodels.generate, or "
                         "genmodels.embed for encoders)")
    cfg = model.config
    check_generation_args(temperature, top_k, top_p, repetition_penalty, max_new_tokens, seed=seed,
                          num_beams=num_beams, length_penalty=length_penalty, early_stopping=early_stopping)
    if num_beams > 1 and (streamer is not None or stop is not None or cache is not None or return_cache):
        raise ValueError(f"streamer, stop, cache, return_cache: beam search (num_beams={num_beams}) settles the "
                         "tokens only at the end; pass none of them, or num_beams=1")
    if check_stop(stop) and getattr(model, "tokenizer", None) is None:
        raise ValueError(f"stop={stop!r}: stop strings are matched on decoded text and this model has no "
                         "tokenizer (model.tokenizer); pass stop_tokens (ids) instead")
    vocab = vocab_size(model)
    input_ids = check_ids("input_ids", input_ids, vocab)
    attention_mask = check_mask("attention_mask", attention_mask, tuple(input_ids.shape))
    ends = check_token_ids("eos_token_id", cfg.eos_token_id if eos_token_id is None else eos_token_id, vocab)
    ends = list(dict.fromkeys(ends + check_token_ids("stop_tokens", stop_tokens, vocab)))  # ordered, unique
    input_ids = input_ids.to(next(model.parameters()).device)
    b, t = input_ids.shape
    held = _check_cache(model, cache, b, attention_mask)
    if held + t + max_new_tokens > cfg.max_seq_len and cfg.position in ("learned", "sinusoidal"):
        raise ValueError(f"prompt ({held + t}) + max_new_tokens ({max_new_tokens}) exceeds the model's "
                         f"{cfg.max_seq_len} {cfg.position} positions (max_seq_len)")
    if held + t + max_new_tokens > cfg.max_seq_len and cfg.sliding_window is None and max_new_tokens > 0:
        if held + t >= cfg.max_seq_len:
            raise ValueError(f"input_ids: the prompt ({held + t} tokens) fills the model's context (max_seq_len="
                             f"{cfg.max_seq_len}); nothing can be generated")
        warnings.warn(f"generate: prompt ({held + t}) + max_new_tokens ({max_new_tokens}) exceeds the model's "
                      f"context (max_seq_len={cfg.max_seq_len}); generation stops at {cfg.max_seq_len} tokens",
                      stacklevel=4)
        max_new_tokens = cfg.max_seq_len - held - t
    pad = pad_token_id if pad_token_id is not None else (cfg.pad_token_id if cfg.pad_token_id is not None else
                                                         (min(ends) if ends else 0))
    check_token_id("pad_token_id", pad, vocab)  # the config's, when none is passed
    if (max_new_tokens or return_cache) and attention_mask is not None and not bool(attention_mask[:, -1].all()):
        raise ValueError("attention_mask must be left-padded for generation (the last column all 1): "
                         "pad prompts on the left")
    return input_ids, attention_mask, max_new_tokens, ends, pad


def _check_cache(model, cache, batch: int, attention_mask) -> int:
    """The slots a cache passed to :func:`generate` holds (0 without one), after checking it fits."""
    if cache is None:
        return 0
    rows = getattr(cache, "row_pos", None)
    if rows is None or not hasattr(cache, "pos"):
        raise ValueError(f"cache={type(cache).__name__}: pass a cache returned by generate(..., return_cache=True)")
    if rows.shape[0] != batch:
        raise ValueError(f"cache holds {rows.shape[0]} rows; input_ids has {batch} (one row of new tokens per row)")
    if attention_mask is not None and not bool(attention_mask.all()):
        reason = _padding_after_cache(model, cache)
        if reason is not None:
            raise ValueError(f"attention_mask: padded new tokens after a cache sit between its slots and the tokens, "
                             f"and {reason}; pad the first call instead (the padding then lives in the cache)")
    return int(cache.pos)


def _padding_after_cache(model, cache) -> str | None:
    """Why new tokens left-padded after ``cache`` (pads between its slots and the tokens) would not decode as each
    row alone, or None: a key/value cache on a model that reads positions, not slot distances."""
    from ..nn.kv_cache import KVCache
    if not isinstance(cache, KVCache):
        return f"{type(cache).__name__} is not a key/value cache (a recurrent state cannot hold them)"
    if model.config.position == "alibi":
        return "ALiBi biases scores by slot distance (position='alibi')"
    if model.config.sliding_window is not None:
        return f"a sliding window counts slots, not positions (sliding_window={model.config.sliding_window})"
    return None


def _beam(model, input_ids, max_new_tokens, mask, ends, pad, k, length_penalty, early_stopping,
          repetition_penalty, fused):
    """Beam search (:func:`.beam.beam_search`): K copies of each prompt prefilled, as transformers does; the
    session's cache follows the beams (``cache.reorder``) and each step is the session's ``feed``."""
    session = DecodeSession(model, native=fused, native_step=fused_step)
    # the last new token is never fed back: t + max_new_tokens − 1 slots at most
    session.cache, logits = session.prefill(expand_beams(input_ids, k), input_ids.shape[1] + max_new_tokens - 1,
                                            attention_mask=expand_beams(mask, k))

    def advance(rows, tokens):
        session.cache.reorder(rows)  # in place: the native step keeps its pointers
        return session.feed(tokens)
    return beam_search(logits, advance, input_ids, max_new_tokens, num_beams=k, ends=ends, pad=pad,
                       length_penalty=length_penalty, early_stopping=early_stopping,
                       repetition_penalty=repetition_penalty)
