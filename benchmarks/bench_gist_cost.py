"""#24 d4's costs of a gist cache on the task set (``bench_gist.py cost``): the compression ratio and KV bytes per
prompt on the set's median instruction, FLOPs per prompt counted by torch's FlopCounterMode on the plain-matmul
attention (``SelfAttention.kernel = "reference"``) against the analytic count, and wall-clock per prompt with and
without the cache at batch 1 and 16, plus batched compression's throughput against the measured matmul peak.

Analytic count (models/flops.py's convention, the reference kernel computing every score of its Tq × Tk block):
a prefill of T new tokens after C cached ones costs 2·(N_matmul − N_head)·T + 2·N_head (the head on the last
token only; compress computes no logits) + 4·L·H·d·T·(C + T) FLOPs.
"""
from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

import genmodels
from common import cpu_name, step_times
from bench_gist import prompt_parts
from genmodels.models.flops import matmul_parameters

KS = (1, 2, 5, 10)


def analytic_prefill(cfg, new: int, cached: int, head: bool = True) -> int:
    """FLOPs of a prefill of ``new`` tokens after ``cached`` slots, the head on the last token (module doc);
    ``head=False``: no logits (compress keeps the keys and values only)."""
    n_head = cfg.vocab_size * cfg.d_model
    attn = 4 * cfg.n_layers * cfg.n_heads * cfg.dim_head * new * (cached + new)
    return 2 * (matmul_parameters(cfg) - n_head) * new + 2 * n_head * head + attn


def counted(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def _prefill(model, ids: torch.Tensor, cache=None, mask=None):
    """The prefill generate runs: hidden states of every token, logits of the last."""
    def run():
        h = model.hidden_states(ids, attention_mask=mask, cache=cache if cache is not None else
                                model.new_cache(ids.shape[0], ids.shape[1]))
        return model.head(h[:, -1])
    return run


def _plain_attention(model) -> None:
    for module in model.modules():
        if hasattr(module, "kernel") and hasattr(module, "qkv"):
            module.kernel = "reference"


@torch.inference_mode()
def flops(model, head: str, tail: str, k: int) -> dict:
    """Counted and analytic FLOPs of one prompt: the full prefill, the prefill after the gist cache, compress."""
    tok, cfg = model.tokenizer, model.config
    p, x = tok.encode(head).ids, tok.encode(tail).ids
    g = tok.token_to_id("<GIST>")
    full = torch.tensor([p + [g] * k + x])
    gist = genmodels.compress(model, head, k=k)
    rows = {"full": (counted(_prefill(model, full)), analytic_prefill(cfg, full.shape[1], 0)),
            "after_gist": (counted(_prefill(model, torch.tensor([x]), gist.decoding_cache(model, 1, len(x)))),
                           analytic_prefill(cfg, len(x), k)),
            "compress": (counted(lambda: genmodels.compress(model, head, k=k)), analytic_prefill(cfg, len(p) + k, 0, head=False))}
    return {name: {"counted": c, "analytic": a, "ratio": round(c / a, 4)} for name, (c, a) in rows.items()}


def _batch(tok, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    ids = [tok.encode(t).ids for t in texts]
    width = max(map(len, ids))
    x, mask = torch.zeros(len(ids), width, dtype=torch.long), torch.zeros(len(ids), width, dtype=torch.long)
    for i, r in enumerate(ids):
        x[i, width - len(r):], mask[i, width - len(r):] = torch.tensor(r), 1
    return x, mask


@torch.inference_mode()
def wall_clock(model, rows: list[dict], k: int, new_tokens: int, repeats: int) -> dict:
    """Seconds per prompt of greedy ``generate`` (the prefill and ``new_tokens`` steps) with the whole prompt, and
    after each prompt's gist cache (made beforehand, as a served instruction is), at batch 1 and 16."""
    out = {}
    for batch in (1, 16):
        chunk = rows[:batch]
        parts = [prompt_parts(r["instruction"], r["input"], k) for r in chunk]
        gist = genmodels.compress(model, [h for h, _ in parts], k=k)
        full, full_mask = _batch(model.tokenizer, [h + "<GIST>" * k + t for h, t in parts])
        x, x_mask = _batch(model.tokenizer, [t for _, t in parts])
        kw = dict(eos_token_id=[], temperature=0.0)
        plain = step_times(lambda: genmodels.generate(model, full, new_tokens, attention_mask=full_mask, **kw),
                           repeats, warmup=1)
        cached = step_times(lambda: genmodels.generate(model, x, new_tokens, cache=gist, attention_mask=x_mask, **kw),
                            repeats, warmup=1)
        heads = [h for h, _ in parts]
        comp = step_times(lambda: genmodels.compress(model, heads, k=k), repeats, warmup=1)
        width = max(len(model.tokenizer.encode(h).ids) for h in heads) + k  # compress runs the padded rows
        out[batch] = {"full_s_per_prompt": min(plain) / batch, "cached_s_per_prompt": min(cached) / batch,
                      "speedup": min(plain) / min(cached), "compress_s_per_prompt": min(comp) / batch,
                      "prompt_tokens": int(full_mask.sum()) / batch, "after_gist_tokens": int(x_mask.sum()) / batch,
                      "compress_gflops_per_s": batch * analytic_prefill(model.config, width, 0, head=False) / min(comp) / 1e9}
    return out


def matmul_peak_gflops(n: int = 1024, repeats: int = 5) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    return 2 * n ** 3 / min(step_times(lambda: a @ b, repeats)) / 1e9


def cost(args) -> None:
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    meta = json.loads((out / "eval.json").read_text())
    model = genmodels.load(args.run or meta["start"]).eval()
    tok, cfg = model.tokenizer, model.config
    rows = [r for s in meta["splits"].values() for r in s]
    p_len = [len(tok.encode(prompt_parts(r["instruction"], r["input"], 1)[0]).ids) for r in rows]
    x_len = [len(tok.encode(prompt_parts(r["instruction"], r["input"], 1)[1]).ids) for r in rows]
    distinct = sorted({r["instruction"] for r in rows})
    p_distinct = [len(tok.encode(prompt_parts(i, "", 1)[0]).ids) for i in distinct]
    med = statistics.median(p_len)
    slot_bytes = 2 * cfg.n_layers * cfg.kv_heads * cfg.dim_head * 4  # K and V, fp32, per position
    result = {"cpu": cpu_name(), "threads": args.threads, "model": args.run or meta["start"],
              "median_instruction_tokens": med, "median_distinct_instruction_tokens": statistics.median(p_distinct),
              "median_input_tokens": statistics.median(x_len), "kv_bytes_per_position": slot_bytes,
              "per_k": {k: {"ratio": (med + k) / k, "kv_bytes_gist": k * slot_bytes,
                            "kv_bytes_instruction": (med + k) * slot_bytes} for k in KS}}
    median_row = min(rows, key=lambda r: abs(len(tok.encode(prompt_parts(r["instruction"], r["input"], 1)[0]).ids)
                                             - med))
    _plain_attention(model)
    result["flops_k1_median_prompt"] = flops(model, *prompt_parts(median_row["instruction"], median_row["input"], 1), 1)
    peak = matmul_peak_gflops()
    result["matmul_peak_gflops"] = peak
    for module in model.modules():  # timings with the kernels generate uses
        if getattr(module, "kernel", None) == "reference":
            module.kernel = "sdpa"
    result["wall_clock_k1"] = wall_clock(model, meta["splits"]["seen-test"][::11], 1, args.new_tokens, args.repeats)
    result["compress_batch16_of_peak"] = result["wall_clock_k1"][16]["compress_gflops_per_s"] / peak
    (out / "cost.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))
