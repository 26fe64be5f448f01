"""RetNet decoding and training against a Llama of equal parameters and torchscale 0.3.0 (issue #10, deliverable 6).

    .venv/bin/python benchmarks/bench_retnet.py [--lengths 32 64 … 8192] [--steps 8]
        [--rounds 24] [--train-steps 6] [--train-rounds 2] [--no-rss] [--no-train] [--profile] [--plot PATH]

Models (random weights, fp32, batch 1 decode): ``retnet-tiny`` (d 256, 4 layers, 4 heads, value/FFN 432, vocab
8192) built as a torchscale 0.3.0 ``RetNetDecoder`` and converted with ``genmodels.from_torchscale`` (so
torchscale and we run the SAME weights; the first step's logits are checked equal), and ``llama-tiny`` (d 256,
4 layers, 4 heads / 2 KV heads, FFN 688, same vocabulary). Both get ``max_seq_len`` 8,448.

Decode, per prefix length L: the prefix is prefilled once per model (our PyTorch parallel/chunkwise form; the
Llama's KV cache), and each row gets its own copy of that state to step from (fed tokens fixed, no sampling):

* RetNet native: ``genmodels.native.retnet.FusedRetNetStep`` (what ``genmodels.generate`` runs on CPU);
* RetNet PyTorch: ``hidden_states`` one token through the RetentionCache + head, on a copy of the model in
  ``decode_layout`` (what ``generate`` runs with ``GENMODELS_NATIVE=0``);
* torchscale: ``RetNetDecoder(ids[:, :L+1], incremental_state=state)`` with ``state`` set from our prefill
  state (its per-layer ``{"prev_key_value": (B, H, d_v, d_k), "scale": (H,)}``; its own multi-token recurrent
  prefill is broken, and its step embeds only the last id and rotates at L: the prefix costs nothing);
* Llama native: ``genmodels.native.decoder.FusedDecodeStep`` over the KV cache; Llama PyTorch: the KV-cache
  forward on a copy in ``decode_layout``. Both rewind the cache to L before each step (the K/V stay L long).

Time per token = the fastest step. Each row runs ``--rounds`` blocks, the rows' blocks alternating round-robin;
a RetNet row's block cycles 2 + ``--steps`` times through its steps at every length (they share the row's
weights and their states are 442 KB each, so the weights stay as warm in cache as in generation, and all lengths
are sampled in the same spells of machine load); a Llama row's block runs 2 + ``--steps`` consecutive steps at
each length in turn (its K/V at 8k alone is 33 MB: cycling would evict its weights). The fastest step is the
least disturbed (each does the same work), as in benchmarks/bench_train.py.

Memory: the decode state a step reads and writes (RetNet: ``RetentionCache.state_bytes()``, constant; Llama: the
filled K/V, 2 · layers · KV heads · L · head_dim · 4 B), and, unless ``--no-rss``, the peak RSS of a fresh
subprocess running ``genmodels.generate(prompt of L, 32 new tokens)`` minus its RSS after building the model
(VmHWM, the kernel's high-water mark: prefill included, which dominates).

Training: tokens/s of forward + backward + AdamW on batch 8 × 256 random tokens (the ``causal`` objective, fused AdamW,
as ``genmodels train`` and benchmarks/bench_train.py run), retnet-tiny vs llama-tiny, each in its own
subprocess, alternating for ``--train-rounds`` rounds; the fastest step of each side counts. ``--profile``
prints torch.profiler's top operators of one RetNet training step.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from typing import Callable

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import cpu_name, step_times  # noqa: E402  (what the benchmarks share)

VOCAB, CONTEXT = 8192, 8192 + 256
ROWS = ("RetNet native", "RetNet PyTorch", "torchscale", "Llama native", "Llama PyTorch")


def _rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_rss_mb() -> float:
    """This process's RSS high-water mark (VmHWM of /proc/self/status; unlike getrusage's ru_maxrss it restarts at
    exec, so a subprocess does not inherit its parent's peak)."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ---- the models ----------------------------------------------------------------------------------------------
def torchscale_retnet(seed: int = 0):
    """torchscale 0.3.0's RetNetDecoder at retnet-tiny's sizes, random weights (timm stood in, never installed)."""
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    from tests.helpers.torchscale import torchscale_retnet as find  # the timm drop_path stand-in, then import
    found = find()
    if found is None:
        raise SystemExit("torchscale 0.3.0 is not installed: pip install --no-deps torchscale==0.3.0 fairscale==0.4.0")
    config_cls, decoder_cls = found
    import genmodels
    c = genmodels.preset("retnet-tiny")
    args = config_cls(vocab_size=VOCAB, decoder_embed_dim=c.d_model, decoder_value_embed_dim=c.value_dim,
                      decoder_retention_heads=c.n_heads, decoder_ffn_embed_dim=c.d_ff, decoder_layers=c.n_layers,
                      activation_fn=c.activation, max_target_positions=CONTEXT, layernorm_eps=c.norm_eps)
    torch.manual_seed(seed)
    dec = decoder_cls(args, embed_tokens=torch.nn.Embedding(VOCAB, c.d_model))
    with torch.no_grad():
        for p in dec.parameters():
            p.normal_(0, 0.05) if p.dim() > 1 else p.uniform_(0.8, 1.2)
    return dec.eval()


def llama(seed: int = 0):
    import genmodels
    torch.manual_seed(seed)
    return genmodels.build_model(genmodels.preset("llama-tiny", max_seq_len=CONTEXT)).eval()


def n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


# ---- decode ------------------------------------------------------------------------------------------------
def block_times(steps: dict[int, Callable[[], object]], n: int, cycle: bool) -> dict[int, float]:
    """{length: seconds of its fastest step} of one row's ``steps`` by length, ``n`` timed steps each after 2
    warm-up steps. ``cycle``: step through the lengths in turn (every length sampled in the same spells of machine
    load; for rows whose per-length states are small, so the shared weights stay warm); otherwise the steps of one
    length run consecutively (the Llama's K/V at 8k alone is 33 MB: cycling would evict its weights)."""
    best = dict.fromkeys(steps, float("inf"))
    order = [list(steps)] * (n + 2) if cycle else [[length] * (n + 2) for length in steps]
    for k, lengths in enumerate(order):
        for j, length in enumerate(lengths):
            t = time.perf_counter()
            steps[length]()
            if (k if cycle else j) >= 2:
                best[length] = min(best[length], time.perf_counter() - t)
    return best


def torchscale_state(states) -> dict:
    """Our per-layer (S (B, H, d_k, d_v), s (B, H)) as torchscale's incremental_state (batch-shared scale (H,))."""
    return {i: {"prev_key_value": s.transpose(-1, -2).contiguous(), "scale": x[0].clone()}
            for i, (s, x) in enumerate(states)}


def decode_rows(rn, rn_pt, dec, ll, ll_pt, prompt, length: int):
    """{row: step()} at prefix ``length``: each row on its own state or cache, prefilled once per model (the
    Llama rows rewind their cache to the prefix before every step, so the K/V length stays ``length``); and the
    decode state bytes {"RetNet state", "Llama K/V"}. ``rn_pt``/``ll_pt``: copies in ``decode_layout``."""
    import copy

    from genmodels.native.decoder import FusedDecodeStep
    from genmodels.native.retnet import FusedRetNetStep
    tok = prompt[:, length:length + 1]                                          # (1, 1) the token fed
    cache = rn.new_cache(1)
    rn.hidden_states(prompt[:, :length], cache=cache)                          # prefill, our PyTorch form
    cache_pt, state_ts = copy.deepcopy(cache), torchscale_state(cache.states)
    native_rn = FusedRetNetStep(rn, cache, 1)
    kv = ll.new_cache(1, length + 8)
    ll.hidden_states(prompt[:, :length], cache=kv)                             # prefill
    kv_pt = copy.deepcopy(kv)
    native_ll, pos = FusedDecodeStep(ll, kv, 1), torch.tensor([length])

    def llama_native():
        kv.pos = length
        native_ll(tok[0], pos)

    def llama_torch():
        kv_pt.pos = length
        ll_pt.head(ll_pt.hidden_states(tok, position_ids=pos[None], cache=kv_pt)[:, -1])

    rows = {"RetNet native": lambda: native_rn(tok[0]),
            "RetNet PyTorch": lambda: rn_pt.head(rn_pt.hidden_states(tok, cache=cache_pt)[:, -1]),
            # torchscale rotates at len(ids) − 1 and embeds ids[:, -1:] only: the prefix costs nothing
            "torchscale": lambda: dec(prompt[:, :length + 1], incremental_state=state_ts)[0][:, -1],
            "Llama native": llama_native, "Llama PyTorch": llama_torch}
    filled = sum(t[:, :, :length].numel() * t.element_size() for lc in kv.layers for t in (lc.k, lc.v))
    return rows, {"RetNet state": cache.state_bytes(), "Llama K/V": filled}


def check_same_weights(rn, dec, prompt) -> float:
    """Max |logit difference| of one recurrent step, ours (native) vs torchscale, from the same prefilled state."""
    from genmodels.native.retnet import FusedRetNetStep
    cache = rn.new_cache(1)
    rn.hidden_states(prompt[:, :64], cache=cache)
    state = torchscale_state(cache.states)
    ours = FusedRetNetStep(rn, cache, 1)(prompt[:, 64]).clone()
    theirs = dec(prompt[:, :65], incremental_state=state)[0][:, -1]
    return float((ours - theirs).abs().max())


def rss_side(model: str, length: int) -> dict:
    """In a fresh process: peak RSS of generate(prompt of ``length``, 32 new tokens) over the built model's RSS."""
    import genmodels
    m = genmodels.from_torchscale(torchscale_retnet()) if model == "retnet" else llama()
    prompt = torch.randint(0, VOCAB, (1, length), generator=torch.Generator().manual_seed(1))
    base = _rss_mb()
    genmodels.generate(m, prompt, 32, eos_token_id=[])
    return {"model": model, "length": length, "rss_mb": _peak_rss_mb() - base}


# ---- training ----------------------------------------------------------------------------------------------
def train_side(model: str, steps: int, batch: int, seq: int) -> dict:
    from genmodels import build_model, preset
    from genmodels.objectives import CausalLM
    from genmodels.training import TrainConfig, build_optimizer
    from genmodels.training.memory import keep_freed_memory
    keep_freed_memory()  # as `genmodels train` does on CPU
    torch.manual_seed(0)
    x = torch.randint(0, VOCAB, (batch, seq + 1))
    inputs, targets = x[:, :-1].contiguous(), x[:, 1:].contiguous()
    m = build_model(preset(f"{model}-tiny"))
    loss_mod = CausalLM(m, chunk=TrainConfig().loss_chunk).train()
    opt = build_optimizer(loss_mod, lr=1e-4, weight_decay=0.1)
    feed = {"input_ids": inputs, "labels": targets}

    def step():
        loss_mod(feed)[0].backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    times = step_times(step, steps)
    return {"model": model, "params": n_params(m), "tok_s": batch * seq / min(times),
            "median_tok_s": batch * seq / statistics.median(times)}


def profile_retnet_step(batch: int, seq: int, top: int = 18) -> None:
    """torch.profiler's table of one RetNet training step (forward + backward), by self CPU time."""
    from torch.profiler import ProfilerActivity, profile

    from genmodels import build_model, preset
    from genmodels.objectives import CausalLM
    from genmodels.training import TrainConfig
    m = build_model(preset("retnet-tiny"))
    loss_mod = CausalLM(m, chunk=TrainConfig().loss_chunk).train()
    x = torch.randint(0, VOCAB, (batch, seq + 1))
    b = {"input_ids": x[:, :-1], "labels": x[:, 1:]}
    for _ in range(2):
        loss_mod(b)[0].backward()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        loss_mod(b)[0].backward()
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=top))


def _subprocess(args: list[str]) -> dict:
    out = subprocess.run([sys.executable, os.path.abspath(__file__), *args], capture_output=True, text=True,
                         check=True).stdout.strip().splitlines()[-1]
    return json.loads(out)


# ---- the plot ----------------------------------------------------------------------------------------------
def plot(path: str, lengths, times: dict, mem: dict, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.8))
    for row in ROWS:
        a.plot(lengths, [times[row][n] * 1e3 for n in lengths], marker="o", label=row)
    a.set(xlabel="prefix length (tokens)", ylabel="ms per token (batch 1, fastest step)")
    a.legend(fontsize=8)
    for row, values in mem.items():
        b.plot(lengths, [values[n] / 2**20 for n in lengths], marker="o", label=row)
    b.set(xlabel="prefix length (tokens)", ylabel="decode state / K,V (MiB)")
    b.legend(fontsize=8)
    for ax in (a, b):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log", base=2)
        ax.minorticks_off()
        ax.set_xticks(lengths, [str(n) for n in lengths])
        ax.yaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
        ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lengths", nargs="+", type=int, default=[32, 64, 128, 256, 512, 1024, 2048, 4096, 8192])
    ap.add_argument("--steps", type=int, default=8, help="timed cycles through the lengths per block")
    ap.add_argument("--rounds", type=int, default=24, help="blocks per row, interleaved")
    ap.add_argument("--train-steps", type=int, default=6)
    ap.add_argument("--train-rounds", type=int, default=2)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--no-rss", action="store_true")
    ap.add_argument("--no-train", action="store_true")
    ap.add_argument("--profile", action="store_true", help="print torch.profiler's table of a RetNet train step")
    ap.add_argument("--plot", default="docs/img/retnet_decode.png")
    ap.add_argument("--side", help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    ap.add_argument("--length", type=int, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    if a.side == "train":
        print(json.dumps(train_side(a.model, a.train_steps, a.batch, a.seq)))
        return
    if a.side == "rss":
        with torch.inference_mode():
            print(json.dumps(rss_side(a.model, a.length)))
        return
    a.lengths = sorted(set(a.lengths))
    if max(a.lengths) + 8 > CONTEXT or min(a.lengths) < 1:
        raise SystemExit(f"--lengths: each in [1, {CONTEXT - 8}]")

    import genmodels
    from genmodels.native.retnet import unsupported
    from genmodels.nn.layout import decode_layout
    torch.manual_seed(0)
    threads = a.threads or torch.get_num_threads()
    print(f"torch {torch.__version__}, CPU: {cpu_name()}, {os.cpu_count()} cores seen, threads {threads} "
          f"(shared machine: compare ratios)")
    dec = torchscale_retnet()
    rn, ll = genmodels.from_torchscale(dec).eval(), llama()
    if (why := unsupported(rn)) is not None:
        raise SystemExit(f"the native RetNet step is unavailable: {why}")
    prompt = torch.randint(0, VOCAB, (1, CONTEXT), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        diff = check_same_weights(rn, dec, prompt)
    print(f"retnet-tiny {n_params(rn) / 1e6:.2f}M parameters (torchscale's {n_params(dec) / 1e6:.2f}M), "
          f"llama-tiny {n_params(ll) / 1e6:.2f}M; same weights: one step's logits ours vs torchscale differ by "
          f"{diff:.1e}")

    times = {row: {n: float("inf") for n in a.lengths} for row in ROWS}
    mem: dict[str, dict[int, int]] = {"RetNet state": {}, "Llama K/V": {}}
    rn_pt, ll_pt = copy.deepcopy(rn), copy.deepcopy(ll)  # the PyTorch rows: generate's layout without kernels
    with contextlib.ExitStack() as stack:
        for m in (rn_pt, ll_pt):
            stack.enter_context(decode_layout(m))
        stack.enter_context(torch.inference_mode())
        rows = {}
        for n in a.lengths:
            rows[n], sizes = decode_rows(rn, rn_pt, dec, ll, ll_pt, prompt, n)
            for k, v in sizes.items():
                mem[k][n] = v
        for r in range(a.rounds):  # the rows' blocks interleaved round-robin: all share the machine's load
            for row in ROWS:
                cycle = not row.startswith("Llama")
                for n, sec in block_times({n: rows[n][row] for n in a.lengths}, a.steps, cycle).items():
                    times[row][n] = min(times[row][n], sec)
            if (r + 1) % max(1, a.rounds // 4) == 0:
                print(f"round {r + 1}/{a.rounds}: at {a.lengths[-1]}: " + ", ".join(
                    f"{row} {times[row][a.lengths[-1]] * 1e3:.3f}" for row in ROWS) + " ms (fastest so far)",
                    flush=True)

    rss = {}
    if not a.no_rss:
        for model in ("retnet", "llama"):
            for n in a.lengths:
                rss[model, n] = _subprocess(["--side", "rss", "--model", model, "--length", str(n)]
                                            + (["--threads", str(a.threads)] if a.threads else []))["rss_mb"]

    print(f"\nper-token decode time, batch 1, ms (fastest of {a.rounds} blocks x {a.steps} steps per length)")
    print(f"{'prefix':>7} " + " ".join(f"{row:>14}" for row in ROWS)
          + f" {'nat/ts':>7} {'RN/Llama nat':>12} {'state KB':>9} {'K/V KB':>8}"
          + (f" {'RSS RN MB':>9} {'RSS Ll MB':>9}" if rss else ""))
    for n in a.lengths:
        t = {row: times[row][n] for row in ROWS}
        line = (f"{n:7d} " + " ".join(f"{t[row] * 1e3:14.3f}" for row in ROWS)
                + f" {t['torchscale'] / t['RetNet native']:6.1f}x {t['Llama native'] / t['RetNet native']:11.2f}x"
                + f" {mem['RetNet state'][n] / 1e3:9.0f} {mem['Llama K/V'][n] / 1e3:8.0f}")
        if rss:
            line += f" {rss['retnet', n]:9.0f} {rss['llama', n]:9.0f}"
        print(line)
    lo, hi = (256 if 256 in a.lengths else a.lengths[0]), a.lengths[-1]  # the target compares 8k with 256
    nat = times["RetNet native"]
    faster = [n for n in a.lengths if nat[n] < times["Llama native"][n]]
    cross = next((n for n in a.lengths if all(m in faster for m in a.lengths if m >= n)), None)
    print(f"\nRetNet native at {hi} / at {lo}: {nat[hi] / nat[lo]:.2f}x (target <= 1.1x); "
          f"PyTorch path: {times['RetNet PyTorch'][hi] / times['RetNet PyTorch'][lo]:.2f}x")
    print("RetNet native faster than Llama native from prefix "
          + (f"{cross} on (of the lengths measured)" if cross is not None else "— never, at the lengths measured"))
    vs_ts = statistics.median(times["torchscale"][n] / nat[n] for n in a.lengths)
    print(f"RetNet native vs torchscale's recurrent step, batch 1: {vs_ts:.1f}x (median over lengths; target >= 3x)")

    if a.plot:
        os.makedirs(os.path.dirname(os.path.abspath(a.plot)), exist_ok=True)
        plot(a.plot, a.lengths, times, mem, f"retnet-tiny vs llama-tiny, batch 1, fp32, {cpu_name()}, "
                                             f"{threads} threads")
        print(f"plot: {os.path.abspath(a.plot)}")

    if not a.no_train:
        best: dict[str, dict] = {}
        for r in range(a.train_rounds):
            for model in ("retnet", "llama"):
                res = _subprocess(["--side", "train", "--model", model, "--train-steps", str(a.train_steps),
                                   "--batch", str(a.batch), "--seq", str(a.seq)]
                                  + (["--threads", str(a.threads)] if a.threads else []))
                print(f"train round {r + 1} {model:6s}: {res['tok_s']:7.0f} tok/s best step, "
                      f"{res['median_tok_s']:.0f} median ({res['params'] / 1e6:.2f}M params)", flush=True)
                if model not in best or res["tok_s"] > best[model]["tok_s"]:
                    best[model] = res
        ratio = best["retnet"]["tok_s"] / best["llama"]["tok_s"]
        print(f"training, batch {a.batch} x {a.seq}, AdamW, fp32: retnet-tiny {best['retnet']['tok_s']:.0f} tok/s, "
              f"llama-tiny {best['llama']['tok_s']:.0f} tok/s: {ratio:.2f}x (target >= 0.8x)")
    if a.profile:
        profile_retnet_step(a.batch, a.seq)


if __name__ == "__main__":
    main()
