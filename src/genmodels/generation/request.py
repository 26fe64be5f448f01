"""A decode request and its settings: :class:`Sampling` (one request's choices) and :class:`Request` (its rows'
tokens, what ended them, and the choice of each next token), the units a :class:`.session.DecodeSession` serves."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch

from ..nn import kv_cache
from .checks import check_generation_args, check_token_id, check_token_ids
from .sampling import choose_next
from .stop import StopStream, check_stop


@dataclass
class Sampling:
    """One request's settings (checked when the request is added: :meth:`check`).

    ``ends``: token ids that end a row (EOS and stop tokens); finished rows get ``pad``.
    ``allowed`` (V,) or (B_r, V) bool: the tokens a row may choose (None: all). ``stop``: stop strings, matched on
    each row's generated text decoded by ``tokenizer`` (:mod:`.stop`). ``streamer(tokens (B_r,))``
    sees each step's tokens. ``keep_cache``: feed the last token too and keep the request's cache."""

    max_new_tokens: int = 32
    temperature: float = 0.0
    top_k: int | None = None
    top_p: float | None = None
    repetition_penalty: float | None = None
    ends: tuple[int, ...] = ()
    pad: int = 0
    allowed: torch.Tensor | None = None
    generator: torch.Generator | None = None
    stop: tuple[str, ...] = ()
    tokenizer: Any = None
    streamer: Callable[[torch.Tensor], None] | None = None
    keep_cache: bool = False

    def check(self, vocab: int, batch: int = 1) -> None:
        """Each setting in range (:mod:`.checks`, the messages ``generate`` gives), ``allowed`` a (V,) or
        (B_r, V) bool mask allowing some token in each row, stop strings with a tokenizer to decode the text."""
        check_generation_args(self.temperature, self.top_k, self.top_p, self.repetition_penalty, self.max_new_tokens)
        check_token_ids("ends", self.ends, vocab)
        check_token_id("pad", self.pad, vocab, allow_none=False)
        a = self.allowed
        if a is not None and (tuple(a.shape) not in ((vocab,), (batch, vocab)) or a.dtype != torch.bool
                              or not bool(a.any(-1).all())):
            raise ValueError(f"allowed must be a ({vocab},) or ({batch}, {vocab}) bool mask allowing at least one "
                             f"token per row, got {tuple(a.shape)} {a.dtype}")
        if check_stop(self.stop) and self.tokenizer is None:
            raise ValueError(f"stop={list(self.stop)!r}: stop strings are matched on decoded text; give a tokenizer")


class Request:
    """A request's rows in a session: ``output`` ``(B_r, T + n)`` ids, ``done (B_r,)``, ``texts`` (the
    rows' text cut at a stop string, when stop strings are set), ``cache`` (kept caches only)."""

    def __init__(self, input_ids: torch.Tensor, s: Sampling):
        b, self.t = input_ids.shape
        self.s, self.n, self.cache = s, 0, None
        self.tokens = input_ids.new_empty(b, self.t + min(s.max_new_tokens, kv_cache.CHUNK))  # grown as they come
        self.tokens[:, :self.t] = input_ids
        self.done = torch.zeros(b, dtype=torch.bool, device=input_ids.device)
        self.end_ids = torch.tensor(list(s.ends), dtype=torch.long, device=input_ids.device)
        self.streams = [StopStream(s.tokenizer, check_stop(s.stop)) for _ in range(b)] if s.stop else None
        self.finished = s.max_new_tokens == 0
        self.rows: list[int] = []  # its rows of the session's cache, in order (set by the session)
        self.can_end = bool(s.ends) or self.streams is not None  # something may end a row before max_new_tokens

    @property
    def batch(self) -> int:
        return self.tokens.shape[0]

    @property
    def output(self) -> torch.Tensor:
        return self.tokens[:, :self.t + self.n]

    @property
    def texts(self) -> list[str] | None:
        return None if self.streams is None else [st.text for st in self.streams]

    @property
    def greedy(self) -> bool:
        """Plain argmax tokens (no temperature, allowed set, penalty): chosen with all such rows in one pass."""
        s = self.s
        return s.temperature == 0.0 and s.allowed is None and s.repetition_penalty in (None, 1.0)

    def choose(self, logits: torch.Tensor, choose: Callable = choose_next) -> torch.Tensor:
        """The next token of each row ``(B_r,)`` from its logits ``(B_r, V)`` (``choose``: the token choice,
        :func:`.sampling.choose_next`); records it and what ended (:meth:`record`)."""
        s, t, step = self.s, self.t, self.n
        if s.allowed is not None:
            logits = logits.masked_fill(~s.allowed.to(logits.device), float("-inf"))
        seen = self.tokens[:, :t + step] if s.repetition_penalty else None
        return self.record(choose(logits, seen, temperature=s.temperature, top_k=s.top_k, top_p=s.top_p,
                                  rep_penalty=s.repetition_penalty, generator=s.generator))

    def record(self, nxt: torch.Tensor) -> torch.Tensor:
        """Take ``nxt (B_r,)`` as the rows' next tokens (finished rows get ``pad``): ``output``, the streamer,
        ``done`` (an end token, a stop string), ``finished``."""
        s, t, step = self.s, self.t, self.n
        if self.can_end:  # (else no row is done before max_new_tokens)
            nxt = torch.where(self.done, torch.full_like(nxt, s.pad), nxt)
        if t + step == self.tokens.shape[1]:
            grow = min(self.tokens.shape[1], s.max_new_tokens - step)
            self.tokens = torch.cat([self.tokens, self.tokens.new_empty(self.batch, grow)], dim=1)
        self.tokens[:, t + step] = nxt
        self.n = step + 1
        if s.streamer is not None:
            s.streamer(nxt)
        before = self.done
        if s.ends:
            self.done = self.done | torch.isin(nxt, self.end_ids)
        if self.streams is not None:  # each live row's text, and whether it reached a stop string
            stopped = []
            for row, (stream, was_done) in enumerate(zip(self.streams, before.tolist())):
                if not was_done:
                    stream.push(int(nxt[row]))
                stopped.append(stream.stopped)
            self.done = self.done | torch.tensor(stopped, dtype=torch.bool, device=self.done.device)
        self.finished = self.n == s.max_new_tokens or (self.can_end and bool(self.done.all()))
        return nxt
