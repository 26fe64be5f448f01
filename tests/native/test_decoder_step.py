"""genmodels.native: the C kernels and the fused decode step, held equal to the PyTorch path."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import genmodels
from genmodels import native
from genmodels.generation import decode as decode_mod
from genmodels.generation.seq2seq import generate_seq2seq
from genmodels.native.decoder import FusedDecodeStep, unsupported

from tests.helpers.tiny import VOCAB, left_pad_mask, randomise, random_ids, tiny_model
from tests.helpers.native import native_built, skip_if_disabled  # noqa: F401  (autouse fixture)

torch.set_num_threads(1)

skip_if_disabled()  # otherwise a failed build fails every test here (tests/helpers/native.py)


ROOT = Path(__file__).parents[2]
TOL = dict(atol=1e-5, rtol=1e-4)
# widths that are not multiples of 8 (the kernels split weight rows in blocks of 8; every preset's widths are
# multiples of 8, so a lost last partial block would pass every other test): d 36 (heads of 18 and 12),
# q|k|v 72 and 108, FFN 68 and 100
ODD_WIDTHS = [("llama", dict(d_model=36, n_heads=2, n_kv_heads=1, d_ff=68)), ("gpt2", dict(d_model=36, n_heads=3,
                                                                                          d_ff=100))]


def t5_tiny(seed: int = 0, **kw) -> torch.nn.Module:
    cfg = genmodels.preset("t5-tiny", **{**dict(vocab_size=VOCAB, d_model=64, n_heads=4, head_dim=16, d_ff=128), **kw})
    return randomise(genmodels.build_model(cfg), seed=seed).eval()


def t5_sources() -> tuple[torch.Tensor, torch.Tensor]:
    src = random_ids(3, 9, seed=5)  # (B, S), right-padded
    mask = torch.ones_like(src)
    mask[1, 6:] = 0
    mask[2, 3:] = 0
    return src, mask


# ---- the linear kernel ------------------------------------------------------------------------
@pytest.mark.parametrize("k", [37, 64, 101])
@pytest.mark.parametrize("n", [1, 5, 24, 67, 333])  # 333 × 101: large enough for the threaded path
@pytest.mark.usefixtures("threads")  # 1 and 2 threads (tests/native/conftest.py)
def test_linear_equals_torch(k, n):
    g = torch.Generator().manual_seed(k * 100 + n)
    w, b = torch.randn(n, k, generator=g), torch.randn(n, generator=g)  # (N, K), (N,)
    for m in (1, 2, 3, 4, 5, 7, 8, 13):
        x = torch.randn(m, k, generator=g)  # (M, K)
        torch.testing.assert_close(native.linear(x, w, b), F.linear(x, w, b), **TOL)
        torch.testing.assert_close(native.linear(x, w), F.linear(x, w), **TOL)


@pytest.mark.usefixtures("threads")
def test_each_row_of_a_batched_linear_is_that_row_alone_bit_for_bit():
    """The decode step's rows do not depend on the rows beside them: whatever tile shape a row lands in
    (4-row tiles, the 1-row rest; 4-, 3-, 2- or 1-wide weight tiles at the end of a block of 8), each output
    keeps its own accumulator and order over k."""
    g = torch.Generator().manual_seed(7)
    w = torch.randn(333, 101, generator=g)  # 333 = 41 blocks of 8 + 5: every tail width
    x = torch.randn(13, 101, generator=g)
    alone = torch.cat([native.linear(x[i:i + 1], w) for i in range(13)])
    for m in (2, 5, 8, 13):
        assert torch.equal(native.linear(x[:m], w), alone[:m])


def test_linear_rejects_mismatched_features():
    with pytest.raises(ValueError, match="features"):
        native.linear(torch.randn(2, 37), torch.randn(5, 36))


# ---- one fused decode step == the PyTorch forward with the KV cache -------------------------
@pytest.mark.parametrize("kind,kw", [
    ("llama", {}), ("gpt2", {}), ("llama", dict(n_kv_heads=1)), ("llama", dict(sliding_window=5)),
    ("llama", dict(rotary_fraction=0.5)), ("gpt2", dict(position="alibi")),
    ("gpt2", dict(mlp="gelu", tie_embeddings=False)), ("llama", dict(mlp="geglu_tanh")),
    ("gpt2", dict(position="sinusoidal", norm_bias=False)), ("gpt2", dict(norm_placement="post", final_norm=False)),
    *ODD_WIDTHS,
], ids=lambda v: v if isinstance(v, str) else ",".join(f"{a}={b}" for a, b in v.items()) or "default")
@pytest.mark.usefixtures("threads")  # 1 and 2 threads (tests/native/conftest.py)
def test_fused_step_equals_torch(kind, kw):
    fused_step_equals_torch(tiny_model(kind, **kw), steps=4, tol=TOL)


def fused_step_equals_torch(model, steps: int, tol: dict) -> None:
    """Prefill 3 left-padded rows, then ``steps`` fused steps, each equal to the PyTorch forward with the cache."""
    t = 9
    assert unsupported(model) is None
    ids, mask = random_ids(3, t), left_pad_mask([9, 6, 3], t)  # (B, T)
    full_mask = torch.ones(3, t + steps, dtype=torch.long)
    full_mask[:, :t] = mask
    with torch.inference_mode():
        cache, cache2 = model.new_cache(3, t + steps), model.new_cache(3, t + steps)
        h = model.hidden_states(ids, attention_mask=mask, cache=cache)
        model.hidden_states(ids, attention_mask=mask, cache=cache2)
        nxt = model.head(h[:, -1]).argmax(-1)  # (B,)
        step = FusedDecodeStep(model, cache, 3)
        pos = mask.cumsum(-1)[:, -1] - 1  # (B,)
        for s in range(steps):
            pos = pos + 1
            want = model(nxt[:, None], attention_mask=full_mask[:, :t + s + 1], position_ids=pos[:, None],
                         cache=cache2)[:, -1]  # (B, V)
            got = step(nxt, pos, full_mask)
            torch.testing.assert_close(got, want, **tol)
            assert cache.pos == cache2.pos == t + s + 1
            nxt = want.argmax(-1)


@pytest.mark.parametrize("kw", [{}, dict(mlp="geglu_tanh", tie_embeddings=False), "transformer",
                                dict(d_model=36, n_heads=2, head_dim=18, d_ff=68)],
                         ids=["t5", "t5-v1_1", "transformer", "t5-widths-not-multiples-of-8"])
@pytest.mark.usefixtures("threads")  # 1 and 2 threads (tests/native/conftest.py)
def test_fused_step_equals_torch_t5(kw):
    if kw == "transformer":  # post-norm, sinusoidal positions, √D-scaled embedding
        cfg = genmodels.preset("transformer-tiny", vocab_size=VOCAB, d_model=64, n_heads=4, d_ff=128)
        model = randomise(genmodels.build_model(cfg)).eval()
    else:
        model = t5_tiny(**kw)
    src, mask = t5_sources()
    with torch.inference_mode():
        memory = model.encode(src, mask)  # (B, S, D)
        cache, cache2 = model.new_cache(memory, mask, max_len=5), model.new_cache(memory, mask, max_len=5)
        step = FusedDecodeStep(model, cache, 3, mask)
        ids = torch.zeros(3, dtype=torch.long)
        for s in range(5):
            want = model.decode(ids[:, None], cache=cache2)[:, -1]  # (B, V)
            torch.testing.assert_close(step(ids, torch.full_like(ids, s)), want, **TOL)
            assert cache.self_kv.pos == cache2.self_kv.pos == s + 1
            ids = want.argmax(-1)


# ---- generation: native on == native off -------------------------------------------------------
@pytest.mark.parametrize("kind", ["llama", "gpt2"])
@pytest.mark.usefixtures("threads")  # 1 and 2 threads (tests/native/conftest.py)
def test_generate_native_equals_torch(kind, monkeypatch):
    model = tiny_model(kind, eos_token_id=None)
    ids, mask = random_ids(3, 8), left_pad_mask([8, 5, 2], 8)
    calls = []
    fused_cls = decode_mod.fused_step
    monkeypatch.setattr(decode_mod, "fused_step", lambda *a, **k: calls.append(1) or fused_cls(*a, **k))
    runs = [dict(), dict(temperature=0.8, top_k=20, seed=0)]  # greedy, sampled
    fast = [genmodels.generate(model, ids, 24, attention_mask=mask, **kw) for kw in runs]
    assert len(calls) == 2  # the native path ran
    monkeypatch.setenv("GENMODELS_NATIVE", "0")
    slow = [genmodels.generate(model, ids, 24, attention_mask=mask, **kw) for kw in runs]
    assert len(calls) == 2 and fast[0].shape == (3, 32)
    for a, b in zip(fast, slow):
        assert torch.equal(a, b)


@pytest.mark.usefixtures("threads")  # 1 and 2 threads (tests/native/conftest.py)
def test_generate_seq2seq_native_equals_torch(monkeypatch):
    model = t5_tiny()
    src, mask = t5_sources()
    runs = [dict(eos_token_id=[]), dict(num_beams=3)]  # greedy (full length), beam search
    fast = [generate_seq2seq(model, src, 12, attention_mask=mask, **kw) for kw in runs]
    monkeypatch.setenv("GENMODELS_NATIVE", "0")
    slow = [generate_seq2seq(model, src, 12, attention_mask=mask, **kw) for kw in runs]
    assert fast[0].shape == (3, 13)
    for a, b in zip(fast, slow):
        assert torch.equal(a, b)


@pytest.mark.usefixtures("threads")  # 1 and 2 threads (tests/native/conftest.py)
def test_post_norm_decoders_equal_torch(monkeypatch):
    """Post-norm blocks (the original Transformer; a post-norm decoder-only config): x = Norm(x + f(x))."""
    cfg = genmodels.preset("transformer-tiny", vocab_size=VOCAB, d_model=64, n_heads=4, d_ff=128)
    model = randomise(genmodels.build_model(cfg)).eval()
    assert unsupported(model) is None
    src, mask = t5_sources()
    runs = [dict(eos_token_id=[]), dict(num_beams=3)]
    fast = [generate_seq2seq(model, src, 8, attention_mask=mask, **kw) for kw in runs]
    post = tiny_model("gpt2", norm_placement="post", final_norm=False, eos_token_id=None)
    assert unsupported(post) is None
    ids, pad = random_ids(3, 8), left_pad_mask([8, 5, 2], 8)
    fast.append(genmodels.generate(post, ids, 16, attention_mask=pad))
    monkeypatch.setenv("GENMODELS_NATIVE", "0")
    slow = [generate_seq2seq(model, src, 8, attention_mask=mask, **kw) for kw in runs]
    slow.append(genmodels.generate(post, ids, 16, attention_mask=pad))
    assert fast[0].shape == (3, 9)
    for a, b in zip(fast, slow):
        assert torch.equal(a, b)


# ---- what is and is not supported; bad inputs ----------------------------------------------------
def test_unsupported_reasons():
    bert = genmodels.build_model(genmodels.preset("bert-tiny", vocab_size=VOCAB, d_model=64, d_ff=128))
    assert isinstance(unsupported(bert), str)
    assert "fp32" in unsupported(tiny_model("llama").double())
    for model in (tiny_model("llama"), tiny_model("gpt2"), t5_tiny()):
        assert unsupported(model) is None


def test_bad_step_inputs_raise():
    model = tiny_model("gpt2", max_seq_len=16)
    ids = random_ids(2, 4)
    with torch.inference_mode():
        cache = model.new_cache(2, 6)
        model.hidden_states(ids, cache=cache)
        step = FusedDecodeStep(model, cache, 2)
        pos = torch.tensor([4, 4])
        for bad in ([0, VOCAB], [-1, 3]):
            with pytest.raises(ValueError, match="token ids"):
                step(torch.tensor(bad), pos)
        with pytest.raises(ValueError, match="position"):
            step(torch.tensor([1, 2]), torch.tensor([4, 16]))
        with pytest.raises(ValueError, match=r"\(2,\)"):
            step(torch.tensor([1, 2, 3]), pos)
        assert cache.pos == 4  # nothing ran
        step(ids[:, 0], pos)
        step(ids[:, 0], pos + 1)
        with pytest.raises(ValueError, match="overflow"):
            step(ids[:, 0], pos + 2)


def test_disabled_by_env(monkeypatch):
    monkeypatch.setenv("GENMODELS_NATIVE", "0")
    model = tiny_model("llama")
    assert "disabled" in unsupported(model)
    assert native.library() is None
    assert genmodels.generate(model, random_ids(2, 5), 6).shape[0] == 2


def test_build_failure_falls_back(tmp_path):
    code = ("import torch, genmodels, genmodels.native as n\n"
            "torch.set_num_threads(1)\n"
            "assert n.library() is None and n.unavailable_reason()\n"
            "m = genmodels.build_model(genmodels.preset('llama-tiny', vocab_size=64, d_model=32, n_layers=1,"
            " n_heads=2, d_ff=64))\n"
            "out = genmodels.generate(m, torch.tensor([[1, 2, 3]]), 4, eos_token_id=[])\n"
            "assert out.shape == (1, 7), out.shape\n"
            "print('fallback ok:', n.unavailable_reason())\n")
    env = {k: v for k, v in os.environ.items() if k != "GENMODELS_NATIVE"}
    env.update(GENMODELS_CACHE=str(tmp_path), CC="/nonexistent/cc", OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "fallback ok" in r.stdout and "/nonexistent/cc" in r.stdout
    assert not list(tmp_path.rglob("*.so"))


# ---- inputs the PyTorch path accepts must not read out of bounds (review findings) -----------
@pytest.mark.parametrize("case", ["broadcast", "empty-row", "window", "fractional"])
@pytest.mark.usefixtures("threads")  # 1 and 2 threads (tests/native/conftest.py)
def test_t5_step_masks_like_torch(case):
    """Source masks that broadcast, a row with no visible source token (PyTorch: uniform weights,
    not NaN), a config window the seq2seq decoder ignores, non-0/1 mask values."""
    model = t5_tiny(**(dict(sliding_window=1) if case == "window" else {}))
    src, mask = t5_sources()
    if case == "broadcast":
        mask = mask[:1, :].clone()  # (1, S) for a batch of 3
        mask[0, 7:] = 0
    elif case == "empty-row":
        mask[2] = 0
    elif case == "fractional":
        mask = mask.float() * 0.5  # nonzero = token
    with torch.inference_mode():
        memory = model.encode(src, mask if case != "broadcast" else mask.expand(3, -1))
        cache, cache2 = model.new_cache(memory, mask, max_len=4), model.new_cache(memory, mask, max_len=4)
        step = FusedDecodeStep(model, cache, 3, mask)
        ids = torch.zeros(3, dtype=torch.long)
        for s in range(4):
            want = model.decode(ids[:, None], cache=cache2)[:, -1]
            got = step(ids, torch.full_like(ids, s))
            assert torch.isfinite(got).all()
            torch.testing.assert_close(got, want, **TOL)
            ids = want.argmax(-1)


def test_step_refuses_a_cache_of_another_shape():
    model = tiny_model("llama")
    with pytest.raises(ValueError, match="KV cache"):
        FusedDecodeStep(model, model.new_cache(1, 8), 4)
    with pytest.raises(ValueError, match="bias shape"):
        native.linear(torch.randn(2, 8), torch.randn(5, 8), torch.randn(3))


def test_buffers_ignore_the_default_dtype():
    model = tiny_model("llama")
    ids = random_ids(2, 6)
    want = genmodels.generate(model, ids, 8)
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        got = genmodels.generate(model, ids, 8)
    finally:
        torch.set_default_dtype(old)
    assert torch.equal(got, want)


# ---- cache protocol v2: rows that change under a built step -----------------------------------------------
def test_a_step_built_for_other_rows_refuses_the_cache_instead_of_reading_past_it():
    """select/extend give the cache new buffers of another batch size: the step built for the old rows refuses
    it (the session builds a new step); a same-size reorder keeps its buffers and the step goes on."""
    from genmodels.native.retnet import FusedRetNetStep
    model = tiny_model("llama", eos_token_id=None)
    _, cache = genmodels.generate(model, random_ids(3, 6), 0, return_cache=True)
    cache.limit = 16  # a returned cache was sized for what it holds; continuing raises its limit
    cache.reserve(4)
    step = FusedDecodeStep(model, cache, 3)
    cache.reorder(torch.tensor([2, 0, 1]))
    step(torch.tensor([1, 2, 3]), cache.row_pos)  # in place: same buffers
    assert cache.row_pos.tolist() == [7, 7, 7]
    cache.select(torch.tensor([0, 2]))
    with pytest.raises(ValueError, match=r"contiguous fp32 CPU \(3, 2,"):
        step(torch.tensor([1, 2]), cache.row_pos)
    retnet = randomise(genmodels.build_model(genmodels.preset(
        "retnet-tiny", vocab_size=VOCAB, d_model=32, n_layers=2, n_heads=2, d_ff=64, eos_token_id=None))).eval()
    _, state = genmodels.generate(retnet, random_ids(3, 6), 0, return_cache=True)
    rstep = FusedRetNetStep(retnet, state, 3)
    state.select(torch.tensor([1]))
    with pytest.raises(ValueError, match="ids must be"):
        rstep(torch.tensor([1]), state.row_pos)
