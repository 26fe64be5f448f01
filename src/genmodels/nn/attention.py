"""Scaled dot-product attention (Vaswani et al., 2017) with grouped-query heads (Ainslie et al., 2023).

    Attention(Q, K, V) = softmax(Q Kᵀ · s + M) V,   s = 1/√d by default (T5: s = 1)

Q has H heads, K and V have H_kv heads (H_kv = H: multi-head; 1 < H_kv < H: grouped-query;
H_kv = 1: multi-query); key/value head j serves query heads j·g … j·g+g−1 with g = H / H_kv.
M is the additive mask of :mod:`genmodels.nn.masks`.

Interchangeable kernels compute it, by name in :data:`KERNELS`: ``"sdpa"`` (:func:`sdpa_attention`,
PyTorch's fused ``scaled_dot_product_attention``, the default), ``"reference"``
(:func:`reference_attention`: plain matmuls, softmax in fp32 — the readable definition) and
``"native"`` (genmodels' CPU kernel for unmasked narrow heads, e.g. a diffusion UNet's; anything else
goes to sdpa). Tests hold them equal. A kernel from above this floor registers itself
(:func:`register_kernel`): :mod:`genmodels.native.attention` registers ``"native"`` when imported
(``import genmodels`` does), so nn/ imports nothing above it; until then ``"native"`` is sdpa.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .kv_cache import LayerKVCache
from .linear import LinearFactory, Slices, contiguous_slices, plain_linear
from .position import apply_rotary


def reference_attention(q, k, v, mask=None, scale=None, is_causal=False):
    """q ``(B, H, Tq, D)``, k/v ``(B, H_kv, Tk, D)``, mask additive ``(B|1, H|1, Tq, Tk)`` -> ``(B, H, Tq, D)``."""
    h, h_kv = q.shape[1], k.shape[1]
    if h != h_kv:
        k = k.repeat_interleave(h // h_kv, dim=1)
        v = v.repeat_interleave(h // h_kv, dim=1)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    scores = torch.matmul(q, k.transpose(-1, -2)) * scale  # (B, H, Tq, Tk)
    if is_causal:
        tq, tk = scores.shape[-2:]
        future = torch.ones(tq, tk, dtype=torch.bool, device=q.device).triu(1)
        scores = scores.masked_fill(future, torch.finfo(scores.dtype).min)
    if mask is not None:
        scores = scores + mask
    probs = torch.softmax(scores.float(), dim=-1).to(q.dtype)
    return torch.matmul(probs, v)


def sdpa_attention(q, k, v, mask=None, scale=None, is_causal=False):
    """The same through ``F.scaled_dot_product_attention`` (fused kernels; GQA without copies)."""
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal, scale=scale,
                                          enable_gqa=q.shape[1] != k.shape[1])


# name -> kernel(q, k, v, mask=None, scale=None, is_causal=False) -> (B, H, Tq, D)
KERNELS: dict[str, Callable[..., torch.Tensor]] = {"sdpa": sdpa_attention, "reference": reference_attention,
                                                   "native": sdpa_attention}  # until genmodels.native registers
# name -> prefers(q, k, v, mask, is_causal): whether the kernel runs these inputs with its own code
# (a registered kernel hands the others to sdpa)
_PREFERS: dict[str, Callable[..., bool]] = {}


def register_kernel(name: str, kernel: Callable[..., torch.Tensor],
                    prefers: Callable[..., bool] | None = None) -> None:
    """Make ``kernel`` the attention kernel called ``name`` (``SelfAttention(kernel=name)``); ``prefers``
    says which inputs it runs with its own code (:func:`kernel_prefers`)."""
    KERNELS[name] = kernel
    if prefers is not None:
        _PREFERS[name] = prefers


def kernel_prefers(name: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask=None,
                   is_causal: bool = False) -> bool:
    """Whether kernel ``name`` runs these inputs with its own code (False for sdpa and reference, which
    register no preference, and for a kernel not registered yet)."""
    prefers = _PREFERS.get(name)
    return prefers is not None and bool(prefers(q, k, v, mask, is_causal))


@dataclass
class PackedRows:
    """The real tokens of a padded batch ``(B, T)`` packed into one row ``(1, N, ·)``.

    Layers that treat tokens independently (projections, FFN, norms, residuals) then skip the
    padding; attention scatters its q/k/v rows back to ``(B, T)`` (zeros at pads, which the key
    mask hides) and packs its output again. ``index``: flat positions ``b·T + t`` of real tokens.
    """

    index: torch.Tensor  # (N,)
    batch: int
    length: int

    @classmethod
    def from_mask(cls, attention_mask: torch.Tensor) -> "PackedRows":
        b, t = attention_mask.shape
        return cls(attention_mask.reshape(-1).nonzero().squeeze(1), b, t)

    def pack(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, F) -> (1, N, F)
        return x.reshape(-1, x.shape[-1]).index_select(0, self.index)[None]

    def pad(self, x: torch.Tensor) -> torch.Tensor:  # (1, N, F) -> (B, T, F), zeros at pads
        out = x.new_zeros(self.batch * self.length, x.shape[-1])
        return out.index_copy_(0, self.index, x[0]).view(self.batch, self.length, -1)


@dataclass
class AttentionInputs:
    """What every attention layer of one forward shares: computed once by the model."""

    mask: torch.Tensor | None = None  # additive (B|1, H|1, Tq, Tk)
    is_causal: bool = False  # let SDPA apply its (top-left) causal mask: square, unpadded only
    rope: tuple[torch.Tensor, torch.Tensor] | None = None  # (cos, sin), each (B, 1, T, d_rot)
    start: int = 0  # cache position of the first query
    packed: PackedRows | None = None  # hidden states arrive packed (1, N, D) (encoders, no cache)


def _own(v: torch.Tensor) -> torch.Tensor:
    """A ``(B, H, T, D)`` head-major view of a ``(B, T, ·)`` projection, copied into its own ``(B, T, H, D)``
    storage (the view's layout: the kernels compute the same bits), so keeping it keeps nothing else."""
    return v.transpose(1, 2).contiguous().transpose(1, 2)


class SelfAttention(nn.Module):
    """Multi-/grouped-/multi-query self-attention with fused QKV projection.

    ``qkv``: D -> (H + 2·H_kv)·d, rows ordered [q heads | k heads | v heads]; ``out``: H·d -> D.
    Causality, windows and padding arrive in the mask; RoPE, when the model uses it, in ``ctx.rope``.

    ``qkv`` / ``out`` may be passed in (an adapter around a linear, a quantised linear): any module
    mapping ``(…, D) -> (…, (H + 2·H_kv)·d)`` resp. ``(…, H·d) -> (…, D)``; else the ``linear``
    factory (:mod:`genmodels.nn.linear`, roles ``qkv`` with its q/k/v :meth:`slices`, and ``o``)
    builds them: plain ``nn.Linear`` layers by default (the state-dict keys ``qkv.*`` / ``out.*``).
    """

    def __init__(self, d_model: int, n_heads: int, n_kv_heads: int, head_dim: int, bias: bool = False,
                 out_bias: bool = False, scale: float | None = None, kernel: str = "sdpa", *,
                 qkv: nn.Module | None = None, out: nn.Module | None = None,
                 linear: LinearFactory = plain_linear, layer: int | None = None):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = n_heads, n_kv_heads, head_dim
        self.scale = scale
        self.kernel = kernel
        width = (n_heads + 2 * n_kv_heads) * head_dim
        self.qkv = qkv if qkv is not None else linear(d_model, width, bias, role="qkv", layer=layer,
                                                      slices=self.slices())
        self.out = out if out is not None else linear(n_heads * head_dim, d_model, out_bias, role="o", layer=layer)

    def slices(self) -> Slices:
        """Output rows of ``qkv`` per HF projection: ``{"q": (0, H·d), "k": (H·d, (H+H_kv)·d), "v": …}``."""
        h, hkv, d = self.n_heads, self.n_kv_heads, self.head_dim
        return contiguous_slices(q=h * d, k=hkv * d, v=hkv * d)

    def forward(self, x: torch.Tensor, ctx: AttentionInputs, cache: LayerKVCache | None = None) -> torch.Tensor:
        h, hkv, d = self.n_heads, self.n_kv_heads, self.head_dim
        qkv = self.qkv(x)
        if ctx.packed is not None:
            qkv = ctx.packed.pad(qkv)  # (1, N, ·) -> (B, T, ·)
        b, t, _ = qkv.shape
        qkv = qkv.view(b, t, h + 2 * hkv, d).transpose(1, 2)  # (B, H+2Hkv, T, D)
        qk, v = qkv.split((h + hkv, hkv), dim=1)
        if ctx.rope is not None:
            qk = apply_rotary(qk, *ctx.rope)  # q and k heads rotated in one pass
            if v.requires_grad and torch.is_grad_enabled():
                v = _own(v)  # the kernel's backward keeps v: alone, not the whole qkv (same values)
        q, k = qk.split((h, hkv), dim=1)
        if cache is not None:
            k, v = cache.update(k, v, ctx.start)  # (B, Hkv, start+T, D)
        y = KERNELS[self.kernel](q, k, v, ctx.mask, self.scale, ctx.is_causal)  # (B, H, T, D)
        y = y.transpose(1, 2).reshape(b, t, h * d)
        if ctx.packed is not None:
            y = ctx.packed.pack(y)
        return self.out(y)


class CrossAttention(nn.Module):
    """Queries from one sequence, keys/values from another (the encoder's output).

    ``q``: D -> H·d; ``kv``: D_kv -> 2·H_kv·d (rows [k heads | v heads]); ``out``: H·d -> D. The
    memory's keys/values are computed once per sequence and may be cached by the caller. Each
    projection may be passed in, as for :class:`SelfAttention`, else the ``linear`` factory builds
    it (roles ``q``, ``kv`` with its k/v :meth:`slices`, ``o``; default: ``nn.Linear``).
    """

    def __init__(self, d_model: int, n_heads: int, n_kv_heads: int, head_dim: int, bias: bool = False,
                 out_bias: bool = False, scale: float | None = None, d_memory: int | None = None,
                 kernel: str = "sdpa", *, q: nn.Module | None = None, kv: nn.Module | None = None,
                 out: nn.Module | None = None, linear: LinearFactory = plain_linear, layer: int | None = None):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = n_heads, n_kv_heads, head_dim
        self.scale = scale
        self.kernel = kernel
        self.q = q if q is not None else linear(d_model, n_heads * head_dim, bias, role="q", layer=layer)
        self.kv = kv if kv is not None else linear(d_memory or d_model, 2 * n_kv_heads * head_dim, bias, role="kv",
                                                   layer=layer, slices=self.slices())
        self.out = out if out is not None else linear(n_heads * head_dim, d_model, out_bias, role="o", layer=layer)

    def slices(self) -> Slices:
        """Output rows of ``kv`` per HF projection: ``{"k": (0, H_kv·d), "v": (H_kv·d, 2·H_kv·d)}``."""
        return contiguous_slices(k=self.n_kv_heads * self.head_dim, v=self.n_kv_heads * self.head_dim)

    def memory_kv(self, memory: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Project the memory ``(B, S, D_kv)`` to k, v ``(B, H_kv, S, d)``: cacheable across steps."""
        b, s, _ = memory.shape
        kv = self.kv(memory).view(b, s, 2 * self.n_kv_heads, self.head_dim).transpose(1, 2)
        k, v = kv.split(self.n_kv_heads, dim=1)
        return k, v

    def forward(self, x: torch.Tensor, memory_kv: tuple[torch.Tensor, torch.Tensor],
                mask: torch.Tensor | None = None) -> torch.Tensor:
        b, t, _ = x.shape
        q = self.q(x).view(b, t, self.n_heads, self.head_dim).transpose(1, 2)  # (B, H, T, d)
        y = KERNELS[self.kernel](q, *memory_kv, mask, self.scale, False)
        return self.out(y.transpose(1, 2).reshape(b, t, self.n_heads * self.head_dim))
