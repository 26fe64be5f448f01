"""The fused head loss's chunks under bf16 autocast (``train.precision: bf16``): bf16 products, fp32 softmax and
fp32 gradient accumulation.

For each chunk of ``c`` rows — ``h_c (c, D)`` and the head ``W (V, D)``, both cast to bf16 once (``W`` once
per call, not per chunk: a frozen head, as in LoRA, is no leaf that requires grad, so autocast's cast cache
would cast it again for every product):

    z = h_c Wᵀ + b                                   bf16 product, read as fp32 (c, V)
    m = max_v z;   e = exp(z − m);   s = Σ_v e;       fp32, in place: no logsumexp temporaries
    loss_n = m_n + log s_n − z_{n, y_n}
    p = (e − s · onehot(y)) / (s · N)               fp32 — the target's −1 before any rounding — then bf16
    ∂L/∂h_c = p W;   ∂L/∂W += pᵀ h_c;   ∂L/∂b += Σ_n p        (products bf16; ∂L/∂W, ∂L/∂b kept fp32)

``∂L/∂W``'s first chunk is copied into the (uninitialised) fp32 gradient, later ones added through a small
fp32 buffer a block of rows at a time: ``fp32.add_(bf16)`` runs a scalar type-promoting loop (~9× slower
than a conversion + fp32 add on the ``(49152, 576)`` SmolLM2 head). The sums equal ``fp32 += float(bf16)``
bit for bit.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

ROWS = 4096  # rows of ∂L/∂W converted and added per block (SmolLM2: 4096 × 576 fp32 = 9 MiB)


def amp_head_chunks(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, targets: torch.Tensor,
                    chunk: int, inv_n: float, need: tuple, amp: torch.dtype):
    """Summed row losses and the gradients ``(total, grad_h, grad_w, grad_b)`` (each gradient ``None`` where
    ``need`` says it is not wanted) of ``h (N, D)`` through ``weight (V, D)``, the gradients already scaled by
    ``inv_n`` (``1/N``; every row has a target: :func:`.losses.fused_linear_cross_entropy` keeps only those)."""
    grads = need[0] or need[1] or (bias is not None and need[2])
    grad_h = torch.empty_like(h) if need[0] else None
    grad_w = None if not need[1] else (torch.empty_like(weight, dtype=torch.float32) if h.shape[0]  # (first chunk
               else torch.zeros_like(weight, dtype=torch.float32))  # copies into it; no rows: no chunk, zero)
    grad_b = torch.zeros_like(bias, dtype=torch.float32) if bias is not None and need[2] else None
    total = torch.zeros((), dtype=torch.float32, device=h.device)
    wb = weight.to(amp)  # (V, D), once
    bb = bias.to(amp) if bias is not None else None
    for s in range(0, h.shape[0], chunk):
        hb, yc = h[s:s + chunk].to(amp), targets[s:s + chunk]  # (c, D), (c,)
        z = F.linear(hb, wb, bb).float()  # (c, V)
        zy = z.gather(1, yc[:, None]).squeeze(1)  # (c,)
        m = z.amax(dim=1, keepdim=True)  # (c, 1)
        e = z.sub_(m).exp_()  # (c, V), in place of the logits
        se = e.sum(dim=1)  # (c,)
        row = m.squeeze(1) + se.log() - zy  # (c,)
        total += row.sum()
        if not grads:
            continue
        e[torch.arange(e.shape[0], device=e.device), yc] -= se  # e − s·onehot(y)
        scale = inv_n / se  # (c,)
        p = e.mul_(scale[:, None])  # (c, V) fp32
        pb = p.to(amp)
        if grad_h is not None:
            grad_h[s:s + chunk] = torch.mm(pb, wb)  # (c, V) @ (V, D)
        if grad_w is not None:
            _accumulate(grad_w, torch.mm(pb.t(), hb), first=s == 0)  # (V, c) @ (c, D)
        if grad_b is not None:
            grad_b += p.sum(0)
    return total, grad_h, grad_w, grad_b


def _accumulate(dst: torch.Tensor, src: torch.Tensor, first: bool, rows: int = ROWS) -> None:
    """``dst (fp32) = float(src)`` (first) or ``dst += float(src)``, a block of ``rows`` rows at a time."""
    if first:
        dst.copy_(src)
        return
    buf = torch.empty((min(rows, dst.shape[0]),) + tuple(dst.shape[1:]), dtype=dst.dtype, device=dst.device)
    for r in range(0, dst.shape[0], rows):
        part = buf[:src[r:r + rows].shape[0]]
        part.copy_(src[r:r + rows])
        dst[r:r + rows].add_(part)
