"""`genmodels serve` speed (issue 25, deliverable 6), FIRST VERSION: aggregate tokens/s, time to first
token (TTFT) and per-token latency (p50 / p95) with 1, 8 and 32 concurrent streams on SmolLM2-135M
(64-token prompts, 128 new tokens, greedy, streamed through the official ``openai`` client), against the
same requests sent one at a time; and the TTFT of a new request while 8 streams are already decoding,
against its TTFT on an idle server.

    .venv/bin/python benchmarks/bench_serve.py [--streams 1,8,32] [--prompt-tokens 64] [--new-tokens 128]

Targets (issue 25): 8 streams >= 4x one stream's aggregate tokens/s; TTFT beside 8 decoding streams <=
2x idle. Not yet here: the comparison with llama.cpp's own ``llama-server`` (built from the source
vendored in llama-cpp-python 0.3.36, parallel slots = streams).
"""
from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import genmodels  # noqa: E402
from common import cpu_name  # noqa: E402  (what the benchmarks share)
from genmodels.serve import ServerThread, Service, build_app  # noqa: E402

BUSY = 8  # streams decoding beside the new request whose TTFT is measured (a row left for it: max_batch > BUSY)


def prompt_of(tokenizer, n: int, i: int) -> list[int]:
    """Prompt ``i``: ``n`` token ids of a varied text (distinct per i, so nothing is shared)."""
    words = f"Request {i}: tell me about the history of the city number {i} and its rivers, " * 20
    return tokenizer.encode(words).ids[:n]


async def one_stream(client, ids: list[int], new: int) -> dict:
    """One streamed completion: send time, chunk arrival times, tokens."""
    t0 = time.perf_counter()
    stream = await client.completions.create(model="m", prompt=ids, max_tokens=new, temperature=0, stream=True,
                                             stream_options={"include_usage": True})
    times, tokens = [], 0
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].text:
            times.append(time.perf_counter())
        if chunk.usage is not None:
            tokens = chunk.usage.completion_tokens
    return {"t0": t0, "times": times, "tokens": tokens}


def summary(runs: list[dict], wall: float) -> dict:
    ttft = [r["times"][0] - r["t0"] for r in runs if r["times"]]
    gaps = [b - a for r in runs for a, b in zip(r["times"], r["times"][1:])]
    q = (lambda xs, p: statistics.quantiles(xs, n=100)[p - 1] if len(xs) > 1 else (xs[0] if xs else float("nan")))
    return {"tok_s": sum(r["tokens"] for r in runs) / wall, "ttft_p50": q(ttft, 50), "ttft_p95": q(ttft, 95),
            "tpot_p50": q(gaps, 50), "tpot_p95": q(gaps, 95)}


async def concurrent(url: str, prompts: list[list[int]], new: int, streams: int) -> dict:
    import openai
    client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=3600)
    gate = asyncio.Semaphore(streams)

    async def run(ids):
        async with gate:
            return await one_stream(client, ids, new)
    t = time.perf_counter()
    runs = await asyncio.gather(*(run(ids) for ids in prompts))
    out = summary(runs, time.perf_counter() - t)
    await client.close()
    return out


async def ttft_beside(url: str, tokenizer, n_prompt: int, new: int, busy: int) -> float:
    """TTFT of one request sent once ``busy`` streams are decoding (their first token seen)."""
    import openai
    client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=3600)
    started = asyncio.Event()
    first: set[int] = set()  # the background streams whose first token has come

    async def background(i):
        stream = await client.completions.create(model="m", prompt=prompt_of(tokenizer, n_prompt, 1000 + i),
                                                 max_tokens=new, temperature=0, stream=True)
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].text and i not in first:
                first.add(i)  # (counting chunks instead sent the new request while some streams still queued)
                if len(first) == busy:
                    started.set()
    tasks = [asyncio.ensure_future(background(i)) for i in range(busy)]
    await started.wait()
    r = await one_stream(client, prompt_of(tokenizer, n_prompt, 5000), 8)
    await asyncio.gather(*tasks)
    await client.close()
    return r["times"][0] - r["t0"]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--streams", default="1,8,32")
    p.add_argument("--prompt-tokens", type=int, default=64)
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--requests-per-stream", type=int, default=2)
    args = p.parse_args()
    from tests.parity.transformers.make_gguf_reference import smollm2_file
    model = genmodels.load(smollm2_file())
    counts = [int(s) for s in args.streams.split(",")]
    print(f"# genmodels serve on SmolLM2-135M-Instruct, {cpu_name()}; prompts {args.prompt_tokens} tokens, "
          f"{args.new_tokens} new, greedy")
    with ServerThread(build_app(Service(model, "m", max_batch=max(counts + [BUSY + 1])))) as server:
        tok = model.tokenizer
        asyncio.run(concurrent(server.url, [prompt_of(tok, args.prompt_tokens, -1)], 4, 1))  # warm-up
        print("| streams | requests | aggregate tok/s | TTFT p50 / p95 s | per-token p50 / p95 ms |")
        print("|---|---|---|---|---|")
        for n in counts:
            prompts = [prompt_of(tok, args.prompt_tokens, i) for i in range(n * args.requests_per_stream)]
            s = asyncio.run(concurrent(server.url, prompts, args.new_tokens, n))
            label = "1 (one at a time)" if n == 1 else str(n)
            print(f"| {label} | {len(prompts)} | {s['tok_s']:.1f} | {s['ttft_p50']:.3f} / {s['ttft_p95']:.3f} | "
                  f"{1000 * s['tpot_p50']:.1f} / {1000 * s['tpot_p95']:.1f} |", flush=True)
        alone = asyncio.run(concurrent(server.url, [prompt_of(tok, args.prompt_tokens, 5000)], 8, 1))["ttft_p50"]
        busy = asyncio.run(ttft_beside(server.url, tok, args.prompt_tokens, args.new_tokens, BUSY))
        print(f"TTFT of a new request: idle {alone:.3f} s; beside {BUSY} decoding streams {busy:.3f} s "
              f"({busy / alone:.2f}x; target <= 2x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
