"""`genmodels serve` speed (issue 25, deliverable 6): aggregate tokens/s, time to first token (TTFT) and
per-token latency (p50 / p95) with 1, 8 and 32 concurrent streams on SmolLM2-135M (64-token prompts, 128 new
tokens, greedy, streamed through the official ``openai`` client), against the same requests sent one at a time;
the TTFT of a new request while 8 streams are already decoding, against its TTFT on an idle server; and, with
``--llama-server PATH``, the same requests sent to llama.cpp's own C++ ``llama-server`` (built from the source
vendored in llama-cpp-python 0.3.36) with parallel slots = streams, continuous batching on, the same threads.

    .venv/bin/python benchmarks/bench_serve.py [--llama-server /path/to/llama-server] [--gguf FILE]
        [--threads N] [--quantized] [--streams 1,8,32] [--prompt-tokens 64] [--new-tokens 128]

Both servers run as their own processes (``genmodels serve`` on the GGUF file, fp32 weights unless
``--quantized``; ``llama-server -m`` the same GGUF file, its Q4_1 blocks) and this process is only the client.
Each row also gives the CPU time per generated token of the server process (all its threads, from ``/proc``)
and of this client, and the cores they kept busy ((server + client CPU) / wall): near the core count, only
less work per token makes a server faster; well under it, time is lost waiting.
Targets (issue 25): 8 streams >= 4x one stream's aggregate tokens/s; TTFT beside 8 decoding streams <= 2x idle;
aggregate tokens/s at 32 streams >= 1.5x llama-server's on the same model and threads.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from common import cpu_flags, cpu_name  # noqa: E402  (what the benchmarks share)

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
    times, tokens, chunks = [], None, 0
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].text:
            times.append(time.perf_counter())
            chunks += 1
        if getattr(chunk, "usage", None) is not None:
            tokens = chunk.usage.completion_tokens
    return {"t0": t0, "times": times, "tokens": chunks if tokens is None else tokens}  # (llama-server: a token a chunk)


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


PIDS: dict[str, int] = {}  # url -> the pid of the server process answering there


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far, all its threads (Linux ``/proc``; NaN elsewhere)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def server(cmd: list[str], port: int, log: Path):
    """``cmd`` (a server listening on ``port``) as a process of its own, until its ``/health`` answers 200
    (bounded: 600 polls of 0.5 s); stopped (SIGTERM, then SIGKILL) on exit. Its output goes to ``log``; its pid
    is ``PIDS[url]`` meanwhile (for :func:`cpu_seconds`)."""
    url = f"http://127.0.0.1:{port}"
    with open(log, "ab") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    try:
        for _ in range(600):
            if proc.poll() is not None:
                raise RuntimeError(f"{cmd[0]} exited with {proc.returncode} before answering; see {log}")
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(url + "/health", timeout=5) as r:
                    if r.status == 200:
                        break
            time.sleep(0.5)
        else:
            raise RuntimeError(f"{cmd[0]} did not answer /health on port {port}; see {log}")
        PIDS[url] = proc.pid
        yield url
    finally:
        PIDS.pop(url, None)
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def ours_cmd(gguf: str, port: int, max_batch: int, threads: int | None, quantized: bool) -> list[str]:
    return ([sys.executable, "-m", "genmodels.cli", "serve", gguf, "--port", str(port), "--name", "m",
             "--max-batch", str(max_batch)] + (["--threads", str(threads)] if threads else [])
            + (["--quantized"] if quantized else []))


def llama_cmd(binary: str, gguf: str, port: int, slots: int, threads: int, per_slot: int) -> list[str]:
    """llama-server with ``slots`` parallel slots (each ``per_slot`` tokens of context), continuous batching."""
    return [binary, "-m", gguf, "--host", "127.0.0.1", "--port", str(port), "-np", str(slots), "-cb",
            "-c", str(slots * per_slot), "-t", str(threads), "-tb", str(threads)]


def table_row(label: str, n_requests: int, s: dict) -> str:
    return (f"| {label} | {n_requests} | {s['tok_s']:.1f} | {s['ttft_p50']:.3f} / {s['ttft_p95']:.3f} | "
            f"{1000 * s['tpot_p50']:.1f} / {1000 * s['tpot_p95']:.1f} |")


def sweep(url: str, tok, counts: list[int], args, who: str, restart=None) -> dict[int, dict]:
    """Each stream count's figures (a table row printed as it comes); ``restart(n)``: a server per count."""
    out = {}
    print(f"\n{who}\n| streams | requests | aggregate tok/s | TTFT p50 / p95 s | per-token p50 / p95 ms | "
          "CPU ms/token server / client | cores busy |")
    print("|---|---|---|---|---|---|---|")
    for n in counts:
        prompts = [prompt_of(tok, args.prompt_tokens, i) for i in range(n * args.requests_per_stream)]
        with (restart(n) if restart else contextlib.nullcontext(url)) as u:
            asyncio.run(concurrent(u, [prompt_of(tok, args.prompt_tokens, -1)], 4, 1))  # warm-up
            pid = PIDS.get(u)
            c0, s0, w0 = time.process_time(), cpu_seconds(pid) if pid else float("nan"), time.perf_counter()
            out[n] = asyncio.run(concurrent(u, prompts, args.new_tokens, n))
            server_cpu = (cpu_seconds(pid) if pid else float("nan")) - s0
            client_cpu, wall = time.process_time() - c0, time.perf_counter() - w0
        tokens = out[n]["tok_s"] * wall
        print(table_row("1 (one at a time)" if n == 1 else str(n), len(prompts), out[n])
              + f" {1000 * server_cpu / tokens:.2f} / {1000 * client_cpu / tokens:.2f} |"
              f" {(server_cpu + client_cpu) / wall:.2f} |", flush=True)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--streams", default="1,8,32")
    p.add_argument("--prompt-tokens", type=int, default=64)
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--requests-per-stream", type=int, default=2)
    p.add_argument("--gguf", help="the model file both servers serve (default: SmolLM2-135M-Instruct Q4_1)")
    p.add_argument("--threads", type=int, help="each server's threads (default: one per core, PyTorch's default)")
    p.add_argument("--quantized", action="store_true", help="ours keeps the GGUF blocks (default: fp32 weights)")
    p.add_argument("--llama-server", help="llama.cpp's llama-server binary: compare with it")
    args = p.parse_args()
    from genmodels.interop.gguf import read_tokenizer
    if args.gguf is None:
        from tests.parity.transformers.make_gguf_reference import smollm2_file
        args.gguf = str(smollm2_file())
    tok = read_tokenizer(args.gguf)[0]
    threads = args.threads or torch.get_num_threads()  # (the server's default too: OMP_NUM_THREADS or a core each)
    counts = [int(s) for s in args.streams.split(",")]
    log = Path(tempfile.mkdtemp(prefix="bench_serve_")) / "servers.log"
    print(f"# {cpu_name()} ({cpu_flags()}), {threads} threads a server; {Path(args.gguf).name}; prompts "
          f"{args.prompt_tokens} tokens, {args.new_tokens} new, greedy, {args.requests_per_stream} requests a stream")
    print(f"# ours: genmodels serve, {'GGUF blocks (--quantized)' if args.quantized else 'fp32 weights from the GGUF'}"
          f"; llama-server: {args.llama_server or 'not run (--llama-server PATH)'}, the GGUF's own blocks; "
          f"server logs: {log}")
    port = free_port()
    cmd = ours_cmd(args.gguf, port, max(counts + [BUSY + 1]), args.threads, args.quantized)
    with server(cmd, port, log) as url:
        ours = sweep(url, tok, counts, args, "genmodels serve")
        alone = asyncio.run(concurrent(url, [prompt_of(tok, args.prompt_tokens, 5000)], 8, 1))["ttft_p50"]
        busy = asyncio.run(ttft_beside(url, tok, args.prompt_tokens, args.new_tokens, BUSY))
    if 1 in ours and 8 in ours:
        print(f"8 streams: {ours[8]['tok_s'] / ours[1]['tok_s']:.2f}x one stream's aggregate tokens/s (target >= 4x)")
    print(f"TTFT of a new request: idle {alone:.3f} s; beside {BUSY} decoding streams {busy:.3f} s "
          f"({busy / alone:.2f}x; target <= 2x)")
    if args.llama_server:
        per_slot = args.prompt_tokens + args.new_tokens + 64

        def restart(n):
            lport = free_port()
            return server(llama_cmd(args.llama_server, args.gguf, lport, n, threads, per_slot), lport, log)
        theirs = sweep("", tok, counts, args, "llama-server (-np streams -cb)", restart)
        for n in counts:
            print(f"{n} streams: ours / llama-server aggregate tokens/s = {ours[n]['tok_s']:.1f} / "
                  f"{theirs[n]['tok_s']:.1f} = {ours[n]['tok_s'] / theirs[n]['tok_s']:.2f}x"
                  + (" (target at 32 streams >= 1.5x)" if n == 32 else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
