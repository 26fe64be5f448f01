"""Position-wise feed-forward networks.

MLP (Vaswani et al., 2017):       FFN(x) = W₂ · act(W₁x + b₁) + b₂, act ∈ {GELU, tanh-GELU, ReLU}.
Gated (Shazeer, 2020, "GLU Variants Improve Transformer"):
    SwiGLU(x) = W_down · (SiLU(W_gate x) ⊙ W_up x),  GeGLU uses GELU in place of SiLU.
The gated form keeps W_gate and W_up in one fused matrix ``gate_up`` (one matmul instead of two);
rows [0, F) are the gate, rows [F, 2F) the up projection.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

ACTIVATIONS = {
    "gelu": lambda x: F.gelu(x),
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
    "silu": F.silu,
}


class MLP(nn.Module):
    """Two-layer MLP: ``fc2(act(fc1(x)))``. (B, T, D) -> (B, T, F) -> (B, T, D)."""

    def __init__(self, d_model: int, d_ff: int, activation: str = "gelu", bias: bool = True):
        super().__init__()
        self.fc1 = nn.Linear(d_model, d_ff, bias=bias)
        self.fc2 = nn.Linear(d_ff, d_model, bias=bias)
        self.activation = activation
        self.act = ACTIVATIONS[activation]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class GatedMLP(nn.Module):
    """Gated MLP: ``down(act(gate(x)) ⊙ up(x))`` with gate and up fused in ``gate_up``."""

    def __init__(self, d_model: int, d_ff: int, activation: str = "silu", bias: bool = False):
        super().__init__()
        self.d_ff = d_ff
        self.gate_up = nn.Linear(d_model, 2 * d_ff, bias=bias)
        self.down = nn.Linear(d_ff, d_model, bias=bias)
        self.activation = activation
        self.act = ACTIVATIONS[activation]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up(x).split(self.d_ff, dim=-1)  # (B, T, F) each
        return self.down(self.act(gate) * up)


GATED = {"swiglu": "silu", "geglu": "gelu", "geglu_tanh": "gelu_tanh"}  # gated kind -> gate activation


def make_mlp(kind: str, d_model: int, d_ff: int, bias: bool) -> nn.Module:
    """Build the feed-forward a config names: gelu | gelu_tanh | relu | swiglu | geglu | geglu_tanh."""
    if kind in GATED:
        return GatedMLP(d_model, d_ff, GATED[kind], bias)
    if kind in ("gelu", "gelu_tanh", "relu"):
        return MLP(d_model, d_ff, kind, bias)
    raise ValueError(f"unknown mlp {kind!r}")
