"""Raw HTTP for the serve tests (what a client library would never send: malformed JSON, no key)."""
from __future__ import annotations

import json
import urllib.error
import urllib.request


class Reply:
    def __init__(self, status: int, text: str):
        self.status_code, self.text = status, text

    def json(self):
        return json.loads(self.text)


def call(method: str, url: str, body=None, *, raw: bytes | None = None, headers: dict | None = None) -> Reply:
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return Reply(r.status, r.read().decode())
    except urllib.error.HTTPError as e:
        return Reply(e.code, e.read().decode())


def post(url: str, body=None, **kw) -> Reply:
    return call("POST", url, body, **kw)


def get(url: str, **kw) -> Reply:
    return call("GET", url, **kw)
