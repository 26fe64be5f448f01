"""How a model's modules map onto the kernels' C structs, shared by decoder.py, encoder.py and retnet.py:
activation and norm codes (csrc/common.h), the checks that the kernels may read a model's weights in
place, and :class:`Pinned` (pointers with their tensors kept alive). Nothing here loads the library.
"""
from __future__ import annotations

import functools

import torch

from ..nn.linear import is_plain
from ..nn.quantized import QuantizedLinear
from ..nn.norm import LayerNorm, RMSNorm
from .switches import SwitchError

ACTIVATIONS = {"gelu": 0, "gelu_tanh": 1, "relu": 2, "silu": 3}  # the ACT_* codes of csrc/common.h


def norm_kind(m: torch.nn.Module) -> int | None:
    """NORM_LAYER (0) / NORM_RMS (1) of csrc/common.h, or None for another module."""
    return 0 if type(m) is LayerNorm else 1 if type(m) is RMSNorm else None


def hooked(model: torch.nn.Module) -> str | None:
    """Why a native path would skip part of ``model``'s forward: a forward (pre-)hook on one of its modules or a
    global one (an activation probe, a steering edit). The kernels compute the blocks without calling any
    module, so such a model runs the PyTorch path, which calls its hooks (``None``: no hooks)."""
    from torch.nn.modules import module as torch_module
    if torch_module._global_forward_hooks or torch_module._global_forward_pre_hooks:
        return "a global forward hook is registered (the native kernels would not call it)"
    for name, m in model.named_modules():
        if m._forward_hooks or m._forward_pre_hooks:
            return f"module {name or type(model).__name__} has a forward hook (the native kernels would not call it)"
    return None


def hook_count(model: torch.nn.Module) -> int:
    """How many forward hooks ``model``'s modules and the global registry hold (a memo's fingerprint entry)."""
    from torch.nn.modules import module as torch_module
    return (len(torch_module._global_forward_hooks) + len(torch_module._global_forward_pre_hooks)
            + sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules()))


def unsupported_tensors(tensors) -> str | None:
    """Why the kernels cannot read these parameters/buffers in place (None: they can)."""
    tensors = list(tensors)
    if any(type(t.data) is not torch.Tensor for t in tensors):  # e.g. FSDP's DTensor shards
        return "parameters are not plain tensors (sharded?)"
    if any(t.dtype != torch.float32 or t.device.type != "cpu" or not t.is_contiguous() for t in tensors):
        return "needs contiguous fp32 CPU weights"
    return None


def _projections(block: torch.nn.Module) -> dict[str, torch.nn.Module | None]:
    """The matrix products of a block that the kernels read as plain weights, by name."""
    attn, mlp, cross = block.attn, block.mlp, getattr(block, "cross", None)
    out = {"attn.qkv": getattr(attn, "qkv", None), "attn.out": getattr(attn, "out", None)}
    # a sparse MoE has no linears: its stacked weights are read as such (decoder.unsupported checks its parts)
    names = ("gate_up", "down") if hasattr(mlp, "gate_up") else () if hasattr(mlp, "router") else ("fc1", "fc2")
    out.update({f"mlp.{n}": getattr(mlp, n, None) for n in names})
    if cross is not None:
        out.update({f"cross.{n}": getattr(cross, n, None) for n in ("q", "kv", "out")})
    return out


def unplain_projection(blocks, quantized: bool = False) -> str | None:
    """Why the kernels must not read these blocks' projections in place: one that is not exactly an
    ``nn.Linear`` (an adapter, a quantised or otherwise wrapped linear computes something its base
    weight alone does not), or ``None``. ``quantized``: the caller reads a self-attention or MLP
    :class:`QuantizedLinear`'s blocks as such (the decode step, csrc/quant.c)."""
    for i, block in enumerate(blocks):
        for name, mod in _projections(block).items():
            if quantized and type(mod) is QuantizedLinear and not name.startswith("cross."):
                continue
            if not is_plain(mod):  # a merged LoRA linear is plain again (nn/linear.is_plain)
                return f"block {i} {name} is a {type(mod).__name__}, not a plain nn.Linear"
    return None


def never_raises(check):
    """Wrap an ``unsupported(model)`` check so that a model it does not know is a reason, never an
    exception (the PyTorch path then runs it)."""

    @functools.wraps(check)
    def wrapped(model):
        try:
            return check(model)
        except SwitchError:  # a mistyped environment switch is the user's to fix, not a fallback
            raise
        except Exception as e:  # an unknown model class or part: not ours to read
            return f"model layout not recognised ({type(e).__name__}: {e})"
    return wrapped


class Pinned:
    """Pointers for a C struct, with the tensors they point into kept alive (detached: kept even if
    a parameter's ``.data`` is replaced while the struct lives)."""

    def __init__(self):
        self.tensors: list[torch.Tensor] = []

    def __call__(self, t: torch.Tensor | None) -> int | None:
        if t is None:
            return None
        self.tensors.append(t.detach())
        return t.data_ptr()
