"""The native prefill in bf16 (csrc/gemm_bf16.c; ``GENMODELS_NATIVE_PREFILL=bf16``): its products equal fp32
products of the bf16-rounded factors (a layout or rounding slip shows as a large error, not a small one), the
whole prefill equals the PyTorch forward with every block linear's factors and attention's q, k, P rounded the same way, it stays
within the stated bound of the fp32 prefill (docs/native.md), and a build without AVX512-BF16 refuses
(argument) or falls back to fp32 with the reason (environment)."""
from __future__ import annotations

import contextlib
import logging
import os
import shlex

import pytest
import torch
import torch.nn.functional as F

import genmodels
from genmodels import native
from genmodels.native import library
from genmodels.native import prefill as native_prefill
from genmodels.nn import attention
from genmodels.nn.quantized import dequantize_rows, quantize_rows

from tests.helpers.native import native_built, skip_if_disabled  # noqa: F401  (autouse fixture)
from tests.helpers.tiny import left_pad_mask, random_ids, tiny_model
from tests.native.test_prefill import gemm

torch.set_num_threads(1)

skip_if_disabled()

BOUND = 0.05  # bf16 prefill vs fp32: max |Δ logit| / max |logit| (docs/native.md "bf16 prefill": the bound, why)
NEAR = 2e-3  # bf16 prefill vs PyTorch with rounded linears: summation order flips a few bf16 roundings (~3e-4 seen)


def has_bf16() -> bool:
    return bool(library().gm_prefill_bf16())


needs_bf16 = pytest.mark.skipif("not has_bf16()", reason="this CPU's native build has no AVX512-BF16 "
                                                          "(native_prefill.bf16_unavailable says why)")


def rounded(t: torch.Tensor) -> torch.Tensor:
    return t.bfloat16().float()


@needs_bf16
@pytest.mark.parametrize("m", [1, 13, 24, 37, 130])  # MR tails, one row, several slivers
@pytest.mark.parametrize("k,n", [(37, 5), (100, 67), (300, 333), (576, 96), (800, 40)])  # odd K (a padded pair), N tails, K-blocks
@pytest.mark.usefixtures("threads")
def test_bf16_gemm_equals_fp32_of_rounded_factors(m, k, n):
    g = torch.Generator().manual_seed(m * 1000 + k + n)
    x, w, b = torch.randn(m, k, generator=g), torch.randn(n, k, generator=g), torch.randn(n, generator=g)
    torch.testing.assert_close(gemm(x, w, bias=b, bf16=True), F.linear(rounded(x), rounded(w), b), atol=1e-4, rtol=1e-5)
    assert float((gemm(x, w, bias=b, bf16=True) - F.linear(x, w, b)).abs().max()) > 0 or k < 2  # it did round


@needs_bf16
@pytest.mark.parametrize("qtype", ["q8_0", "q4_1"])
def test_bf16_gemm_of_blocks_equals_rounded_dequantised(qtype):
    g = torch.Generator().manual_seed(3)
    x, w = torch.randn(50, 96, generator=g), torch.randn(45, 96, generator=g)
    blocks = quantize_rows(w, qtype)
    want = F.linear(rounded(x), rounded(dequantize_rows(blocks, qtype, 96)))
    torch.testing.assert_close(gemm(x, blocks, qtype, bf16=True), want, atol=1e-4, rtol=1e-5)


def bf16_attention(q, k, v, mask=None, scale=None, is_causal=False):
    """softmax(bf16(q) bf16(k)ᵀ · scale + mask) v as csrc/prefill.c computes it in bf16: E = exp(S − max) and V
    rounded to bf16 (heads whose width is a multiple of the tile's; others fp32), E V divided by the fp32 sum of E.
    q (B, H, T, D), k/v (B, H_kv, S, D), mask additive or boolean."""
    k, v = (t.repeat_interleave(q.shape[1] // k.shape[1], dim=1) for t in (k, v))
    s = rounded(q) @ rounded(k).transpose(-1, -2) * (q.shape[-1] ** -0.5 if scale is None else scale)
    if is_causal:
        s = s.masked_fill(torch.ones(s.shape[-2:], dtype=torch.bool).triu(1), float("-inf"))
    s = s if mask is None else s.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else s + mask
    e = torch.exp(s - s.amax(-1, keepdim=True))
    pv_bf16 = q.shape[-1] % 32 == 0  # P V in bf16 for heads of whole tiles (AVX-512's NR = 32: every bf16 build)
    return ((rounded(e) @ rounded(v)) if pv_bf16 else e @ v) / e.sum(-1, keepdim=True)


@contextlib.contextmanager
def bf16_linears(model, monkeypatch):
    """Every block linear computes F.linear(bf16(x), bf16(W), b) in fp32, and attention (:func:`bf16_attention`) takes
    q, k and the unnormalised probabilities rounded to bf16: what the native bf16 prefill computes."""
    monkeypatch.setitem(attention.KERNELS, "sdpa", bf16_attention)
    blocks, saved, hooks = model.decoder_view()[0], [], []
    for blk in blocks:
        for mod in blk.modules():
            w = getattr(mod, "weight", None)
            if isinstance(w, torch.Tensor) and w.dim() == 2 and not list(mod.children()):
                saved.append((w, w.detach().clone()))
                w.data.copy_(rounded(w.data))
                hooks.append(mod.register_forward_pre_hook(lambda _m, args: (rounded(args[0]), *args[1:])))
    try:
        yield
    finally:
        for h in hooks:
            h.remove()
        for w, old in saved:
            w.data.copy_(old)


def prefills(model, ids, mask, monkeypatch):
    """(PyTorch with bf16 linears and scores, native bf16, native fp32) logits of each row's last token."""
    b, t = ids.shape
    out = []
    with torch.inference_mode():
        with monkeypatch.context() as mp, bf16_linears(model, mp):
            out.append(model.head(model.hidden_states(ids, attention_mask=mask, cache=model.new_cache(b, t))[:, -1]))
        for bf16 in (True, False):
            out.append(native_prefill.prefill(model, model.new_cache(b, t), ids, mask, bf16=bf16).clone())
    return out


@needs_bf16
@pytest.mark.parametrize("kind,kw", [("llama", {}), ("gpt2", {}), ("llama", dict(d_model=64, n_heads=4, n_kv_heads=2, d_ff=96)),
                                     ("gpt2", dict(norm_placement="post", final_norm=False)),
                                     ("llama", dict(n_heads=2, n_kv_heads=1)), ("gpt2", dict(n_heads=1))])  # heads 16, 32, 64
@pytest.mark.usefixtures("threads")
def test_bf16_prefill_equals_torch_with_rounded_factors_and_stays_near_fp32(kind, kw, monkeypatch):
    model = tiny_model(kind, **kw)
    assert model.decoder_view()[0][0].attn.kernel == "sdpa"
    ids, mask = random_ids(2, 60), left_pad_mask([60, 33], 60)
    want, got, fp32 = prefills(model, ids, mask, monkeypatch)
    assert float((got - want).abs().max() / want.abs().max()) < NEAR  # 1e-7 .. 3e-4 seen; a layout slip: ~1
    err = float((got - fp32).abs().max() / fp32.abs().max())  # 0.008 .. 0.019 seen
    assert 0 < err < BOUND, err


@needs_bf16
def test_bf16_prefill_of_a_quantised_model_stays_near_fp32(monkeypatch):
    model = genmodels.quantize(tiny_model("llama", d_model=64, n_heads=4, n_kv_heads=2, d_ff=96), "q4_1").eval()
    _, got, fp32 = prefills(model, random_ids(2, 40), None, monkeypatch)
    assert 0 < float((got - fp32).abs().max() / fp32.abs().max()) < BOUND


@needs_bf16
def test_environment_chooses_bf16(monkeypatch):
    model, ids = tiny_model("llama"), random_ids(1, 30)
    _, got, fp32 = prefills(model, ids, None, monkeypatch)
    monkeypatch.setenv("GENMODELS_NATIVE_PREFILL", "bf16")
    assert native_prefill.unsupported(model) is None
    with torch.inference_mode():
        env = native_prefill.prefill(model, model.new_cache(1, 30), ids)
    assert torch.equal(env, got) and not torch.equal(env, fp32)


@pytest.fixture(scope="module")
def no_bf16_build():
    """The kernels built without AVX512-BF16 (as on AVX2-only CPUs and Zen 3)."""
    lib = native._bind(native._load([*shlex.split(os.environ.get("CC") or "cc"), "-mno-avx512f"]))
    assert lib.gm_prefill_bf16() == 0
    return lib


def test_a_build_without_bf16_refuses_or_falls_back(no_bf16_build, monkeypatch, caplog):
    model, ids = tiny_model("llama", d_model=64, n_heads=4, n_kv_heads=2, d_ff=96), random_ids(1, 30)
    reason = native_prefill.bf16_unavailable(no_bf16_build)
    assert reason.startswith("GENMODELS_NATIVE_PREFILL=bf16 needs VDPBF16PS") and "allowed here: 1 (fp32) or 0" in reason
    with torch.inference_mode():
        with pytest.raises(ValueError, match="needs VDPBF16PS"):
            native_prefill.prefill(model, model.new_cache(1, 30), ids, lib=no_bf16_build, bf16=True)
        fp32 = native_prefill.prefill(model, model.new_cache(1, 30), ids, lib=no_bf16_build).clone()
        monkeypatch.setenv("GENMODELS_NATIVE_PREFILL", "bf16")
        monkeypatch.setattr(native_prefill, "_warned", set())
        with caplog.at_level(logging.WARNING, logger=native_prefill.__name__):
            got = native_prefill.prefill(model, model.new_cache(1, 30), ids, lib=no_bf16_build)
    assert torch.equal(got, fp32) and "prefilling in fp32" in caplog.text
    x = torch.randn(30, 64)
    rc = no_bf16_build.gm_prefill_gemm(x.data_ptr(), 30, 64, x.data_ptr(), 0, None, torch.empty(30, 30).data_ptr(), 30, 1, 1, None)
    assert rc == -3  # the C entry refuses too
    with pytest.raises(ValueError, match="needs VDPBF16PS"):  # and so does packing weights in bf16
        native_prefill.pack_bf16(x, no_bf16_build)
