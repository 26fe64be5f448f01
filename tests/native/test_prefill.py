"""genmodels.native.prefill: the native prefill (csrc/prefill.c over csrc/gemm.c's packed products) held equal
to the PyTorch path — logits of each row's last token and the KV cache — and chosen by the decode session."""
from __future__ import annotations

import os
import shlex

import pytest
import torch
import torch.nn.functional as F

import genmodels
from genmodels.generation.session import DecodeSession
from genmodels import native
from genmodels.native import library
from genmodels.native import prefill as native_prefill
from genmodels.nn.quantized import GGML_TYPES, dequantize_rows, quantize_rows, row_bytes

from tests.helpers.native import native_built, skip_if_disabled  # noqa: F401  (autouse fixture)
from tests.helpers.tiny import VOCAB, left_pad_mask, random_ids, tiny_model

torch.set_num_threads(1)

skip_if_disabled()

TOL = dict(atol=1e-5, rtol=1e-5)
KINDS = [("llama", {}), ("gpt2", {}), ("llama", dict(n_kv_heads=1)), ("llama", dict(sliding_window=5)),
         ("llama", dict(rotary_fraction=0.5)), ("gpt2", dict(position="alibi")),
         ("gpt2", dict(mlp="gelu", tie_embeddings=False)), ("llama", dict(mlp="geglu_tanh")),
         ("gpt2", dict(position="sinusoidal", norm_bias=False)), ("gpt2", dict(norm_placement="post", final_norm=False)),
         ("llama", dict(d_model=36, n_heads=2, n_kv_heads=1, d_ff=68)), ("gpt2", dict(d_model=36, n_heads=3, d_ff=100)),
         ("llama", dict(n_heads=2, n_kv_heads=1)), ("gpt2", dict(n_heads=1))]  # heads of 18, 12 (scalar P V), 16
# (16-wide panels), 32 and 64 (P V through the packed tiles, V read in place)


def _id(v):
    return v if isinstance(v, str) else ",".join(f"{a}={b}" for a, b in v.items()) or "default"


# ---- the packed product ------------------------------------------------------------------------
def gemm(x: torch.Tensor, w: torch.Tensor, qtype: str | None = None, bias=None, lib=None, bf16=False,
         packed: torch.Tensor | None = None) -> torch.Tensor:
    """gm_prefill_gemm: x (M, K) · W (N, K)ᵀ + bias, W fp32 or the (N, row bytes) blocks of ``qtype``; ``bf16``:
    the products in bf16 (csrc/gemm_bf16.c), W's panels read from ``packed`` (native_prefill.pack_bf16(W)) if given."""
    n = w.shape[0]
    y = torch.empty(x.shape[0], n)
    rc = (lib or library()).gm_prefill_gemm(x.data_ptr(), x.shape[0], x.shape[1], w.data_ptr(), GGML_TYPES[qtype] if qtype
                                   else 0, bias.data_ptr() if bias is not None else None, y.data_ptr(), n,
                                   torch.get_num_threads(), int(bf16), packed.data_ptr() if packed is not None else None)
    assert rc == 0
    return y


@pytest.mark.parametrize("m", [1, 7, 23, 24, 25, 37, 130])  # under / over the packed path's 24 rows, MR tails
@pytest.mark.parametrize("k,n", [(37, 5), (100, 67), (300, 333), (576, 96)])  # K past one 256-block, N tails
@pytest.mark.usefixtures("threads")
def test_gemm_equals_torch(m, k, n):
    g = torch.Generator().manual_seed(m * 1000 + k + n)
    x, w, b = torch.randn(m, k, generator=g), torch.randn(n, k, generator=g), torch.randn(n, generator=g)
    torch.testing.assert_close(gemm(x, w, bias=b), F.linear(x, w, b), atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(gemm(x, w), F.linear(x, w), atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("qtype", ["q8_0", "q4_0", "q4_1", "q6_k", "q4_k"])
@pytest.mark.usefixtures("threads")
def test_quantised_gemm_equals_dequantise_then_fp32(qtype):
    """Each panel is dequantised then multiplied in fp32: the product with the dequantised matrix."""
    g = torch.Generator().manual_seed(3)
    k, n = 512, 70
    w = torch.randn(n, k, generator=g)
    if qtype in ("q6_k", "q4_k"):  # written by llama.cpp only: random bytes are valid blocks with small scales
        blocks = torch.randint(0, 256, (n, row_bytes(k, qtype)), dtype=torch.uint8, generator=g)
        scale_at = [208] if qtype == "q6_k" else [0, 2]  # fp16 d (and dmin): keep them finite
        for a in range(0, blocks.shape[1], 210 if qtype == "q6_k" else 144):
            for s in scale_at:
                blocks[:, a + s:a + s + 2] = torch.tensor([0x00, 0x20], dtype=torch.uint8)  # 2**-7
    else:
        blocks = quantize_rows(w, qtype)
    dense = dequantize_rows(blocks, qtype, k)  # (N, K) fp32
    for m in (5, 64, 101):
        x = torch.randn(m, k, generator=g)
        want = x @ dense.T
        torch.testing.assert_close(gemm(x, blocks, qtype), want, atol=1e-5 * float(want.abs().max()), rtol=1e-5)


@pytest.fixture(scope="module", params=["avx2", "scalar"])
def narrower_build(request):
    """The kernels built as on an AVX2-only CPU (AVX-512 off: 6 × 16 tiles) and with no vector unit at all
    (the plain C tiles), as tests/native/test_quant.py builds them (the same cached libraries)."""
    if request.param == "avx2" and not library().gm_quant_lanes() > 8:
        pytest.skip("the default build is the AVX2 build: the tests above hold it")
    flags = ["-mno-avx512f"] + (["-mno-avx2", "-mno-f16c"] if request.param == "scalar" else [])
    return native._bind(native._load([*shlex.split(os.environ.get("CC") or "cc"), *flags]))


@pytest.mark.parametrize("qtype", [None, "q4_1"])
def test_narrower_builds_prefill_as_torch(narrower_build, qtype):
    g = torch.Generator().manual_seed(5)
    x, w = torch.randn(37, 96, generator=g), torch.randn(45, 96, generator=g)
    blocks = quantize_rows(w, qtype) if qtype else w
    want = x @ (dequantize_rows(blocks, qtype, 96) if qtype else w).T
    torch.testing.assert_close(gemm(x, blocks, qtype, lib=narrower_build), want, atol=1e-4, rtol=1e-5)
    model = tiny_model("llama", d_model=64, n_heads=4, n_kv_heads=2, d_ff=96)
    model = genmodels.quantize(model, qtype).eval() if qtype else model
    ids, mask = random_ids(2, 30), left_pad_mask([30, 17], 30)
    with torch.inference_mode():
        cw, cg = model.new_cache(2, 30), model.new_cache(2, 30)
        want = model.head(model.hidden_states(ids, attention_mask=mask, cache=cw)[:, -1])
        got = native_prefill.prefill(model, cg, ids, mask, lib=narrower_build)
    torch.testing.assert_close(got, want, **TOL)
    assert_caches_equal(cw, cg)


# ---- the prefill == the PyTorch forward into the cache ------------------------------------------
def both(model, ids, mask=None, rows=native_prefill.ROWS, start_ids=None):
    """(PyTorch logits, cache), (native logits, cache) for ``ids`` after ``start_ids`` (prefilled by PyTorch)."""
    b, t = ids.shape
    s = 0 if start_ids is None else start_ids.shape[1]
    out = []
    with torch.inference_mode():
        for native in (False, True):
            cache = model.new_cache(b, s + t + 2)
            if start_ids is not None:
                model.hidden_states(start_ids, cache=cache)
            if native:
                logits = native_prefill.prefill(model, cache, ids, mask, rows=rows).clone()
            else:
                logits = model.head(model.hidden_states(ids, attention_mask=mask, cache=cache)[:, -1])
            out.append((logits, cache))
    return out


def assert_caches_equal(want, got, real: torch.Tensor | None = None, scaled: bool = False) -> None:
    """Every filled slot (or the ``real (B, pos)`` ones: a padding query's keys are never read) equal
    (``scaled``: to 1e-5 of each tensor's largest magnitude)."""
    assert want.pos == got.pos and torch.equal(want.row_pos, got.row_pos)
    for a, b in zip(want.layers, got.layers):
        for x, y in ((a.k, b.k), (a.v, b.v)):
            x, y = x[:, :, :want.pos], y[:, :, :want.pos]  # (B, H_kv, S, D)
            if real is not None:
                x, y = x.transpose(1, 2)[real.bool()], y.transpose(1, 2)[real.bool()]
            tol = dict(atol=1e-5 * float(x.abs().max()), rtol=1e-5) if scaled else TOL
            torch.testing.assert_close(y, x, **tol)


@pytest.mark.parametrize("kind,kw", KINDS, ids=_id)
@pytest.mark.usefixtures("threads")
def test_prefill_equals_torch(kind, kw):
    model = tiny_model(kind, **kw)
    assert native_prefill.unsupported(model) is None
    ids = random_ids(3, 70)
    mask = left_pad_mask([70, 41, 3], 70)  # rows of different lengths: left padding
    (want, cw), (got, cg) = both(model, ids, mask)  # one call (pads included: equal slot for slot)
    torch.testing.assert_close(got, want, **TOL)
    assert_caches_equal(cw, cg)
    (_, _), (got, cg) = both(model, ids, mask, rows=48)  # 16 tokens a row per call: chunks continue the cache
    torch.testing.assert_close(got, want, **TOL)
    assert_caches_equal(cw, cg, real=mask)
    for short in (ids[:1, :40], ids[:2, 60:65]):  # one row, no mask; 10 tokens (the unpacked small-M products)
        (want, cw), (got, cg) = both(model, short)
        torch.testing.assert_close(got, want, **TOL)
        assert_caches_equal(cw, cg)


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_prefill_continues_a_cache(kind):
    model = tiny_model(kind)
    (want, cw), (got, cg) = both(model, random_ids(2, 30, seed=4), start_ids=random_ids(2, 11, seed=5))
    torch.testing.assert_close(got, want, **TOL)
    assert_caches_equal(cw, cg)


@pytest.mark.parametrize("qtype", ["q8_0", "q4_0", "q4_1"])
@pytest.mark.usefixtures("threads")
def test_prefill_of_a_quantised_model_equals_torch(qtype):
    model = genmodels.quantize(tiny_model("llama", d_model=64, n_heads=4, n_kv_heads=2, d_ff=96), qtype).eval()
    assert native_prefill.unsupported(model) is None
    ids, mask = random_ids(2, 50), left_pad_mask([50, 30], 50)
    for i, m in ((ids, mask), (ids[:, :4], None)):  # 100 rows (packed panels) and 8 (the decode step's tiles)
        (want, cw), (got, cg) = both(model, i, m)
        torch.testing.assert_close(got, want, **TOL)
        assert_caches_equal(cw, cg)


def test_unsupported_reasons(monkeypatch):
    moe = tiny_model("llama", n_experts=4, experts_per_token=2, expert_d_ff=40)
    assert "sparse MoE" in native_prefill.unsupported(moe)
    t5 = genmodels.build_model(genmodels.preset("t5-tiny", vocab_size=VOCAB, d_model=64, n_heads=4, head_dim=16,
                                                d_ff=128))
    assert "not a decoder-only DecoderLM" in native_prefill.unsupported(t5)
    llama = tiny_model("llama")
    assert "not a KVCache" in native_prefill.unsupported(llama, cache=object())
    wrapped = tiny_model("llama")
    wrapped.hidden_states = wrapped.hidden_states  # a wrapper on the instance (e.g. a counter) must be called
    assert "replaced on this instance" in native_prefill.unsupported(wrapped)
    monkeypatch.setenv("GENMODELS_NATIVE_PREFILL", "0")
    assert "GENMODELS_NATIVE_PREFILL=0" in native_prefill.unsupported(llama)


def test_prefill_refuses_a_cache_without_room():
    model = tiny_model("llama")
    with torch.inference_mode(), pytest.raises(ValueError, match="KV cache overflow"):
        native_prefill.prefill(model, model.new_cache(1, 8), random_ids(1, 9))


# ---- the decode session takes it ----------------------------------------------------------------
def test_session_prefills_natively_and_generates_as_torch(monkeypatch):
    model = tiny_model("llama")
    calls = []
    real = native_prefill.prefill
    monkeypatch.setattr(native_prefill, "prefill", lambda *a, **k: calls.append(1) or real(*a, **k))
    ids, mask = random_ids(2, 20), left_pad_mask([20, 12], 20)
    native = genmodels.generate(model, ids, attention_mask=mask, max_new_tokens=8)
    assert calls == [1]
    monkeypatch.setenv("GENMODELS_NATIVE_PREFILL", "0")  # the A/B switch: PyTorch prefill, native steps
    assert torch.equal(genmodels.generate(model, ids, attention_mask=mask, max_new_tokens=8), native)
    assert calls == [1]
    with torch.inference_mode():
        want = DecodeSession(model, native=False).prefill(ids, 30, attention_mask=mask)
        monkeypatch.delenv("GENMODELS_NATIVE_PREFILL")
        got = DecodeSession(model).prefill(ids, 30, attention_mask=mask)
    assert calls == [1, 1]
    torch.testing.assert_close(got[1], want[1], **TOL)
    assert torch.equal(got[0].key_mask, want[0].key_mask)


def test_smollm2_prefill_equals_torch(smollm2):
    """The real model (fp32, 30 layers, GQA 9/3 heads of 64): a 2-row left-padded prompt."""
    ids = random_ids(2, 40, seed=7) + 1000
    mask = left_pad_mask([40, 25], 40)
    (want, cw), (got, cg) = both(smollm2, ids, mask)
    torch.testing.assert_close(got, want, atol=1e-5 * float(want.abs().max()), rtol=1e-5)
    assert_caches_equal(cw, cg, scaled=True)
