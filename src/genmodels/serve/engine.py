"""Continuous batching: one engine thread owns a :class:`~genmodels.generation.session.DecodeSession`
and every request's rows in it.

Each turn of the engine's loop (a *tick*):

1. requests whose client went away leave: a waiting one is dropped, the one being prefilled loses its
   cache, a running one's rows leave the batch (:meth:`DecodeSession.cancel`) before the next forward;
2. **batched, chunked prefill**: the waiting requests, in arrival order while their rows fit under
   ``max_batch`` and the padded batch (rows x longest prompt) under ``prefill_chunk`` tokens, go through
   the model in ONE forward and join the running batch together (:meth:`DecodeSession.add_many`); a
   head request whose prompt alone is longer gets at most ``prefill_chunk`` tokens a tick (into a cache
   of its own, :meth:`DecodeSession.prefill`), its last chunk joining through :meth:`DecodeSession.add`.
   So running rows wait for at most one ``prefill_chunk`` of work between two of their tokens;
3. one decode step for every running row (:meth:`DecodeSession.step`: each request with its own
   temperature, top-p, stop strings, end tokens and ``torch.Generator``; the native step where
   :mod:`genmodels.native` supports the model). Finished requests leave the batch.

What a request produces goes back to its client as events through ``emit`` (called on the engine
thread; the app hands them to its event loop): ``("delta", row, text, logprob)``,
``("finish", row, reason)`` (``"stop"``: an end token or a stop string; ``"length"``: ``max_tokens``),
``("end", usage)`` once, or ``("error", APIError)``. A greedy request's tokens do not depend on the
rows beside it (each row keeps its own positions), up to the float rounding of batched kernels.
"""
from __future__ import annotations

import collections
import sys
import threading
import traceback
from typing import Any, Callable

import torch

from ..generation.session import DecodeSession, Request, Sampling
from ..generation.stop import StopStream
from .errors import APIError
from .protocol import GenParams


class Job:
    """One API request in the engine: its params, its rows' text streams and what they produced."""

    def __init__(self, params: GenParams, emit: Callable[[tuple], None], tokenizer: Any):
        self.params, self.emit, self.tokenizer = params, emit, tokenizer
        self.cancelled = False
        self.fed = 0                 # prompt tokens prefilled so far (per row)
        self.cache: Any = None       # the request's own cache while its prompt is prefilled in chunks
        self.request: Request | None = None
        self.streams = [StopStream(tokenizer, params.stop) for _ in range(params.n)]
        self.done = [False] * params.n
        self.counts = [0] * params.n  # completion tokens per row

    def cancel(self) -> None:
        """The client went away: the engine frees the request's rows at its next tick."""
        self.cancelled = True

    def usage(self) -> dict[str, int]:
        prompt, completion = len(self.params.ids), sum(self.counts)
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


class Engine:
    """The batching engine for a text model (see the module). ``ends``: the end-token ids;
    ``max_batch``: rows decoding together; ``max_queue``: requests waiting beyond them (more: 429);
    ``prefill_chunk``: prompt tokens per tick."""

    def __init__(self, model: torch.nn.Module, *, ends: tuple[int, ...], max_batch: int = 16, max_queue: int = 256,
                 prefill_chunk: int = 256):
        self.model, self.ends = model, tuple(ends)
        self.max_batch, self.max_queue, self.prefill_chunk = max_batch, max_queue, prefill_chunk
        self.tokenizer = model.tokenizer
        self.device = next(model.parameters()).device
        self.session = DecodeSession(model)
        self.waiting: collections.deque[Job] = collections.deque()
        self.prefilling: Job | None = None
        self.running: dict[int, Job] = {}  # id(request) -> job
        self.cond = threading.Condition()
        self.closed = False
        self.steps = 0  # decode steps run (tests read it)
        self.thread = threading.Thread(target=self._loop, name="genmodels-serve-engine", daemon=True)
        self.thread.start()

    # ---- the public side (any thread) ----------------------------------------------------------------
    def submit(self, params: GenParams, emit: Callable[[tuple], None]) -> Job:
        """Queue a request; 429 when ``max_queue`` requests already wait, 503 once closed."""
        job = Job(params, emit, self.tokenizer)
        with self.cond:
            if self.closed:
                raise APIError(503, "the server is shutting down", None, "shutting_down")
            if len(self.waiting) >= self.max_queue:
                raise APIError(429, f"the server's queue is full ({self.max_queue} requests waiting); retry later",
                               None, "queue_full")
            self.waiting.append(job)
            self.cond.notify()
        return job

    def cancel(self, job: Job) -> None:
        with self.cond:
            job.cancel()
            self.cond.notify()

    def rows(self) -> int:
        """Rows decoding now."""
        return sum(job.params.n for job in list(self.running.values()))  # (a copy: other threads ask too)

    def close(self) -> None:
        """Stop the loop; requests still queued or running get a 503."""
        with self.cond:
            self.closed = True
            self.cond.notify()
        self.thread.join()
        for job in self._all_jobs():
            _emit(job, ("error", APIError(503, "the server is shutting down", None, "shutting_down")))

    # ---- the engine thread -----------------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            with self.cond:
                while not (self.closed or self.waiting or self.prefilling or self.running):
                    self.cond.wait()
                if self.closed:
                    return
            try:
                with torch.inference_mode():  # the session's tensors are inference tensors
                    self._tick()
            except Exception:  # a bug: the requests in the batch are answered 500; the queue and the server go on
                traceback.print_exc(file=sys.stderr)
                failed = ([self.prefilling] if self.prefilling else []) + list(self.running.values())
                self.session = DecodeSession(self.model)
                self.prefilling, self.running = None, {}
                for job in failed:  # (after the reset: a client answered may send its next request at once)
                    _emit(job, ("error", APIError(500, "internal error while decoding (see the server's log)",
                                                  None, "internal_error")))

    def _all_jobs(self) -> list[Job]:
        return list(self.waiting) + ([self.prefilling] if self.prefilling else []) + list(self.running.values())

    def _tick(self) -> None:
        self._reap()
        self._prefill()
        if self.session.requests:
            finished = self.session.step()
            self.steps += 1
            for req in finished:
                job = self.running.pop(id(req))
                if not job.cancelled:
                    _emit(job, ("end", job.usage()))

    def _reap(self) -> None:
        """Drop the requests whose client went away (module, 1)."""
        with self.cond:
            gone = [job for job in self.waiting if job.cancelled]
            for job in gone:
                self.waiting.remove(job)
        if self.prefilling is not None and self.prefilling.cancelled:
            self.prefilling = None  # its cache goes with it
        for key, job in list(self.running.items()):
            if job.cancelled:  # its rows leave now: the next forward runs without them
                self.session.cancel(job.request)
                del self.running[key]

    def _prefill(self) -> None:
        """This tick's prefill (module, 2): one chunk of a long prompt, or every waiting request that fits."""
        if self.prefilling is None:
            with self.cond:
                batch = self._admit()
            if batch:
                reqs = self.session.add_many([(self._ids(job, len(job.params.ids)), self._sampling(job))
                                              for job in batch])
                for job, req in zip(batch, reqs):
                    self._joined(job, req)
                return
        job = self.prefilling
        if job is None:
            return
        p = job.params
        ids = self._ids(job, self.prefill_chunk)
        if job.fed + ids.shape[1] < len(p.ids):  # not the last chunk: into the request's own cache
            need = len(p.ids) - job.fed + p.max_tokens
            job.cache, _ = self.session.prefill(ids, need, cache=job.cache)
            job.fed += ids.shape[1]
            return
        self._joined(job, self.session.add(ids, self._sampling(job), cache=job.cache))
        self.prefilling = None

    def _admit(self) -> list[Job]:
        """(Under the lock.) The waiting requests prefilled together this tick, in arrival order while their
        rows fit under ``max_batch`` and the padded batch (rows x longest prompt) under ``prefill_chunk``
        tokens; a head request whose prompt alone is longer becomes ``prefilling``, in chunks."""
        batch: list[Job] = []
        rows, longest = self.rows(), 0
        while self.waiting:
            p = self.waiting[0].params
            if rows + p.n > self.max_batch:
                break
            t = max(longest, len(p.ids))
            if (sum(j.params.n for j in batch) + p.n) * t > self.prefill_chunk:
                if not batch:  # too long for one tick: chunked, alone
                    self.prefilling = self.waiting.popleft()
                break
            batch.append(self.waiting.popleft())
            rows, longest = rows + p.n, t
        return batch

    def _ids(self, job: Job, most: int) -> torch.Tensor:
        """The next ``most`` (at most) prompt tokens of ``job``, one row per choice ``(n, t)``."""
        p = job.params
        return torch.tensor([p.ids[job.fed:job.fed + most]] * p.n, dtype=torch.long, device=self.device)

    def _sampling(self, job: Job) -> Sampling:
        p = job.params
        generator = torch.Generator(device=self.device).manual_seed(p.seed) if p.seed is not None else None
        return Sampling(p.max_tokens, p.temperature, p.top_k, p.top_p, p.repetition_penalty, self.ends,
                        generator=generator, stop=p.stop, tokenizer=self.tokenizer,
                        streamer=lambda tokens: self._tokens(job, tokens))

    def _joined(self, job: Job, request: Request) -> None:
        job.request, job.cache, job.fed = request, None, len(job.params.ids)
        self.running[id(request)] = job

    def _tokens(self, job: Job, tokens: torch.Tensor) -> None:
        """A request's new tokens ``(n,)``: text pieces, logprobs and finished rows to its client."""
        if job.cancelled:
            return
        p = job.params
        logprobs = None
        if p.logprobs is not None:  # the logits the tokens were chosen from: the session's rows of the job
            logits = self.session.rows_of(self.session.logits, job.request)
            logprobs = torch.log_softmax(logits.float(), dim=-1)  # (n, V)
        for row in range(p.n):
            if job.done[row]:
                continue
            token = int(tokens[row])
            job.counts[row] += 1
            if token in self.ends:  # the end token is not part of the text
                job.done[row] = True
                _emit(job, ("delta", row, job.streams[row].finish(), None))
                _emit(job, ("finish", row, "stop"))
                continue
            stream = job.streams[row]
            piece = stream.push(token)
            last = stream.stopped or job.counts[row] == p.max_tokens
            if last:
                piece += stream.finish()
            entry = None if logprobs is None else self._logprob(logprobs[row], token, p.logprobs)
            _emit(job, ("delta", row, piece, entry))
            if last:
                job.done[row] = True
                _emit(job, ("finish", row, "stop" if stream.stopped else "length"))

    def _logprob(self, logprobs: torch.Tensor, token: int, top: int) -> dict:
        """``{"token", "id", "logprob", "top": [(token text, logprob), …]}`` for one chosen token."""
        entry = {"token": self._text(token), "id": token, "logprob": float(logprobs[token]), "top": []}
        if top:
            values, index = logprobs.topk(top)
            entry["top"] = [(self._text(int(i)), float(v)) for v, i in zip(values, index)]
        return entry

    def _text(self, token: int) -> str:
        return self.tokenizer.decode([token], skip_special_tokens=False)


def _emit(job: Job, event: tuple) -> None:
    try:
        job.emit(event)
    except RuntimeError:  # the client's event loop is gone (the server is stopping)
        job.cancel()
