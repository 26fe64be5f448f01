"""What the benchmarks share: the CPU's name (printed with every figure), a step timer, the measured
read bandwidth and the bytes a decode step must read (how close a decode figure is to the memory limit)."""
from __future__ import annotations

import time
from typing import Callable

import torch

from genmodels.training.metrics import cpu_name  # noqa: F401  (the one definition; the benchmarks print it)


def step_times(step: Callable[[], object], n: int, warmup: int = 2) -> list[float]:
    """Wall seconds of ``n`` calls of ``step`` after ``warmup`` untimed ones."""
    for _ in range(warmup):
        step()
    times = []
    for _ in range(n):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    return times


def causal_train_step(model, inputs: torch.Tensor, targets: torch.Tensor, *, weight_decay: float,
                      lr: float = 1e-4, amp: torch.dtype | None = None) -> Callable[[], torch.Tensor]:
    """One training step of genmodels' causal objective as ``genmodels train`` runs it (fused, chunked head and
    cross-entropy; fused AdamW over the trainable parameters): forward (under ``torch.autocast`` in ``amp``
    unless None, as ``train.precision: bf16``), backward, optimizer step. Returns the loss."""
    from genmodels.objectives import CausalLM
    from genmodels.training import TrainConfig, build_optimizer
    loss_mod = CausalLM(model, chunk=TrainConfig().loss_chunk).train()
    opt = build_optimizer(loss_mod, lr=lr, weight_decay=weight_decay)
    feed = {"input_ids": inputs, "labels": targets}

    def step() -> torch.Tensor:
        with torch.autocast(inputs.device.type, dtype=amp, enabled=amp is not None):
            loss = loss_mod(feed)[0]
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss
    return step


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def bandwidth_gbs(device: str = "cpu") -> float:
    """Read bandwidth in GB/s: the best of five ``sum`` over a 64 MB buffer (256 MB on a GPU)."""
    x = torch.empty((256 if device == "cuda" else 64) * 2**20 // 4, device=device)
    x.fill_(1.0)
    best = float("inf")
    for _ in range(5):
        sync(device)
        t = time.perf_counter()
        x.sum()
        sync(device)
        best = min(best, time.perf_counter() - t)
    return x.numel() * 4 / best / 1e9


def step_bytes(model) -> int:
    """Bytes one decode step must read: every parameter and every quantised linear's GGUF ``blocks``, except
    the input embedding table (one row of it is read) unless the head reads it (tied); a tied head kept as
    blocks (``model.quantized_head``, a quantised GGUF load) reads those instead of the fp32 table."""
    blocks = [b for name, b in model.named_buffers() if name.endswith("blocks")]
    head = getattr(model, "quantized_head", None)
    read_embed = model.config.tie_embeddings and head is None
    skip = 0 if read_embed else model.embed.weight.numel()
    return (sum(p.numel() * p.element_size() for p in model.parameters()) - skip * model.embed.weight.element_size()
            + sum(b.numel() for b in blocks) + (head[0].numel() if head is not None else 0))


def cpu_flags() -> str:
    """What the CPU offers for the kernels (the flags genmodels.training.precision reads): AVX2, AVX-512 (F,
    VNNI, BF16), AMX; "none of avx2/avx512/amx" elsewhere (benchmarks print it beside cpu_name: issue 26 asks
    every figure to say)."""
    from genmodels.training.precision import cpu_flags as flags
    have = flags()
    wanted = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8")
    found = [f for f in wanted if f in have]
    return " ".join(found) if found else "none of avx2/avx512/amx"


def matmul_peak(clock=time.perf_counter, sizes: tuple[int, ...] = (1024, 2048), repeats: int = 7,
                dtype: torch.dtype = torch.float32) -> float:
    """fp32 (or ``dtype``: bf16, oneDNN's AVX512-BF16 / AMX kernels) matmul FLOP/s: the best of ``repeats`` square
    products of each size, timed by ``clock`` (a CPU-time clock such as ``time.process_time`` gives a figure that
    other processes on a loaded machine do not cut)."""
    best = 0.0
    for n in sizes:
        a, b, c = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype), torch.empty(n, n, dtype=dtype)
        torch.mm(a, b, out=c)
        for _ in range(repeats):
            t = clock()
            torch.mm(a, b, out=c)
            best = max(best, 2 * n ** 3 / max(clock() - t, 1e-9))
    return best
