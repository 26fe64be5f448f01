"""An exponential moving average of a network's weights (for GAN generators).

    θ_ema ← β·θ_ema + (1 − β)·θ      after every generator step; buffers (BN statistics) are copied

Sampling from the averaged generator gives better images than the last iterate (Karras et al., 2018,
"Progressive Growing of GANs", §A.1; Yazıcı et al., 2019, "The Unusual Effectiveness of Averaging in GAN
Training"). The average is a frozen copy (eval mode, no grad) held outside the module tree, so it is in no
optimizer; its state for checkpoints is :meth:`EMA.state_dict`. The trainer's GAN objective keeps its
average as a submodule instead (``objectives/gan.py``: in the checkpoints' model state) and updates it
with the same :func:`ema_update_`.
"""
from __future__ import annotations

import copy

import torch
from torch import nn


@torch.no_grad()
def ema_update_(average: nn.Module, live: nn.Module, decay: float) -> None:
    """In place: θ_avg ← β·θ_avg + (1 − β)·θ for every parameter of ``average`` (matched by name in
    ``live``), and ``live``'s buffers (BN statistics) copied."""
    params = dict(live.named_parameters())
    for name, p in average.named_parameters():
        p.lerp_(params[name].detach(), 1.0 - decay)
    buffers = dict(live.named_buffers())
    for name, b in average.named_buffers():
        b.copy_(buffers[name])


class EMA:
    """``EMA(generator, decay)``; ``ema.update(generator)`` after each step; ``ema.module`` samples."""

    def __init__(self, module: nn.Module, decay: float):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"ema_decay={decay} must be in [0, 1)")
        self.decay = decay
        self.num_updates = 0
        self.module = copy.deepcopy(module).eval().requires_grad_(False)

    def update(self, module: nn.Module) -> None:
        """θ_ema ← β·θ_ema + (1 − β)·θ for every parameter (matched by name); buffers copied."""
        ema_update_(self.module, module, self.decay)
        self.num_updates += 1

    def state_dict(self) -> dict:
        """Everything a checkpoint needs: decay, update count and the averaged weights."""
        return {"decay": self.decay, "num_updates": self.num_updates,
                "module": {k: v.detach().clone() for k, v in self.module.state_dict().items()}}

    def load_state_dict(self, state: dict) -> None:
        self.decay, self.num_updates = float(state["decay"]), int(state["num_updates"])
        self.module.load_state_dict(state["module"])
