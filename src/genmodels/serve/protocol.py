"""Request bodies of the OpenAI API, checked field by field into :class:`GenParams` (what the engine
runs) or an embeddings call. Every refusal is an :class:`~.errors.APIError` naming the field; a field
this server does not know or cannot honour is refused, never ignored (``user`` is metadata).

Sampling: ``temperature`` (default 1; 0 = greedy), ``top_p``, ``max_tokens`` (completions: 16; chat:
what the context leaves), ``stop`` (strings, not part of the text), ``seed`` (a generator of its own
per request), ``n`` (choices, rows of one request), ``logprobs`` (completions: an int 0–5 = that many
alternatives per token; chat: ``logprobs: true`` and ``top_logprobs`` 0–20), and two extras that vLLM
also takes: ``top_k`` and ``repetition_penalty``. ``presence_penalty``/``frequency_penalty`` only 0.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..generation.checks import check_count, check_real, check_seed
from ..generation.stop import check_stop
from .errors import APIError, bad, from_value_error

SAMPLING = {"model", "max_tokens", "temperature", "top_p", "top_k", "n", "stream", "stream_options", "stop",
            "seed", "logprobs", "presence_penalty", "frequency_penalty", "logit_bias", "user", "repetition_penalty"}
COMPLETION_FIELDS = SAMPLING | {"prompt", "echo", "suffix", "best_of"}
CHAT_FIELDS = SAMPLING | {"messages", "top_logprobs", "max_completion_tokens", "response_format"}
EMBEDDING_FIELDS = {"model", "input", "encoding_format", "dimensions", "user"}
MAX_N = 16


@dataclass
class GenParams:
    """One generation request, checked: ``ids`` the prompt's token ids; ``logprobs`` None (none), or how
    many alternatives per token (0: the chosen token's only)."""

    chat: bool
    ids: list[int]
    max_tokens: int
    n: int = 1
    temperature: float = 1.0
    top_p: float | None = None
    top_k: int | None = None
    repetition_penalty: float | None = None
    seed: int | None = None
    stop: tuple[str, ...] = ()
    logprobs: int | None = None
    stream: bool = False
    include_usage: bool = False


def check_body(body: Any, fields: set[str]) -> dict:
    """A JSON object holding only known fields."""
    if not isinstance(body, dict):
        raise bad(f"the request body must be a JSON object, got {type(body).__name__}", None)
    unknown = sorted(set(body) - fields)
    if unknown:
        raise bad(f"unknown field {unknown[0]!r}; this endpoint takes {', '.join(sorted(fields))}", unknown[0])
    return body


def check_model(body: dict, served: str) -> None:
    """``model`` (optional here) must name the served model: 404 otherwise, as OpenAI answers."""
    name = body.get("model")
    if name is not None and name != served:
        raise APIError(404, f"The model {name!r} does not exist; this server serves {served!r}", "model",
                       "model_not_found")


def _field(body: dict, name: str, check, *args, **kw):
    """``check(name, value, …)`` on a present, non-null field, its ValueError a 400 naming it."""
    value = body.get(name)
    if value is None:
        return None
    try:
        return check(name, value, *args, **kw)
    except ValueError as e:
        raise from_value_error(e, name) from None


def _bool(name: str, value) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{name}={value!r} must be true or false")
    return value


def _refuse_unsupported(body: dict) -> None:
    """Fields whose only honoured value is their neutral one."""
    for name in ("presence_penalty", "frequency_penalty"):
        if body.get(name) not in (None, 0, 0.0):
            raise bad(f"{name}={body[name]!r} is not supported by this server; leave it out (or 0)", name)
    if body.get("logit_bias") not in (None, {}):
        raise bad("logit_bias is not supported by this server; leave it out", "logit_bias")
    if body.get("echo") not in (None, False):
        raise bad("echo=true is not supported by this server; leave it out", "echo")
    if body.get("suffix") is not None:
        raise bad("suffix is not supported by this server; leave it out", "suffix")
    if body.get("best_of") not in (None, body.get("n") or 1):
        raise bad(f"best_of={body['best_of']!r} is not supported by this server; leave it out (or equal to n)",
                  "best_of")
    fmt = body.get("response_format")
    if fmt is not None and fmt != {"type": "text"}:
        raise bad("response_format other than {\"type\": \"text\"} is not supported by this server", "response_format")


def sampling_params(body: dict, chat: bool, ids: list[int], context: int, max_batch: int) -> GenParams:
    """The sampling fields of a completions or chat body (``ids``: the prompt, already encoded; ``context``:
    the model's ``max_seq_len``)."""
    _refuse_unsupported(body)
    if len(ids) >= context:
        raise bad(f"the prompt is {len(ids)} tokens; this model's context is {context} tokens (prompt and "
                  "completion together): shorten it", "messages" if chat else "prompt", "context_length_exceeded")
    name = "max_completion_tokens" if chat and body.get("max_completion_tokens") is not None else "max_tokens"
    max_tokens = _field(body, name, check_count, 1)
    if max_tokens is None:
        max_tokens = context - len(ids) if chat else 16
    if len(ids) + max_tokens > context:
        raise bad(f"{name}={max_tokens} with a prompt of {len(ids)} tokens is over this model's context of {context} "
                  f"tokens: ask for at most {context - len(ids)}", name, "context_length_exceeded")
    n = _field(body, "n", check_count, 1) or 1
    if n > min(MAX_N, max_batch):
        raise bad(f"n={n} is more than this server runs in one request ({min(MAX_N, max_batch)})", "n")
    temperature = _field(body, "temperature", check_real, low=0.0, low_ok=True, high=2.0, high_ok=True,
                         what="in [0, 2] (0 = greedy)")
    p = GenParams(chat, list(ids), max_tokens, n, 1.0 if temperature is None else temperature,
                  _field(body, "top_p", check_real, low=0.0, low_ok=False, high=1.0, high_ok=True, what="in (0, 1]"),
                  _field(body, "top_k", check_count, 0) or None,
                  _field(body, "repetition_penalty", check_real, low=0.0, low_ok=False, what="> 0 (1 = none)"))
    if body.get("seed") is not None:
        try:
            check_seed(body["seed"])
        except ValueError as e:
            raise from_value_error(e, "seed") from None
        p.seed = body["seed"]
    try:
        p.stop = check_stop(body.get("stop"))
    except ValueError as e:
        raise from_value_error(e, "stop") from None
    p.stream = bool(_field(body, "stream", _bool))
    options = body.get("stream_options")
    if options is not None:
        if not p.stream or not isinstance(options, dict) or set(options) - {"include_usage"}:
            raise bad("stream_options must be {\"include_usage\": true|false}, with stream=true", "stream_options")
        p.include_usage = bool(_field(options, "include_usage", _bool))
    p.logprobs = _chat_logprobs(body) if chat else _field(body, "logprobs", _logprob_count, 5)
    return p


def _logprob_count(name: str, value, most: int) -> int:
    value = check_count(name, value, 0)
    if value > most:
        raise ValueError(f"{name}={value} must be an integer in [0, {most}]")
    return value


def _chat_logprobs(body: dict) -> int | None:
    """Chat's ``logprobs: true`` with ``top_logprobs`` (0–20) -> alternatives per token, or None."""
    top = _field(body, "top_logprobs", _logprob_count, 20)
    if not _field(body, "logprobs", _bool):
        if top is not None:
            raise bad("top_logprobs needs logprobs=true", "top_logprobs")
        return None
    return top or 0


def prompt_ids(body: dict, tokenizer, vocab: int) -> list[int]:
    """The completions ``prompt``: a string, token ids, or a list holding one of them."""
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
        prompt = prompt[0]
    if isinstance(prompt, str):
        ids = tokenizer.encode(prompt).ids
    elif isinstance(prompt, list) and prompt and all(isinstance(i, int) and not isinstance(i, bool) for i in prompt):
        bad_id = next((i for i in prompt if not 0 <= i < vocab), None)
        if bad_id is not None:
            raise bad(f"prompt holds token id {bad_id}; allowed are 0 <= id < {vocab}", "prompt")
        ids = list(prompt)
    else:
        raise bad("prompt must be a string or a list of token ids (one prompt per request)", "prompt")
    if not ids:
        raise bad("prompt encodes to no tokens; give a non-empty prompt", "prompt")
    return ids


def chat_messages(body: dict) -> list[dict]:
    """``messages``: a non-empty list of ``{"role", "content"}`` (content a string or text parts)."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise bad("messages must be a non-empty list of {\"role\": …, \"content\": …} objects", "messages")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise bad(f"messages[{i}] must be an object with a string \"role\"", f"messages[{i}].role")
        content = m.get("content")
        if isinstance(content, list):  # text parts
            if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
                       for p in content):
                raise bad(f"messages[{i}].content parts must all be {{\"type\": \"text\", \"text\": …}}",
                          f"messages[{i}].content")
            content = "".join(p["text"] for p in content)
        if not isinstance(content, str):
            raise bad(f"messages[{i}].content must be a string", f"messages[{i}].content")
        out.append({"role": m["role"], "content": content})
    return out


def embedding_input(body: dict) -> list[str]:
    """``input``: a string or a non-empty list of non-empty strings."""
    texts = body.get("input")
    if isinstance(texts, str):
        texts = [texts]
    if not isinstance(texts, list) or not texts or not all(isinstance(t, str) and t.strip() for t in texts):
        raise bad("input must be a non-empty string or a non-empty list of non-empty strings", "input")
    fmt = body.get("encoding_format")
    if fmt not in (None, "float", "base64"):
        raise bad(f"encoding_format={fmt!r} must be 'float' or 'base64'", "encoding_format")
    if body.get("dimensions") is not None:
        raise bad("dimensions is not supported by this server (the model's width is fixed); leave it out",
                  "dimensions")
    return texts
