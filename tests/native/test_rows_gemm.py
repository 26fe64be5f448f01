"""The batched decode step's fp32 products (csrc/rows_gemm.c, AVX-512 builds: 6 input rows × 8 weight rows a
tile, two outputs a 512-bit accumulator) from RG_MIN_ROWS rows up, the dot tiles (linear.c) below: equal to
PyTorch to 1e-5 with every tail (odd row counts, an odd last weight row, 8-row blocks cut short, K not a
multiple of 8), and BIT FOR BIT equal to each row computed alone (1 row: the dot tiles), so a greedy request
gives the same tokens alone or batched; the fused decode step above and below the threshold; the AVX2 build."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from genmodels import native
from genmodels.native.decoder import FusedDecodeStep

from tests.helpers.native import native_built, skip_if_disabled  # noqa: F401  (autouse fixture)
from tests.helpers.tiny import left_pad_mask, random_ids, tiny_model
from tests.native.test_quant import narrower_build  # noqa: F401  (fixture: the 8-lane and scalar builds)

skip_if_disabled()

TOL = dict(atol=5e-5, rtol=1e-4)  # sums of 576 products of N(0, 1) values (~24 apart from zero) cancel
ROWS = (1, 7, 9, 10, 11, 13, 16, 17, 31, 32, 33, 40)  # below / at / above the threshold, odd, 6-row tile tails
WEIGHTS = (1, 2, 3, 7, 8, 9, 15, 67)  # 1..4 pairs, an odd last row, 8-row blocks with every tail
DEPTHS = (5, 37, 101, 576)  # K < 8 (tail only), tails 5 and 5, none (SmolLM2's width)


def linear(x, w, bias=None, threads=1, lib=None):
    """y = x · wᵀ + bias through gm_linear of ``lib`` (default: the library)"""
    lib = lib or native.library()
    y = x.new_empty(x.shape[0], w.shape[0])
    lib.gm_linear(x.data_ptr(), x.shape[0], x.shape[1], w.data_ptr(), None if bias is None else bias.data_ptr(),
                  y.data_ptr(), w.shape[0], threads)
    return y


def test_the_default_build_takes_it_from_ten_rows():
    lanes, rows = native.library().gm_quant_lanes(), native.library().gm_rows_gemm_min()
    assert rows == 10 if "avx512dq" in native._cpu_id() and lanes == 16 else rows == 0  # AVX-512 (+DQ) builds only


@pytest.mark.parametrize("k", DEPTHS)
@pytest.mark.usefixtures("threads")  # 1 and 2 threads: each thread's share of 8-row blocks
def test_every_tail_equals_torch_and_each_row_alone_bit_for_bit(k):
    g = torch.Generator().manual_seed(k)
    for n in WEIGHTS:
        w, b = torch.randn(n, k, generator=g), torch.randn(n, generator=g)  # (N, K), (N,)
        x = torch.randn(max(ROWS), k, generator=g)  # (M, K)
        for bias in (None, b):
            alone = torch.cat([linear(x[i:i + 1], w, bias, torch.get_num_threads()) for i in range(len(x))])
            for m in ROWS:
                got = linear(x[:m], w, bias, torch.get_num_threads())
                torch.testing.assert_close(got, F.linear(x[:m], w, bias), **TOL)
                assert torch.equal(got, alone[:m]), (k, n, m, bias is not None)


@pytest.mark.usefixtures("threads")
def test_large_product_threaded_equals_torch():
    """N · K past gm_linear's threading threshold, every thread a slab of 8-row blocks and a short last block"""
    g = torch.Generator().manual_seed(3)
    w, x = torch.randn(333, 101, generator=g), torch.randn(32, 101, generator=g)
    torch.testing.assert_close(native.linear(x, w), F.linear(x, w), **TOL)


@pytest.mark.parametrize("widths", [dict(d_model=36, n_heads=2, n_kv_heads=1, d_ff=68),  # K tails, short blocks
                                    dict(d_model=64, n_heads=4, n_kv_heads=2, d_ff=128)],  # full tiles, no K tail
                         ids=["odd", "whole"])
@pytest.mark.parametrize("batch", [9, 12, 17])  # below, above, above with an odd 6-row tile tail
@pytest.mark.usefixtures("threads")
def test_fused_step_of_many_rows_equals_torch(batch, widths):
    """qkv, out and fc2 (accumulating into x), gated fc1 and the head (vocabulary 131: a short last block) at batch
    rows; odd widths take the scalar ends of rg_tile, whole ones the vector store of two rows at a time"""
    model = tiny_model("llama", vocab_size=131, **widths)
    t, steps = 7, 3
    ids = random_ids(batch, t) % 131
    mask = left_pad_mask([t - i % 4 for i in range(batch)], t)  # (B, T)
    full = torch.ones(batch, t + steps, dtype=torch.long)
    full[:, :t] = mask
    with torch.inference_mode():
        cache, cache2 = model.new_cache(batch, t + steps), model.new_cache(batch, t + steps)
        nxt = model.head(model.hidden_states(ids, attention_mask=mask, cache=cache)[:, -1]).argmax(-1)  # (B,)
        model.hidden_states(ids, attention_mask=mask, cache=cache2)
        step, pos = FusedDecodeStep(model, cache, batch), mask.cumsum(-1)[:, -1] - 1
        for s in range(steps):
            pos = pos + 1
            want = model(nxt[:, None], attention_mask=full[:, :t + s + 1], position_ids=pos[:, None],
                         cache=cache2)[:, -1]  # (B, V)
            torch.testing.assert_close(step(nxt, pos, full), want, atol=1e-4, rtol=1e-4)
            nxt = want.argmax(-1)


def test_narrower_builds_keep_the_dot_tiles(narrower_build):
    """without AVX-512 there is no such kernel: 17 rows take the dot tiles, still equal to torch"""
    assert narrower_build.gm_rows_gemm_min() == 0
    g = torch.Generator().manual_seed(5)
    w, b, x = torch.randn(67, 101, generator=g), torch.randn(67, generator=g), torch.randn(17, 101, generator=g)
    torch.testing.assert_close(linear(x, w, b, 2, narrower_build), F.linear(x, w, b), **TOL)


def test_twelve_greedy_requests_batched_get_what_they_get_alone():
    """a session's step over 12 rows (the batched products) gives each request its tokens alone (1 row: the dot
    tiles), token for token — what the server's greedy requests rely on"""
    from genmodels.generation import DecodeSession, Sampling
    model = tiny_model("llama", d_model=64, n_heads=4, n_kv_heads=2, d_ff=128, eos_token_id=None)
    prompts = [random_ids(1, 3 + i % 5, seed=10 + i) for i in range(12)]

    def decode(requests):
        session = DecodeSession(model)
        got = [session.add(ids, Sampling(max_new_tokens=8)) for ids in requests]
        session.run()
        return [r.output for r in got]
    batched = decode(prompts)
    for ids, out in zip(prompts, batched):
        assert torch.equal(out, decode([ids])[0])
