"""The native decode step over sparse MoE layers (csrc/moe.c) held equal to the PyTorch SparseMoE."""
from __future__ import annotations

import copy

import pytest
import torch

import genmodels
from genmodels.generation import decode as decode_mod
from genmodels.native.decoder import FusedDecodeStep, unsupported
from genmodels.nn import TopKRouter, record_routing

from tests.helpers.native import native_built, skip_if_disabled  # noqa: F401  (autouse fixture)
from tests.helpers.tiny import left_pad_mask, random_ids, tiny_model

torch.set_num_threads(1)

skip_if_disabled()  # otherwise a failed build fails every test here (tests/helpers/native.py)

TOL = dict(atol=1e-5, rtol=1e-4)
MOE = dict(n_experts=6, experts_per_token=2, expert_d_ff=40)  # E = 6 experts of width F = 40, top-2, renormalised


def moe_model(seed: int = 0, **kw) -> torch.nn.Module:
    """A 2-layer llama-tiny layout (D 64) whose feed-forwards are sparse MoE, every parameter random."""
    return tiny_model("llama", seed=seed, **{**MOE, **kw})


def step_pairs(model, batch: int, steps: int = 10, t: int = 7, ref=None):
    """(native logits, PyTorch logits, PyTorch routings) of each of ``steps`` decode steps after a
    left-padded prefill of ``t`` tokens; both caches see the same tokens (PyTorch's greedy picks).
    The PyTorch side (prefill of both caches, the steps) runs ``ref`` (default: ``model``), the
    native step ``model``."""
    ref = model if ref is None else ref
    ids = random_ids(batch, t, seed=3)  # (B, T)
    mask = left_pad_mask([t, 4, 2][:batch], t)  # (B, T)
    full = torch.cat([mask, torch.ones(batch, steps, dtype=torch.long)], 1)  # (B, T + steps)
    out = []
    with torch.inference_mode():
        cache, cache2 = model.new_cache(batch, t + steps), model.new_cache(batch, t + steps)
        h = ref.hidden_states(ids, attention_mask=mask, cache=cache)
        ref.hidden_states(ids, attention_mask=mask, cache=cache2)
        nxt = ref.head(h[:, -1]).argmax(-1)  # (B,)
        step = FusedDecodeStep(model, cache, batch)
        pos = mask.sum(-1) - 1  # (B,)
        for s in range(steps):
            pos = pos + 1
            with record_routing(ref) as routing:
                want = ref(nxt[:, None], attention_mask=full[:, :t + s + 1], position_ids=pos[:, None],
                             cache=cache2)[:, -1]  # (B, V)
            out.append((step(nxt, pos, full[:, :t + s + 1]).clone(), want, routing))
            nxt = want.argmax(-1)
    return out


# ---- one fused step == the PyTorch forward, step after step --------------------------------------
CASES = {
    "k1-switch": dict(experts_per_token=1, router_renormalize=False),
    "k2-renorm": {},
    "k2-no-renorm": dict(router_renormalize=False),
    "k3": dict(n_experts=5, experts_per_token=3),
    "moe_every2": dict(n_layers=4, moe_every=2),  # dense, MoE, dense, MoE
    "geglu-experts": dict(mlp="geglu_tanh"),
    "post-norm": dict(norm_placement="post", final_norm=False),  # the MoE reads x while adding into it
    # widths that are not multiples of 8 (blocks of 8 weight rows; all presets' widths are): D 36, experts'
    # gate|up 2·37, dense FFN 68 (moe_every 2)
    "widths-not-multiples-of-8": dict(d_model=36, n_heads=2, n_kv_heads=1, d_ff=68, expert_d_ff=37, moe_every=2),
}


@pytest.mark.parametrize("batch", [1, 2], ids=["b1", "b2-left-padded"])
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.usefixtures("threads")  # 1 and 2 threads (tests/native/conftest.py)
def test_moe_step_equals_torch(case, batch):
    model = moe_model(**CASES[case])
    assert unsupported(model) is None
    picked = set()
    for got, want, routing in step_pairs(model, batch):
        torch.testing.assert_close(got, want, **TOL)
        picked |= {int(e) for r in routing for e in r.picks.flatten()}
    n = model.config.n_experts
    assert len(picked) >= n - 1, f"routing too uniform to test: experts used {sorted(picked)} of {n}"


@pytest.mark.usefixtures("threads")  # 1 and 2 threads (tests/native/conftest.py)
def test_moe_step_reads_each_layers_own_experts():
    """Two layers of different weights: a step reading layer 0's experts for layer 1 must fail."""
    model = moe_model(seed=4)
    moe0, moe1 = (b.mlp for b in model.transformer_blocks())
    assert not torch.equal(moe0.experts.down_proj, moe1.experts.down_proj)
    for got, want, _ in step_pairs(model, 2, steps=4):
        torch.testing.assert_close(got, want, **TOL)


def test_moe_step_equals_torch_on_two_threads():
    """The team loops split (row, pick, block) items over threads: 2 threads, batch 3, k = 3."""
    model = moe_model(n_experts=5, experts_per_token=3, moe_every=2, n_layers=2)
    torch.set_num_threads(2)
    try:
        pairs = step_pairs(model, 3, steps=6)
    finally:
        torch.set_num_threads(1)
    for got, want, _ in pairs:
        torch.testing.assert_close(got, want, **TOL)


# ---- exact ties: the lower expert index wins ----------------------------------------------------
def copy_expert(model, src: int, dst: int) -> None:
    """Expert ``dst`` of every MoE layer := expert ``src`` (the router is left alone)."""
    with torch.no_grad():
        for blk in model.transformer_blocks():
            for p in (blk.mlp.experts.gate_up_proj, blk.mlp.experts.down_proj):
                p[dst].copy_(p[src])


@pytest.mark.parametrize("k", [1, 2])
@pytest.mark.usefixtures("threads")  # 1 and 2 threads (tests/native/conftest.py)
def test_exact_router_ties_pick_the_lower_index(k):
    """Router rows built so that every token's k-th and (k+1)-th probabilities tie exactly: with
    z = s·(−1, 1, −1, 1) (k = 1) the tie is {1, 3} or {0, 2}; with z = s·(2, 1, −1, 1) (k = 2) it is
    {1, 3} after 0 or 2. The native step must take the lower index. torch.topk's CPU tie order is
    libstdc++'s nth_element's (not specified), so the reference is the PyTorch model with the higher
    tied experts overwritten by the lower ones: equal for either tie order. The same model with the
    lower ones overwritten by the higher ones must differ (the test can tell the two orders apart)."""
    rows = (-1.0, 1.0, -1.0, 1.0) if k == 1 else (2.0, 1.0, -1.0, 1.0)
    pairs = [(0, 2), (1, 3)] if k == 1 else [(1, 3)]  # (low, high) tied indices
    model = moe_model(seed=2, n_experts=4, experts_per_token=k, router_renormalize=k > 1)
    with torch.no_grad():
        for blk in model.transformer_blocks():
            u = blk.mlp.router.weight[0].clone()  # (D,)
            blk.mlp.router.weight.copy_(torch.tensor(rows)[:, None] * u)  # (E, D)
    low, high = copy.deepcopy(model), copy.deepcopy(model)
    for a, b in pairs:
        copy_expert(low, a, b)
        copy_expert(high, b, a)
    for got, want, _ in step_pairs(model, 2, steps=5, ref=low):  # prefill by low: lower-index ties throughout
        torch.testing.assert_close(got, want, **TOL)
    wrong = [(got - want).abs().max() for got, want, _ in step_pairs(model, 2, steps=5, ref=high)]
    assert min(wrong) > 1e-3


# ---- generation: native on == native off -------------------------------------------------------
@pytest.mark.usefixtures("threads")  # 1 and 2 threads (tests/native/conftest.py)
def test_generate_native_equals_torch(monkeypatch):
    model = moe_model(eos_token_id=None, n_layers=3, moe_every=1)
    ids, mask = random_ids(2, 8), left_pad_mask([8, 3], 8)
    calls = []
    fused = decode_mod.fused_step
    monkeypatch.setattr(decode_mod, "fused_step", lambda *a, **k: calls.append(1) or fused(*a, **k))
    runs = [dict(), dict(temperature=0.8, top_k=20, seed=0), dict(num_beams=3)]  # greedy, sampled, beam search
    fast = [genmodels.generate(model, ids, 24, attention_mask=mask, **kw) for kw in runs]
    fast.append(genmodels.generate(model, ids[:1], 24))  # batch 1
    assert len(calls) == 4  # the native path ran
    monkeypatch.setenv("GENMODELS_NATIVE", "0")
    slow = [genmodels.generate(model, ids, 24, attention_mask=mask, **kw) for kw in runs]
    slow.append(genmodels.generate(model, ids[:1], 24))
    assert len(calls) == 4 and fast[0].shape == (2, 32)
    for a, b in zip(fast, slow):
        assert torch.equal(a, b)


# ---- what is refused, with the reason --------------------------------------------------------------
def test_refusals_name_the_reason():
    assert "eval_capacity_factor" in unsupported(moe_model(eval_capacity_factor=2.0))
    assert unsupported(moe_model(capacity_factor=1.25)) is None  # training capacity: off in eval()
    assert "capacity_factor (training mode)" in unsupported(moe_model(capacity_factor=1.25).train())
    assert "jitter" in unsupported(moe_model(router_jitter=0.1).train())
    assert "fp32" in unsupported(moe_model().double())

    class OtherRouter(TopKRouter):
        pass
    model = moe_model()
    blk = model.transformer_blocks()[1]
    blk.mlp.router.__class__ = OtherRouter
    assert "OtherRouter" in unsupported(model)
    model = moe_model()
    model.transformer_blocks()[0].mlp.experts.activation = "swish"
    assert "'swish'" in unsupported(model)
    model = moe_model()
    with torch.no_grad():
        model.transformer_blocks()[0].mlp.experts.down_proj = torch.nn.Parameter(torch.zeros(6, 64, 39))
    assert "shapes" in unsupported(model)


def test_refused_model_still_generates():
    model = moe_model(eval_capacity_factor=2.0, eos_token_id=None)
    out = genmodels.generate(model, random_ids(2, 5), 4)
    assert out.shape == (2, 9)
