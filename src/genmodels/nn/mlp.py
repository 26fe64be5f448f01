"""Position-wise feed-forward networks.

MLP (Vaswani et al., 2017):       FFN(x) = W₂ · act(W₁x + b₁) + b₂, act ∈ {GELU, tanh-GELU, ReLU}.
Gated (Shazeer, 2020, "GLU Variants Improve Transformer"):
    SwiGLU(x) = W_down · (SiLU(W_gate x) ⊙ W_up x),  GeGLU uses GELU in place of SiLU.
The gated form keeps W_gate and W_up in one fused matrix ``gate_up`` (one matmul instead of two);
rows [0, F) are the gate, rows [F, 2F) the up projection. Each linear comes from the ``linear``
factory (:mod:`genmodels.nn.linear`; roles ``up``/``down``, resp. ``gate_up``/``down``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .lean import gated_product
from .linear import LinearFactory, Slices, contiguous_slices, plain_linear

ACTIVATIONS = {
    "gelu": lambda x: F.gelu(x),
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
    "silu": F.silu,
}


class MLP(nn.Module):
    """Two-layer MLP: ``fc2(act(fc1(x)))``. (B, T, D) -> (B, T, F) -> (B, T, D)."""

    def __init__(self, d_model: int, d_ff: int, activation: str = "gelu", bias: bool = True, *,
                 linear: LinearFactory = plain_linear, layer: int | None = None):
        super().__init__()
        self.fc1 = linear(d_model, d_ff, bias, role="up", layer=layer)
        self.fc2 = linear(d_ff, d_model, bias, role="down", layer=layer)
        self.activation = activation
        self.act = ACTIVATIONS[activation]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class GatedMLP(nn.Module):
    """Gated MLP: ``down(act(gate(x)) ⊙ up(x))`` with gate and up fused in ``gate_up``."""

    def __init__(self, d_model: int, d_ff: int, activation: str = "silu", bias: bool = False, *,
                 linear: LinearFactory = plain_linear, layer: int | None = None):
        super().__init__()
        self.d_ff = d_ff
        self.gate_up = linear(d_model, 2 * d_ff, bias, role="gate_up", layer=layer, slices=self.slices())
        self.down = linear(d_ff, d_model, bias, role="down", layer=layer)
        self.activation = activation
        self.act = ACTIVATIONS[activation]

    def slices(self) -> Slices:
        """Output rows of ``gate_up`` per HF projection: ``{"gate": (0, F), "up": (F, 2F)}``."""
        return contiguous_slices(gate=self.d_ff, up=self.d_ff)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # act(gate) * up of gate_up (B, T, 2F) -> (B, T, F); the backward keeps gate_up alone (nn/lean.py)
        return self.down(gated_product(self.gate_up(x), self.d_ff, self.act))


GATED = {"swiglu": "silu", "geglu": "gelu", "geglu_tanh": "gelu_tanh"}  # gated kind -> gate activation


def make_mlp(kind: str, d_model: int, d_ff: int, bias: bool, *, linear: LinearFactory = plain_linear,
             layer: int | None = None) -> nn.Module:
    """Build the feed-forward a config names: gelu | gelu_tanh | relu | swiglu | geglu | geglu_tanh."""
    if kind in GATED:
        return GatedMLP(d_model, d_ff, GATED[kind], bias, linear=linear, layer=layer)
    if kind in ("gelu", "gelu_tanh", "relu"):
        return MLP(d_model, d_ff, kind, bias, linear=linear, layer=layer)
    raise ValueError(f"unknown mlp {kind!r}")
