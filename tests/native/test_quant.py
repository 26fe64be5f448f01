"""Quantised weights (GGUF's Q8_0, Q4_0, Q4_1 blocks): the block maths against gguf-py, the native
quantised products against dequantise-then-fp32, the fused decode step on a quantised tiny llama against
the PyTorch path of the same model, ``genmodels.quantize`` and the training refusal. These hold the
fp32-activation products (GENMODELS_NATIVE_QDOT=fp32, forced here); the default int8 ones are held to their
own reference in test_qdot8.py, and SmolLM2's greedy tokens on them at the end of this file."""
from __future__ import annotations

import os
import shlex

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import genmodels
from genmodels import native
from genmodels.generation import decode as decode_mod
from genmodels.native import quant
from genmodels.native.decoder import unsupported
from genmodels.nn.quantized import QTYPES, QuantizedLinear, dequantize_rows, quantize_rows

from tests.helpers.tiny import left_pad_mask, random_ids, tiny_model
from tests.native.test_decoder_step import fused_step_equals_torch
from tests.helpers.native import native_built, skip_if_disabled  # noqa: F401  (autouse fixture)

skip_if_disabled()

GGUF_TYPE = {"q8_0": "Q8_0", "q4_0": "Q4_0", "q4_1": "Q4_1"}
AGREE, TIE = 16, 0.5  # SmolLM2 Q4_1 on int8 activations: equal tokens this far, a divergence only where fp32's top-2 margin < TIE


@pytest.fixture(autouse=True)
def fp32_activations():
    with quant.qdot_forced("fp32"):
        yield


def random_blocks(n: int, k: int, qtype: str, seed: int) -> torch.Tensor:
    """Blocks of random bytes with finite fp16 scales (every nibble and int8 value reachable)."""
    g = torch.Generator().manual_seed(seed)
    blocks = quantize_rows(torch.randn(n, k, generator=g), qtype).view(n, k // 32, -1)
    raw = torch.randint(0, 256, blocks.shape, generator=g, dtype=torch.uint8)
    head = 4 if qtype == "q4_1" else 2
    blocks[..., head:] = raw[..., head:]  # random quants, the scales (d, m) of real data
    return blocks.reshape(n, -1).contiguous()


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got - want).abs().max() / want.abs().max().clamp_min(1e-30))


# ---- the block maths: byte for byte gguf-py ----------------------------------------------------------
@pytest.mark.parametrize("qtype", QTYPES)
def test_quantize_and_dequantize_equal_gguf_py(qtype):
    import gguf
    gt = getattr(gguf.GGMLQuantizationType, GGUF_TYPE[qtype])
    w = torch.randn(37, 96, generator=torch.Generator().manual_seed(3))
    w[0, :32] = 0.0  # an all-zero block: d = 0
    w[1, 5] = 40.0  # an outlier
    halves = torch.arange(32) % 7 - 3.5  # exact halves once scaled by 1/d = 1: rounding direction matters
    w[2, :32], w[2, 0] = halves, 127.0  # q8_0: d = 127 / 127 = 1
    w[3, :32], w[3, 0] = halves, -8.0  # q4_0: d = -8 / -8 = 1
    w[4, :32], w[4, 0], w[4, 1] = halves + 4.0, 0.0, 15.0  # q4_1: m = 0, d = 15 / 15 = 1
    blocks = quantize_rows(w, qtype)
    assert np.array_equal(blocks.numpy(), gguf.quants.quantize(w.numpy(), gt))
    want = gguf.quants.dequantize(blocks.numpy(), gt)
    assert np.array_equal(dequantize_rows(blocks, qtype, 96).numpy(), want)
    assert np.array_equal(quant.dequantize(blocks, qtype, 96).numpy(), want)  # the C dequantisation


# ---- the native quantised product == dequantise-then-fp32 -------------------------------------------
@pytest.mark.parametrize("qtype", QTYPES)
@pytest.mark.parametrize("n,k", [(1, 32), (7, 64), (37, 96), (333, 160)])  # odd row counts; 333 × 160 threaded
@pytest.mark.usefixtures("threads")  # 1 and 2 threads
def test_quantized_product_equals_dequantised_fp32(qtype, n, k):
    products_equal_dequantised_fp32(random_blocks(n, k, qtype, seed=n * 1000 + k), qtype, k, (1, 2, 3, 5, 8, 13))


def products_equal_dequantised_fp32(blocks: torch.Tensor, qtype: str, k: int, batches: tuple) -> None:
    """``quant.qlinear`` (with and without a bias) == ``F.linear`` on the dequantised blocks to 1e-5, for M in
    ``batches``."""
    w = dequantize_rows(blocks, qtype, k)  # (N, K) fp32
    g = torch.Generator().manual_seed(k)
    bias = torch.randn(blocks.shape[0], generator=g)
    for m in batches:
        x = torch.randn(m, k, generator=g)  # (M, K)
        assert relative_error(quant.qlinear(x, blocks, qtype, bias), F.linear(x, w, bias)) < 1e-5
        assert relative_error(quant.qlinear(x, blocks, qtype), F.linear(x, w)) < 1e-5


@pytest.fixture(scope="module", params=[8, 1], ids=["8lanes", "scalar"])
def narrower_build(request):
    """The kernels built with AVX-512 off (8 lanes, the path of AVX2-only CPUs), as test_attention_avx2.py,
    and with AVX2 and F16C off too (the scalar dequantisation and fp16 conversion, the buffered path at batch 1)."""
    lanes = request.param
    if native.library().gm_quant_lanes() <= lanes:
        pytest.skip(f"the default build already has {native.library().gm_quant_lanes()} lanes: the tests above hold it")
    flags = ["-mno-avx512f"] + (["-mno-avx2", "-mno-f16c"] if lanes == 1 else [])  # scalar: software fp16 too
    lib = native._bind(native._load([*shlex.split(os.environ.get("CC") or "cc"), *flags]))
    assert lib.gm_quant_lanes() == lanes
    return lib


@pytest.mark.parametrize("qtype", QTYPES)
def test_narrower_builds_equal_dequantised_fp32(qtype, narrower_build):
    blocks = random_blocks(37, 96, qtype, seed=9)
    w = dequantize_rows(blocks, qtype, 96)
    assert torch.equal(quant.dequantize(blocks, qtype, 96, lib=narrower_build), w)
    for m in (1, 3):
        x = torch.randn(m, 96, generator=torch.Generator().manual_seed(m))
        with quant.qdot_forced("fp32", lib=narrower_build):
            got = quant.qlinear(x, blocks, qtype, threads=2, lib=narrower_build)
        assert relative_error(got, F.linear(x, w)) < 1e-5


# ---- the fused decode step on a quantised model == its PyTorch path --------------------------------
@pytest.mark.parametrize("qtype", QTYPES)
@pytest.mark.usefixtures("threads")
def test_fused_step_on_quantized_llama_equals_torch(qtype):
    model = genmodels.quantize(tiny_model("llama", d_ff=96, vocab_size=131), qtype)
    assert any(type(m) is QuantizedLinear for m in model.modules())
    fused_step_equals_torch(model, steps=5, tol=dict(atol=1e-4, rtol=1e-4))


def test_generate_on_a_quantized_model_takes_the_native_step_and_equals_torch(monkeypatch):
    model = genmodels.quantize(tiny_model("llama", d_ff=96, eos_token_id=None), "q4_1")
    ids, mask = random_ids(2, 6), left_pad_mask([6, 3], 6)
    calls, fused_cls = [], decode_mod.fused_step
    monkeypatch.setattr(decode_mod, "fused_step", lambda *a, **k: calls.append(1) or fused_cls(*a, **k))
    native_out = genmodels.generate(model, ids, attention_mask=mask, max_new_tokens=8)
    assert calls  # the quantised model went through the native step
    monkeypatch.setenv("GENMODELS_NATIVE", "0")
    assert torch.equal(native_out, genmodels.generate(model, ids, attention_mask=mask, max_new_tokens=8))


# ---- genmodels.quantize ----------------------------------------------------------------------------
@pytest.mark.parametrize("qtype", QTYPES)
def test_quantize_round_trip(qtype):
    model = tiny_model("llama", d_ff=96)
    q = genmodels.quantize(model, qtype)
    names = {n for n, m in q.named_modules() if type(m) is QuantizedLinear}
    assert names == {f"blocks.{i}.{p}" for i in range(2) for p in ("attn.qkv", "attn.out", "mlp.gate_up", "mlp.down")}
    for name in names:
        original = model.get_submodule(name).weight.detach()
        ql = q.get_submodule(name)
        assert torch.equal(ql.blocks, quantize_rows(original, qtype))  # the original is left as it was
        step = original.abs().amax() / (127 if qtype == "q8_0" else 7)
        assert float((ql.dequantize() - original).abs().max()) <= float(step)  # within a rounding step
        assert torch.equal(quantize_rows(ql.dequantize(), qtype), ql.blocks)  # re-quantising is stable
    assert not any(type(m) is QuantizedLinear for m in model.modules())
    with torch.no_grad():
        ids = random_ids(2, 7)
        a, b = model(ids), q(ids)
    assert float((a - b).norm() / a.norm()) < (0.05 if qtype == "q8_0" else 0.5)  # close: random tiny weights


def test_quantize_refuses_an_unknown_type_or_a_quantised_model_in_one_line():
    with pytest.raises(ValueError, match=r"^quantisation type 'q5_k' is not supported; use one of q8_0, q4_0, "
                                         r"q4_1$"):
        genmodels.quantize(tiny_model("llama", d_ff=96), "q5_k")
    once = genmodels.quantize(tiny_model("llama", d_ff=96), "q8_0")
    with pytest.raises(ValueError, match=r"^genmodels.quantize: blocks.0.attn.qkv already holds q8_0 blocks; quantise "
                                         r"the fp32 model"):
        genmodels.quantize(once, "q4_0")  # never a silent copy of the q8_0 blocks


# ---- training refuses quantised weights ------------------------------------------------------------
def test_training_through_quantized_weights_is_refused_in_one_line():
    model = genmodels.quantize(tiny_model("llama", d_ff=96), "q8_0").train()
    with pytest.raises(RuntimeError) as e:
        model(random_ids(1, 4)).sum().backward()
    assert "\n" not in str(e.value) and "q8_0 blocks" in str(e.value) and "inference only" in str(e.value)
    with torch.no_grad():  # inference in train mode (no gradient) still runs
        model(random_ids(1, 4))


# ---- a real file: SmolLM2-135M-Instruct's Q4_1 GGUF, blocks kept ----------------------------------
@pytest.fixture(scope="module")
def smollm2_q4_1():
    from tests.parity.transformers.make_gguf_reference import smollm2_file
    return genmodels.load(smollm2_file(), quantized=True)


def test_smollm2_blocks_kept_dequantise_to_the_fp32_load(smollm2_q4_1, smollm2):
    kept = {n: m for n, m in smollm2_q4_1.named_modules() if type(m) is QuantizedLinear}
    assert len(kept) == 30 * 4 and {m.qtype for m in kept.values()} == {"q4_1"}  # qkv, out, gate_up, down
    for name, m in kept.items():  # fused q|k|v and gate|up, llama.cpp's q/k row order undone
        assert torch.equal(m.dequantize(), smollm2.get_submodule(name).weight), name


def test_smollm2_q4_1_greedy_64_tokens_equal_its_dequantised_fp32_model(smollm2_q4_1, smollm2):
    assert unsupported(smollm2_q4_1) is None  # the native step reads the blocks
    assert smollm2_q4_1.quantized_head[1] == 8  # and the tied head from token_embd's Q8_0 blocks
    ids = torch.tensor([smollm2.tokenizer.encode("def fibonacci(n):\n").ids])
    with torch.inference_mode():
        got = genmodels.generate(smollm2_q4_1, ids, max_new_tokens=64)
        want = genmodels.generate(smollm2, ids, max_new_tokens=64)
        if not torch.equal(got, want):  # name the first divergence and the fp32 model's logit margin there
            at = int((got != want).nonzero()[0, 1])
            top = smollm2(want[:, :at])[0, -1].topk(2).values
            pytest.fail(f"first divergence at token {at - ids.shape[1]}: q4_1 {int(got[0, at])}, fp32 "
                        f"{int(want[0, at])}; fp32 logit margin there {float(top[0] - top[1]):.3g}")


def test_smollm2_q4_1_greedy_on_int8_activations_diverges_only_at_a_near_tie(smollm2_q4_1, smollm2):
    """The default int8-activation products move SmolLM2's logits by up to ~2 (mean ~0.26; docs/quantization.md):
    greedy tokens equal the dequantised fp32 model's for AGREE tokens at least, and where they first differ the
    fp32 model's top-2 margin is under TIE (measured: token 21, margin 0.293)."""
    ids = torch.tensor([smollm2.tokenizer.encode("def fibonacci(n):\n").ids])
    with torch.inference_mode():
        with quant.qdot_forced("vnni") as mode:
            assert mode != "fp32"
            got = genmodels.generate(smollm2_q4_1, ids, max_new_tokens=64)
        want = genmodels.generate(smollm2, ids, max_new_tokens=64)
        if torch.equal(got, want):
            return
        at = int((got != want).nonzero()[0, 1])
        top = smollm2(want[:, :at])[0, -1].topk(2).values
    margin = float(top[0] - top[1])
    assert at - ids.shape[1] >= AGREE and margin < TIE, (
        f"int8: first divergence at token {at - ids.shape[1]} (q4_1 {int(got[0, at])}, fp32 {int(want[0, at])}), "
        f"fp32 logit margin there {margin:.3g}")


def test_load_quantized_refuses_a_folder_in_one_line(tmp_path):
    genmodels.save(tiny_model("llama", d_ff=96), tmp_path / "m")
    with pytest.raises(ValueError, match=r"m: quantized=True keeps a GGUF file's blocks; this is not a GGUF file — "
                                         r"quantise a loaded model with genmodels.quantize\(model, 'q8_0'"):
        genmodels.load(tmp_path / "m", quantized=True)


@pytest.mark.parametrize("writer", ["save", "export_hf"])
def test_writing_a_quantized_model_is_refused_in_one_line(writer, tmp_path):
    q = genmodels.quantize(tiny_model("llama", d_ff=96), "q4_0")
    with pytest.raises(ValueError, match=rf"^genmodels.{writer}: blocks.0.attn.qkv and 7 more hold q4_0 blocks "
                                         r"\(QuantizedLinear\), which genmodels' folders do not store; save the fp32"):
        getattr(genmodels, writer)(q, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_quantized_cross_attention_is_refused_by_the_native_step_and_runs_in_pytorch():
    from tests.native.test_decoder_step import t5_sources, t5_tiny
    model = genmodels.quantize(t5_tiny(), "q8_0")
    assert unsupported(model) == "block 0 cross.q is a QuantizedLinear, not a plain nn.Linear"
    src, mask = t5_sources()
    with torch.inference_mode():
        out = genmodels.generate(model, src, attention_mask=mask, max_new_tokens=4)
    assert out.shape[0] == 3
