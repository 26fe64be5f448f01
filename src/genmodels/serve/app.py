"""The HTTP side: a Starlette app speaking OpenAI's API over one loaded model.

    GET  /health  /v1/models  /  (the playground)
    POST /v1/completions  /v1/chat/completions  (text models; the batching engine, :mod:`.engine`)
    POST /v1/embeddings                          (encoder models; :func:`genmodels.embed`)

Streams (``stream: true``) are server-sent events, one chunk per piece of text, ``data: [DONE]`` last;
a failure after the stream began is one ``data: {"error": …}`` event before ``[DONE]``. A client that
disconnects (a stream closed, or a plain request abandoned) cancels its request, which frees its rows.
With ``api_key`` every request but the playground page needs ``Authorization: Bearer <key>`` (401).
"""
from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import sys
import threading
import traceback
from pathlib import Path
from typing import Any

import torch
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, StreamingResponse
from starlette.routing import Route

from ..chat import Conversation
from ..generation.checks import check_token_ids, vocab_size
from ..registry import EMBEDS, GENERATES, SEQ2SEQ, capabilities
from . import protocol, responses
from .engine import Engine
from .errors import APIError, bad, error_body

PLAYGROUND = Path(__file__).with_name("playground.html")


class Service:
    """The model and what serves it: the engine (text models) or a lock around :func:`genmodels.embed`."""

    def __init__(self, model: torch.nn.Module, name: str, *, max_batch: int = 16, max_queue: int = 256,
                 prefill_chunk: int = 256):
        self.model, self.name, self.max_batch = model, name, max_batch
        caps = capabilities(model)
        self.embeds = EMBEDS in caps
        self.generates = GENERATES in caps and SEQ2SEQ not in caps
        self.tokenizer = getattr(model, "tokenizer", None)
        if (self.embeds or self.generates) and self.tokenizer is None:
            raise ValueError("genmodels serve: the model has no tokenizer (tokenizer.json, or a GGUF file's "
                             "tokenizer metadata), so requests' text cannot be encoded")
        if not (self.embeds or self.generates):
            raise ValueError(f"genmodels serve needs a decoder-only text model or a sentence encoder; this one is "
                             f"family={getattr(model, 'family', None)!r}")
        self.context = model.config.max_seq_len
        self.engine = self.chat = None
        self.embed_lock = threading.Lock()
        if self.generates:
            self.chat = Conversation(model, max_new_tokens=1)  # the template, its stop strings, the end tokens
            ends = tuple(check_token_ids("eos_token_id", model.config.eos_token_id, vocab_size(model)))
            self.engine = Engine(model.eval(), ends=ends, max_batch=max_batch, max_queue=max_queue,
                                 prefill_chunk=prefill_chunk)

    def info(self) -> dict:
        cfg = self.model.config
        return {"id": self.name, "object": "model", "created": 0, "owned_by": "genmodels",
                "family": getattr(self.model, "family", None), "context": self.context,
                "d_model": cfg.d_model, "n_layers": cfg.n_layers, "vocab_size": cfg.vocab_size,
                "endpoints": (["/v1/completions", "/v1/chat/completions"] if self.generates else []) +
                             (["/v1/embeddings"] if self.embeds else [])}

    def close(self) -> None:
        if self.engine is not None:
            self.engine.close()


async def _json(request: Request, fields: set[str], service: Service) -> dict:
    raw = await request.body()
    try:
        body = json.loads(raw)
    except ValueError as e:
        raise bad(f"We could not parse the JSON body of your request ({e})", None, "invalid_json") from None
    body = protocol.check_body(body, fields)
    protocol.check_model(body, service.name)
    return body


def _needs(service: Service, generates: bool, path: str) -> None:
    if generates and not service.generates:
        raise APIError(404, f"{path}: the model {service.name!r} does not generate text (it embeds sentences: "
                       "use /v1/embeddings)", "model", "model_not_supported")
    if not generates and not service.embeds:
        raise APIError(404, f"{path}: the model {service.name!r} does not embed sentences (it generates text: use "
                       "/v1/completions or /v1/chat/completions)", "model", "model_not_supported")


async def completions(request: Request) -> Any:
    service: Service = request.app.state.service
    _needs(service, True, "/v1/completions")
    body = await _json(request, protocol.COMPLETION_FIELDS, service)
    ids = protocol.prompt_ids(body, service.tokenizer, vocab_size(service.model))
    return await _generate(request, protocol.sampling_params(body, False, ids, service.context, service.max_batch))


async def chat_completions(request: Request) -> Any:
    service: Service = request.app.state.service
    _needs(service, True, "/v1/chat/completions")
    body = await _json(request, protocol.CHAT_FIELDS, service)
    messages = protocol.chat_messages(body)
    try:
        ids = service.chat.encode(messages)
    except ValueError as e:  # the template refused them
        raise bad(" ".join(str(e).split()), "messages") from None
    params = protocol.sampling_params(body, True, ids, service.context, service.max_batch)
    params.stop += tuple(s for s in service.chat.stop if s not in params.stop)  # the plain template's turn end
    return await _generate(request, params)


class Mailbox:
    """The engine thread's events to the request queues of one event loop, in order. The first event of a burst
    schedules one callback on the loop (``call_soon_threadsafe``: a wake-up); the rest of the burst rides with it,
    so a decode step's tokens for every stream of the batch cost the loop one wake-up, not one a stream."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop, self.lock = loop, threading.Lock()
        self.pending: list[tuple[asyncio.Queue, tuple]] = []

    def post(self, queue: asyncio.Queue, event: tuple) -> None:
        """(Any thread.) RuntimeError once the loop is closed: the engine then cancels the request."""
        if self.loop.is_closed():
            raise RuntimeError("the event loop is closed")
        with self.lock:
            self.pending.append((queue, event))
            first = len(self.pending) == 1
        if first:
            self.loop.call_soon_threadsafe(self._deliver)

    def _deliver(self) -> None:
        with self.lock:
            batch, self.pending = self.pending, []
        for queue, event in batch:
            queue.put_nowait(event)


def _mailbox(state, loop: asyncio.AbstractEventLoop) -> Mailbox:
    box = getattr(state, "mailbox", None)
    if box is None or box.loop is not loop:  # (one per loop: a new loop, e.g. the app served again, a new box)
        box = state.mailbox = Mailbox(loop)
    return box


async def _generate(request: Request, params: protocol.GenParams) -> Any:
    service: Service = request.app.state.service
    box, events = _mailbox(request.app.state, asyncio.get_running_loop()), asyncio.Queue()
    job = service.engine.submit(params, lambda ev: box.post(events, ev))
    rid = responses.new_id(params.chat)
    if params.stream:
        return StreamingResponse(_stream(service, job, events, rid), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache"})
    choices = responses.Choices(params.n, params.chat)
    watch = asyncio.ensure_future(_disconnected(request))
    try:
        while True:
            get = asyncio.ensure_future(events.get())
            await asyncio.wait({get, watch}, return_when=asyncio.FIRST_COMPLETED)
            if not get.done():
                get.cancel()
                return JSONResponse(error_body(400, "the client disconnected"), status_code=400)
            event = get.result()
            if event[0] == "error":
                raise event[1]
            if event[0] == "end":
                return JSONResponse(choices.body(rid, service.name, event[1], params.logprobs is not None))
            choices.add(event)
    finally:
        watch.cancel()
        service.engine.cancel(job)  # a no-op once it ended


async def _disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _stream(service: Service, job, events: asyncio.Queue, rid: str):
    """The SSE body; closing it early (the client left) cancels the request."""
    p, name = job.params, service.name
    choices = responses.Choices(p.n, p.chat)
    offsets = [0] * p.n
    try:
        if p.chat:
            for row in range(p.n):
                yield responses.sse(responses.chunk(rid, name, True, row, role=True))
        while True:
            event = await events.get()
            kind = event[0]
            if kind == "delta":
                _, row, piece, entry = event
                lp = choices.logprob_body(row, [entry], offsets[row]) if entry is not None else None
                offsets[row] += len(entry["token"]) if entry is not None else 0
                if piece or lp is not None:
                    yield responses.sse(responses.chunk(rid, name, p.chat, row, text=piece, logprobs=lp))
            elif kind == "finish":
                yield responses.sse(responses.chunk(rid, name, p.chat, event[1], finish=event[2]))
            elif kind == "end":
                if p.include_usage:
                    yield responses.sse(responses.usage_chunk(rid, name, p.chat, event[1]))
                break
            else:
                yield responses.sse(event[1].body())
                break
        yield responses.sse("[DONE]")
    finally:
        service.engine.cancel(job)  # a no-op once it ended


async def embeddings(request: Request) -> Any:
    from ..embed import embed
    service: Service = request.app.state.service
    _needs(service, False, "/v1/embeddings")
    body = await _json(request, protocol.EMBEDDING_FIELDS, service)
    texts = protocol.embedding_input(body)

    def run():
        with service.embed_lock:
            vectors = embed(service.model, texts)
            used = sum(len(e.ids) for e in service.tokenizer.encode_batch(texts))  # as truncated by embed
        return vectors, used
    try:
        vectors, used = await asyncio.get_running_loop().run_in_executor(None, run)
    except ValueError as e:
        raise bad(" ".join(str(e).split()), "input") from None
    return JSONResponse(responses.embeddings_body(vectors, service.name, body.get("encoding_format"), used))


async def models(request: Request) -> Any:
    return JSONResponse({"object": "list", "data": [request.app.state.service.info()]})


async def health(request: Request) -> Any:
    return JSONResponse({"status": "ok"})


async def playground(request: Request) -> Any:
    return HTMLResponse(PLAYGROUND.read_text(encoding="utf-8"))


async def _api_error(request: Request, exc: Exception) -> JSONResponse:
    if isinstance(exc, APIError):
        return JSONResponse(exc.body(), status_code=exc.status)
    if isinstance(exc, HTTPException):
        status = exc.status_code
        what = "no such path" if status == 404 else ("method not allowed" if status == 405 else exc.detail)
        return JSONResponse(error_body(status, f"{request.method} {request.url.path}: {what}"), status_code=status)
    traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)  # a bug: logged, never sent
    return JSONResponse(error_body(500, "internal server error (see the server's log)", None, "internal_error"),
                        status_code=500)


class KeyCheck:
    """ASGI middleware: with an API key, every HTTP request but ``GET /`` needs ``Authorization: Bearer <key>``."""

    def __init__(self, app, key: str):
        self.app, self.key = app, key.encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and not (scope["path"] == "/" and scope["method"] == "GET"):
            header = dict(scope.get("headers") or []).get(b"authorization", b"")
            if not (header.startswith(b"Bearer ") and hmac.compare_digest(header[7:].strip(), self.key)):
                body = error_body(401, "Incorrect or missing API key: send Authorization: Bearer <key>", None,
                                  "invalid_api_key")
                await JSONResponse(body, status_code=401)(scope, receive, send)
                return
        await self.app(scope, receive, send)


def build_app(service: Service, api_key: str | None = None):
    """The ASGI app over ``service``; the engine stops when the app's lifespan ends."""
    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        service.close()

    routes = [Route("/", playground), Route("/health", health), Route("/v1/models", models),
              Route("/v1/completions", completions, methods=["POST"]),
              Route("/v1/chat/completions", chat_completions, methods=["POST"]),
              Route("/v1/embeddings", embeddings, methods=["POST"])]
    app = Starlette(routes=routes, lifespan=lifespan,
                    exception_handlers={Exception: _api_error, APIError: _api_error, HTTPException: _api_error})
    app.state.service = service
    return KeyCheck(app, api_key) if api_key else app
