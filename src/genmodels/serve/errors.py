"""The server's refusals, as OpenAI's API words them: an HTTP status and the body
``{"error": {"message", "type", "param", "code"}}``, ``param`` naming the field at fault.

Every failure a client can cause is an :class:`APIError` (400 bad input, 401 no key, 404 unknown
model or path, 429 queue full); anything else is a bug, answered 500 with a one-line body (the
traceback goes to the server's log, never to the client).
"""
from __future__ import annotations

from typing import Any

TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
         405: "invalid_request_error", 429: "rate_limit_error", 500: "server_error", 503: "server_error"}


class APIError(Exception):
    """A refusal: ``status`` (HTTP), ``message`` (one line), ``param`` (the request field), ``code``."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code

    def body(self) -> dict[str, Any]:
        return error_body(self.status, self.message, self.param, self.code)


def error_body(status: int, message: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    """OpenAI's error object for ``status``."""
    return {"error": {"message": message, "type": TYPES.get(status, "invalid_request_error"),
                      "param": param, "code": code}}


def bad(message: str, param: str | None, code: str | None = None) -> APIError:
    """A 400 naming ``param``."""
    return APIError(400, message, param, code)


def from_value_error(e: ValueError, param: str | None = None, prefix: str = "") -> APIError:
    """A library refusal (``name=value must …``) as a 400; ``param``: the field it concerns (default: the
    name before ``=``, with ``prefix`` for nested fields)."""
    message = " ".join(str(e).split())
    if param is None:
        name = message.split("=", 1)[0]
        param = prefix + name if name.isidentifier() else None
    return bad(message, param)
