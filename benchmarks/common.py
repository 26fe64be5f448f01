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
                      lr: float = 1e-4) -> Callable[[], torch.Tensor]:
    """One training step of genmodels' causal objective as ``genmodels train`` runs it (fused, chunked head and
    cross-entropy; fused AdamW over the trainable parameters): forward, backward, optimizer step. Returns the loss."""
    from genmodels.objectives import CausalLM
    from genmodels.training import TrainConfig, build_optimizer
    loss_mod = CausalLM(model, chunk=TrainConfig().loss_chunk).train()
    opt = build_optimizer(loss_mod, lr=lr, weight_decay=weight_decay)
    feed = {"input_ids": inputs, "labels": targets}

    def step() -> torch.Tensor:
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
    """Bytes one decode step must read: every parameter except the input embedding table (one row
    of it is read), unless the head is tied to it."""
    skip = 0 if model.config.tie_embeddings else model.embed.weight.numel()
    return sum(p.numel() * p.element_size() for p in model.parameters()) - skip * model.embed.weight.element_size()
