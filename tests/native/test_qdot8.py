"""The batch-1 quantised products with int8 activations (csrc/qdot8.c), on every path this machine can run: the
VNNI dot where built, the AVX2 dot (forced: the path of AVX2-only CPUs such as Zen 3), and the AVX2-only build.

* the activation quantiser equals llama.cpp's rule (d = amax / 127, q = round-half-even(x / d)) bit for bit;
* each product equals dequantise(W) · dequantise(quantise_q8(x)) in fp64 to 1e-5 relative (the arithmetic it
  claims), for every row tail, odd block counts (the lone last block), an offset x (Q4_1's / Q4_0's Σq terms),
  a zero block, bias and accumulate-free output, 1 and 2 threads;
* its distance from the fp32-activation product is within the bound |x̂ − x| ≤ d/2 gives:
  |y8 − y32| ≤ Σ_j (d_j / 2) Σ_i |W_ji| (+ fp32 rounding);
* the mode switch: fp32 gives qgemv.c's products; a mode the build lacks falls to the best below it;
  GENMODELS_NATIVE_QDOT's values are checked (one line naming it).
SmolLM2's greedy tokens on the int8 path: tests/native/test_quant.py."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from genmodels.native import quant
from genmodels.nn.quantized import QTYPES, dequantize_rows

from tests.native.test_quant import narrower_build, random_blocks, relative_error  # noqa: F401  (fixture)
from tests.helpers.native import native_built, skip_if_disabled  # noqa: F401  (autouse fixture)

skip_if_disabled()


def int8_modes(lib=None) -> list[str]:
    """The int8 paths this build runs: the best it has, and the AVX2 dot forced (the same where that is the best)."""
    with quant.qdot_forced("vnni", lib=lib) as best:
        pass
    return sorted({best, "avx2"}) if best != "fp32" else []


def reference_quantise(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """llama.cpp's q8 rule in torch fp32: per block of 32, d = amax / 127, q = round-half-even(x · (1 / d))."""
    xb = x.view(-1, 32)
    d = xb.abs().amax(1) / 127
    inv = torch.where(d != 0, torch.tensor(1.0) / d, torch.zeros_like(d))
    return torch.round(xb * inv[:, None]).to(torch.int8).view(-1), d


def dequantised_x(q: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    return (q.view(-1, 32).double() * d.double()[:, None]).view(-1)


def an_x(k: int, seed: int, offset: float = 0.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = offset + torch.randn(k, generator=g) * torch.rand(k // 32, generator=g).repeat_interleave(32) * 4
    x[:32] = 0.0  # a zero block (d = 0)
    x[k // 2 + 3] = 1e-30  # a tiny value
    return x


@pytest.mark.skipif(not int8_modes(), reason="this build has no int8 dot (no AVX2)")
def test_the_activation_quantiser_is_llama_cpps_rule_bit_for_bit():
    for k in (32, 96, 1536):
        x = an_x(k, seed=k)
        if k > 32:  # a value at 126.5 d: half-way, rounds to even
            x[33] = 126.5 * x[32:64].abs().max() / 127
        q, d = quant.quantize_activations(x)
        want_q, want_d = reference_quantise(x)
        assert torch.equal(d, want_d) and torch.equal(q, want_q), k
        assert int(q.abs().max()) <= 127


@pytest.mark.parametrize("qtype", QTYPES)
@pytest.mark.usefixtures("threads")  # 1 and 2 threads: each thread quantises x itself
def test_int8_products_equal_the_dequantised_product_of_the_quantised_x(qtype):
    for mode in int8_modes():
        with quant.qdot_forced(mode):
            for k, offset in ((32, 0.0), (96, 3.0), (576, 0.0), (1536, 3.0)):  # 1, 3 (odd), 18, 48 blocks
                blocks = random_blocks(19, k, qtype, seed=k)
                w = dequantize_rows(blocks, qtype, k).double()
                x = an_x(k, seed=k + 1, offset=offset)
                xh = dequantised_x(*quant.quantize_activations(x))
                bias = torch.randn(19, generator=torch.Generator().manual_seed(k))
                for n in (1, 2, 3, 5, 8, 9, 19):  # row tails of 8-row blocks and of each thread's share
                    got = quant.qlinear(x[None], blocks[:n].contiguous(), qtype, bias[:n])
                    want = (w[:n] @ xh + bias[:n].double()).float()[None]
                    assert relative_error(got, want) < 1e-5, (mode, k, n)


@pytest.mark.parametrize("qtype", QTYPES)
def test_int8_products_stay_within_the_activation_rounding_bound_of_fp32(qtype):
    k = 576
    blocks = random_blocks(64, k, qtype, seed=11)
    w = dequantize_rows(blocks, qtype, k)
    x = an_x(k, seed=12, offset=1.0)
    _, d = quant.quantize_activations(x)
    bound = (w.abs().view(64, -1, 32).sum(2).double() * (d.double() / 2)).sum(1)  # Σ_j d_j/2 Σ_i |W_ji|, (64,)
    with quant.qdot_forced("fp32"):
        y32 = quant.qlinear(x[None], blocks, qtype)[0]
    for mode in int8_modes():
        with quant.qdot_forced(mode):
            y8 = quant.qlinear(x[None], blocks, qtype)[0]
        slack = 1e-5 * float(y32.abs().max())
        assert ((y8 - y32).abs().double() <= bound + slack).all(), mode
        assert float((y8 - y32).abs().max()) > 0  # the int8 path ran (x is not exactly representable)


@pytest.mark.parametrize("qtype", QTYPES)
def test_the_fp32_mode_is_qgemvs_product(qtype):
    blocks = random_blocks(11, 96, qtype, seed=3)
    x = 1.0 + torch.randn(1, 96, generator=torch.Generator().manual_seed(2))
    with quant.qdot_forced("fp32") as mode:
        assert mode == "fp32"
        assert relative_error(quant.qlinear(x, blocks, qtype), F.linear(x, dequantize_rows(blocks, qtype, 96))) < 1e-5


@pytest.mark.parametrize("qtype", QTYPES)
def test_the_avx2_only_build_runs_the_avx2_dot(qtype, narrower_build):
    """Built with AVX-512 off (Zen 3's path): asking for VNNI gives the AVX2 dot (no AVX2: fp32), equal to its reference."""
    with quant.qdot_forced("vnni", lib=narrower_build) as mode:
        assert mode == ("avx2" if narrower_build.gm_quant_lanes() == 8 else "fp32")
        blocks = random_blocks(11, 96, qtype, seed=3)
        w = dequantize_rows(blocks, qtype, 96).double()
        x = an_x(96, seed=4, offset=1.0)
        if mode == "avx2":
            want = w @ dequantised_x(*quant.quantize_activations(x, lib=narrower_build))
        else:
            want = w @ x.double()
        got = quant.qlinear(x[None], blocks, qtype, threads=2, lib=narrower_build)
        assert relative_error(got, want.float()[None]) < 1e-5


def test_an_unknown_mode_or_variable_value_is_refused_in_one_line(monkeypatch):
    with pytest.raises(ValueError, match=r"^qdot mode must be one of fp32, avx2, vnni, got 'int4'$"):
        quant.qdot_mode("int4")
    monkeypatch.setenv("GENMODELS_NATIVE_QDOT", "fast")
    with pytest.raises(ValueError, match=r"^GENMODELS_NATIVE_QDOT='fast': allowed are int8, avx2, fp32 \(unset: int8\)$"):
        quant.qdot_mode()


@pytest.mark.skipif(not int8_modes(), reason="this build has no int8 dot (no AVX2)")
def test_the_variable_chooses_the_path(monkeypatch):
    """GENMODELS_NATIVE_QDOT as the library reads it (at its first batch-1 product; ``qdot_mode("env")`` again)."""
    best = max(int8_modes(), key=quant.QDOT_MODES.get)
    with quant.qdot_forced("fp32"):  # restores the mode in force after
        for value, want in (("fp32", "fp32"), ("avx2", "avx2"), ("int8", best), ("", best)):
            monkeypatch.setenv("GENMODELS_NATIVE_QDOT", value)
            assert quant.qdot_mode("env") == want, value
