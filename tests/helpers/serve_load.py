"""The server's load check (issue 25, deliverable 3), shared by tests/serve/test_load.py (scaled for CI)
and benchmarks/serve_load.py (256 requests from 64 streaming clients on SmolLM2): every request streams
a completion through the official ``openai`` client, ``concurrency`` at a time; each text must equal the
greedy text of the same prompt generated alone, none may be lost, and the server's memory (RSS of this
process, sampled after every finished request) must stay flat."""
from __future__ import annotations

import asyncio
import os
import resource

import torch

import genmodels
from genmodels.generation.checks import check_token_ids
from genmodels.generation.stop import StopStream


def rss_mb() -> float:
    """This process's resident memory now (MiB; Linux /proc)."""
    with open(f"/proc/{os.getpid()}/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def alone(model, prompts: list[str], max_tokens: int) -> list[str]:
    """Each prompt's greedy completion by ``genmodels.generate``, one at a time (the text as the server cuts it)."""
    out, ends = [], set(check_token_ids("eos_token_id", model.config.eos_token_id, model.config.vocab_size))
    for prompt in prompts:
        ids = torch.tensor([model.tokenizer.encode(prompt).ids])
        new = genmodels.generate(model, ids, max_tokens, temperature=0.0)[0, ids.shape[1]:].tolist()
        cut = next((i for i, t in enumerate(new) if t in ends), len(new))
        stream = StopStream(model.tokenizer)
        text = "".join(stream.push(t) for t in new[:cut]) + stream.finish()
        out.append(text)
    return out


async def _stream_all(url: str, model: str, prompts: list[str], concurrency: int, max_tokens: int,
                      rss: list[float]) -> list[str | None]:
    import openai
    client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=600)
    gate = asyncio.Semaphore(concurrency)
    results: list[str | None] = [None] * len(prompts)

    async def one(i: int) -> None:
        async with gate:
            stream = await client.completions.create(model=model, prompt=prompts[i], max_tokens=max_tokens,
                                                     temperature=0, stream=True)
            pieces, finished = [], None
            async for chunk in stream:
                pieces.append(chunk.choices[0].text)
                finished = chunk.choices[0].finish_reason or finished
            results[i] = "".join(pieces) if finished in ("stop", "length") else None  # incomplete: lost
            rss.append(rss_mb())
    await asyncio.gather(*(one(i) for i in range(len(prompts))))
    await client.close()
    return results


def run_load(url: str, model: str, prompts: list[str], *, concurrency: int, max_tokens: int) -> tuple[list, list]:
    """Stream every prompt's completion, ``concurrency`` at a time: ``(texts (None = lost), rss samples MiB)``."""
    rss: list[float] = [rss_mb()]
    texts = asyncio.run(_stream_all(url, model, prompts, concurrency, max_tokens, rss))
    return texts, rss


def prompts_for(n: int, seed: int = 0) -> list[str]:
    """``n`` distinct short prompts of different lengths."""
    g = torch.Generator().manual_seed(seed)
    words = ["the", "cat", "sat", "on", "a", "mat", "and", "then", "it", "ran", "far", "away", "Paris", "is",
             "big", "when", "we", "go", "home", "now"]
    out = []
    for i in range(n):
        k = 2 + int(torch.randint(0, 12, (1,), generator=g))
        out.append(f"{i}: " + " ".join(words[int(j)] for j in torch.randint(0, len(words), (k,), generator=g)))
    return out
