"""What a trainable token row costs a LoRA step (``train.lora.trainable_tokens``; nn/trainable_tokens.py): CPU time
of one forward + backward through the fused head loss, SmolLM2's tied table (V = 49153, D = 576) and body width,
LoRA all-linear r 8, with no trainable row and with one, in the same process, alternating, best of ``--repeats``.

The extra work while unmerged: the (V, D) table is rebuilt each forward (``index_copy``), and the tied head's fused
loss computes the whole (V, D) weight gradient of which one row is kept (2·N·V·D FLOPs more).

    python benchmarks/bench_lora_tokens.py --layers 30 --threads 1
"""
from __future__ import annotations

import argparse
import time

import torch

import genmodels
import genmodels.lora as lora
from common import cpu_name
from genmodels.objectives.losses import fused_linear_cross_entropy

V, D = 49153, 576


def model(layers: int, rows: bool):
    torch.manual_seed(0)
    m = genmodels.build_model(genmodels.preset("llama-tiny", d_model=D, n_layers=layers, n_heads=9, n_kv_heads=3,
                                               d_ff=1536, vocab_size=V, max_seq_len=256, tie_embeddings=True))
    return lora.apply(m, "all-linear", r=8, alpha=16, trainable_tokens=[V - 1] if rows else ())


def step(m, ids: torch.Tensor) -> float:
    """CPU seconds of one forward + backward (the optimizer's step over the adapters is the same for both)."""
    t = time.process_time()
    loss = fused_linear_cross_entropy(m.hidden_states(ids)[:, :-1], m.head.get_weight(), None, ids[:, 1:], 256)
    loss.backward()
    m.zero_grad(set_to_none=True)
    return time.process_time() - t


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--layers", type=int, default=30, help="SmolLM2-135M has 30")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=4)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    ids = torch.randint(0, V, (4, 128), generator=torch.Generator().manual_seed(0))
    ids[:, 5] = V - 1  # the row is read
    plain, rows = model(args.layers, False), model(args.layers, True)
    step(plain, ids), step(rows, ids)
    a, b = [], []
    for _ in range(args.repeats):
        a.append(step(plain, ids))
        b.append(step(rows, ids))
    print(f"{cpu_name()}, {args.threads} thread(s), batch 4x128, {args.layers} layers, V={V}, D={D}, LoRA all-linear r 8:")
    print(f"  CPU s per forward+backward: no trainable row {min(a):.3f}, one trainable row {min(b):.3f} "
          f"= {min(b) / min(a):.2f}x")


if __name__ == "__main__":
    main()
