"""benchmarks/bench_serve.py's ``ttft_beside`` sends the new request only once every background stream has
its first token (a fake ``openai`` client, no server: the order of events is fixed, no clock involved)."""
from __future__ import annotations

import asyncio
import importlib.util
import sys
from pathlib import Path
from types import ModuleType, SimpleNamespace

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_serve.py"


def _bench():
    spec = importlib.util.spec_from_file_location("bench_serve_under_test", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class _Tokenizer:
    def encode(self, text):
        return SimpleNamespace(ids=list(range(len(text))))


def _fake_openai(started: list[int], snapshots: list[set]):
    """Background streams (prompt length != 8 new tokens) come in order: stream 0 sends 20 tokens before any other
    stream sends its first (as when later requests still queue for prefill); the measured request (max_tokens
    8) records which background streams had started when it was sent."""
    first_done = asyncio.Event()

    def chunk(text):
        return SimpleNamespace(choices=[SimpleNamespace(text=text)], usage=None)

    async def stream(index):
        if index > 0:
            await first_done.wait()
        started.append(index)
        for _ in range(20 if index == 0 else 1):
            yield chunk("x")
            await asyncio.sleep(0)
        if index == 0:
            first_done.set()

    class Completions:
        count = 0

        async def create(self, *, max_tokens, **kw):
            if max_tokens == 8:  # the measured request
                snapshots.append(set(started))
                return _one()
            Completions.count += 1
            return stream(Completions.count - 1)

    async def _one():
        yield chunk("y")

    class Client:
        def __init__(self, **kw):
            self.completions = Completions()

        async def close(self):
            pass
    module = ModuleType("openai")
    module.AsyncOpenAI = Client
    return module


def test_ttft_beside_waits_for_every_streams_first_token(monkeypatch):
    bench = _bench()
    started, snapshots = [], []
    monkeypatch.setitem(sys.modules, "openai", _fake_openai(started, snapshots))
    asyncio.run(bench.ttft_beside("http://unused", _Tokenizer(), 4, 32, 3))
    assert snapshots == [{0, 1, 2}]  # (counting chunks sent it after stream 0's third token: {0})
