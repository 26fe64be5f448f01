"""Prefill of a 512-token prompt on Llama configs A and B (random weights, batch 1): genmodels' native prefill
in fp32 and in bf16 (where the CPU has AVX512-BF16: ``GENMODELS_NATIVE_PREFILL=bf16``) against transformers'
LlamaForCausalLM (sdpa) in fp32 and in bf16 (``.to(torch.bfloat16)``: oneDNN's bf16 kernels), all in this one
process on the same weights; each rate as a % of the matmul peak of its precision (torch.mm 1024²/2048², the
same clock), the ratios issue 26 sets targets on (fp32 prefill ≥ 85% of the fp32 peak; where bf16 hardware lets
prefill run in bf16, ≥ 1.5× transformers' best), the bf16 logits' distance from fp32, the CPU and its flags.

    .venv/bin/python benchmarks/bench_prefill.py [--configs A B] [--tokens 512] [--repeats 5]
        [--threads 1 --cpu-clock] [--per-call]

``--per-call`` adds a row of the native bf16 prefill with W's panels converted to bf16 at every call (as before
the weights were packed once: ``native_prefill.PACK_BF16 = False``), for an A/B in the same run.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_chat import native_prefill_rows, prefill_flops, time_prefill_rows  # noqa: E402
from bench_generate import CONFIGS  # noqa: E402
from common import cpu_flags, cpu_name, matmul_peak  # noqa: E402


def models(name: str):
    """(transformers fp32, genmodels) Llama of config ``name`` on the same random weights."""
    from transformers import LlamaConfig, LlamaForCausalLM

    import genmodels
    torch.manual_seed(0)
    hf = LlamaForCausalLM(LlamaConfig(**CONFIGS[name], max_position_embeddings=2048, rms_norm_eps=1e-5,
                                      attn_implementation="sdpa", bos_token_id=0, eos_token_id=None,
                                      pad_token_id=None)).eval()
    with tempfile.TemporaryDirectory() as d:
        hf.save_pretrained(d)
        return hf, genmodels.load(d)


def one_config(name: str, t: int, repeats: int, clock, peaks: dict, per_call: bool = False) -> None:
    from genmodels.generation.session import DecodeSession
    hf, ours = models(name)
    hf16 = models(name)[0].to(torch.bfloat16)
    ids = torch.randint(0, CONFIGS[name]["vocab_size"], (1, t), generator=torch.Generator().manual_seed(0))

    def run_ours():
        with torch.inference_mode():
            return DecodeSession(ours).prefill(ids, t + 1)[1].float()

    def run_hf(model):
        def run():
            with torch.inference_mode():
                return model(ids, use_cache=True, logits_to_keep=1).logits[:, -1].float()
        return run

    def run_per_call():
        from genmodels.native import prefill as native_prefill
        native_prefill.PACK_BF16 = False
        try:
            return run_ours()
        finally:
            native_prefill.PACK_BF16 = True

    flops = prefill_flops(ours, t)
    rows = [(f"genmodels native{' bf16' * (env == 'bf16')}", run_ours, env) for _, env in native_prefill_rows()]
    if per_call and rows[-1][2] == "bf16":
        rows.append(("native W per call bf16", run_per_call, "bf16"))
    rows += [("transformers", run_hf(hf), None), ("transformers bf16", run_hf(hf16), None)]
    print(f"Llama config {name} ({sum(p.numel() for p in ours.parameters()) / 1e6:.1f}M params): {t}-token prefill, "
          f"{flops / 1e9:.2f} GFLOP, median of {repeats}")
    rates, logits = time_prefill_rows(rows, t, flops, peaks, repeats, clock, width=22)
    fp32, best_hf = logits["genmodels native"], max(rates["transformers"], rates["transformers bf16"])
    for row in ("genmodels native bf16", "native W per call bf16", "transformers", "transformers bf16"):
        if row in logits:
            err = float((logits[row] - fp32).abs().max() / fp32.abs().max())
            print(f"  {row} logits vs genmodels native fp32: max |Δ| = {err:.1e} of the largest")
    print(f"  genmodels native fp32 / transformers fp32: {rates['genmodels native'] / rates['transformers']:.2f}x")
    if "genmodels native bf16" in rates:
        print(f"  genmodels native bf16 / transformers' best ({'bf16' if rates['transformers bf16'] > rates['transformers'] else 'fp32'}): "
              f"{rates['genmodels native bf16'] / best_hf:.2f}x  (target ≥ 1.5x); bf16 / fp32 native: "
              f"{rates['genmodels native bf16'] / rates['genmodels native']:.2f}x")
    if "native W per call bf16" in rates:
        print(f"  bf16 weights packed once / converted per call: "
              f"{rates['genmodels native bf16'] / rates['native W per call bf16']:.2f}x")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--configs", nargs="+", default=["A", "B"], choices=sorted(CONFIGS))
    ap.add_argument("--tokens", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None, help="torch threads; default torch's")
    ap.add_argument("--cpu-clock", action="store_true", help="time by process CPU time (with --threads 1)")
    ap.add_argument("--per-call", action="store_true", help="add the bf16 row with W converted at every call (A/B)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.cpu_clock and torch.get_num_threads() != 1:
        sys.exit("error: --cpu-clock counts the CPU time of every thread: use it with --threads 1")
    clock = time.process_time if args.cpu_clock else time.perf_counter
    peaks = {"fp32": matmul_peak(clock), "bf16": matmul_peak(clock, dtype=torch.bfloat16)}
    print(f"{cpu_name()}, torch {torch.__version__}, {torch.get_num_threads()} threads, clock: "
          f"{'process CPU time' if args.cpu_clock else 'wall'}\nCPU flags: {cpu_flags()}\nmatmul peak (torch.mm "
          f"1024²/2048², same clock): fp32 {peaks['fp32'] / 1e9:.1f} GFLOP/s, bf16 {peaks['bf16'] / 1e9:.1f} GFLOP/s")
    for name in args.configs:
        one_config(name, args.tokens, args.repeats, clock, peaks, args.per_call)


if __name__ == "__main__":
    main()
