"""Retention (Sun et al., 2023, "Retentive Network: A Successor to Transformer for Large Language Models",
arXiv 2307.08621) in its three equal forms, and torchscale 0.3.0's ``MultiScaleRetention``.

Per head, with decay γ ∈ (0, 1), queries/keys (B, H, T, d_k), values (B, H, T, d_v)::

    parallel                    recurrent (token n)             chunkwise (chunk i of size C, in-chunk row j)
    ------------------------    ----------------------------    ----------------------------------------------
    D[n,m] = γ^(n−m), n ≥ m     S_n = γ·S_{n−1} + k_nᵀ v_n      R_i = K_[i]ᵀ(V_[i] ⊙ ζ) + γ^C·R_{i−1}
           = 0,       n < m     o_n = q_n S_n                   O_[i] = (Q_[i]K_[i]ᵀ ⊙ D_C) V_[i] + (Q_[i]R_{i−1}) ⊙ ξ
    O = (Q Kᵀ ⊙ D) V                                            ζ_j = γ^(C−1−j),  ξ_j = γ^(j+1),  R_{−1} = 0

    D: (H, T, T)                S_n: (B, H, d_k, d_v)           R_i: (B, H, d_k, d_v)
    O: (B, H, T, d_v)           o_n: (B, H, d_v)                O_[i]: (B, H, C, d_v)

All three are equal in exact arithmetic; the final state of each (S_{T−1}, equal to the last chunk's R) lets a
prefill hand over to recurrent steps. A length that is not a multiple of C is handled by a shorter last chunk
(its ζ uses its own length, so the state stays exact — no right padding).

``MultiScaleRetention`` adds what torchscale 0.3.0 does around the raw form: q = W_Q x, k = W_K x / √d_k, v = W_V x;
a GPT-J-style rotation on interleaved pairs (2i, 2i+1) with angles θ_i = 1/10000^(i/(d_k/2−1)) (positions start at
``offset``); per-head decay γ_h = 1 − 2^(−5−h); per-row rescalings that the head norm cancels (decay rows divided
by √(row sum); score rows divided by a detached max(|row sum|, 1); the recurrent scale s_n = γ s_{n−1} + 1 with
S_n = S_{n−1}·γ·√(s_{n−1}/s_n) + k_nᵀv_n/√s_n; chunkwise inner/cross parts aligned to a shared max scale); a
per-head RMSNorm without affine in fp32; and MSR(X) = W_O(swish(W_G X) ⊙ Y). Because of the rescalings the three
modes agree only up to the head-norm ε (exactly at ε = 0).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

State = tuple[torch.Tensor, torch.Tensor]  # (S: (B, H, d_k, d_v), scale s: (B, H))


# ---- raw retention (no rescaling) -------------------------------------------------------------
def _log_gamma(gamma: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """log γ per head as a (H,) tensor in ``like``'s dtype/device."""
    return torch.log(torch.as_tensor(gamma, dtype=like.dtype, device=like.device))


def decay_mask(length: int, log_gamma: torch.Tensor) -> torch.Tensor:
    """D[h, n, m] = γ_h^(n−m) for n ≥ m, else 0.  (H, T, T), in log_gamma's dtype."""
    idx = torch.arange(length, device=log_gamma.device, dtype=log_gamma.dtype)
    dist = idx[:, None] - idx[None, :]                                    # (T, T)
    causal = dist >= 0
    d = torch.exp(dist.clamp(min=0) * log_gamma[:, None, None])           # (H, T, T)
    return d * causal


def retention_parallel(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
    """O = (Q Kᵀ ⊙ D) V.  q, k (B, H, T, d_k), v (B, H, T, d_v), gamma (H,) -> (B, H, T, d_v)."""
    d = decay_mask(q.shape[-2], _log_gamma(gamma, q))
    return ((q @ k.transpose(-1, -2)) * d) @ v


def retention_step(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, gamma: torch.Tensor,
                   state: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One recurrent step: S_n = γ S_{n−1} + k_nᵀ v_n, o_n = q_n S_n.

    q, k (B, H, d_k), v (B, H, d_v), state (B, H, d_k, d_v) or None (= zeros) -> (o (B, H, d_v), new state).
    """
    kv = k.unsqueeze(-1) * v.unsqueeze(-2)                                # (B, H, d_k, d_v)
    if state is not None:
        g = torch.as_tensor(gamma, dtype=q.dtype, device=q.device)
        kv = state * g[:, None, None] + kv
    return (q.unsqueeze(-2) @ kv).squeeze(-2), kv


def retention_recurrent(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, gamma: torch.Tensor,
                        state: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The recurrent form over a whole sequence: T steps.  -> (O (B, H, T, d_v), final state (B, H, d_k, d_v))."""
    outs = []
    for t in range(q.shape[-2]):
        o, state = retention_step(q[:, :, t], k[:, :, t], v[:, :, t], gamma, state)
        outs.append(o)
    return torch.stack(outs, dim=2), state


def retention_chunkwise(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, gamma: torch.Tensor, chunk_size: int,
                        state: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Inner-chunk parallel + cross-chunk state. T need not be a multiple of ``chunk_size`` (last chunk shorter).

    q, k (B, H, T, d_k), v (B, H, T, d_v), state (B, H, d_k, d_v) or None -> (O (B, H, T, d_v), final state).
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size: must be >= 1, got {chunk_size}")
    log_g = _log_gamma(gamma, q)
    b, h, t, dk = q.shape
    if state is None:
        state = q.new_zeros(b, h, dk, v.shape[-1])
    outs = []
    for start in range(0, t, chunk_size):
        qc, kc, vc = (x[:, :, start:start + chunk_size] for x in (q, k, v))
        n = qc.shape[-2]
        j = torch.arange(n, device=q.device, dtype=q.dtype)
        inner = ((qc @ kc.transpose(-1, -2)) * decay_mask(n, log_g)) @ vc         # (B, H, n, d_v)
        xi = torch.exp((j + 1)[None, :] * log_g[:, None])                        # (H, n)   γ^(j+1)
        cross = (qc @ state) * xi[:, :, None]                                   # (B, H, n, d_v)
        outs.append(inner + cross)
        zeta = torch.exp((n - 1 - j)[None, :] * log_g[:, None])                  # (H, n)   γ^(n−1−j)
        state = kc.transpose(-1, -2) @ (vc * zeta[:, :, None]) + state * torch.exp(n * log_g)[:, None, None]
    return torch.cat(outs, dim=2), state


# ---- torchscale's multi-scale retention -------------------------------------------------------
def retention_decay(n_heads: int) -> torch.Tensor:
    """log γ_h with γ_h = 1 − 2^(−5−h), h = 0…H−1 (torchscale stores the log).  (H,)"""
    return torch.log(1 - 2.0 ** (-5 - torch.arange(n_heads, dtype=torch.float)))


def retention_angles(head_dim: int) -> torch.Tensor:
    """θ_i = 1/10000^linspace(0, 1, d_k/2), each repeated for its interleaved pair: [θ0, θ0, θ1, θ1, …].  (d_k,)"""
    angle = 1.0 / (10000 ** torch.linspace(0, 1, head_dim // 2))
    return angle.repeat_interleave(2)


def rotate_every_two(x: torch.Tensor) -> torch.Tensor:
    """(…, d) -> (…, d) with pairs (x_{2i}, x_{2i+1}) -> (−x_{2i+1}, x_{2i}) (GPT-J layout, not HF's half split)."""
    x1, x2 = x[..., ::2], x[..., 1::2]
    return torch.stack((-x2, x1), dim=-1).flatten(-2)


def theta_shift(x: torch.Tensor, angle: torch.Tensor, offset: int = 0) -> torch.Tensor:
    """Rotate (B, H, T, d_k) at positions offset…offset+T−1: x·cos(nθ) + rot(x)·sin(nθ)."""
    pos = torch.arange(offset, offset + x.shape[-2], device=x.device, dtype=angle.dtype)
    ang = pos[:, None] * angle[None, :]                                          # (T, d_k)
    return x * torch.cos(ang).to(x.dtype) + rotate_every_two(x) * torch.sin(ang).to(x.dtype)


class MultiScaleRetention(nn.Module):
    """torchscale 0.3.0's MSR: W_O(swish(W_G x) ⊙ RMSNorm_head(Retention(x))), value width ``value_dim``.

    forward(x (B, T, d_model), mode, state, offset, chunk_size) -> (y (B, T, d_model), state), where state is
    (S (B, H, d_k, d_v), s (B, H)) after the last token in torchscale's recurrent convention (S = U/√s with U the
    raw state Σ γ^(n−m) k_mᵀ v_m and s = Σ γ^(n−m)), so any mode's state continues in recurrent steps.
    Without a state the modes reproduce torchscale's per-row scalings exactly (the chunkwise mode's short last
    chunk gives the real rows of torchscale's right-padded one); given a state, parallel/chunkwise continue it
    with the recurrent convention (rows divided by √s_n only), which the head norm makes equivalent.
    """

    def __init__(self, d_model: int, n_heads: int, value_dim: int | None = None, eps: float = 1e-6,
                 chunk_size: int = 512):
        super().__init__()
        value_dim = d_model if value_dim is None else value_dim
        for name, width in (("d_model", d_model), ("value_dim", value_dim)):
            if width % n_heads:
                raise ValueError(f"{name}: must be divisible by n_heads={n_heads}, got {width}")
        if (d_model // n_heads) % 2:
            raise ValueError(f"d_model: d_model/n_heads must be even for the rotation, got {d_model // n_heads}")
        self.n_heads, self.key_dim, self.head_dim = n_heads, d_model // n_heads, value_dim // n_heads
        self.scaling = self.key_dim ** -0.5
        self.eps, self.chunk_size = eps, chunk_size
        self.q_proj = nn.Linear(d_model, d_model, bias=False)
        self.k_proj = nn.Linear(d_model, d_model, bias=False)
        self.v_proj = nn.Linear(d_model, value_dim, bias=False)
        self.g_proj = nn.Linear(d_model, value_dim, bias=False)
        self.out_proj = nn.Linear(value_dim, d_model, bias=False)
        self.register_buffer("decay", retention_decay(n_heads), persistent=False)        # log γ (H,)
        self.register_buffer("angle", retention_angles(self.key_dim), persistent=False)   # (d_k,)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """torchscale's init: xavier_uniform with gain 2^−2.5 for q/k/v/g, 2^−1 for out."""
        for lin in (self.q_proj, self.k_proj, self.v_proj, self.g_proj):
            nn.init.xavier_uniform_(lin.weight, gain=2 ** -2.5)
        nn.init.xavier_uniform_(self.out_proj.weight, gain=2 ** -1)

    # -- the three modes on rotated (B, H, T, d_k) q/k and (B, H, T, d_v) v; each returns (Y, (S, s)) --
    def _parallel(self, q, k, v):
        log_g = self.decay.to(q.dtype)
        d = decay_mask(q.shape[-2], log_g)                                       # (H, T, T)
        row = d.sum(-1, keepdim=True)                                           # (H, T, 1)  s_n
        scores = (q @ k.transpose(-1, -2)) * (d / row.sqrt())
        scores = scores / scores.detach().sum(-1, keepdim=True).abs().clamp(min=1)
        zeta = d[:, -1, :, None]                                                # (H, T, 1)  γ^(T−1−m)
        u = k.transpose(-1, -2) @ (v * zeta)                                    # (B, H, d_k, d_v)
        return scores @ v, self._state(u, row[:, -1, 0], q.shape[0])

    def _chunkwise(self, q, k, v, chunk_size):
        log_g = self.decay.to(q.dtype)
        b, h, t, _ = q.shape
        s_c = torch.exp(torch.arange(chunk_size, device=q.device, dtype=q.dtype)[None, :] * log_g[:, None]).sum(-1)
        s_c = s_c[:, None, None]                                                # (H, 1, 1)  Σ_{j<C} γ^j
        u = q.new_zeros(b, h, self.key_dim, self.head_dim)                      # raw R_{i−1}
        outs = []
        for start in range(0, t, chunk_size):
            qc, kc, vc = (x[:, :, start:start + chunk_size] for x in (q, k, v))
            n = qc.shape[-2]
            j = torch.arange(n, device=q.device, dtype=q.dtype)
            d = decay_mask(n, log_g)                                             # (H, n, n)
            s_loc = d.sum(-1, keepdim=True).sqrt()                              # (H, n, 1)  √(local row sum)
            scores = (qc @ kc.transpose(-1, -2)) * (d / s_loc)
            inner_scale = scores.detach().abs().sum(-1, keepdim=True).clamp(min=1)  # (B, H, n, 1)
            inner = (scores / inner_scale) @ vc
            kv = u / s_c
            cross_scale = kv.detach().abs().sum(-2, keepdim=True).amax(-1, keepdim=True).clamp(min=1)  # (B,H,1,1)
            xi = torch.exp((j + 1)[:, None] * log_g[:, None, None]) * s_c / s_loc  # (H, n, 1)
            cross = (qc * xi) @ (kv / cross_scale)
            both = torch.maximum(inner_scale, cross_scale)
            outs.append(inner * (inner_scale / both) + cross * (cross_scale / both))
            zeta = torch.exp((n - 1 - j)[:, None] * log_g[:, None, None])        # (H, n, 1)
            u = kc.transpose(-1, -2) @ (vc * zeta) + u * torch.exp(n * log_g)[:, None, None]
        s_t = torch.exp(torch.arange(t, device=q.device, dtype=q.dtype)[None, :] * log_g[:, None]).sum(-1)
        return torch.cat(outs, dim=2), self._state(u, s_t, b)

    def _recurrent(self, q, k, v, state):
        gamma = self.decay.to(q.dtype).exp()                                    # (H,)
        outs = []
        for t in range(q.shape[-2]):
            kv = k[:, :, t, :, None] * v[:, :, t, None, :]                      # (B, H, d_k, d_v)
            if state is None:
                s = torch.ones(q.shape[0], self.n_heads, dtype=q.dtype, device=q.device)
                big_s = kv
            else:
                prev, s_prev = state
                s = s_prev * gamma + 1
                big_s = (prev * (gamma * (s_prev / s).sqrt())[..., None, None]
                         + kv / s.sqrt()[..., None, None])
            state = (big_s, s)
            outs.append((q[:, :, t, None, :] @ big_s).squeeze(-2))
        return torch.stack(outs, dim=2), state

    def _continue(self, q, k, v, state, chunk_size):
        """Multi-token pass from a given state: the raw chunkwise form on U = S·√s, rows divided by √s_n."""
        big_s, s_prev = state
        log_g = self.decay.to(q.dtype)
        u0 = big_s * s_prev.sqrt()[..., None, None]
        out, u = retention_chunkwise(q, k, v, log_g.exp(), chunk_size, u0)
        n = torch.arange(1, q.shape[-2] + 1, device=q.device, dtype=q.dtype)
        gn = torch.exp(n[None, :] * log_g[:, None])                             # (H, T)  γ^(j+1)
        s_n = gn * s_prev[..., None] + (1 - gn) / (1 - log_g.exp())[:, None]    # (B, H, T)
        return out / s_n.sqrt()[..., None], (u / s_n[..., -1].sqrt()[..., None, None], s_n[..., -1])

    def _state(self, u: torch.Tensor, s: torch.Tensor, batch: int) -> State:
        """(U raw (B, H, d_k, d_v), s (H,)) -> torchscale's recurrent state (U/√s, s broadcast to (B, H))."""
        return u / s.sqrt()[:, None, None], s.expand(batch, -1).clone()

    def _norm(self, y: torch.Tensor) -> torch.Tensor:
        """Per-head RMSNorm over d_v without affine, in fp32."""
        yf = y.float()
        return (yf * torch.rsqrt(yf.pow(2).mean(-1, keepdim=True) + self.eps)).to(y.dtype)

    def forward(self, x: torch.Tensor, mode: str = "parallel", state: State | None = None, offset: int = 0,
                chunk_size: int | None = None) -> tuple[torch.Tensor, State]:
        """x (B, T, d_model) -> (y (B, T, d_model), (S, s)).  ``offset``: position of x[:, 0] (rotation)."""
        if mode not in ("parallel", "chunkwise", "recurrent"):
            raise ValueError(f"mode: must be one of parallel, chunkwise, recurrent, got {mode!r}")
        chunk_size = self.chunk_size if chunk_size is None else chunk_size
        if chunk_size < 1:
            raise ValueError(f"chunk_size: must be >= 1, got {chunk_size}")
        b, t, _ = x.shape
        q = self.q_proj(x).view(b, t, self.n_heads, self.key_dim).transpose(1, 2)          # (B, H, T, d_k)
        k = (self.k_proj(x) * self.scaling).view(b, t, self.n_heads, self.key_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, t, self.n_heads, self.head_dim).transpose(1, 2)        # (B, H, T, d_v)
        q, k = theta_shift(q, self.angle, offset), theta_shift(k, self.angle, offset)
        if mode == "recurrent":
            y, state = self._recurrent(q, k, v, state)
        elif state is not None:
            y, state = self._continue(q, k, v, state, chunk_size if mode == "chunkwise" else t)
        elif mode == "chunkwise":
            y, state = self._chunkwise(q, k, v, chunk_size)
        else:
            y, state = self._parallel(q, k, v)
        y = self._norm(y).transpose(1, 2).reshape(b, t, self.n_heads * self.head_dim)    # (B, T, value_dim)
        return self.out_proj(F.silu(self.g_proj(x)) * y), state
