"""Components against torch's own modules or independent, hand-written definitions.

Reference-library (Hugging Face) comparisons of the same components live in tests/parity/transformers/.
"""
from __future__ import annotations

import math

import pytest
import torch

from genmodels.nn import (MLP, ALiBi, GatedMLP, LayerNorm, RMSNorm, RotaryEmbedding, SinusoidalPositionalEmbedding,
                          alibi_slopes, apply_rotary, build_mask, make_mlp, make_norm, reference_attention,
                          sdpa_attention)
from genmodels.nn.mlp import ACTIVATIONS
from genmodels.nn.position import sinusoidal_table

from tests.helpers.tiny import randomise

torch.set_num_threads(1)

MODULE_TOL = dict(atol=1e-6, rtol=1e-5)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---- norms ----------------------------------------------------------------------------------
@pytest.mark.parametrize("eps", [1e-5, 1e-12])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("scale", [1.0, 1e-3])  # 1e-3: variance ~1e-6, where eps 1e-5 vs 1e-12 matters
def test_layernorm_matches_torch(eps, bias, scale):
    ours = randomise(LayerNorm(64, eps=eps, bias=bias))
    ref = torch.nn.LayerNorm(64, eps=eps, bias=bias)
    ref.load_state_dict(ours.state_dict())
    x = (torch.randn(2, 5, 64, generator=gen(1)) + 3.0) * scale
    torch.testing.assert_close(ours(x), ref(x), **MODULE_TOL)
    assert (ours.bias is None) == (not bias)


def test_make_norm_passes_eps_and_bias():
    ln = make_norm("layernorm", 64, 1e-12, bias=False)
    assert isinstance(ln, LayerNorm) and ln.eps == 1e-12 and ln.bias is None
    rms = make_norm("rmsnorm", 64, 1e-5)
    assert isinstance(rms, RMSNorm) and rms.eps == 1e-5
    with pytest.raises(ValueError, match="batchnorm"):
        make_norm("batchnorm", 64, 1e-5)


@pytest.mark.parametrize("eps", [1e-5, 1e-6])
def test_rmsnorm_matches_formula(eps):
    norm = randomise(RMSNorm(64, eps=eps))
    x = torch.randn(3, 7, 64, generator=gen(2)) * 1e-3  # small: eps visibly matters
    x64 = x.double()
    want = x64 / torch.sqrt((x64 ** 2).mean(-1, keepdim=True) + eps) * norm.weight.double()
    torch.testing.assert_close(norm(x), want.float(), **MODULE_TOL)


# ---- positions ------------------------------------------------------------------------------
def test_sinusoidal_table_matches_vaswani_formula():
    max_len, d = 50, 64
    want = torch.empty(max_len, d, dtype=torch.float64)
    for t in range(max_len):
        for i in range(d // 2):
            angle = t / 10000.0 ** (2 * i / d)
            want[t, 2 * i] = math.sin(angle)
            want[t, 2 * i + 1] = math.cos(angle)
    torch.testing.assert_close(sinusoidal_table(max_len, d), want.float(), **MODULE_TOL)
    emb = SinusoidalPositionalEmbedding(max_len, d)
    pos = torch.tensor([[0, 3, 49], [7, 7, 1]])
    torch.testing.assert_close(emb(pos), want.float()[pos], **MODULE_TOL)
    assert len(emb.state_dict()) == 0  # a fixed table is not a weight


def rope_by_hand(x: torch.Tensor, positions: torch.Tensor, rot_dim: int, theta: float = 10000.0) -> torch.Tensor:
    """Half-split RoPE written out per channel pair, in float64: channel i pairs with i + rot_dim/2,
    angle = pos · θ^(−2i/rot_dim); channels ≥ rot_dim pass through. x (B, H, T, D), positions (B, T)."""
    out = x.double().clone()
    half = rot_dim // 2
    for i in range(half):
        angle = positions.double() * theta ** (-2 * i / rot_dim)  # (B, T)
        c, s = torch.cos(angle)[:, None], torch.sin(angle)[:, None]  # (B, 1, T)
        a, b = x[..., i].double(), x[..., i + half].double()
        out[..., i] = a * c - b * s
        out[..., i + half] = b * c + a * s
    return out.float()


@pytest.mark.parametrize("fraction", [1.0, 0.5])
def test_rope_matches_hand_written_rotation(fraction):
    head_dim = 16
    rope = RotaryEmbedding(head_dim, theta=10000.0, fraction=fraction)
    assert rope.rot_dim == int(head_dim * fraction)
    positions = torch.arange(7, 7 + 12)[None].expand(2, 12).clone()
    positions[1] += 5  # rows at different offsets
    x = torch.randn(2, 3, 12, head_dim, generator=gen(3))
    cos, sin = rope(positions)
    got = apply_rotary(x, cos, sin)
    torch.testing.assert_close(got, rope_by_hand(x, positions, rope.rot_dim), **MODULE_TOL)
    if fraction < 1.0:
        assert torch.equal(got[..., rope.rot_dim:], x[..., rope.rot_dim:])


def test_rope_relative_property():
    """q·k after rotation depends only on the position difference (the reason RoPE exists)."""
    rope = RotaryEmbedding(16)
    q, k = torch.randn(1, 1, 1, 16, generator=gen(4)), torch.randn(1, 1, 1, 16, generator=gen(5))

    def dot(pq, pk):
        cq, sq = rope(torch.tensor([[pq]]))
        ck, sk = rope(torch.tensor([[pk]]))
        return (apply_rotary(q, cq, sq) * apply_rotary(k, ck, sk)).sum()

    torch.testing.assert_close(dot(10, 3), dot(27, 20), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(dot(10, 3), dot(10, 4), atol=1e-3)


@pytest.mark.parametrize("n_heads", [4, 8])
def test_alibi_slopes_power_of_two(n_heads):
    want = torch.tensor([2.0 ** (-8 * (h + 1) / n_heads) for h in range(n_heads)])
    torch.testing.assert_close(alibi_slopes(n_heads), want, **MODULE_TOL)


def test_alibi_bias_is_minus_slope_times_distance():
    alibi = ALiBi(4)
    q_pos, k_pos = torch.arange(5, 8), torch.arange(8)
    bias = alibi(q_pos, k_pos)
    assert bias.shape == (1, 4, 3, 8)
    for h in range(4):
        for i, qp in enumerate(q_pos.tolist()):
            for j in range(8):
                assert bias[0, h, i, j].item() == pytest.approx(-alibi.slopes[h].item() * (qp - j), abs=1e-6)


# ---- feed-forward ---------------------------------------------------------------------------
def gelu_exact(x):
    return 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))


def gelu_tanh(x):
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


def relu(x):
    return torch.clamp(x, min=0.0)


def silu(x):
    return x * torch.sigmoid(x)


@pytest.mark.parametrize("kind,act", [("gelu", gelu_exact), ("gelu_tanh", gelu_tanh), ("relu", relu)])
@pytest.mark.parametrize("bias", [True, False])
def test_mlp_matches_hand_written(kind, act, bias):
    mlp = randomise(make_mlp(kind, 64, 176, bias)).double()  # float64: the formula, not fp32 rounding
    assert isinstance(mlp, MLP)
    x = torch.randn(2, 5, 64, generator=gen(6), dtype=torch.float64) * 2
    w = mlp.state_dict()
    h = x @ w["fc1.weight"].T + (w["fc1.bias"] if bias else 0)
    want = act(h) @ w["fc2.weight"].T + (w["fc2.bias"] if bias else 0)
    torch.testing.assert_close(mlp(x), want, **MODULE_TOL)


@pytest.mark.parametrize("kind,act", [("swiglu", silu), ("geglu", gelu_exact), ("geglu_tanh", gelu_tanh)])
def test_gated_mlp_matches_hand_written(kind, act):
    f = 176
    mlp = randomise(make_mlp(kind, 64, f, False)).double()  # float64: the formula, not fp32 rounding
    assert isinstance(mlp, GatedMLP)
    x = torch.randn(2, 5, 64, generator=gen(7), dtype=torch.float64) * 2
    w = mlp.gate_up.weight
    gate, up = x @ w[:f].T, x @ w[f:].T  # rows [0, F) gate, [F, 2F) up
    want = (act(gate) * up) @ mlp.down.weight.T
    torch.testing.assert_close(mlp(x), want, **MODULE_TOL)


def test_gelu_variants_differ():
    """genmodels' activation table: each name is its formula (float64), and exact and tanh GELU are different
    functions, apart by far more than MODULE_TOL, so the mapping tests above see a mixed-up mapping."""
    x = torch.linspace(-3, 3, 101, dtype=torch.float64)
    for name, formula in (("gelu", gelu_exact), ("gelu_tanh", gelu_tanh), ("relu", relu), ("silu", silu)):
        torch.testing.assert_close(ACTIVATIONS[name](x), formula(x), **MODULE_TOL, msg=name)
    assert (ACTIVATIONS["gelu"](x) - ACTIVATIONS["gelu_tanh"](x)).abs().max() > 1e-4


# ---- masks and attention kernels --------------------------------------------------------------
def allowed_by_hand(q_len, k_len, start, window, key_padding):
    """(B, Tq, Tk) bool: query i at position start+i sees key j iff j ≤ start+i, within the window,
    and the key is not padding."""
    b = key_padding.shape[0] if key_padding is not None else 1
    out = torch.zeros(b, q_len, k_len, dtype=torch.bool)
    for r in range(b):
        for i in range(q_len):
            for j in range(k_len):
                ok = j <= start + i
                if window is not None:
                    ok = ok and (start + i) - j < window
                if key_padding is not None:
                    ok = ok and bool(key_padding[r, j])
                out[r, i, j] = ok
    return out


@pytest.mark.parametrize("q_len,k_len,start,window,padded", [
    (8, 8, 0, None, True),
    (8, 8, 0, 3, False),
    (3, 10, 7, None, False),  # chunked prefill: queries fewer than keys (bottom-right aligned)
    (3, 10, 7, 4, True),
    (1, 10, 9, 4, True),  # one decode step with a window
])
def test_build_mask_matches_rules(q_len, k_len, start, window, padded):
    kp = None
    if padded:
        kp = torch.ones(2, k_len, dtype=torch.long)
        kp[0, :2] = 0
    mask, is_causal = build_mask(q_len, k_len, start=start, window=window, key_padding=kp)
    assert not is_causal and mask is not None
    want = allowed_by_hand(q_len, k_len, start, window, kp)
    m = mask[:, 0].expand(want.shape)
    assert torch.equal(m == 0, want)
    assert (m[~want] == torch.finfo(torch.float32).min).all()


def test_build_mask_fast_paths():
    assert build_mask(8, 8) == (None, True)  # square causal: SDPA's is_causal is right
    assert build_mask(1, 9, start=8) == (None, False)  # one decode token sees the whole past
    mask, is_causal = build_mask(3, 10, start=7)  # never is_causal when queries < keys
    assert not is_causal and mask is not None
    assert build_mask(4, 4, window=8)[1] is True  # window not reached: still the fast path
    assert build_mask(4, 4, causal=False) == (None, False)


def attention_by_hand(q, k, v, allowed, scale=None):
    """Loop over (batch, head, query) with an explicit softmax, in float64. allowed (B|1, Tq, Tk)."""
    b, h, tq, d = q.shape
    g = h // k.shape[1]
    scale = d ** -0.5 if scale is None else scale
    out = torch.zeros(b, h, tq, d, dtype=torch.float64)
    for bi in range(b):
        for hi in range(h):
            kv = hi // g  # KV head j serves query heads j·g … j·g+g−1
            for i in range(tq):
                sel = allowed[min(bi, allowed.shape[0] - 1), i]
                s = (k[bi, kv].double() @ q[bi, hi, i].double()) * scale
                s = s.masked_fill(~sel, float("-inf"))
                p = torch.softmax(s, -1)
                out[bi, hi, i] = p @ v[bi, kv].double()
    return out.float()


CASES = {  # name: (H, H_kv, q_len, k_len, start, window, padded)
    "mha-causal": (4, 4, 12, 12, 0, None, False),
    "mha-padded": (4, 4, 12, 12, 0, None, True),
    "gqa-window": (4, 2, 12, 12, 0, 5, False),
    "gqa-padded-window": (4, 2, 12, 12, 0, 5, True),
    "mqa-padded": (4, 1, 12, 12, 0, None, True),
    "mqa-chunked-prefill": (4, 1, 3, 12, 9, None, False),
    "gqa-chunked-window-padded": (4, 2, 3, 12, 9, 4, True),
    "gqa-decode-step": (4, 2, 1, 12, 11, 6, True),
}


def _attention_case(name):
    h, hkv, tq, tk, start, window, padded = CASES[name]
    g = gen(8)
    q = torch.randn(2, h, tq, 16, generator=g)
    k = torch.randn(2, hkv, tk, 16, generator=g)
    v = torch.randn(2, hkv, tk, 16, generator=g)
    kp = None
    if padded:
        kp = torch.ones(2, tk, dtype=torch.long)
        kp[1, :3] = 0
    mask, is_causal = build_mask(tq, tk, start=start, window=window, key_padding=kp)
    allowed = allowed_by_hand(tq, tk, start, window, kp)
    return q, k, v, mask, is_causal, allowed


@pytest.mark.parametrize("name", list(CASES))
def test_sdpa_equals_reference_attention(name):
    q, k, v, mask, is_causal, allowed = _attention_case(name)
    ref = reference_attention(q, k, v, mask, None, is_causal)
    fused = sdpa_attention(q, k, v, mask, None, is_causal)
    live = allowed.any(-1)[:, None, :, None].expand_as(ref)  # rows with at least one visible key
    torch.testing.assert_close(fused[live], ref[live], **MODULE_TOL)


@pytest.mark.parametrize("name", list(CASES))
def test_reference_attention_matches_loop_definition(name):
    q, k, v, mask, is_causal, allowed = _attention_case(name)
    ref = reference_attention(q, k, v, mask, None, is_causal)
    want = attention_by_hand(q, k, v, allowed)
    live = allowed.any(-1)[:, None, :, None].expand_as(ref)
    torch.testing.assert_close(ref[live], want[live], **MODULE_TOL)


@pytest.mark.parametrize("kernel", [reference_attention, sdpa_attention])
def test_attention_scale_argument(kernel):
    q, k, v, mask, is_causal, allowed = _attention_case("gqa-window")
    got = kernel(q, k, v, mask, 1.0, is_causal)  # T5: unscaled scores
    want = attention_by_hand(q, k, v, allowed, scale=1.0)
    torch.testing.assert_close(got, want, **MODULE_TOL)


def test_is_causal_fast_path_equals_explicit_mask():
    q, k, v = (torch.randn(2, 4, 10, 16, generator=gen(9)) for _ in range(3))
    explicit = torch.zeros(1, 1, 10, 10).masked_fill(~torch.ones(10, 10, dtype=torch.bool).tril(),
                                                     torch.finfo(torch.float32).min)
    for kernel in (reference_attention, sdpa_attention):
        torch.testing.assert_close(kernel(q, k, v, None, None, True), kernel(q, k, v, explicit, None, False),
                                   **MODULE_TOL)


def test_decode_layout_keeps_values_and_restores_the_layout():
    from genmodels.nn.layout import decode_layout
    from tests.helpers.tiny import tiny_model
    m = tiny_model("llama")
    before = {k: v.clone() for k, v in m.state_dict().items()}
    ids = torch.randint(0, 128, (2, 12))
    ref = m(ids)
    with decode_layout(m):
        assert not m.blocks[0].attn.qkv.weight.is_contiguous()  # column-major inside
        torch.testing.assert_close(m(ids), ref, atol=1e-5, rtol=1e-5)
    assert all(p.is_contiguous() for p in m.parameters())
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())
