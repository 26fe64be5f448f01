"""Retention (nn/retention.py): the raw forms agree, torchscale's MSR modes agree, buffers, prefill → steps."""
from __future__ import annotations

import math

import pytest
import torch

from genmodels.nn.retention import (MultiScaleRetention, retention_angles, retention_chunkwise, retention_parallel,
                                    retention_recurrent, retention_step)

torch.set_num_threads(1)

H, DK, DV = 3, 8, 6


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def qkv(t: int, dtype: torch.dtype, seed: int = 0):
    g = gen(seed)
    q, k = (torch.randn(2, H, t, DK, generator=g, dtype=dtype) for _ in range(2))
    v = torch.randn(2, H, t, DV, generator=g, dtype=dtype)
    return q, k, v


def gammas(dtype: torch.dtype) -> torch.Tensor:
    return 1 - 2.0 ** (-torch.tensor([1.0, 2.0, 5.0], dtype=dtype))     # strong decays: the state matters less


def msr(eps: float = 0.0, seed: int = 0, dtype=torch.float32) -> MultiScaleRetention:
    torch.manual_seed(seed)
    m = MultiScaleRetention(d_model=16, n_heads=2, value_dim=24, eps=eps).to(dtype)
    with torch.no_grad():   # larger weights than the init so the rescalings and the ε actually matter
        for p in m.parameters():
            p.normal_(0, 0.5, generator=gen(seed + p.numel()))
        m.out_proj.weight.mul_(0.2)     # keeps |y| ~ 5 so fp32 rounding stays far below the 1e-5 tolerances
    return m


def naive(q, k, v, gamma):
    """An independent definition: o_n = Σ_{m ≤ n} γ^(n−m) (q_n·k_m) v_m, one row at a time."""
    out = torch.zeros(*q.shape[:-1], v.shape[-1], dtype=q.dtype)
    for n in range(q.shape[-2]):
        for m in range(n + 1):
            w = (q[:, :, n] * k[:, :, m]).sum(-1) * gamma ** (n - m)      # (B, H)
            out[:, :, n] += w[..., None] * v[:, :, m]
    return out


# ---- (1) raw forms --------------------------------------------------------------------------
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float64, 1e-10)])
@pytest.mark.parametrize("chunk", [4, 5, 16])
def test_raw_forms_parallel_recurrent_chunkwise_agree(dtype, tol, chunk):
    t = 12                              # chunk 4 divides T, 5 leaves a short last chunk, 16 > T
    q, k, v = qkv(t, dtype)
    g = gammas(dtype)
    par = retention_parallel(q, k, v, g)
    rec, s_rec = retention_recurrent(q, k, v, g)
    chk, s_chk = retention_chunkwise(q, k, v, g, chunk)
    torch.testing.assert_close(par, naive(q, k, v, g), atol=tol, rtol=0)
    torch.testing.assert_close(rec, par, atol=tol, rtol=0)
    torch.testing.assert_close(chk, par, atol=tol, rtol=0)
    torch.testing.assert_close(s_chk, s_rec, atol=tol, rtol=0)


def test_raw_chunkwise_state_continues_in_recurrent_steps():
    q, k, v = qkv(11, torch.float64)
    g = gammas(torch.float64)
    full = retention_parallel(q, k, v, g)
    _, state = retention_chunkwise(q[:, :, :7], k[:, :, :7], v[:, :, :7], g, 3)
    for t in range(7, 11):
        o, state = retention_step(q[:, :, t], k[:, :, t], v[:, :, t], g, state)
        torch.testing.assert_close(o, full[:, :, t], atol=1e-10, rtol=0)


# ---- (2) MultiScaleRetention modes ------------------------------------------------------------
@pytest.mark.parametrize("eps", [0.0, 1e-20])  # the head-norm ε is all that separates the forms
@pytest.mark.parametrize("chunk", [4, 5])
def test_msr_modes_agree_at_eps_zero(chunk, eps):
    m = msr(eps=eps)
    x = torch.randn(2, 12, 16, generator=gen(1))
    with torch.no_grad():
        par, s_par = m(x, mode="parallel")
        rec, s_rec = m(x, mode="recurrent")
        chk, s_chk = m(x, mode="chunkwise", chunk_size=chunk)
    torch.testing.assert_close(rec, par, atol=1e-5, rtol=0)
    torch.testing.assert_close(chk, par, atol=1e-5, rtol=0)
    for a, b in ((s_par, s_rec), (s_chk, s_rec)):
        torch.testing.assert_close(a[0], b[0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(a[1], b[1], atol=1e-5, rtol=1e-5)


def test_msr_parallel_and_recurrent_agree_at_default_eps():
    m = msr(eps=1e-6)
    x = torch.randn(2, 12, 16, generator=gen(2))
    with torch.no_grad():
        par, _ = m(x, mode="parallel")
        rec, _ = m(x, mode="recurrent")
    torch.testing.assert_close(rec, par, atol=1e-5, rtol=0)


def test_msr_recurrent_matches_torchscale_scale_recurrence_definition():
    """The recurrent state equals U_n/√s_n with U_n = Σ γ^(n−m) k_mᵀv_m and s_n = Σ γ^(n−m) (closed form)."""
    m = msr(dtype=torch.float64)
    x = torch.randn(1, 6, 16, generator=gen(3), dtype=torch.float64)
    with torch.no_grad():
        _, (big_s, s) = m(x, mode="recurrent")
        k = (m.k_proj(x) * m.scaling).view(1, 6, 2, 8).transpose(1, 2)
        from genmodels.nn.retention import theta_shift
        k = theta_shift(k, m.angle)
        v = m.v_proj(x).view(1, 6, 2, 12).transpose(1, 2)
    gamma = m.decay.exp()
    _, u = retention_recurrent(torch.zeros_like(k), k, v, gamma)
    s_ref = (1 - gamma ** 6) / (1 - gamma)
    torch.testing.assert_close(s[0], s_ref, atol=1e-12, rtol=0)
    torch.testing.assert_close(big_s, u / s_ref.sqrt()[:, None, None], atol=1e-12, rtol=0)


def test_msr_value_dim_differs_from_d_model_and_torchscale_names():
    m = msr()
    assert m.v_proj.weight.shape == (24, 16) and m.g_proj.weight.shape == (24, 16)
    assert m.out_proj.weight.shape == (16, 24) and m.q_proj.weight.shape == (16, 16)
    assert all(getattr(m, n).bias is None for n in ("q_proj", "k_proj", "v_proj", "g_proj", "out_proj"))
    assert set(m.state_dict()) == {f"{n}.weight" for n in ("q_proj", "k_proj", "v_proj", "g_proj", "out_proj")}


# ---- (3) buffers ----------------------------------------------------------------------------
def test_decay_buffer_is_log_one_minus_two_pow_minus_5_minus_h():
    m = MultiScaleRetention(d_model=32, n_heads=4, value_dim=48)
    expected = torch.tensor([math.log(1 - 2.0 ** (-5 - h)) for h in range(4)])
    torch.testing.assert_close(m.decay, expected, atol=1e-7, rtol=0)


def test_angles_are_interleaved_pairs_of_linspace_frequencies():
    m = MultiScaleRetention(d_model=32, n_heads=2)        # d_k = 16 -> 8 angles, each twice
    base = [1 / 10000 ** (i / 7) for i in range(8)]
    expected = torch.tensor([a for a in base for _ in range(2)])
    torch.testing.assert_close(m.angle, expected, atol=1e-7, rtol=1e-6)
    torch.testing.assert_close(retention_angles(16), expected, atol=1e-7, rtol=1e-6)


def test_rotation_acts_on_interleaved_pairs():
    """Position 1 rotates the pair (x0, x1) by θ0 = 1 rad: (cos1, sin1) from (1, 0); x2.. stay untouched."""
    from genmodels.nn.retention import theta_shift
    x = torch.zeros(1, 1, 2, 8)
    x[..., 0] = 1.0
    y = theta_shift(x, retention_angles(8))
    torch.testing.assert_close(y[0, 0, 1, :2], torch.tensor([math.cos(1.0), math.sin(1.0)]))
    torch.testing.assert_close(y[0, 0, 1, 2:], torch.zeros(6))
    torch.testing.assert_close(y[0, 0, 0], x[0, 0, 0])


# ---- (4) prefill then steps -------------------------------------------------------------------
@pytest.mark.parametrize("prefill_mode,chunk", [("chunkwise", 3), ("chunkwise", 4), ("parallel", None)])
def test_prefill_then_recurrent_steps_equal_full_parallel_pass(prefill_mode, chunk):
    m = msr(eps=0.0)
    x = torch.randn(2, 13, 16, generator=gen(4))
    p = 8
    with torch.no_grad():
        full, _ = m(x, mode="parallel")
        pre, state = m(x[:, :p], mode=prefill_mode, chunk_size=chunk)
        torch.testing.assert_close(pre, full[:, :p], atol=1e-5, rtol=0)
        for t in range(p, 13):
            y, state = m(x[:, t:t + 1], mode="recurrent", state=state, offset=t)
            torch.testing.assert_close(y[:, 0], full[:, t], atol=1e-5, rtol=0)


def test_multi_token_continuation_from_a_state_equals_full_pass():
    m = msr(eps=0.0)
    x = torch.randn(1, 12, 16, generator=gen(5))
    with torch.no_grad():
        full, s_full = m(x, mode="parallel")
        _, state = m(x[:, :5], mode="chunkwise", chunk_size=2)
        rest, s_rest = m(x[:, 5:], mode="chunkwise", state=state, offset=5, chunk_size=3)
    torch.testing.assert_close(rest, full[:, 5:], atol=1e-5, rtol=0)
    torch.testing.assert_close(s_rest[0], s_full[0], atol=1e-5, rtol=1e-5)


# ---- (5) O(1) state --------------------------------------------------------------------------
def test_recurrent_state_size_does_not_depend_on_prefix_length():
    m = msr()
    sizes = set()
    with torch.no_grad():
        for p in (1, 4, 17):
            x = torch.randn(1, p, 16, generator=gen(p))
            _, (big_s, s) = m(x, mode="chunkwise", chunk_size=4)
            _, (big_s, s) = m(x[:, :1], mode="recurrent", state=(big_s, s), offset=p)
            sizes.add((tuple(big_s.shape), tuple(s.shape)))
    assert sizes == {((1, 2, 8, 12), (1, 2))}


def test_bad_mode_is_refused_naming_the_field():
    with pytest.raises(ValueError, match="mode"):
        msr()(torch.zeros(1, 2, 16), mode="attention")


# ---- torchscale's pre-norm rescalings, against vectorised hand-written definitions -----------------
def _rotated(m, x):
    from genmodels.nn.retention import theta_shift
    b, t, _ = x.shape
    q = m.q_proj(x).view(b, t, m.n_heads, m.key_dim).transpose(1, 2)
    k = (m.k_proj(x) * m.scaling).view(b, t, m.n_heads, m.key_dim).transpose(1, 2)
    v = m.v_proj(x).view(b, t, m.n_heads, m.head_dim).transpose(1, 2)
    return theta_shift(q, m.angle), theta_shift(k, m.angle), v


def _decay(t, log_g):
    i = torch.arange(t, dtype=log_g.dtype)
    dist = i[:, None] - i[None, :]
    return torch.where(dist >= 0, torch.exp(dist.clamp(min=0) * log_g[:, None, None]), torch.zeros(()).double())


def test_parallel_prenorm_rows_are_torchscale_rescaled():
    """Before the head norm: (QKᵀ ⊙ D/√rowsum(D)) / max(|row sum|, 1) · V — the rescalings the norm hides."""
    m = msr(dtype=torch.float64)
    x = torch.randn(2, 9, 16, generator=gen(6), dtype=torch.float64)
    with torch.no_grad():
        q, k, v = _rotated(m, x)
        y, _ = m._parallel(q, k, v)
    d = _decay(9, m.decay)
    d = d / d.sum(-1, keepdim=True).sqrt()
    sc = (q @ k.transpose(-1, -2)) * d
    ref = (sc / sc.sum(-1, keepdim=True).abs().clamp(min=1)) @ v
    torch.testing.assert_close(y, ref, atol=1e-12, rtol=0)


@pytest.mark.parametrize("t", [8, 10])
def test_chunkwise_prenorm_rows_are_torchscale_aligned(t):
    """torchscale's chunk form, right-padded to whole chunks: inner rows / Σ|·| clamped at 1, the cross part from
    the state divided by its own max column abs-sum (≥ 1), both re-aligned to the larger of the two scales."""
    c = 4
    m = msr(dtype=torch.float64)
    x = torch.randn(2, t, 16, generator=gen(7), dtype=torch.float64)
    with torch.no_grad():
        q, k, v = _rotated(m, x)
        y, _ = m._chunkwise(q, k, v, c)
    pad = (-t) % c
    q, k, v = (torch.nn.functional.pad(a, (0, 0, 0, pad)) for a in (q, k, v))
    b, h, n = q.shape[0], q.shape[1], (t + pad) // c
    q, k, v = (a.view(b, h, n, c, a.shape[-1]).transpose(1, 2) for a in (q, k, v))   # (B, N, H, C, d)
    mask = _decay(c, m.decay)                                                       # (H, C, C)
    s_loc = mask.sum(-1, keepdim=True).sqrt()
    s_c = mask[:, -1].sum(-1)[:, None, None]
    sc = (q @ k.transpose(-1, -2)) * (mask / s_loc)
    inner_scale = sc.abs().sum(-1, keepdim=True).clamp(min=1)
    inner = (sc / inner_scale) @ v
    kv = k.transpose(-1, -2) @ (v * (mask[:, -1] / s_c[..., 0])[..., None])          # (B, N, H, dk, dv)
    state, scale, outs = torch.zeros_like(kv[:, 0]), torch.ones(b, h, 1, 1).double(), []
    for i in range(n):
        qi = q[:, i] * (torch.exp(m.decay[:, None] * torch.arange(1, c + 1).double())[..., None] * s_c / s_loc)
        cross = qi @ (state / scale)
        both = torch.maximum(inner_scale[:, i], scale)
        outs.append(inner[:, i] * inner_scale[:, i] / both + cross * scale / both)
        state = state * torch.exp(m.decay * c)[:, None, None] + kv[:, i]
        scale = state.abs().sum(-2, keepdim=True).amax(-1, keepdim=True).clamp(min=1)
    ref = torch.stack(outs, 1).transpose(1, 2).reshape(b, h, n * c, -1)[:, :, :t]
    torch.testing.assert_close(y, ref, atol=1e-12, rtol=0)
