"""The token losses every objective shares: next-token cross-entropy fused with the unembedding and chunked,
and per-token log-probabilities.

    L = 1/N Σ_n [ logsumexp(h_n Wᵀ + b) − (h_n Wᵀ + b)_{y_n} ]

The plain path materialises logits ``(N, V)`` in fp32, then autograd keeps them (and the
softmax) for the backward — for batch 8×256 and V = 8192 that is 64 MiB per copy.
:class:`FusedLinearCrossEntropy` instead walks the rows in chunks of ``chunk``: for each chunk
it computes the logits, the loss and, at once, the gradients

    p = softmax(z) − onehot(y);   ∂L/∂h = p W / N;   ∂L/∂W += pᵀ h / N;   ∂L/∂b += Σ p / N

so at most one ``(chunk, V)`` block ever exists, and the backward pass only scales the stored
gradients by the incoming scalar. The FLOPs equal the unfused forward + backward. Targets equal to
``ignore_index`` count for nothing (the mean is over the others, as ``F.cross_entropy``).

Pairwise objectives (DPO, reward models) need the log-probability of each target token, not the
mean: :func:`token_logprobs` gives ``log softmax(h_n Wᵀ + b)_{y_n}`` per row, chunked the same way
(its backward recomputes each chunk's logits: ``∂/∂z = g_n (onehot(y_n) − softmax(z_n))``).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .head_bf16 import amp_head_chunks

IGNORE_INDEX = -100


class FusedLinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, targets: torch.Tensor,
                chunk: int, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
        n = h.shape[0]  # h (N, D), weight (V, D), targets (N,): every row has a target (the caller keeps those)
        need = ctx.needs_input_grad
        inv_n = 1.0 / n if n else math.nan  # all ignored: nan, as F.cross_entropy
        amp = torch.get_autocast_dtype(h.device.type) if torch.is_autocast_enabled(h.device.type) else None
        if amp is not None:  # train.precision: bf16 — bf16 products, fp32 softmax and accumulation (head_bf16.py)
            total, grad_h, grad_w, grad_b = amp_head_chunks(h, weight, bias, targets, chunk, inv_n, need, amp)
            ctx.save_for_backward(grad_h, grad_w, grad_b)
            ctx.weight_dtype = weight.dtype
            return total * inv_n
        grad_h = torch.empty_like(h) if need[0] else None
        grad_w = torch.zeros_like(weight, dtype=torch.float32) if need[1] else None
        grad_b = torch.zeros_like(bias, dtype=torch.float32) if bias is not None and need[2] else None
        total = torch.zeros((), dtype=torch.float32, device=h.device)
        for s in range(0, h.shape[0], chunk):
            hc, yc = h[s:s + chunk], targets[s:s + chunk]
            z = F.linear(hc, weight, bias).float()  # (c, V)
            lse = torch.logsumexp(z, dim=-1)  # (c,)
            row = lse - z.gather(1, yc[:, None]).squeeze(1)  # (c,)
            total += row.sum()
            if grad_h is None and grad_w is None and grad_b is None:
                continue
            p = z.sub_(lse[:, None]).exp_()  # softmax, in place of the logits
            p[torch.arange(p.shape[0], device=p.device), yc] -= 1.0
            p.mul_(inv_n)
            pc = p.to(h.dtype)
            if grad_h is not None:
                torch.mm(pc, weight.to(h.dtype), out=grad_h[s:s + chunk])
            if grad_w is not None:
                grad_w.addmm_(pc.t().float(), hc.float())
            if grad_b is not None:
                grad_b += p.sum(0)
        ctx.save_for_backward(grad_h, grad_w, grad_b)
        ctx.weight_dtype = weight.dtype
        return total * inv_n

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        grad_h, grad_w, grad_b = ctx.saved_tensors
        if g.numel() == 1 and bool(g == 1):  # the loss itself is differentiated: x · 1 = x, bit for bit — skip the
            g = None  # pass over the (V, D) weight gradient (28 M floats for SmolLM2's tied head)
        out_h = _scaled(grad_h, g, grad_h.dtype if grad_h is not None else None)
        return out_h, _scaled(grad_w, g, ctx.weight_dtype), _scaled(grad_b, g, ctx.weight_dtype), None, None, None


def _scaled(grad: torch.Tensor | None, g: torch.Tensor | None, dtype: torch.dtype | None) -> torch.Tensor | None:
    """``grad · g`` in ``dtype`` (``g`` None: one, no multiply)."""
    if grad is None:
        return None
    return (grad if g is None else grad * g).to(dtype)


def fused_linear_cross_entropy(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                               targets: torch.Tensor, chunk: int = 1024,
                               ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Mean next-token loss of hidden states ``h (..., D)`` through the head ``weight (V, D)``, over
    the targets that are not ``ignore_index``.

    Only the rows with a target go through the head: with a loss on the replies only (SFT, gist), most
    rows have none, and the head's products for them — forward and input gradient, a fifth of a
    SmolLM2 step's FLOPs — would be multiplied by zero. ``h[kept]``'s backward scatters the rows'
    gradients back (zeros elsewhere), so the result equals the whole-rows computation."""
    h2 = h.reshape(-1, h.shape[-1])  # (N, D)
    y = targets.reshape(-1)  # (N,)
    kept = y != ignore_index
    if not bool(kept.all()):
        h2, y = h2[kept], y[kept]  # (n, D), (n,)
    if not torch.is_grad_enabled() or not (h.requires_grad or weight.requires_grad):
        with torch.no_grad():
            return FusedLinearCrossEntropy.forward(_NoGradCtx(), h2, weight, bias, y, chunk, ignore_index)
    return FusedLinearCrossEntropy.apply(h2, weight, bias, y, chunk, ignore_index)


class _NoGradCtx:
    needs_input_grad = (False, False, False, False, False, False)

    def save_for_backward(self, *a):
        pass


class ChunkedTokenLogprobs(torch.autograd.Function):
    """``log softmax(h Wᵀ + b)[n, y_n]`` for each row, one ``(chunk, V)`` block at a time."""

    @staticmethod
    def forward(ctx, h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, targets: torch.Tensor,
                chunk: int, ignore_index: int) -> torch.Tensor:
        valid = targets != ignore_index  # (N,)
        y = targets.masked_fill(~valid, 0)
        out = torch.empty(h.shape[0], dtype=torch.float32, device=h.device)  # (N,)
        with torch.no_grad():
            for s in range(0, h.shape[0], chunk):
                z = F.linear(h[s:s + chunk], weight, bias).float()  # (c, V)
                out[s:s + chunk] = z.gather(1, y[s:s + chunk, None]).squeeze(1) - torch.logsumexp(z, dim=-1)
        out.mul_(valid)
        ctx.save_for_backward(h, weight, bias, y, valid)
        ctx.chunk = chunk
        return out

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        h, weight, bias, y, valid = ctx.saved_tensors
        need = ctx.needs_input_grad
        grad_h = torch.empty_like(h) if need[0] else None
        grad_w = torch.zeros_like(weight, dtype=torch.float32) if need[1] else None
        grad_b = torch.zeros_like(bias, dtype=torch.float32) if bias is not None and need[2] else None
        g = (g.float() * valid)  # (N,)
        for s in range(0, h.shape[0], ctx.chunk):
            hc, yc = h[s:s + ctx.chunk], y[s:s + ctx.chunk]
            z = F.linear(hc, weight, bias).float()  # (c, V)
            d = torch.softmax(z, dim=-1).neg_()  # ∂ logp / ∂z = onehot − softmax
            d[torch.arange(d.shape[0], device=d.device), yc] += 1.0
            d.mul_(g[s:s + ctx.chunk, None])
            if grad_h is not None:
                grad_h[s:s + ctx.chunk] = d.to(h.dtype) @ weight.to(h.dtype)
            if grad_w is not None:
                grad_w.addmm_(d.t(), hc.float())
            if grad_b is not None:
                grad_b += d.sum(0)
        grad_w = grad_w.to(weight.dtype) if grad_w is not None else None
        grad_b = grad_b.to(weight.dtype) if grad_b is not None else None
        return grad_h, grad_w, grad_b, None, None, None


def token_logprobs(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, targets: torch.Tensor,
                   chunk: int = 1024, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Per-token log-probabilities ``(...)`` of ``targets (...)`` under hidden states ``h (..., D)`` and
    the head ``weight (V, D)``; 0 where the target is ``ignore_index``. Logits are never whole."""
    out = ChunkedTokenLogprobs.apply(h.reshape(-1, h.shape[-1]), weight, bias, targets.reshape(-1), chunk,
                                     ignore_index)
    return out.reshape(targets.shape)


def reference_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The readable definition (tests hold the fused path equal to it)."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1))
