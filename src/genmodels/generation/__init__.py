"""Generation: logit processors, decode loops, and :func:`generate`, which picks the loop from the
model family's capabilities (:mod:`genmodels.registry`): encoder–decoders (``seq2seq``) read the
prompt as a source (:mod:`.seq2seq`), other token generators decode through their cache
(:mod:`.decode`)."""
from __future__ import annotations

from typing import Callable, Iterable, Sequence

import torch

from ..registry import GENERATES, SEQ2SEQ, capabilities, require
from . import decode
from .checks import check_token_ids, vocab_size
from .sampling import choose_next, process_logits, repetition_penalty, top_k_filter, top_p_filter
from .session import DecodeSession, Request, Sampling
from .stop import StopStream, StopStrings


def generate(model: torch.nn.Module, input_ids: torch.Tensor, max_new_tokens: int = 32, *,
             temperature: float = 0.0, top_k: int | None = None, top_p: float | None = None,
             repetition_penalty: float | None = None, eos_token_id: int | Iterable[int] | None = None,
             stop_tokens: Iterable[int] | None = None, pad_token_id: int | None = None, seed: int | None = None,
             attention_mask: torch.Tensor | None = None, num_beams: int = 1, length_penalty: float = 1.0,
             early_stopping: bool | str = False, streamer: Callable[[torch.Tensor], None] | None = None,
             stop: str | Sequence[str] | None = None, cache=None, return_cache: bool = False):
    """Generate up to ``max_new_tokens`` after each prompt (see :func:`.decode.generate`: stop strings,
    continuing a ``cache`` and ``return_cache=True``, which returns ``(ids, cache)``); for an
    encoder–decoder the prompt is the source and the target ids ``(B, 1 + n)`` are returned
    (:func:`.seq2seq.generate_seq2seq`; ``streamer``, ``stop`` and ``return_cache`` are not taken there, and
    ``cache`` only as a :class:`genmodels.gist.GistCache`: the inputs are encoded after the gist). ``num_beams > 1`` is beam search for both (:mod:`.beam`)."""
    require(model, GENERATES, "genmodels.generate")
    can = capabilities(model)
    if SEQ2SEQ in can:
        encoded = None
        if hasattr(cache, "encoded"):  # a gist cache (genmodels.gist): the inputs encoded after the gist
            encoded, cache = cache.encoded(model, input_ids, attention_mask), None
        if stop is not None or cache is not None or return_cache:
            raise ValueError("stop, cache, return_cache: encoder–decoder generation takes none of them (a cache "
                             "only as a gist cache); use stop_tokens (ids)")
        return _generate_seq2seq(model, input_ids, max_new_tokens, encoded=encoded, temperature=temperature, top_k=top_k,
                                 top_p=top_p, repetition_penalty=repetition_penalty, eos_token_id=eos_token_id,
                                 stop_tokens=stop_tokens, pad_token_id=pad_token_id, seed=seed,
                                 attention_mask=attention_mask, num_beams=num_beams, length_penalty=length_penalty,
                                 early_stopping=early_stopping)
    return decode.generate(model, input_ids, max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                           repetition_penalty=repetition_penalty, eos_token_id=eos_token_id,
                           stop_tokens=stop_tokens, pad_token_id=pad_token_id, seed=seed,
                           attention_mask=attention_mask, num_beams=num_beams, length_penalty=length_penalty,
                           early_stopping=early_stopping, streamer=streamer, stop=stop, cache=cache,
                           return_cache=return_cache)


def _generate_seq2seq(model, input_ids, max_new_tokens, *, stop_tokens, eos_token_id, **kw) -> torch.Tensor:
    """Encoder–decoder generation; stop tokens end a row as EOS does, so both are passed as EOS
    (the config's EOS included)."""
    from .seq2seq import generate_seq2seq
    if stop_tokens is not None:
        check_token_ids("stop_tokens", stop_tokens, vocab_size(model))
        eos = model.config.eos_token_id if eos_token_id is None else eos_token_id
        stops = [stop_tokens] if isinstance(stop_tokens, int) else list(stop_tokens)
        eos_token_id = [*([eos] if isinstance(eos, int) else eos or []), *stops]
    return generate_seq2seq(model, input_ids, max_new_tokens, eos_token_id=eos_token_id, **kw)


__all__ = ["generate", "choose_next", "process_logits", "repetition_penalty", "top_k_filter", "top_p_filter",
           "DecodeSession", "Request", "Sampling", "StopStream", "StopStrings"]
