"""Decoding for encoder–decoder models (T5, the original Transformer).

The source is encoded once; each decoder layer's cross-attention keys/values of that memory are
projected once and kept in the :class:`~genmodels.models.Seq2SeqCache`, beside the self-attention
KV cache, which starts at :data:`~genmodels.nn.kv_cache.CHUNK` positions and grows as tokens come
(beam search reorders it in place). The decoder starts from ``decoder_start_token_id`` and feeds
one token per step; it is fed at most ``max_seq_len`` tokens: beyond that, sinusoidal positions
refuse ``max_new_tokens`` and relative ones (T5) stop there with a warning.

* Greedy / sampling (:func:`generate_seq2seq` with ``num_beams=1``): the decoder-only logits
  processors of :mod:`genmodels.generation.sampling` (repetition penalty, temperature, top-k,
  top-p). Rows that emit EOS are finished and receive ``pad_token_id``.
* Beam search (``num_beams > 1``): :func:`genmodels.generation.beam.beam_search` (transformers'
  vectorised beam search, shared with decoder-only generation), the start token as the prompt; the
  self-attention cache follows the beams (``Seq2SeqCache.reorder``).
"""
from __future__ import annotations

import warnings
from typing import Iterable

import torch

from ..native.decoder import FusedDecodeStep, unsupported
from ..nn import kv_cache
from ..nn.layout import decode_layout
from ..registry import SEQ2SEQ, capabilities
from .checks import check_generation_args, check_ids, check_mask, check_token_id, check_token_ids, vocab_size
from .beam import beam_search, expand_beams
from .sampling import choose_next


@torch.inference_mode()
def generate_seq2seq(model: torch.nn.Module, input_ids: torch.Tensor, max_new_tokens: int = 32, *,
                     attention_mask: torch.Tensor | None = None, temperature: float = 0.0, top_k: int | None = None,
                     top_p: float | None = None, repetition_penalty: float | None = None, num_beams: int = 1,
                     length_penalty: float = 1.0, early_stopping: bool | str = False,
                     eos_token_id: int | Iterable[int] | None = None, pad_token_id: int | None = None,
                     decoder_start_token_id: int | None = None, seed: int | None = None,
                     encoded: tuple[torch.Tensor, torch.Tensor | None] | None = None) -> torch.Tensor:
    """Target ids ``(B, 1 + n)`` — the start token, then up to ``max_new_tokens`` generated ones —
    for the sources ``input_ids (B, S)`` (right-padded, ``attention_mask`` 0 on pads).

    ``temperature=0`` and ``num_beams=1`` is greedy (equal to transformers'
    ``generate(do_sample=False)``); ``temperature > 0`` samples (reproducible with ``seed``);
    ``num_beams > 1`` is beam search (``length_penalty``, ``early_stopping`` as in transformers).
    ``encoded``: ``(memory (B, S', D), memory mask (B, S') or None)`` already computed from the sources (a gist
    cache's :meth:`genmodels.gist.GistCache.encoded`); the encoder is then not run.
    """
    if SEQ2SEQ not in capabilities(model):
        raise ValueError("generate_seq2seq needs an encoder–decoder model, "
                         f"got family {getattr(model, 'family', None)!r}")
    check_generation_args(temperature, top_k, top_p, repetition_penalty, max_new_tokens, seed=seed,
                          num_beams=num_beams, length_penalty=length_penalty, early_stopping=early_stopping)
    cfg = model.config
    vocab = vocab_size(model)
    input_ids = check_ids("input_ids", input_ids, vocab)
    attention_mask = check_mask("attention_mask", attention_mask, tuple(input_ids.shape))
    ends = check_token_ids("eos_token_id", cfg.eos_token_id if eos_token_id is None else eos_token_id, vocab)
    if max_new_tokens > cfg.max_seq_len:  # the decoder is fed the start token + all but the last new one
        if cfg.position in ("learned", "sinusoidal"):
            raise ValueError(f"max_new_tokens ({max_new_tokens}) exceeds the decoder's {cfg.max_seq_len} "
                             f"{cfg.position} positions (max_seq_len)")
        warnings.warn(f"generate_seq2seq: max_new_tokens ({max_new_tokens}) exceeds the decoder's context "
                      f"(max_seq_len={cfg.max_seq_len}); generation stops at {cfg.max_seq_len} new tokens",
                      stacklevel=3)
        max_new_tokens = cfg.max_seq_len
    device = next(model.parameters()).device
    input_ids = input_ids.to(device)
    mask = attention_mask.to(device) if attention_mask is not None else None
    start = cfg.decoder_start_token_id if decoder_start_token_id is None else decoder_start_token_id
    if start is None:
        start = cfg.pad_token_id or 0
    pad = pad_token_id if pad_token_id is not None else (cfg.pad_token_id if cfg.pad_token_id is not None else
                                                         (ends[0] if ends else 0))
    check_token_id("decoder_start_token_id", start, vocab)  # the config's, when none is passed
    check_token_id("pad_token_id", pad, vocab)
    was_training = model.training
    model.eval()
    # CPU: one native call per decoder step (genmodels.native) when available, else column-major
    # weights for faster GEMVs (see nn/layout.py)
    fused = device.type == "cpu" and max_new_tokens > 1 and unsupported(model) is None
    try:
        with decode_layout(model, enabled=device.type == "cpu" and max_new_tokens >= 16 and not fused):
            memory, mask = (model.encode(input_ids, mask), mask) if encoded is None else encoded  # (B, S, D)
            mask = mask.to(device) if mask is not None else None
            if num_beams == 1:
                return _sample(model, memory, mask, max_new_tokens, start, ends, pad, temperature, top_k, top_p,
                               repetition_penalty, seed, fused)
            return _beam_search(model, memory, mask, max_new_tokens, start, ends, pad, num_beams, length_penalty,
                                early_stopping, repetition_penalty, fused)
    finally:
        model.train(was_training)


def _decoder_step(model, cache, batch, mask, fused):
    """``step(last tokens (B,)) -> logits (B, V)``: the fused native step, or the PyTorch decoder."""
    if fused:
        fn = FusedDecodeStep(model, cache, batch, mask)

        def native(ids):
            cache.reserve(1)  # grows the cache; the native step re-points itself
            return fn(ids, torch.full_like(ids, cache.pos))
        return native

    def torch_step(ids):
        cache.reserve(1)
        return model.decode(ids[:, None], cache=cache)[:, -1]
    return torch_step


def _sample(model, memory, mask, max_new_tokens, start, ends, pad, temperature, top_k, top_p, rep, seed, fused):
    b, device = memory.shape[0], memory.device
    out = torch.full((b, 1 + max_new_tokens), pad, dtype=torch.long, device=device)
    out[:, 0] = start
    if max_new_tokens == 0:
        return out
    cache = model.new_cache(memory, mask, max_len=min(max_new_tokens, kv_cache.CHUNK), limit=max_new_tokens)
    step_fn = _decoder_step(model, cache, b, mask, fused)
    generator = torch.Generator(device=device).manual_seed(seed) if seed is not None else None
    end_ids = torch.tensor(ends, dtype=torch.long, device=device)
    done = torch.zeros(b, dtype=torch.bool, device=device)
    n = 0
    for step in range(max_new_tokens):
        logits = step_fn(out[:, step])  # (B, V)
        nxt = choose_next(logits, out[:, :step + 1] if rep else None, temperature=temperature, top_k=top_k,
                          top_p=top_p, rep_penalty=rep, generator=generator)
        nxt = torch.where(done, torch.full_like(nxt, pad), nxt)
        out[:, step + 1] = nxt
        n = step + 1
        if len(end_ids):
            done = done | torch.isin(nxt, end_ids)
            if bool(done.all()):
                break
    return out[:, :1 + n]


def _beam_search(model, memory, mask, max_new_tokens, start, ends, pad, k, length_penalty, early_stopping, rep,
                 fused):
    """:func:`genmodels.generation.beam.beam_search` over the decoder, the start token as the prompt."""
    b, device = memory.shape[0], memory.device
    prompt = torch.full((b, 1), start, dtype=torch.long, device=device)
    if max_new_tokens == 0:
        return prompt
    memory, mask = expand_beams(memory, k), expand_beams(mask, k)  # (B·K, S, D): one copy per beam
    cache = model.new_cache(memory, mask, max_len=min(max_new_tokens, kv_cache.CHUNK), limit=max_new_tokens)
    step_fn = _decoder_step(model, cache, b * k, mask, fused)

    def advance(rows, tokens):
        cache.reorder(rows)
        return step_fn(tokens)

    logits = step_fn(expand_beams(prompt[:, 0], k))  # (B·K, V)
    return beam_search(logits, advance, prompt, max_new_tokens, num_beams=k, ends=ends, pad=pad,
                       length_penalty=length_penalty, early_stopping=early_stopping, repetition_penalty=rep)
