"""AdamW with weight decay on matrices only, and a warm-up + cosine learning-rate schedule.

    lr(s) = lr_max · (s+1)/W                                       for s < W
    lr(s) = lr_min + ½(lr_max − lr_min)(1 + cos(π (s−W)/(S−W)))     for W ≤ s < S

The schedule is a pure function of the step, so resuming needs only the step number.
"""
from __future__ import annotations

import math

import torch
from torch import nn


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Decay for parameters with dim ≥ 2 (matrices, embeddings); none for norms and biases."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.dim() >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def build_optimizer(model: nn.Module, lr: float, weight_decay: float, betas=(0.9, 0.95), eps: float = 1e-8,
                    distributed: bool = False) -> torch.optim.AdamW:
    """AdamW; the fused kernel for plain tensors, ``foreach`` for sharded (DTensor) parameters."""
    groups = param_groups(model, weight_decay)
    kw = dict(lr=lr, betas=tuple(betas), eps=eps)
    if not distributed:
        try:
            return torch.optim.AdamW(groups, fused=True, **kw)
        except (RuntimeError, ValueError):
            pass
    return torch.optim.AdamW(groups, foreach=True, **kw)


def lr_at(step: int, lr: float, min_lr: float, warmup_steps: int, max_steps: int) -> float:
    """Learning rate for optimizer step ``step`` (0-based)."""
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    span = max(1, max_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return min_lr + 0.5 * (lr - min_lr) * (1.0 + math.cos(math.pi * progress))


def set_lr(optimizer: torch.optim.Optimizer, value: float) -> None:
    for g in optimizer.param_groups:
        g["lr"] = value
