"""The batch-1 quantised products with fp32 activations (csrc/qgemv.c, GENMODELS_NATIVE_QDOT=fp32; the default
int8 ones: test_qdot8.py): rows in groups of 4 (every tail of a group, of an 8-row block and of a thread's share),
Q4_1's per-product block sums of x (an x far from zero mean, where Σ m·x dominates), each equal to
dequantise-then-fp32 to 1e-5; the 8-lane (AVX2) build too."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from genmodels.native import quant
from genmodels.nn.quantized import QTYPES, dequantize_rows

from tests.native.test_quant import narrower_build, random_blocks, relative_error  # noqa: F401  (fixture)
from tests.helpers.native import native_built, skip_if_disabled  # noqa: F401  (autouse fixture)

skip_if_disabled()


@pytest.fixture(autouse=True)
def fp32_activations():
    with quant.qdot_forced("fp32"):
        yield


@pytest.mark.parametrize("qtype", QTYPES)
@pytest.mark.usefixtures("threads")  # 1 and 2 threads: each thread's share of 8-row blocks
def test_every_row_tail_equals_dequantised_fp32(qtype):
    for k in (32, 96, 1536):  # 1, 3 (odd) and 48 blocks a row
        blocks = random_blocks(19, k, qtype, seed=k)
        w = dequantize_rows(blocks, qtype, k)
        x = torch.randn(1, k, generator=torch.Generator().manual_seed(k))
        for n in range(1, 20):  # groups of 4 with tails 1, 2, 3; 8-row blocks with tails 1..7
            got = quant.qlinear(x, blocks[:n].contiguous(), qtype)
            assert relative_error(got, F.linear(x, w[:n])) < 1e-5, (k, n)


@pytest.mark.parametrize("qtype", QTYPES)
@pytest.mark.usefixtures("threads")
def test_an_offset_input_equals_dequantised_fp32(qtype):
    """x = 3 + noise: Q4_1's min term m · Σ x is most of each product; bias added."""
    blocks = random_blocks(37, 576, qtype, seed=5)
    w = dequantize_rows(blocks, qtype, 576)
    g = torch.Generator().manual_seed(1)
    x, bias = 3.0 + torch.randn(1, 576, generator=g), torch.randn(37, generator=g)
    assert relative_error(quant.qlinear(x, blocks, qtype, bias), F.linear(x, w, bias)) < 1e-5


@pytest.mark.parametrize("qtype", QTYPES)
def test_narrower_build_row_tails_equal_dequantised_fp32(qtype, narrower_build):
    blocks = random_blocks(11, 96, qtype, seed=3)
    w = dequantize_rows(blocks, qtype, 96)
    x = 1.0 + torch.randn(1, 96, generator=torch.Generator().manual_seed(2))
    for n in (1, 2, 3, 5, 6, 11):
        with quant.qdot_forced("fp32", lib=narrower_build):
            got = quant.qlinear(x, blocks[:n].contiguous(), qtype, threads=2, lib=narrower_build)
        assert relative_error(got, F.linear(x, w[:n])) < 1e-5, n
