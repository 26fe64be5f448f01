"""The JSON the server answers with, in OpenAI's shapes: whole completions (``text_completion``,
``chat.completion``), stream chunks (``text_completion`` pieces, ``chat.completion.chunk``), logprobs
(completions: ``tokens`` / ``token_logprobs`` / ``top_logprobs`` / ``text_offset``; chat:
``content: [{token, logprob, bytes, top_logprobs}]``) and embeddings."""
from __future__ import annotations

import base64
import json
import time
import uuid
from typing import Any

import torch


def new_id(chat: bool) -> str:
    return ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]


def sse(data: Any) -> str:
    """One server-sent event (``[DONE]`` as is, anything else as JSON)."""
    return f"data: {data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)}\n\n"


class Choices:
    """What each row (choice) produced so far: text, finish reason, logprob entries (engine events)."""

    def __init__(self, n: int, chat: bool):
        self.chat = chat
        self.text = [""] * n
        self.finish: list[str | None] = [None] * n
        self.logprobs: list[list[dict]] = [[] for _ in range(n)]

    def add(self, event: tuple) -> None:
        if event[0] == "delta":
            _, row, piece, entry = event
            self.text[row] += piece
            if entry is not None:
                self.logprobs[row].append(entry)
        elif event[0] == "finish":
            self.finish[event[1]] = event[2]

    def logprob_body(self, row: int, entries: list[dict], offset: int = 0) -> dict | None:
        """The ``logprobs`` object of ``entries`` (None when the request asked for none)."""
        if not entries:
            return None
        if self.chat:
            return {"content": [_chat_logprob(e) for e in entries]}
        offsets, at = [], offset
        for e in entries:
            offsets.append(at)
            at += len(e["token"])
        return {"tokens": [e["token"] for e in entries], "token_logprobs": [e["logprob"] for e in entries],
                "top_logprobs": [dict(e["top"]) for e in entries], "text_offset": offsets}

    def body(self, rid: str, model: str, usage: dict, wants_logprobs: bool) -> dict:
        """The whole (non-streamed) answer."""
        choices = []
        for i, text in enumerate(self.text):
            lp = self.logprob_body(i, self.logprobs[i]) if wants_logprobs else None
            if wants_logprobs and lp is None:
                lp = {"content": []} if self.chat else {"tokens": [], "token_logprobs": [], "top_logprobs": [],
                                                        "text_offset": []}
            choice = {"index": i, "logprobs": lp, "finish_reason": self.finish[i]}
            if self.chat:
                choice["message"] = {"role": "assistant", "content": text}
            else:
                choice["text"] = text
            choices.append(choice)
        return {"id": rid, "object": "chat.completion" if self.chat else "text_completion", "created": int(time.time()),
                "model": model, "choices": choices, "usage": usage}


def _chat_logprob(e: dict) -> dict:
    def one(token: str, logprob: float) -> dict:
        return {"token": token, "logprob": logprob, "bytes": list(token.encode("utf-8"))}
    return {**one(e["token"], e["logprob"]), "top_logprobs": [one(t, v) for t, v in e["top"]]}


def chunk(rid: str, model: str, chat: bool, row: int, *, text: str | None = None, role: bool = False,
          finish: str | None = None, logprobs: dict | None = None) -> dict:
    """One stream chunk for one choice."""
    if chat:
        delta: dict[str, Any] = {"role": "assistant", "content": ""} if role else {}
        if text:
            delta["content"] = text
        choice = {"index": row, "delta": delta, "logprobs": logprobs, "finish_reason": finish}
        kind = "chat.completion.chunk"
    else:
        choice = {"index": row, "text": text or "", "logprobs": logprobs, "finish_reason": finish}
        kind = "text_completion"
    return {"id": rid, "object": kind, "created": int(time.time()), "model": model, "choices": [choice]}


def usage_chunk(rid: str, model: str, chat: bool, usage: dict) -> dict:
    """The last chunk of ``stream_options.include_usage``: no choices, the usage."""
    return {"id": rid, "object": "chat.completion.chunk" if chat else "text_completion", "created": int(time.time()),
            "model": model, "choices": [], "usage": usage}


def embeddings_body(vectors: torch.Tensor, model: str, fmt: str | None, prompt_tokens: int) -> dict:
    """``vectors (N, D)`` as OpenAI's embeddings list (``base64``: little-endian float32 bytes)."""
    data = []
    for i, v in enumerate(vectors.float().cpu()):
        if fmt == "base64":
            value: Any = base64.b64encode(v.numpy().astype("<f4").tobytes()).decode("ascii")
        else:
            value = v.tolist()
        data.append({"object": "embedding", "index": i, "embedding": value})
    return {"object": "list", "data": data, "model": model,
            "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens}}
