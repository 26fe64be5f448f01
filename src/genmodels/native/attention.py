"""Unmasked attention with narrow heads (d = 8 or 16) as one native call forward and one backward
(``gm_attention_forward`` / ``gm_attention_backward`` in csrc/attention.c), for training on CPU.

    O = softmax(s·Q Kᵀ) V,   saved for the backward: Q, K, V, O and L = logsumexp_j(s·Q Kᵀ)_ij

The backward recomputes P from L (FlashAttention's algorithm 4) instead of storing the (B, H, T, T)
probabilities. It is the ``"native"`` kernel of :mod:`genmodels.nn.attention` (:func:`native_attention`,
registered into its kernel table when this module is imported, which ``import genmodels`` does): it runs
inputs :func:`preferred` accepts and hands the others to PyTorch's fused kernel; that one stays the
definition: tests hold the two equal, values and gradients.
"""
from __future__ import annotations

import ctypes

import torch
from torch.autograd.function import once_differentiable

from ..nn.attention import register_kernel, sdpa_attention
from . import library

HEAD_DIMS = (8, 16)  # the widths csrc/attention.c is specialised for; wider heads run PyTorch's fused kernel well


def unsupported(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask, is_causal: bool) -> str | None:
    """Why these inputs take the PyTorch path (``None``: the native kernel runs them)."""
    if mask is not None or is_causal:
        return "masked or causal attention"
    if q.dim() != 4 or k.shape != q.shape or v.shape != q.shape:
        return "grouped-query heads or unequal query/key lengths"
    if q.shape[-1] not in HEAD_DIMS:
        return f"head width {q.shape[-1]} (the kernel has {HEAD_DIMS})"
    if any(t.dtype != torch.float32 or t.device.type != "cpu" for t in (q, k, v)):
        return "not float32 on the CPU"
    if library() is None:
        return "native kernels unavailable"
    return None


def preferred(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask, is_causal: bool) -> bool:
    """Whether the ``"native"`` attention kernel should run these inputs here: it supports them
    (:func:`unsupported`) and the library was built with AVX2/FMA or AVX-512 vectors; on other builds the
    kernel is correct but slower than PyTorch's (bench_narrow_attention.py: 0.6–0.7× on SSE only)."""
    return unsupported(q, k, v, mask, is_causal) is None and bool(library().gm_attention_fast())


def _strides(*tensors: torch.Tensor) -> ctypes.Array:
    """(b, h, t) strides of each (B, H, T, d) tensor, in floats, as the C ``st`` array."""
    return (ctypes.c_int64 * (3 * len(tensors)))(*(s for t in tensors for s in t.stride()[:3]))


def _rows(t: torch.Tensor) -> torch.Tensor:
    """``t`` with its last dimension contiguous (the kernels read each row of d values in one piece)."""
    return t if t.stride(-1) == 1 else t.contiguous()


def _empty_bthd(like: torch.Tensor) -> torch.Tensor:
    """A (B, H, T, d) tensor laid out as (B, T, H, d): what attention's caller reshapes to (B, T, H·d) for free.
    Made with its strides, not as a transposed view (a view made inside a custom Function may not be
    modified in place later, which sdpa's output may)."""
    b, h, t, d = like.shape
    return like.new_empty_strided((b, h, t, d), (t * h * d, d, h * d, 1))


class _NarrowAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, scale):
        q, k, v = _rows(q), _rows(k), _rows(v)
        b, h, t, d = q.shape
        o = _empty_bthd(q)
        lse = q.new_empty(b, h, t)
        rc = library().gm_attention_forward(b, h, t, d, scale, q.data_ptr(), k.data_ptr(), v.data_ptr(), o.data_ptr(),
                                            lse.data_ptr(), _strides(q, k, v, o), torch.get_num_threads())
        _check(rc, "forward")
        ctx.save_for_backward(q, k, v, o, lse)
        ctx.scale = scale
        return o

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        q, k, v, o, lse = ctx.saved_tensors
        grad = _rows(grad)
        b, h, t, d = q.shape
        dqkv = q.new_empty(b, t, 3, h, d)  # one buffer: a fused projection's gradient is a free view of it
        dq, dk, dv = (dqkv[:, :, i].transpose(1, 2) for i in range(3))
        rc = library().gm_attention_backward(b, h, t, d, ctx.scale, q.data_ptr(), k.data_ptr(), v.data_ptr(),
                                             o.data_ptr(), grad.data_ptr(), lse.data_ptr(), dq.data_ptr(),
                                             dk.data_ptr(), dv.data_ptr(), _strides(q, k, v, o, grad, dq, dk, dv),
                                             torch.get_num_threads())
        _check(rc, "backward")
        return dq, dk, dv, None


def _check(rc: int, which: str) -> None:
    if rc == 2:
        raise MemoryError(f"native attention {which}: could not allocate its scratch memory")
    if rc != 0:
        raise RuntimeError(f"native attention {which} refused its inputs (code {rc})")


def narrow_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None = None) -> torch.Tensor:
    """softmax(s·QKᵀ)V for q, k, v (B, H, T, d) -> (B, H, T, d), s = ``scale`` or d^-½, through the kernel
    (differentiable once); inputs it does not support (:func:`unsupported`) raise ``ValueError``."""
    why = unsupported(q, k, v, None, False)
    if why is not None:
        raise ValueError(f"native attention cannot run these inputs: {why}")
    return apply_checked(q, k, v, scale)


def apply_checked(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None = None) -> torch.Tensor:
    """:func:`narrow_attention` for inputs a caller has already checked (:func:`preferred`): no second check."""
    return _NarrowAttention.apply(q, k, v, q.shape[-1] ** -0.5 if scale is None else float(scale))


def native_attention(q, k, v, mask=None, scale=None, is_causal=False):
    """The ``"native"`` kernel of :mod:`genmodels.nn.attention`: unmasked attention with narrow heads
    (d = 8 or 16) through the native kernel, forward and backward; other inputs go to ``sdpa_attention``."""
    if not preferred(q, k, v, mask, is_causal):
        return sdpa_attention(q, k, v, mask, scale, is_causal)
    return apply_checked(q, k, v, scale)  # (preferred has checked the inputs)


register_kernel("native", native_attention, preferred)
