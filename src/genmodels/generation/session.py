"""The decode session: the one decode loop under :func:`genmodels.generate`, chat and the server.

A session holds one cache (:mod:`genmodels.nn.kv_cache`, protocol v2) whose rows belong to
requests. A request is one or more rows added together with their own settings
(:class:`Sampling`: temperature, top-k, top-p, repetition penalty, ``max_new_tokens``, end tokens,
an allowed-token set, a ``torch.Generator``, stop strings): ``add`` prefills it alone (or continues
a cache it brings; ``add_many``: several in one forward) and its rows join the session's cache — into rows
a request just left where they fit (:mod:`.rows`), else appended; ``step`` chooses one token for
every row of every request and feeds them all in one forward — the native step when
:mod:`genmodels.native` supports the model, else the PyTorch one. Requests join and leave between
steps; each row keeps its own positions (``cache.row_pos``), so what a row generates does not
depend on the rows beside it (up to float rounding of the batched kernels).

    session = DecodeSession(model)
    a = session.add(ids_a, Sampling(max_new_tokens=20))
    session.step(); session.step()
    b = session.add(ids_b, Sampling(temperature=0.8, generator=torch.Generator().manual_seed(0)))
    while session.requests:
        session.step()
    a.output, b.output                  # (B_r, T_r + n_r) token ids

A request ends when each of its rows has ended (an end token, or a stop string in its text) or
after ``max_new_tokens``; the last chosen token is fed only for a request that keeps its cache
(``Sampling.keep_cache``: ``request.cache`` then holds every token it returned).
"""
from __future__ import annotations

import copy
from typing import Callable

import torch

from ..native import prefill as native_prefill
from ..native.step import fused_step, unsupported
from ..nn import kv_cache
from . import rows as reuse
from .checks import vocab_size
from .request import Request, Sampling  # (also imported from here by the callers)
from .sampling import argmax, choose_next


class DecodeSession:
    """Requests decoding together over one cache (see the module). ``native``: take the native step
    (None: when the model is on the CPU and :func:`genmodels.native.step.unsupported` finds no reason).
    ``native_step(model, cache, batch)`` builds it and ``choose`` picks tokens (defaults:
    :func:`genmodels.native.step.fused_step`, :func:`.sampling.choose_next`)."""

    def __init__(self, model: torch.nn.Module, *, native: bool | None = None, native_step: Callable = fused_step,
                 choose: Callable = choose_next):
        self.model, self.native_step, self.choose = model, native_step, choose
        if native is None:
            native = next(model.parameters()).device.type == "cpu" and \
                native_prefill.remembered(model, "step", unsupported) is None  # (once while the model is unchanged)
        self.native = native
        self.requests: list[Request] = []  # live (each knows its rows of the cache: request.rows)
        self.free: list[int] = []  # rows no request owns (one that left), kept one step for a request that joins
        self.cache = None
        self.logits: torch.Tensor | None = None  # (R, V): the next-token logits of every live row
        self._step = None  # the native step, built at the first feed after the rows change
        self._chosen: list[torch.Tensor] | None = None  # choose_tokens' tokens, per request, until fed

    @torch.inference_mode()
    def add(self, input_ids: torch.Tensor, sampling: Sampling | None = None, *,
            attention_mask: torch.Tensor | None = None, cache=None) -> Request:
        """Prefill ``input_ids (B_r, T)`` (left-padded with ``attention_mask``; or the new tokens after what
        ``cache`` holds) and add its rows; returns the request. A ``cache`` passed in is advanced in place and
        is the session's cache while the session holds no other rows; joining other rows, its rows are
        appended to theirs (``cache.extend``) and the request's kept cache is a copy of its rows."""
        s = sampling if sampling is not None else Sampling()
        s.check(vocab_size(self.model), input_ids.shape[0])
        req = Request(input_ids, s)
        if req.finished and not s.keep_cache:
            return req  # nothing to generate, nothing to keep
        need = input_ids.shape[1] + s.max_new_tokens - (0 if s.keep_cache else 1)  # the last token: fed to keep it
        cache, logits = self.prefill(input_ids, need, attention_mask=attention_mask, cache=cache)
        if req.finished:
            req.cache = cache
            return req
        self._join([req], cache, logits)
        return req

    @torch.inference_mode()
    def add_many(self, prompts: list[tuple[torch.Tensor, Sampling]]) -> list[Request]:
        """Several new requests ``[(input_ids (B_r, T_r), sampling), …]`` prefilled in ONE forward and added
        together (the server's joins of a tick): prompts of different lengths are left-padded to the longest
        (masked; each row's positions count its own tokens), so each row gets what it gets alone (up to the
        float rounding of a batched forward). Same as :meth:`add` of each in turn; no kept caches here."""
        reqs = []
        for ids, s in prompts:
            s.check(vocab_size(self.model), ids.shape[0])
            if s.keep_cache:
                raise ValueError("add_many: keep_cache requests are added one at a time (add)")
            reqs.append(Request(ids, s))
        live = [(ids, req) for (ids, _), req in zip(prompts, reqs) if not req.finished]
        if not live:
            return reqs
        t = max(ids.shape[1] for ids, _ in live)
        rows = [torch.nn.functional.pad(ids, (t - ids.shape[1], 0)) for ids, _ in live]  # (B_r, t) each
        mask = torch.cat([torch.nn.functional.pad(torch.ones_like(ids), (t - ids.shape[1], 0)) for ids, _ in live])
        need = max(t + req.s.max_new_tokens - 1 for _, req in live)
        cache, logits = self.prefill(torch.cat(rows), need, attention_mask=None if bool(mask.all()) else mask)
        self._join([req for _, req in live], cache, logits)
        return reqs

    def _join(self, reqs: list[Request], cache, logits: torch.Tensor) -> None:
        """The rows of ``cache`` / ``logits (R, V)`` (the requests' rows, in order) join the session's: into
        free rows where they fit (:mod:`.rows`: in place, the native step stays bound), the rest appended."""
        n, rows = logits.shape[0], []
        if self.cache is None:
            self.cache, self.logits, rows = cache, logits, list(range(n))
        else:
            k = min(len(self.free), n) if self.free and reuse.placeable(self.cache, cache) else 0
            if k:
                rows, self.free = self.free[:k], self.free[k:]
                reuse.place(self.cache, cache, list(range(k)), rows)
                self.logits[rows] = logits[:k]
            if k < n:
                if k:
                    cache.select(torch.arange(k, n, device=logits.device))
                b = self.logits.shape[0]
                self.cache.extend(cache)
                self.logits = torch.cat([self.logits, logits[k:]])
                rows += list(range(b, b + n - k))
                self._step = None  # the rows changed: the native step binds again
        for req in reqs:
            req.rows, rows = rows[:req.batch], rows[req.batch:]
        self.requests.extend(reqs)

    @torch.inference_mode()
    def prefill(self, input_ids: torch.Tensor, need: int, *, attention_mask: torch.Tensor | None = None,
                cache=None) -> tuple:
        """``input_ids (B, T)`` through the model once, into a new cache that can grow to ``need`` slots, or after
        what ``cache`` holds: ``(cache, logits (B, V) of the next token)``. The session's rows are not touched.
        After a filled cache, ``attention_mask (B, T)`` marks left pads of the new tokens: they sit between the
        cached slots and each row's tokens, masked, and the tokens take each row's next positions (exact where
        the model reads positions, not slot distances: :func:`.decode.generate` checks it)."""
        b, t = input_ids.shape
        if cache is None:
            cache = self.model.new_cache(b, min(t + kv_cache.CHUNK, need), limit=need)
        else:
            if cache.limit is not None:
                cache.limit = max(cache.limit, cache.pos + need)
            cache.reserve(t)
            if cache.pos and (cache.key_mask is not None or attention_mask is not None):
                held = cache.key_mask[:, :cache.pos] if cache.key_mask is not None else input_ids.new_ones(b, cache.pos)
                new = attention_mask[:, -t:] if attention_mask is not None else input_ids.new_ones(b, t)
                attention_mask = torch.cat([held.to(new), new], dim=1)  # (B, pos + T): what is held, then the new
        logits = native_prefill.prefill_if_supported(self.model, cache, input_ids, attention_mask) \
            if self.native else None  # packed GEMMs (native/prefill.py), None where it does not apply
        if logits is None:  # the PyTorch path (the reference the native prefill is held equal to)
            h = self.model.hidden_states(input_ids, attention_mask=attention_mask, cache=cache)  # (B, T, D)
            logits = self.model.head(h[:, -1])  # only the last position's logits are needed
        if attention_mask is not None and (cache.key_mask is None or not bool(attention_mask.all())):
            cache.set_key_mask(attention_mask)  # the padding, in slot coordinates from here on
        return cache, logits

    def step(self) -> list[Request]:
        """One token for every live row; returns the requests that finished (they leave the session).
        It is :meth:`choose_tokens` then :meth:`feed_tokens` (a streaming front end shows the tokens between)."""
        if not torch.is_inference_mode_enabled():  # (entering it costs as much as a small model's step)
            with torch.inference_mode():
                return self.step()
        self.choose_tokens()
        return self.feed_tokens()

    def choose_tokens(self) -> None:
        """The first half of a step: a token for every live row, recorded in its request (``output``, ``done``,
        ``finished``; streamers called). Nothing goes through the model yet."""
        if not torch.is_inference_mode_enabled():  # the requests' buffers are inference tensors
            with torch.inference_mode():
                return self.choose_tokens()
        if len(self.requests) == 1 and not self.free:  # (its rows are all the rows, in order)
            self._chosen = [self.requests[0].choose(self.logits, self.choose)]
            return
        best = None  # (R,): every row's argmax, one pass for all the greedy requests (the server's batch)
        if self.choose is choose_next and sum(req.greedy for req in self.requests) > 1:
            best = argmax(self.logits)
        self._chosen = [req.record(self.rows_of(best, req)) if best is not None and req.greedy
                        else req.choose(self.rows_of(self.logits, req), self.choose) for req in self.requests]

    def rows_of(self, x: torch.Tensor, req: Request) -> torch.Tensor:
        """``req``'s rows of a per-row ``x (R, …)`` (the logits: ``(B_r, V)``); a view where they are consecutive."""
        r = req.rows
        return x[r[0]:r[-1] + 1] if r[-1] - r[0] == len(r) - 1 else x[r]

    def feed_tokens(self) -> list[Request]:
        """The second half: finished requests leave (their rows free for a request that joins before the next
        step; else dropped then), the chosen tokens of the others go through the model in one forward; returns
        the requests that finished."""
        if not torch.is_inference_mode_enabled():
            with torch.inference_mode():
                return self.feed_tokens()
        chosen, self._chosen = self._chosen, None
        if len(self.requests) == 1 and not self.free and not self.requests[0].s.keep_cache:  # generate's loop
            req = self.requests[0]
            if req.finished:
                self.requests, self.cache, self.logits, self._step = [], None, None, None
                return [req]
            self.logits = self.feed(chosen[0])
            return []
        ended = [req for req in self.requests if req.finished]
        fed = [(req, c) for req, c in zip(self.requests, chosen) if not req.finished or req.s.keep_cache]
        stale = bool(self.free)  # rows left before this step that no joining request took
        for req in ended:
            if not req.s.keep_cache:
                self._release(req)
        self.requests = [req for req, _ in fed]
        if not self.requests:
            self.cache, self.logits, self.free, self._step = None, None, [], None
            return ended
        if stale or not reuse.reusable(self.cache):
            self._compact()
        tokens = torch.zeros(self.logits.shape[0], dtype=chosen[0].dtype, device=chosen[0].device)  # free rows: 0
        for req, c in fed:
            tokens[req.rows] = c
        self.logits = self.feed(tokens)
        if any(req.finished for req, _ in fed):  # kept caches: their rows leave after the forward
            self._detach([req for req, _ in fed if req.finished])
        self.requests = [req for req in self.requests if not req.finished]
        return ended

    @torch.inference_mode()
    def cancel(self, request: Request) -> None:
        """Drop a live request's rows now (its client went away), between steps or between the halves of one:
        they are free for a request that joins before the next forward, else dropped then; its output so far
        stays, ``finished`` turns True, no cache is kept."""
        index = next((i for i, r in enumerate(self.requests) if r is request), None)
        if index is None:
            return
        self._release(request)
        if self._chosen is not None:
            del self._chosen[index]
        del self.requests[index]
        request.finished = True
        if not self.requests:
            self.cache, self.logits, self.free, self._step = None, None, [], None

    def run(self) -> None:
        """Step until every request has finished."""
        while self.requests:
            self.step()

    def feed(self, tokens: torch.Tensor) -> torch.Tensor:
        """One token per row of ``self.cache`` ``(R,)`` through the model -> next logits ``(R, V)`` (beam search
        drives the session's cache through this and ``cache.reorder``)."""
        cache = self.cache
        cache.reserve(1)  # grow, or compact a sliding window
        if self.native:
            if self._step is None:
                self._step = self.native_step(self.model, cache, tokens.shape[0])
            return self._step(tokens, cache.row_pos, cache.key_mask)
        mask = cache.key_mask[:, :cache.pos + 1] if cache.key_mask is not None else None
        h = self.model.hidden_states(tokens[:, None], attention_mask=mask, cache=cache)
        return self.model.head(h[:, -1])

    def _select(self, rows: list[int]) -> None:
        """Keep these rows of the cache and logits; then drop the front slots that are padding in every row."""
        index = torch.tensor(rows, dtype=torch.long, device=self.logits.device)
        self._step = None
        if not rows:
            self.cache, self.logits = None, None
            return
        self.cache.select(index)
        self.logits = self.logits.index_select(0, index)
        km = self.cache.key_mask
        if km is not None and hasattr(self.cache, "keep"):
            first = int(km[:, :self.cache.pos].any(0).long().argmax())
            if first > 0:
                self.cache.keep(torch.arange(first, self.cache.pos))

    def _release(self, req: Request) -> None:
        """``req``'s rows become free: fed a 0 token (their output never read) until taken or dropped."""
        self.free = sorted(self.free + req.rows)
        if reuse.reusable(self.cache):
            self.cache.row_pos[req.rows] = 0  # (a learned position table never runs out under a free row)

    def _compact(self) -> None:
        """Drop the free rows (:meth:`_select` of the owned ones); each request's rows renumbered."""
        owned = sorted(r for req in self.requests for r in req.rows)
        rank = {r: i for i, r in enumerate(owned)}
        self._select(owned)
        for req in self.requests:
            req.rows = [rank[r] for r in req.rows]
        self.free = []

    def _detach(self, reqs: list[Request]) -> None:
        """Give each finished request (of those just fed) its rows of the cache; they leave (free)."""
        if len(reqs) == 1 and len(self.requests) == 1 and not self.free:  # the only rows: the cache itself
            reqs[0].cache, self.cache, self.logits, self._step = self.cache, None, None, None
            return
        for req in reqs:
            req.cache = copy.deepcopy(self.cache)
            req.cache.select(torch.tensor(req.rows, dtype=torch.long))
            self._release(req)
        if len(self.free) == self.logits.shape[0]:
            self.cache, self.logits, self.free, self._step = None, None, [], None
