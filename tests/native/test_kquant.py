"""GGUF's K formats (Q6_K, Q4_K: super-blocks of 256 values), read from files only: the PyTorch
dequantisation bit for bit gguf-py's, the native products (batch 1 from the blocks, batch > 1 through
the unpacked rows) against dequantise-then-fp32, and ``load(…, quantized=True)`` keeping them."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from genmodels.native import quant
from genmodels.nn.quantized import BLOCK_BYTES, KQTYPES, dequantize_rows

from tests.native.test_quant import narrower_build, products_equal_dequantised_fp32, relative_error  # noqa: F401
from tests.helpers.native import native_built, skip_if_disabled  # noqa: F401  (autouse fixture)

skip_if_disabled()

SCALES = {"q6_k": slice(208, 210), "q4_k": slice(0, 4)}  # the fp16 d (and dmin) of a super-block


def random_kblocks(n: int, k: int, qtype: str, seed: int) -> torch.Tensor:
    """(n, k / 256 · bytes) random super-blocks (every quant, scale and min reachable) with finite fp16 d / dmin
    (gguf-py has no K-format quantiser to write real ones)."""
    g = torch.Generator().manual_seed(seed)
    b = torch.randint(0, 256, (n, k // 256, BLOCK_BYTES[qtype]), generator=g, dtype=torch.uint8)
    halves = SCALES[qtype].stop - SCALES[qtype].start
    d = (torch.randn(n, k // 256, halves // 2, generator=g) * 0.01).half().view(torch.uint8)
    b[..., SCALES[qtype]] = d.reshape(n, k // 256, halves)
    return b.reshape(n, -1).contiguous()


@pytest.mark.parametrize("qtype", KQTYPES)
def test_dequantize_equals_gguf_py_bit_for_bit(qtype):
    import gguf
    gt = getattr(gguf.GGMLQuantizationType, qtype.upper())
    blocks = random_kblocks(7, 768, qtype, seed=1)
    want = gguf.quants.dequantize(blocks.numpy(), gt)
    assert np.array_equal(dequantize_rows(blocks, qtype, 768).numpy(), want)
    assert relative_error(quant.dequantize(blocks, qtype, 768), torch.from_numpy(want)) < 1e-6  # C (FMA may round)


@pytest.mark.parametrize("qtype", KQTYPES)
@pytest.mark.parametrize("n,k", [(1, 256), (7, 512), (37, 768)])  # odd row counts
@pytest.mark.usefixtures("threads")  # 1 and 2 threads
def test_k_product_equals_dequantised_fp32(qtype, n, k):
    products_equal_dequantised_fp32(random_kblocks(n, k, qtype, seed=n * 1000 + k), qtype, k, (1, 2, 5, 9))


@pytest.mark.parametrize("qtype", KQTYPES)
def test_narrower_builds_equal_dequantised_fp32(qtype, narrower_build):
    blocks = random_kblocks(37, 512, qtype, seed=9)
    w = dequantize_rows(blocks, qtype, 512)
    assert relative_error(quant.dequantize(blocks, qtype, 512, lib=narrower_build), w) < 1e-6
    for m in (1, 3):
        x = torch.randn(m, 512, generator=torch.Generator().manual_seed(m))
        got = quant.qlinear(x, blocks, qtype, threads=2, lib=narrower_build)
        assert relative_error(got, F.linear(x, w)) < 1e-5


def test_a_width_that_is_not_a_multiple_of_256_is_refused_in_one_line():
    with pytest.raises(ValueError, match=r"^96 input features are not a multiple of the q6_k block size 256$"):
        quant.qlinear(torch.zeros(1, 96), torch.zeros(2, 79, dtype=torch.uint8), "q6_k")


def test_quantising_to_a_k_format_is_refused_in_one_line():
    from genmodels.nn.quantized import quantize_rows
    with pytest.raises(ValueError, match=r"^quantising to q4_k is not supported \(its blocks are read from GGUF "
                                         r"files only\); use one of q8_0, q4_0, q4_1$"):
        quantize_rows(torch.zeros(2, 256), "q4_k")


# ---- load(path.gguf, quantized=True) keeps Q6_K / Q4_K blocks; the fused step reads them ------------
@pytest.mark.parametrize("qtype", KQTYPES)
def test_load_keeps_k_blocks_and_the_fused_step_equals_torch(qtype, tmp_path):
    import genmodels
    from gguf import GGMLQuantizationType as Q

    from genmodels.nn.quantized import QuantizedLinear
    from tests.helpers.gguf_files import tiny_llama, write_llama_gguf
    from tests.native.test_decoder_step import fused_step_equals_torch
    cfg, sd = tiny_llama(d=256, d_ff=512, tied=True)  # every width a multiple of 256
    write_llama_gguf(tmp_path / "k.gguf", cfg, sd, getattr(Q, qtype.upper()))
    fp32, model = genmodels.load(tmp_path / "k.gguf"), genmodels.load(tmp_path / "k.gguf", quantized=True)
    kept = {n: m for n, m in model.named_modules() if type(m) is QuantizedLinear}
    assert len(kept) == 2 * 4 and {m.qtype for m in kept.values()} == {qtype}
    for name, m in kept.items():  # fused q|k|v and gate|up, llama.cpp's q/k row order undone
        assert torch.equal(m.dequantize(), fp32.get_submodule(name).weight), name
    assert model.quantized_head[1] == {"q6_k": 14, "q4_k": 12}[qtype]  # the tied head read from its blocks
    # random raw blocks: weights up to ~1e4, logits ~1e3, so the bound is relative to the weights' scale
    scale = float(model.output_head().get_weight().detach().abs().max())
    fused_step_equals_torch(model.eval(), steps=3, tol=dict(atol=1e-4 * scale, rtol=1e-4))
