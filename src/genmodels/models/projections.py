"""Every linear of a model, named by its Hugging Face role: ``model.projections()``.

Our attention fuses q|k|v into one ``qkv`` linear (cross-attention: k|v into ``kv``) and the gated
MLP fuses gate|up into ``gate_up``. Adapters and tools that think in HF's separate projections
(PEFT's ``target_modules=["q_proj", "v_proj"]``) need each of them: a :class:`Projection` is a
*view* — the module that holds the weight and the output rows ``[start, stop)`` that are this role —
so one adapter per slice equals PEFT's per-projection adapters, and the slices of a fused module
cover its output rows exactly, in order.

=========  ============================================  ===========================================
role       HF name (Llama / GPT-2 / BERT / T5)           ours
=========  ============================================  ===========================================
q, k, v    q_proj, k_proj, v_proj / c_attn thirds /      ``attn.qkv`` rows (self); ``cross.q``,
           query, key, value / q, k, v                   ``cross.kv`` rows (cross)
o          o_proj / c_proj / attention.output.dense / o  ``attn.out``, ``cross.out``
gate, up   gate_proj, up_proj / — / intermediate / wi    ``mlp.gate_up`` rows; plain MLP ``mlp.fc1`` = up
down       down_proj / mlp.c_proj / output.dense / wo    ``mlp.down``, ``mlp.fc2``
router     block_sparse_moe.gate (Mixtral)               ``mlp.router``
head       lm_head                                       ``head`` (tied: the embedding's matrix)
g          g_proj (torchscale RetNet's swish gate)       ``retention.g_proj``
pooler     pooler.dense                                  ``pooler.dense``
mlm_dense  cls.predictions.transform.dense               ``mlm.dense``
=========  ============================================  ===========================================

A sparse MoE's experts are stacked weights ``(E, 2F, D)`` / ``(E, D, F)``, not linears: their
projections carry ``expert`` (and :attr:`Projection.stacked`); the linear factory does not reach
them, so an adapter must treat (or refuse) them explicitly.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..nn.attention import CrossAttention, SelfAttention
from ..nn.head import LMHead, MLMHead, Pooler
from ..nn.mlp import MLP, GatedMLP
from ..nn.moe import SparseMoE
from ..nn.retention import MultiScaleRetention


@dataclass(frozen=True, eq=False)
class Projection:
    """One HF-style projection: ``rows`` of ``module``'s output (its weight's rows ``[start, stop)``)."""

    path: str  # the module's name in model.named_modules(), e.g. "blocks.0.attn.qkv"
    role: str  # q k v o gate up down router head pooler mlm_dense
    layer: int | None  # block index within its stack (blocks / enc_blocks / dec_blocks); None outside
    module: nn.Module  # the linear as built (nn.Linear, or what the factory built); LMHead; StackedExperts
    rows: tuple[int, int]  # [start, stop) of the module's output features
    kind: str  # "self" | "cross" (attention), "mlp", "moe", "head"
    param: str = "weight"  # the weight's attribute on ``module`` (stacked experts: gate_up_proj / down_proj)
    expert: int | None = None  # the expert of a stacked weight

    @property
    def name(self) -> str:
        """Unique and readable: ``blocks.0.attn.qkv[q]``, ``blocks.1.mlp.experts.gate_up_proj[3:gate]``."""
        return f"{self.path}[{'' if self.expert is None else f'{self.expert}:'}{self.role}]"

    @property
    def stacked(self) -> bool:
        """A slice of a stacked expert weight (not a linear the factory built)."""
        return self.expert is not None

    @property
    def fused(self) -> bool:
        """Part of a wider weight (q|k|v, k|v, gate|up)."""
        return self.rows != (0, _out_features(self.module, self.param, self.expert))

    def weight(self) -> torch.Tensor:
        """The ``(stop − start, in)`` view of the weight that is this projection (no copy)."""
        w = self.module.get_weight() if isinstance(self.module, LMHead) else getattr(self.module, self.param)
        if self.expert is not None:
            w = w[self.expert]
        return w[self.rows[0]:self.rows[1]]


def _out_features(module: nn.Module, param: str = "weight", expert: int | None = None) -> int:
    if isinstance(module, LMHead):
        return module.get_weight().shape[0]
    n = getattr(module, "out_features", None)
    if isinstance(n, int) and expert is None:
        return n
    w = getattr(module, param)
    return (w[expert] if expert is not None else w).shape[0]


def _layer(path: str) -> int | None:
    """The first integer component of a module path (``dec_blocks.2.cross`` -> 2)."""
    return next((int(p) for p in path.split(".") if p.isdigit()), None)


def _sliced(path: str, module: nn.Module, slices: dict[str, tuple[int, int]], kind: str) -> list[Projection]:
    return [Projection(path, role, _layer(path), module, rows, kind) for role, rows in slices.items()]


def _whole(path: str, module: nn.Module, role: str, kind: str) -> Projection:
    return Projection(path, role, _layer(path), module, (0, _out_features(module)), kind)


def _of(path: str, m: nn.Module) -> list[Projection]:
    """The projections a known part holds itself (its own linears, not its children's parts)."""
    p = f"{path}." if path else ""
    if isinstance(m, SelfAttention):
        return _sliced(p + "qkv", m.qkv, m.slices(), "self") + [_whole(p + "out", m.out, "o", "self")]
    if isinstance(m, CrossAttention):
        return ([_whole(p + "q", m.q, "q", "cross")] + _sliced(p + "kv", m.kv, m.slices(), "cross")
                + [_whole(p + "out", m.out, "o", "cross")])
    if isinstance(m, GatedMLP):
        return _sliced(p + "gate_up", m.gate_up, m.slices(), "mlp") + [_whole(p + "down", m.down, "down", "mlp")]
    if isinstance(m, MLP):
        return [_whole(p + "fc1", m.fc1, "up", "mlp"), _whole(p + "fc2", m.fc2, "down", "mlp")]
    if isinstance(m, SparseMoE):
        return _experts(p, m)
    if isinstance(m, LMHead):
        return [_whole(p + "proj", m.proj, "head", "head") if m.proj is not None else _whole(path, m, "head", "head")]
    if isinstance(m, Pooler):
        return [_whole(p + "dense", m.dense, "pooler", "head")]
    if isinstance(m, MLMHead):
        return [_whole(p + "dense", m.dense, "mlm_dense", "head")]  # its LMHead is visited on its own
    if isinstance(m, MultiScaleRetention):  # torchscale's q/k/v/g/out_proj; g: the swish gate
        return [_whole(p + a, getattr(m, a), r, "self") for a, r in
                (("q_proj", "q"), ("k_proj", "k"), ("v_proj", "v"), ("g_proj", "g"), ("out_proj", "o"))]
    roles = getattr(type(m), "projection_roles", None)  # a part outside nn/ names its own linears
    if callable(roles):
        return [_whole(p + a, getattr(m, a), r, "mlp") for a, r in m.projection_roles().items()]
    return []


def _experts(p: str, moe: SparseMoE) -> list[Projection]:
    """The router, then per expert its gate, up (rows of ``gate_up_proj[e]``) and down."""
    router, ex = moe.router, moe.experts
    layer = _layer(p)
    out = [Projection(p + "router", "router", layer, router, (0, router.weight.shape[0]), "moe")]
    f, d = ex.d_ff, ex.down_proj.shape[1]
    for e in range(ex.n_experts):
        out += [Projection(p + "experts", "gate", layer, ex, (0, f), "moe", "gate_up_proj", e),
                Projection(p + "experts", "up", layer, ex, (f, 2 * f), "moe", "gate_up_proj", e),
                Projection(p + "experts", "down", layer, ex, (0, d), "moe", "down_proj", e)]
    return out


def projections(model: nn.Module) -> list[Projection]:
    """Every projection of ``model`` in module order (forward order within a block: q, k, v, o,
    then the feed-forward's), each fused weight's slices in row order. A plain ``nn.Linear`` that no
    known part names is refused (``ValueError`` naming it), never left out silently."""
    out = [proj for path, m in model.named_modules() for proj in _of(path, m)]
    named = {id(p.module) for p in out}
    inner = {id(c) for p in out for c in p.module.modules()}  # an adapter's own linears
    missed = [n for n, m in model.named_modules() if type(m) is nn.Linear and id(m) not in named | inner]
    if missed:
        raise ValueError(f"projections(): no role for the linear(s) {', '.join(missed[:3])}"
                         f"{' …' if len(missed) > 3 else ''} ({type(model).__name__}); name them in "
                         "models/projections.py or by the part's projection_roles()")
    return out
