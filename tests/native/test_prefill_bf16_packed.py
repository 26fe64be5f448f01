"""bf16 weights packed once (csrc/gemm_bf16.c gm_pack_bf16, native/prefill.py packed_weights): the packed panels
are exactly the layout the per-call packing makes (checked against a Python model of it), products and whole
prefills read from them equal the per-call ones bit for bit (edge sizes, 1 and 2 threads, the threads' row split),
and the packed copy is made once per weight, again after an in-place change, and dropped with its weight; the scratch
kept between calls (fp32 too) holds nothing a call reads before writing."""
from __future__ import annotations

import gc

import pytest
import torch

import genmodels
from genmodels.native import library
from genmodels.native import prefill as native_prefill

from tests.helpers.native import native_built, skip_if_disabled  # noqa: F401  (autouse fixture)
from tests.helpers.tiny import left_pad_mask, random_ids, tiny_model
from tests.native.test_prefill import gemm
from tests.native.test_prefill_bf16 import has_bf16, needs_bf16  # noqa: F401  (the skipif string calls has_bf16)

torch.set_num_threads(1)

skip_if_disabled()

NR, KC = 32, 384  # csrc/prefill.h: the AVX-512 tile's width and the most values of a K-block


def k_blocks(k: int) -> list[tuple[int, int]]:
    """(k0, kc) of gemm.c's gemm_k_block for fp32: K split evenly into blocks of ≤ KC, each a multiple of 16."""
    nb = -(-k // KC)
    kb = -(-(-(-k // nb)) // 16) * 16
    kb = kb if kb <= KC else KC // 16 * 16
    return [(k0, min(kb, k - k0)) for k0 in range(0, k, kb)]


def packed_model(w: torch.Tensor) -> torch.Tensor:
    """The documented layout in Python: per K-block, per NR-wide panel, bp[k/2][NR] lanes of (bf16 W[n, k] low,
    bf16 W[n, k + 1] high), rows past N and an odd block's last k zero."""
    n, k = w.shape
    bits = w.bfloat16().view(torch.int16).to(torch.int64) & 0xFFFF  # round to nearest even, as VCVTNE2PS2BF16
    p = -(-n // NR)
    bits = torch.cat([bits, torch.zeros(p * NR - n, k, dtype=torch.int64)])
    out = []
    for k0, kc in k_blocks(k):
        blk = bits[:, k0:k0 + kc]
        if kc % 2:
            blk = torch.cat([blk, torch.zeros(p * NR, 1, dtype=torch.int64)], 1)
        lanes = blk[:, 0::2] | (blk[:, 1::2] << 16)  # (P·NR, kc2)
        out += [lanes[j * NR:(j + 1) * NR].T.reshape(-1) for j in range(p)]  # panel j: [k/2][NR]
    return torch.cat(out).to(torch.int32)  # wraps past 2^31 as the u32 lanes do


@needs_bf16
@pytest.mark.parametrize("k,n", [(37, 5), (100, 67), (300, 333), (800, 40), (1376, 33)])  # odd K, N tails, K-blocks
def test_packed_layout_is_the_documented_one(k, n):
    w = torch.randn(n, k, generator=torch.Generator().manual_seed(k + n))
    got = native_prefill.pack_bf16(w)
    assert got.numel() == library().gm_bf16_packed_size(n, k) == (k + 1) // 2 * -(-n // NR) * NR
    assert torch.equal(got, packed_model(w))


@needs_bf16
# MR tails (the 4-, 8- and 12-row kernels); 52 and 130 rows:
@pytest.mark.parametrize("m", [1, 13, 20, 24, 37, 52, 130])
# 2 threads split the rows in fours (24 | 28: a 4-row sliver; 64 | 68: 4 and 8 rows)
@pytest.mark.parametrize("k,n", [(37, 5), (100, 67), (300, 333), (576, 96), (800, 40)])
@pytest.mark.usefixtures("threads")
def test_gemm_from_packed_weights_equals_per_call_packing(m, k, n):
    g = torch.Generator().manual_seed(m * 1000 + k + n)
    x, w, b = torch.randn(m, k, generator=g), torch.randn(n, k, generator=g), torch.randn(n, generator=g)
    want = gemm(x, w, bias=b, bf16=True)
    assert torch.equal(gemm(x, w, bias=b, bf16=True, packed=native_prefill.pack_bf16(w)), want)


def gated_rows(f: int) -> torch.Tensor:
    """gm_pack_bf16_gated's row order of a gated fc1 (2F, K): per NR-wide panel, NR/2 gate rows, then the same
    up rows."""
    half = torch.arange(f).view(-1, NR // 2)
    return torch.cat([half, half + f], 1).reshape(-1)


@needs_bf16
@pytest.mark.parametrize("k,f", [(37, 16), (300, 48), (800, 96)])
def test_gated_layout_is_the_documented_one_with_gate_and_up_rows_paired(k, f):
    """A gated fc1's panels pair gate row i with up row F + i (16 of each a panel): its product's tile ends with
    both halves of 16 hidden units, which it turns into SiLU(gate) · up itself (csrc/prefill.c fused_silu)."""
    w = torch.randn(2 * f, k, generator=torch.Generator().manual_seed(k + f))
    assert torch.equal(native_prefill.pack_bf16(w, gated=True), packed_model(w[gated_rows(f)]))
    with pytest.raises(ValueError, match="gm_pack_bf16_gated refused"):
        native_prefill.pack_bf16(torch.randn(2 * 24, k), gated=True)  # 24 hidden units: not whole half panels


def prefill(model, ids, mask, pack: bool, monkeypatch) -> torch.Tensor:
    monkeypatch.setattr(native_prefill, "PACK_BF16", pack)
    b, t = ids.shape
    with torch.inference_mode():
        return native_prefill.prefill(model, model.new_cache(b, t), ids, mask, bf16=True).clone()


@needs_bf16
@pytest.mark.parametrize("kind,kw", [("llama", dict(d_model=64, n_heads=4, n_kv_heads=2, d_ff=96)),  # fused SiLU
                                     ("llama", dict(d_model=64, n_heads=4, n_kv_heads=2, d_ff=40)),  # not: 40 % 16
                                     ("gpt2", dict(norm_placement="post", final_norm=False))])
@pytest.mark.usefixtures("threads")
def test_prefill_from_packed_weights_equals_per_call_packing(kind, kw, monkeypatch):
    model = tiny_model(kind, **kw)
    ids, mask = random_ids(2, 60), left_pad_mask([60, 33], 60)
    assert torch.equal(prefill(model, ids, mask, True, monkeypatch), prefill(model, ids, mask, False, monkeypatch))
    packed = {id(p) for p in model.parameters()} & {key[0] for key in native_prefill._packed}  # (id, gated layout)
    assert len(packed) == 4 * len(model.decoder_view()[0])  # every block linear read from its packed copy


@needs_bf16
def test_a_quantised_model_packs_nothing_and_is_unchanged(monkeypatch):
    model = genmodels.quantize(tiny_model("llama", d_model=64, n_heads=4, n_kv_heads=2, d_ff=96), "q4_1").eval()
    ids = random_ids(1, 40)
    before = len(native_prefill._packed)
    assert torch.equal(prefill(model, ids, None, True, monkeypatch), prefill(model, ids, None, False, monkeypatch))
    assert len(native_prefill._packed) == before


@needs_bf16
def test_packed_once_repacked_after_an_in_place_change_and_dropped_with_the_weight(monkeypatch):
    model, ids = tiny_model("llama", d_model=64, n_heads=4, n_kv_heads=2, d_ff=96), random_ids(1, 40)
    qkv = model.decoder_view()[0][0].attn.qkv.weight
    first = prefill(model, ids, None, True, monkeypatch)
    kept = native_prefill._packed[id(qkv), False][-1]
    prefill(model, ids, None, True, monkeypatch)
    assert native_prefill._packed[id(qkv), False][-1] is kept  # not packed again
    with torch.no_grad():
        qkv.mul_(1.5)  # bumps qkv._version
    changed = prefill(model, ids, None, True, monkeypatch)
    assert native_prefill._packed[id(qkv), False][-1] is not kept
    assert torch.equal(changed, prefill(model, ids, None, False, monkeypatch)) and not torch.equal(changed, first)
    mine = {id(p) for p in model.parameters()} & {key[0] for key in native_prefill._packed}
    assert len(mine) == 4 * 2  # tiny llama: 2 layers × (qkv, out, gate_up, down)
    del model, qkv
    gc.collect()
    assert not mine & {key[0] for key in native_prefill._packed}


@needs_bf16
@pytest.mark.parametrize("edit", ["ema", "prune"])
def test_an_edit_through_data_that_skips_the_version_counter_is_seen(edit, monkeypatch):
    """``w.data.mul_`` (an EMA) and ``w.data[mask] = 0`` (magnitude pruning) leave ``_version`` alone: the
    sampled values see them (native/watch.py), so the prefill never reads the stale bf16 copy."""
    model, ids = tiny_model("llama", d_model=64, n_heads=4, n_kv_heads=2, d_ff=96), random_ids(1, 40)
    down = model.decoder_view()[0][0].mlp.down.weight
    prefill(model, ids, None, True, monkeypatch)
    version = down._version
    if edit == "ema":
        down.data.mul_(0.5)
    else:
        down.data[down.data.abs() < down.data.abs().median()] = 0
    assert down._version == version  # the counter did not move
    assert torch.equal(prefill(model, ids, None, True, monkeypatch), prefill(model, ids, None, False, monkeypatch))


@pytest.mark.parametrize("bf16", [False, pytest.param(True, marks=needs_bf16)])
@pytest.mark.usefixtures("threads")
def test_the_kept_scratch_full_of_nan_changes_nothing(bf16):
    """native/prefill.py keeps the scratch between calls: nothing may read a value it did not write in this call
    (a fresh allocation's zeroed pages hid such a read)."""
    model = tiny_model("llama", d_model=64, n_heads=4, n_kv_heads=2, d_ff=96, sliding_window=16)
    ids, mask = random_ids(2, 60), left_pad_mask([60, 33], 60)
    outs = []
    for fill in (0.0, float("nan")):
        native_prefill.release()
        native_prefill._kept.scratch = torch.full((1 << 20,), fill)
        with torch.inference_mode():
            cache = model.new_cache(2, 60)
            outs.append((native_prefill.prefill(model, cache, ids, mask, bf16=bf16).clone(), cache.layers[0].k.clone()))
    assert torch.equal(outs[0][0], outs[1][0]) and torch.equal(outs[0][1], outs[1][1])
    native_prefill.release()


@needs_bf16
def test_two_threads_give_one_threads_bits_every_time(monkeypatch):
    """Where the products split rows, the bf16 prefill drops barriers between steps that read only each thread's own
    rows (csrc/prefill.c: gm_fuse.no_barrier); every output is summed in the same order whatever the thread count, so
    2 threads must give 1 thread's logits and cache bit for bit, call after call (a missing barrier shows as a
    mismatch: a thread reading rows another has not written yet)."""
    monkeypatch.setattr(native_prefill, "PACK_BF16", True)
    model = tiny_model("llama", d_model=64, n_heads=4, n_kv_heads=2, d_ff=96, n_layers=4)
    ids, mask = random_ids(2, 120), left_pad_mask([120, 77], 120)

    def run():
        with torch.inference_mode():
            cache = model.new_cache(2, 120)
            return native_prefill.prefill(model, cache, ids, mask, bf16=True).clone(), cache.layers[-1].v.clone()

    want = run()
    torch.set_num_threads(2)
    try:
        for _ in range(20):
            got = run()
            assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    finally:
        torch.set_num_threads(1)
