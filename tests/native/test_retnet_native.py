"""genmodels.native.retnet: RetNet's fused recurrent decode step, held equal to the PyTorch recurrent step
(issue #10, deliverable 6)."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import genmodels
from genmodels.generation import decode as decode_mod
from genmodels.native import step as native_step
from genmodels.native.retnet import FusedRetNetStep, unsupported

from tests.helpers.native import native_built, skip_if_disabled  # noqa: F401  (autouse fixture)
from tests.helpers.tiny import randomise, tiny_model

torch.set_num_threads(1)

skip_if_disabled()  # otherwise a failed build fails every test here (tests/helpers/native.py)

# fp32 noise over tens of steps (logits here reach ~6): both paths stay within ~3e-5 of the fp64 logits and are
# equally accurate on average (test_native_is_as_accurate_as_torch_against_fp64); states match to 1e-5.
V, TOL, STATE_TOL = 97, dict(atol=3e-5, rtol=1e-4), dict(atol=1e-5, rtol=1e-4)


def _model(seed: int = 0, **kw) -> genmodels.models.retnet.RetNetLM:
    """A 2-layer RetNet (d 32, 2 heads: d_k 16, d_v 24, FFN 64), every parameter random (norm gains included)."""
    cfg = genmodels.preset("retnet-tiny", **{**dict(vocab_size=V, d_model=32, n_layers=2, n_heads=2, value_dim=48,
                                                   d_ff=64, max_seq_len=256, eos_token_id=None), **kw})
    return randomise(genmodels.build_model(cfg), seed=seed).eval()


def _ids(b: int, t: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, V, (b, t), generator=torch.Generator().manual_seed(seed))


def _torch_step(m, ids: torch.Tensor, cache) -> torch.Tensor:
    """One PyTorch recurrent step for every row: (B,) -> logits (B, V)."""
    return m.head(m.hidden_states(ids[:, None], cache=cache))[:, -1]


def _assert_states_equal(a, b) -> None:
    for (sa, xa), (sb, xb) in zip(a.states, b.states):
        torch.testing.assert_close(sa, sb, **STATE_TOL)
        torch.testing.assert_close(xa, xb, **STATE_TOL)
    assert torch.equal(a.row_pos, b.row_pos) and a.pos == b.pos


# ---- one native step == the PyTorch recurrent step, logits and state ---------------------------------
@pytest.mark.parametrize("activation", ["gelu", "swish"])
@pytest.mark.parametrize("tied", [False, True])
@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.usefixtures("threads")  # 1 and 2 threads (tests/native/conftest.py)
def test_native_steps_equal_torch_after_a_torch_prefill(activation, tied, batch):
    _assert_steps_equal_torch(_model(activation=activation, tie_embeddings=tied), batch)


# widths that are not multiples of 8 (the kernel splits weight rows in blocks of 8; test-audit-2026-12-07, M14: a
# lost last partial block passed every test, all of whose widths were multiples of 8): d 36 (d_k 18), value 60
# (d_v 30), FFN 68, vocabulary 97
ODD = dict(d_model=36, value_dim=60, d_ff=68)


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.usefixtures("threads")  # 1 and 2 threads (tests/native/conftest.py)
def test_native_steps_equal_torch_at_widths_that_are_not_multiples_of_8(batch):
    m = _model(**ODD)
    assert (m.blocks[0].retention.key_dim, m.blocks[0].retention.head_dim) == (18, 30) and unsupported(m) is None
    _assert_steps_equal_torch(m, batch, steps=12)


def _assert_steps_equal_torch(m, batch: int, prompt: int = 9, steps: int = 40) -> None:
    """A PyTorch prefill of ``prompt`` tokens into two caches, then ``steps`` native steps on one and PyTorch
    recurrent steps on the other: equal logits and states after every step."""
    ids = _ids(batch, prompt + steps)
    with torch.inference_mode():
        ref, nat = m.new_cache(batch), m.new_cache(batch)
        m.hidden_states(ids[:, :prompt], cache=ref)
        m.hidden_states(ids[:, :prompt], cache=nat)
        step = FusedRetNetStep(m, nat, batch)
        for i in range(prompt, prompt + steps):
            torch.testing.assert_close(step(ids[:, i]), _torch_step(m, ids[:, i], ref), **TOL)
            _assert_states_equal(nat, ref)


@pytest.mark.usefixtures("threads")  # 1 and 2 threads (tests/native/conftest.py)
def test_native_is_as_accurate_as_torch_against_fp64():
    """Over 150 steps, the native fp32 logits are as close to an fp64 run of the same model as PyTorch's fp32."""
    m = _model(activation="gelu", tie_embeddings=True)
    m64, ids = copy.deepcopy(m).double(), _ids(2, 160, seed=2)
    err_native, err_torch = [], []
    with torch.inference_mode():
        caches = ref, nat, r64 = m.new_cache(2), m.new_cache(2), m64.new_cache(2)
        for model, cache in zip((m, m, m64), caches):
            model.hidden_states(ids[:, :10], cache=cache)
        step = FusedRetNetStep(m, nat, 2)
        for i in range(10, 160):
            exact = _torch_step(m64, ids[:, i], r64)
            err_native.append((step(ids[:, i]).double() - exact).abs().max().item())
            err_torch.append((_torch_step(m, ids[:, i], ref).double() - exact).abs().max().item())
    assert max(err_native) < 1e-4 and sum(err_native) < 1.5 * sum(err_torch), (max(err_native), max(err_torch))


@pytest.mark.usefixtures("threads")  # 1 and 2 threads (tests/native/conftest.py)
def test_native_steps_from_an_empty_cache_and_past_the_chunk_equal_torch():
    """No prefill (the zero state with s = 0 is the empty state); positions beyond chunk_size."""
    m, n = _model(chunk_size=8), 30
    ids = _ids(2, n, seed=3)
    with torch.inference_mode():
        ref, nat = m.new_cache(2), m.new_cache(2)
        step = FusedRetNetStep(m, nat, 2)
        for i in range(n):
            torch.testing.assert_close(step(ids[:, i]), _torch_step(m, ids[:, i], ref), **TOL)
        _assert_states_equal(nat, ref)


@pytest.mark.usefixtures("threads")  # 1 and 2 threads (tests/native/conftest.py)
def test_native_and_torch_steps_interleave_on_one_cache():
    m, ids = _model(), _ids(2, 24, seed=4)
    with torch.inference_mode():
        ref, mixed = m.new_cache(2), m.new_cache(2)
        m.hidden_states(ids[:, :6], cache=ref)
        m.hidden_states(ids[:, :6], cache=mixed)
        kept = [st[0].clone() for st in mixed.states]
        originals = [st[0] for st in mixed.states]  # tensors a caller holds from before the native steps
        step = FusedRetNetStep(m, mixed, 2)
        for i in range(6, 24):
            native = (i // 3) % 2 == 0  # three native steps, three PyTorch steps, …
            got = step(ids[:, i]).clone() if native else _torch_step(m, ids[:, i], mixed)
            torch.testing.assert_close(got, _torch_step(m, ids[:, i], ref), **TOL)
        _assert_states_equal(mixed, ref)
        for a, b in zip(originals, kept):
            assert torch.equal(a, b)  # never written: the native step works on its own copy in the cache


@pytest.mark.usefixtures("threads")  # 1 and 2 threads (tests/native/conftest.py)
def test_native_state_is_the_cache_tensor_updated_in_place():
    m, ids = _model(), _ids(1, 8)
    with torch.inference_mode():
        cache = m.new_cache(1)
        m.hidden_states(ids[:, :4], cache=cache)
        step = FusedRetNetStep(m, cache, 1)
        step(ids[:, 4])
        held = [st[0] for st in cache.states]
        before = [t.clone() for t in held]
        step(ids[:, 5])
        assert all(st[0] is t for st, t in zip(cache.states, held))
        assert all(not torch.equal(t, b) for t, b in zip(held, before))
        assert cache.pos == 6 and cache.row_pos.tolist() == [6]


@pytest.mark.usefixtures("threads")  # 1 and 2 threads (tests/native/conftest.py)
def test_rows_at_different_positions_rotate_at_their_own():
    """A left-padded prefill leaves rows at different positions; native steps equal PyTorch's per-row steps."""
    m, t = _model(), 10
    ids, mask = _ids(3, t + 12, seed=6), torch.ones(3, t, dtype=torch.long)
    mask[1, :4], mask[2, :7] = 0, 0
    with torch.inference_mode():
        ref, nat = m.new_cache(3), m.new_cache(3)
        m.hidden_states(ids[:, :t], attention_mask=mask, cache=ref)
        m.hidden_states(ids[:, :t], attention_mask=mask, cache=nat)
        assert nat.row_pos.tolist() == [10, 6, 3]
        step = FusedRetNetStep(m, nat, 3)
        for i in range(t, t + 12):
            want = _torch_step(m, ids[:, i], ref)  # rows apart: positions differ
            torch.testing.assert_close(step(ids[:, i], nat.row_pos.clone()), want, **TOL)
        _assert_states_equal(nat, ref)


# ---- generation takes the native step; its tokens equal the PyTorch path's -------------------------
@pytest.mark.parametrize("activation", ["gelu", "swish"])
@pytest.mark.usefixtures("threads")  # 1 and 2 threads (tests/native/conftest.py)
def test_generate_native_equals_torch(activation, monkeypatch):
    m = _model(activation=activation)
    ids, mask = _ids(3, 8, seed=7), torch.ones(3, 8, dtype=torch.long)
    mask[1, :3], mask[2, :6] = 0, 0
    calls = []
    fused = decode_mod.fused_step
    monkeypatch.setattr(decode_mod, "fused_step", lambda *a, **k: calls.append(type(fused(*a, **k))) or fused(*a, **k))
    runs = [dict(), dict(attention_mask=mask), dict(temperature=0.8, top_k=20, seed=0)]
    fast = [genmodels.generate(m, ids, 40, **kw) for kw in runs]
    assert calls == [FusedRetNetStep] * 3  # the native path ran
    monkeypatch.setenv("GENMODELS_NATIVE", "0")
    slow = [genmodels.generate(m, ids, 40, **kw) for kw in runs]
    assert len(calls) == 3 and fast[0].shape == (3, 48)
    for a, b in zip(fast, slow):
        assert torch.equal(a, b)


# ---- what it refuses, with a reason (never an exception) ----------------------------------------------
class _Scaled(nn.Linear):
    """A wrapped projection (an adapter would look like this): not the plain weight the kernel reads."""


def test_refusals_name_the_reason(monkeypatch):
    assert unsupported(_model()) is None
    assert native_step.unsupported(_model()) is None
    assert "not a RetNetLM" in unsupported(tiny_model("llama"))
    assert native_step.unsupported(tiny_model("llama")) is None  # the dispatcher sends a Llama to decoder.py
    assert "fp32" in unsupported(_model().double())
    m = _model()
    m.blocks[1].retention.q_proj = _Scaled(32, 32, bias=False)
    assert "block 1 retention.q_proj" in unsupported(m)
    m = _model()
    m.blocks[0].ffn.fc2 = nn.Linear(64, 32, bias=True)
    assert "block 0 ffn.fc2" in unsupported(m)
    m = _model()
    m.blocks[0].ffn.activation = "relu"
    assert "activation 'relu'" in unsupported(m)
    m = _model()
    m.blocks[0].ffn = nn.Identity()
    assert "block 0 is not RetNetBlock" in unsupported(m)
    m = _model()
    del m.blocks  # a layout it cannot read: a reason, not an exception
    assert "not recognised" in unsupported(m)
    monkeypatch.setenv("GENMODELS_NATIVE", "0")
    assert "GENMODELS_NATIVE=0" in unsupported(_model())


def test_step_rejects_bad_inputs():
    m = _model()
    with torch.inference_mode():
        cache = m.new_cache(2)
        with pytest.raises(ValueError, match="at batch 3"):
            FusedRetNetStep(m, cache, 3)
        with pytest.raises(ValueError, match="fp32"):
            FusedRetNetStep(_model().double(), cache, 2)
        step = FusedRetNetStep(m, cache, 2)
        with pytest.raises(ValueError, match=r"ids must be \(2,\)"):
            step(torch.zeros(3, dtype=torch.long))
        with pytest.raises(ValueError, match=r"token ids must be in \[0, 97\)"):
            step(torch.tensor([0, V]))
        with pytest.raises(ValueError, match="positions .* differ"):
            step(torch.tensor([1, 2]), torch.tensor([0, 5]))
        m.hidden_states(_ids(2, 3), cache=cache)
        cache.states[0] = (cache.states[0][0][:, :1], cache.states[0][1])  # a state of the wrong shape
        with pytest.raises(ValueError, match="layer 0 state S must be fp32 CPU"):
            step(torch.tensor([1, 2]))
