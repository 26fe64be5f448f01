"""genmodels.native.attention: unmasked narrow-head attention (d = 8, 16) forward and backward in C, held
equal — values and gradients — to an fp64 softmax(QKᵀ)V and to PyTorch's fused kernel (issue #12,
deliverable 5: the training step's lever)."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import genmodels
from genmodels import native
from genmodels.native.attention import narrow_attention, unsupported
from genmodels.nn.attention import KERNELS
from genmodels.nn.spatial_attention import SpatialSelfAttention

from tests.helpers.native import native_built, skip_if_disabled  # noqa: F401  (autouse fixture)
from tests.helpers.tiny import randomise

torch.set_num_threads(1)

skip_if_disabled()

TOL = dict(atol=2e-5, rtol=1e-5)


def _used_here() -> None:
    """Skip an accuracy test where the kernel is never dispatched to (a build without AVX2/FMA or AVX-512: it
    runs without fused multiply-adds, ~2–7× less accurate at extreme logits, and PyTorch's kernel is used).
    On a CPU with AVX2 such a build fails test_the_build_is_the_fast_one_on_avx2_and_avx512_cpus instead."""
    if not native.library().gm_attention_fast():
        pytest.skip("this build of the kernel is not used (no AVX2/FMA or AVX-512): PyTorch's kernel runs")


def _fused(b: int, h: int, t: int, d: int, seed: int = 0, spread: float = 2.0) -> torch.Tensor:
    """A fused projection's output (B, T, 3·H·d), the layout SelfAttention slices q, k, v from."""
    g = torch.Generator().manual_seed(seed)
    return (spread * torch.randn(b, t, 3 * h * d, generator=g)).requires_grad_()


def _split(qkv: torch.Tensor, h: int, d: int):
    b, t, _ = qkv.shape
    return qkv.view(b, t, 3 * h, d).transpose(1, 2).split(h, dim=1)  # 3 × (B, H, T, d), strided views


def _fp64(qkv: torch.Tensor, h: int, d: int, scale: float, grad: torch.Tensor):
    """Output and input gradient of softmax(s·QKᵀ)V in float64."""
    x = qkv.detach().double().requires_grad_()
    q, k, v = _split(x, h, d)
    y = torch.softmax(scale * q @ k.transpose(-1, -2), dim=-1) @ v
    y.backward(grad.double())
    return y, x.grad


# lengths that are not a multiple of the vector width (8 or 16 lanes), one shorter than it, and a long one
@pytest.mark.parametrize("b,h,t,d", [(2, 3, 37, 8), (2, 3, 37, 16), (1, 2, 5, 8), (2, 4, 64, 8), (1, 2, 300, 16)])
@pytest.mark.parametrize("scale", [None, 0.3])
@pytest.mark.usefixtures("threads")  # 1 and 2 threads (tests/native/conftest.py)
def test_values_and_gradients_are_as_accurate_as_pytorchs_kernel(b, h, t, d, scale):
    """Against float64: within 3× the error of PyTorch's fused fp32 kernel on the same inputs (and ≤ 1e-5
    wherever that one is exact to ~1e-6). Both sum hundreds of fp32 products, in different orders."""
    _used_here()
    qkv = _fused(b, h, t, d, seed=t + d)
    grad = torch.randn(b, h, t, d, generator=torch.Generator().manual_seed(1))
    want_y, want_g = _fp64(qkv, h, d, d ** -0.5 if scale is None else scale, grad)
    errors = {}
    for name, fn in (("native", narrow_attention), ("sdpa", lambda q, k, v, s: F.scaled_dot_product_attention(
            q, k, v, scale=s))):
        y = fn(*_split(qkv, h, d), scale)
        (g,) = torch.autograd.grad(y, qkv, grad)
        errors[name] = ((y.double() - want_y).abs().max().item(), (g.double() - want_g).abs().max().item())
    for ours, theirs in zip(errors["native"], errors["sdpa"]):
        assert ours <= max(3 * theirs, 1e-5), errors


@pytest.mark.usefixtures("threads")  # 1 and 2 threads (tests/native/conftest.py)
def test_equals_pytorchs_fused_kernel_on_separate_non_contiguous_inputs():
    """q, k, v from different tensors, permuted so that no stride is the natural one; a non-contiguous grad."""
    g = torch.Generator().manual_seed(3)
    base = [torch.randn(6, 2, 19, 8, generator=g).permute(1, 0, 2, 3).requires_grad_()  # (2, 6, 19, 8)
            for _ in range(3)]
    ours = narrow_attention(*base)
    grad = torch.randn(2, 6, 8, 19, generator=g).transpose(-1, -2)  # (2, 6, 19, 8), last dim strided
    got = torch.autograd.grad(ours, base, grad)
    theirs = F.scaled_dot_product_attention(*base)
    want = torch.autograd.grad(theirs, base, grad)
    torch.testing.assert_close(ours, theirs, **TOL)
    for a, w in zip(got, want):
        torch.testing.assert_close(a, w, **TOL)


@pytest.mark.usefixtures("threads")  # 1 and 2 threads (tests/native/conftest.py)
def test_large_logits_do_not_overflow():
    """Scores of ±300: the softmax subtracts the row maximum; the backward uses the saved logsumexp. Finite, and
    within 3× the float64 error of PyTorch's kernel (whose own error is ~1e-4 here)."""
    _used_here()
    qkv = _fused(1, 2, 40, 8, spread=12.0)
    grad = torch.randn(1, 2, 40, 8, generator=torch.Generator().manual_seed(2))
    want_y, want_g = _fp64(qkv, 2, 8, 8 ** -0.5, grad)
    errors = []
    for fn in (narrow_attention, F.scaled_dot_product_attention):
        y = fn(*_split(qkv, 2, 8))
        (g,) = torch.autograd.grad(y, qkv, grad)
        assert torch.isfinite(y).all() and torch.isfinite(g).all()
        errors.append(((y.double() - want_y).abs().max().item(), (g.double() - want_g).abs().max().item()))
    for ours, theirs in zip(*errors):
        assert ours <= max(3 * theirs, 1e-5), errors


@pytest.mark.usefixtures("threads")  # 1 and 2 threads (tests/native/conftest.py)
def test_a_nan_spreads_as_in_pytorch_never_hidden():
    """A NaN key poisons every output of its (sample, head), forward and backward, as PyTorch's kernel does;
    the other heads stay finite. (A clamp in exp that swallowed the NaN would return finite garbage.)"""
    qkv = _fused(2, 3, 21, 8).detach()
    qkv[1, 4, 3 * 8 + 8 + 2] = math.nan  # sample 1, token 4, key head 1, element 2
    qkv.requires_grad_()
    q, k, v = _split(qkv, 3, 8)
    y = narrow_attention(q, k, v)
    want = F.scaled_dot_product_attention(q, k, v)
    assert torch.equal(torch.isnan(y), torch.isnan(want)) and torch.isnan(y[1, 1]).all()
    assert torch.isfinite(y[0]).all() and torch.isfinite(y[1, 0]).all() and torch.isfinite(y[1, 2]).all()
    (g,) = torch.autograd.grad(y, qkv, torch.ones_like(y))
    assert torch.isnan(g[1]).any() and torch.isfinite(g[0]).all()


@pytest.mark.parametrize("t", [1, 17, 16])
@pytest.mark.parametrize("d", [8, 16])
@pytest.mark.usefixtures("threads")  # 1 and 2 threads (tests/native/conftest.py)
def test_rows_of_very_negative_scores_give_finite_exact_gradients(t, d):
    """Every score of a row at −800 (a key bias can shift a row that far: softmax does not mind). With T not a
    multiple of the lane width, a padding key's weight e^{0−L} overflowed and inf · 0 made dQ NaN (found by
    review, 2026-11-30); the row's true gradient is 0."""
    q = torch.full((1, 2, t, d), 10.0, requires_grad=True)
    k = torch.full((1, 2, t, d), -10.0, requires_grad=True)
    v = torch.ones(1, 2, t, d, requires_grad=True)
    grad = torch.ones(1, 2, t, d)
    x = [a.detach().double().requires_grad_() for a in (q, k, v)]
    want = torch.autograd.grad(torch.softmax(x[0] @ x[1].transpose(-1, -2), -1) @ x[2], x, grad.double())
    errors = {}
    for name, y in (("native", narrow_attention(q, k, v, 1.0)), ("sdpa", F.scaled_dot_product_attention(q, k, v,
                                                                                                         scale=1.0))):
        got = torch.autograd.grad(y, (q, k, v), grad)
        assert all(torch.isfinite(a).all() for a in got), name
        errors[name] = max((a.double() - w).abs().max().item() for a, w in zip(got, want))
    # scores of −800 leave fp32 ~5e-5 of absolute precision in the logsumexp: both kernels err by about that
    assert errors["native"] <= max(3 * errors["sdpa"], 1e-5), errors


@pytest.mark.usefixtures("threads")  # 1 and 2 threads (tests/native/conftest.py)
def test_weights_far_below_the_row_maximum_are_zero():
    """A key 1000 below the row's maximum has weight 0 (exp underflows), not exp's clamp e^−87 ≈ 1.6e−38,
    which a value of 1e36 would turn into an error of 0.016."""
    q, k, v = torch.zeros(1, 1, 2, 8), torch.zeros(1, 1, 2, 8), torch.zeros(1, 1, 2, 8)
    q[..., 0], k[0, 0, 1, 0], v[0, 0, 0, 0], v[0, 0, 1, 0] = 1.0, -1000.0, 1.0, 1e36
    assert narrow_attention(q, k, v, 1.0)[0, 0, :, 0].tolist() == [1.0, 1.0]


def test_the_output_can_be_modified_in_place_like_sdpas():
    """The output is a plain tensor with (B, T, H, d) memory, not a view made inside the autograd Function
    (which autograd forbids modifying in place); its (B, T, H·d) reshape stays free."""
    qkv = _fused(1, 2, 17, 8)
    q, k, v = _split(qkv, 2, 8)
    y = narrow_attention(q, k, v)
    flat = y.transpose(1, 2).reshape(1, 17, 16)
    assert flat.data_ptr() == y.data_ptr()  # a view, no copy
    flat.mul_(2)  # raised "... is a view and is being modified inplace ... created inside a custom Function"


def test_threads_split_the_work_without_changing_it():
    qkv = _fused(3, 5, 33, 8)
    q, k, v = _split(qkv, 5, 8)
    grad = torch.randn(3, 5, 33, 8, generator=torch.Generator().manual_seed(4))
    outs = []
    for n in (1, 2, 3):
        torch.set_num_threads(n)
        try:
            y = narrow_attention(q, k, v)
            outs.append((y, torch.autograd.grad(y, qkv, grad)[0]))
        finally:
            torch.set_num_threads(1)
    for y, gq in outs[1:]:  # each (sample, head) is one task: the same arithmetic whichever thread runs it
        assert torch.equal(y, outs[0][0]) and torch.equal(gq, outs[0][1])


def test_what_the_kernel_does_not_take_goes_to_pytorch():
    q = torch.randn(1, 2, 9, 8)
    mask = torch.zeros(1, 1, 9, 9)
    assert unsupported(q, q, q, mask, False) == "masked or causal attention"
    assert unsupported(q, q, q, None, True) == "masked or causal attention"
    assert "head width 32" in unsupported(torch.randn(1, 2, 9, 32), *[torch.randn(1, 2, 9, 32)] * 2, None, False)
    odd = torch.randn(1, 2, 9, 12)  # a head width that is not a multiple of 8: refused by name, PyTorch's kernel runs
    assert unsupported(odd, odd, odd, None, False) == "head width 12 (the kernel has (8, 16))"
    torch.testing.assert_close(KERNELS["native"](odd, odd, odd), F.scaled_dot_product_attention(odd, odd, odd))
    assert "float32" in unsupported(q.double(), q.double(), q.double(), None, False)
    assert "grouped-query" in unsupported(q, q[:, :1], q[:, :1], None, False)
    assert unsupported(q, q, q, None, False) is None
    with pytest.raises(ValueError, match="head width 32"):
        narrow_attention(*[torch.randn(1, 2, 9, 32)] * 3)
    # the "native" kernel of nn.attention falls back for what the C kernel does not take (here: a causal mask)
    x = torch.randn(1, 2, 9, 8)
    torch.testing.assert_close(KERNELS["native"](x, x, x, None, None, True),
                               F.scaled_dot_product_attention(x, x, x, is_causal=True))


def test_second_derivatives_are_refused_not_wrong():
    qkv = _fused(1, 2, 9, 8)
    q, k, v = _split(qkv, 2, 8)
    (g,) = torch.autograd.grad(narrow_attention(q, k, v).square().sum(), qkv, create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable|double backward|differentiat"):
        g.sum().backward()


@pytest.mark.parametrize("head_dim", [8, 16])
@pytest.mark.usefixtures("threads")  # 1 and 2 threads (tests/native/conftest.py)
def test_spatial_attention_native_equals_sdpa_values_and_gradients(head_dim):
    """The UNet's pixel attention (the native kernel is its default) against the same module on PyTorch's kernel."""
    torch.manual_seed(0)
    ours = randomise(SpatialSelfAttention(32, head_dim, 8, 1e-6), seed=5)
    ref = SpatialSelfAttention(32, head_dim, 8, 1e-6, kernel="sdpa")
    ref.load_state_dict(ours.state_dict())
    assert ours.attn.kernel == "native"
    x = torch.randn(2, 32, 6, 7, requires_grad=True)
    y, y_ref = ours(x), ref(x)
    torch.testing.assert_close(y, y_ref, **TOL)
    grad = torch.randn_like(y)
    got = torch.autograd.grad(y, [x, *ours.parameters()], grad)
    want = torch.autograd.grad(y_ref, [x, *ref.parameters()], grad)
    for a, w in zip(got, want):
        torch.testing.assert_close(a, w, atol=5e-5, rtol=1e-5)


@pytest.mark.usefixtures("threads")  # 1 and 2 threads (tests/native/conftest.py)
def test_a_unet_training_step_equals_the_sdpa_step():
    """Three SGD steps of a UNet with attention (heads of 8): native and sdpa kernels give the same weights.
    (Not Adam: the key bias has an exactly-zero gradient — a shift common to a row's scores — whose fp32
    rounding noise Adam's normalisation would blow up to full-size, kernel-dependent steps.)"""
    cfg = genmodels.preset("unet-digits", block_out_channels=[16, 32], attention_levels=[1], mid_attention=True,
                           attention_head_dim=8, norm_num_groups=8)
    models = [randomise(genmodels.build_model(cfg), seed=6) for _ in range(2)]
    models[1].load_state_dict(models[0].state_dict())
    for m in models[1].modules():
        if isinstance(m, SpatialSelfAttention):
            m.attn.kernel = "sdpa"
    g = torch.Generator().manual_seed(7)
    x, noise = torch.randn(4, 1, 8, 8, generator=g), torch.randn(4, 1, 8, 8, generator=g)
    t, y = torch.randint(0, 1000, (4,), generator=g), torch.randint(0, 10, (4,), generator=g)
    for m in models:
        opt = torch.optim.SGD(m.parameters(), lr=0.05)
        for _ in range(3):
            F.mse_loss(m(x, t, y), noise).backward()
            opt.step()
            opt.zero_grad()
    for (name, a), b in zip(models[0].named_parameters(), models[1].parameters()):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5, msg=name)


def test_the_build_is_the_fast_one_on_avx2_and_avx512_cpus():
    """Where PyTorch runs AVX2 or AVX-512 kernels, the library must have been built with those vectors (a broken
    ISA check would silently hand every UNet attention back to PyTorch)."""
    if torch.backends.cpu.get_cpu_capability() not in ("AVX2", "AVX512"):
        pytest.skip(f"CPU capability {torch.backends.cpu.get_cpu_capability()}: no AVX2 to build for")
    assert native.library().gm_attention_fast() == 1


def test_a_build_without_wide_vectors_hands_attention_to_pytorch(monkeypatch):
    """On an SSE-only or non-x86 build the kernel is correct but slower: the "native" kernel then runs sdpa."""
    lib = native.library()

    class Slow:
        def __getattr__(self, name):
            return (lambda: 0) if name == "gm_attention_fast" else getattr(lib, name)

    monkeypatch.setattr("genmodels.native.attention.library", lambda: Slow())
    called = []
    monkeypatch.setattr("genmodels.native.attention._NarrowAttention.apply", lambda *a: called.append(a))
    q = torch.randn(1, 2, 9, 8)
    torch.testing.assert_close(KERNELS["native"](q, q, q), F.scaled_dot_product_attention(q, q, q))
    assert not called and unsupported(q, q, q, None, False) is None  # supported, just not preferred


def test_unavailable_library_runs_pytorchs_kernel(monkeypatch):
    monkeypatch.setattr("genmodels.native.attention.library", lambda: None)
    q = torch.randn(1, 2, 9, 8)
    assert unsupported(q, q, q, None, False) == "native kernels unavailable"
    torch.testing.assert_close(KERNELS["native"](q, q, q), F.scaled_dot_product_attention(q, q, q))
    assert native.library() is not None  # only this test's view of it was switched off
