"""Greedy generation and prefill throughput: genmodels vs transformers on the same weights.

    .venv/bin/python benchmarks/bench_generate.py [--configs A B] [--new-tokens 256] [--repeats 3]
        [--torch-path] [--device cuda]

Llama configs A and B of shared/reference/machine.md, random weights, fp32. Both sides run in
this one process and the ratio of medians is printed. Also reports how close each decode figure
is to the memory-bandwidth limit (bytes a decode step must read / measured bandwidth).
``--torch-path`` adds rows for genmodels with its native CPU kernels off (GENMODELS_NATIVE=0).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import bandwidth_gbs, step_bytes, sync  # noqa: E402  (what the benchmarks share)

CONFIGS = {
    "A": dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
              intermediate_size=688, vocab_size=8192),
    "B": dict(hidden_size=512, num_hidden_layers=6, num_attention_heads=8, num_key_value_heads=4,
              intermediate_size=1376, vocab_size=8192),
}


def timed(fn, repeats: int, device: str = "cpu") -> float:
    times = []
    for _ in range(repeats):
        sync(device)
        t = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--configs", nargs="+", default=["A", "B"])
    ap.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    ap.add_argument("--new-tokens", type=int, default=256)
    ap.add_argument("--prompt", type=int, default=16)
    ap.add_argument("--prefill", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--torch-path", action="store_true", help="also time genmodels with GENMODELS_NATIVE=0")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    args = ap.parse_args()
    dev = args.device
    if args.threads:
        torch.set_num_threads(args.threads)

    from transformers import LlamaConfig, LlamaForCausalLM

    import genmodels
    torch.manual_seed(0)
    bw = bandwidth_gbs(dev)
    where = torch.cuda.get_device_name() if dev == "cuda" else f"CPU, threads {torch.get_num_threads()}"
    print(f"torch {torch.__version__}, {where}, measured read bandwidth {bw:.1f} GB/s")
    print(f"{'config':6} {'work':22} {'HF':>11} {'ours':>11} {'ratio':>6}  note")
    for name in args.configs:
        hf = LlamaForCausalLM(LlamaConfig(**CONFIGS[name], max_position_embeddings=2048, rms_norm_eps=1e-5,
                                          attn_implementation="sdpa", bos_token_id=0, eos_token_id=None,
                                          pad_token_id=None)).eval()
        with tempfile.TemporaryDirectory() as d:
            hf.save_pretrained(d)
            ours = genmodels.load(d)
        hf, ours = hf.to(dev), ours.to(dev)
        weight_bytes = step_bytes(ours)
        for b in args.batches:
            x = torch.randint(0, 8192, (b, args.prompt), device=dev)
            kw = dict(max_new_tokens=args.new_tokens)

            def run_hf():
                with torch.inference_mode():
                    return hf.generate(x, do_sample=False, min_new_tokens=args.new_tokens,
                                       attention_mask=torch.ones_like(x), pad_token_id=0, **kw)

            def run_ours():
                return genmodels.generate(ours, x, eos_token_id=[], **kw)

            a, o = run_hf(), run_ours()
            # fp32 sums in a different order can flip a near-tie late in a long random-weight run;
            # the first 32 new tokens must agree exactly (tests/parity checks exact equality).
            n_check = args.prompt + 32
            assert torch.equal(a[:, :n_check], o[:, :n_check]), "greedy outputs differ"
            agree = (a == o).float().mean().item()
            t_hf, t_ours = timed(run_hf, args.repeats, dev), timed(run_ours, args.repeats, dev)
            n = b * args.new_tokens
            limit = bw * 1e9 / weight_bytes  # steps/s if every step only streamed the weights once
            note = (f"tokens equal to HF {agree:.0%}; bandwidth limit ≈ {limit * b:,.0f} tok/s "
                    f"({weight_bytes / 1e6:.0f} MB read per step); "
                    f"ours at {n / t_ours / (limit * b):.0%} of it")
            print(f"{name:6} {'decode b=' + str(b):22} {n / t_hf:9,.0f}/s {n / t_ours:9,.0f}/s "
                  f"{t_hf / t_ours:5.2f}x  {note}")
            if args.torch_path and dev == "cpu":
                os.environ["GENMODELS_NATIVE"] = "0"
                try:
                    t_torch = timed(run_ours, args.repeats)
                finally:
                    del os.environ["GENMODELS_NATIVE"]
                print(f"{name:6} {'  (PyTorch path)':22} {'':>11} {n / t_torch:9,.0f}/s {t_hf / t_torch:5.2f}x")
        x = torch.randint(0, 8192, (1, args.prefill), device=dev)
        with torch.inference_mode():
            t_hf = timed(lambda: hf(x), args.repeats, dev)
            t_ours = timed(lambda: ours(x), args.repeats, dev)
        print(f"{name:6} {'prefill 1x' + str(args.prefill):22} {args.prefill / t_hf:9,.0f}/s "
              f"{args.prefill / t_ours:9,.0f}/s {t_hf / t_ours:5.2f}x")


if __name__ == "__main__":
    main()
