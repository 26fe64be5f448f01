"""Generation resource limits (issue #8, item 7a): the KV cache is sized by the tokens that come, not
by ``max_new_tokens``; it never outgrows the model's context, a sliding window bounds it, and growth
or compaction changes no result on either path (PyTorch, native)."""
from __future__ import annotations

import pytest
import torch

import genmodels
from genmodels.generation import decode as decode_mod
from genmodels.generation import seq2seq as seq2seq_mod
from genmodels.generation.seq2seq import generate_seq2seq
from genmodels.nn import kv_cache
from tests.helpers.native import require_native, threads  # noqa: F401  (fixture: 1 and 2 threads)
from tests.helpers.tiny import VOCAB, left_pad_mask, random_ids, randomise, tiny_model

HUGE = 4_000_000
PATHS = ["native", "torch"]


def _path(monkeypatch, path: str) -> None:
    if path == "native":
        require_native()
    else:
        monkeypatch.setenv("GENMODELS_NATIVE", "0")


def _record_caches(monkeypatch, model) -> list:
    """Every cache the model builds during the test (inspected afterwards: slots and bytes)."""
    made, new_cache = [], model.new_cache

    def record(*a, **k):
        made.append(new_cache(*a, **k))
        made[-1].start_len = getattr(made[-1], "self_kv", made[-1]).max_len  # the slots it started with
        return made[-1]
    monkeypatch.setattr(model, "new_cache", record)
    return made


def _record_logits(monkeypatch, module) -> list:
    """The scores each step hands to the token choice ``(B, V)``."""
    seen, choose = [], module.choose_next
    monkeypatch.setattr(module, "choose_next", lambda scores, *a, **k: seen.append(scores.clone()) or choose(
        scores, *a, **k))
    return seen


def _kv_bytes(cache) -> int:
    kv = getattr(cache, "self_kv", cache)
    return sum(t.numel() * t.element_size() for layer in kv.layers for t in (layer.k, layer.v))


def _windowed(**kw):
    return tiny_model("llama", sliding_window=5, eos_token_id=None, **kw)


def _full_forward_logits(model, ids, mask, steps: int) -> list[torch.Tensor]:
    """Greedy continuation by repeated full forwards (no cache): the last position's logits per step."""
    out = []
    for _ in range(steps):
        logits = model(ids, attention_mask=mask)[:, -1]  # (B, V)
        out.append(logits)
        nxt = logits.argmax(-1)
        ids = torch.cat([ids, nxt[:, None]], dim=1)
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
    return out


@pytest.mark.parametrize("path", PATHS)
def test_huge_max_new_tokens_with_early_eos_allocates_a_small_cache(path, monkeypatch):
    _path(monkeypatch, path)
    model = _windowed()  # a window: no context cap, so only the cache policy keeps it small
    ids = random_ids(2, 6)
    eos = int(genmodels.generate(model, ids[:1], 5)[0, -1])  # greedy emits it by the 5th new token
    caches = _record_caches(monkeypatch, model)
    out = genmodels.generate(model, ids[:1], HUGE, eos_token_id=eos)
    assert out.shape[1] <= 6 + 5 and int(out[0, -1]) == eos
    (cache,) = caches
    per_slot = 2 * model.config.n_layers * model.config.kv_heads * model.config.dim_head * 4  # k and v, fp32
    assert cache.max_len <= 6 + kv_cache.CHUNK
    assert _kv_bytes(cache) == per_slot * cache.max_len  # ~ 70 slots, not 4 million


@pytest.mark.parametrize("path", PATHS)
def test_generation_stops_at_the_context_with_one_warning(path, monkeypatch):
    _path(monkeypatch, path)
    model = tiny_model("llama", eos_token_id=None, max_seq_len=40)  # RoPE, no window
    monkeypatch.setattr(kv_cache, "CHUNK", 4)
    caches = _record_caches(monkeypatch, model)
    with pytest.warns(UserWarning, match=r"max_seq_len=40") as record:
        out = genmodels.generate(model, random_ids(2, 6), HUGE)
    assert out.shape == (2, 40) and len(record) == 1
    assert caches[0].start_len == 10 and caches[0].max_len == 39  # grew, never past the context


@pytest.mark.parametrize("path", PATHS)
def test_cache_growth_changes_no_logit(path, monkeypatch):
    """Left-padded greedy decoding with a cache that starts at 2 spare slots (five doublings) equals a
    big preallocated cache, and repeated full forwards."""
    _path(monkeypatch, path)
    model = tiny_model("llama", eos_token_id=None)
    ids, mask = random_ids(3, 8), left_pad_mask([8, 5, 2], 8)
    logits = _record_logits(monkeypatch, decode_mod)
    caches = _record_caches(monkeypatch, model)
    monkeypatch.setattr(kv_cache, "CHUNK", 1000)
    big = genmodels.generate(model, ids, 40, attention_mask=mask)
    want, logits[:] = list(logits), []
    monkeypatch.setattr(kv_cache, "CHUNK", 2)
    grown = genmodels.generate(model, ids, 40, attention_mask=mask)
    assert caches[0].start_len == 47 and caches[1].start_len == 10 and caches[1].max_len == 47  # grew 10→20→40→47
    assert torch.equal(big, grown)
    for a, b in zip(logits, want, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    for a, b in zip(logits, _full_forward_logits(model, ids, mask, 40), strict=True):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def _native_equals_torch(model, monkeypatch) -> None:
    """30 new tokens for a left-padded batch from a cache that starts 2 slots past the prompt: the native
    step and the PyTorch path give the same tokens and, step by step, the same logits."""
    ids, mask = random_ids(3, 8), left_pad_mask([8, 5, 2], 8)
    monkeypatch.setattr(kv_cache, "CHUNK", 2)
    logits = _record_logits(monkeypatch, decode_mod)
    fast = genmodels.generate(model, ids, 30, attention_mask=mask)
    native_logits, logits[:] = list(logits), []
    monkeypatch.setenv("GENMODELS_NATIVE", "0")
    slow = genmodels.generate(model, ids, 30, attention_mask=mask)
    assert torch.equal(fast, slow)
    for a, b in zip(native_logits, logits, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


@pytest.mark.usefixtures("threads")  # native vs PyTorch on 1 and 2 threads (tests/helpers/native.py)
def test_cache_growth_native_equals_torch(monkeypatch):
    require_native()
    model = tiny_model("gpt2", position="alibi", eos_token_id=None)  # distances read from the slots
    _native_equals_torch(model, monkeypatch)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("kind,extra", [("llama", {}), ("gpt2", {"position": "alibi"})])
def test_sliding_window_past_twice_its_width_equals_full_forwards(path, kind, extra, monkeypatch):
    """Window 5: the cache compacts several times (and grows once) over 30 new tokens; every step's
    logits equal a full forward with the window mask, left padding included."""
    _path(monkeypatch, path)
    model = tiny_model(kind, sliding_window=5, eos_token_id=None, max_seq_len=24, **extra)
    ids, mask = random_ids(3, 8), left_pad_mask([8, 5, 2], 8)
    monkeypatch.setattr(kv_cache, "CHUNK", 2)
    logits = _record_logits(monkeypatch, decode_mod)
    caches = _record_caches(monkeypatch, model)
    out = genmodels.generate(model, ids, 30, attention_mask=mask)  # past max_seq_len too: the window bounds it
    assert out.shape == (3, 38)
    cache = caches[0]
    assert cache.offset > 0 and cache.max_len <= 2 * (5 + 1) + 8  # compacted; bounded by the window
    for a, b in zip(logits, _full_forward_logits(model, ids, mask, 30), strict=True):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


@pytest.mark.usefixtures("threads")  # native vs PyTorch on 1 and 2 threads (tests/helpers/native.py)
def test_sliding_window_native_equals_torch_across_compactions(monkeypatch):
    require_native()
    model = _windowed()
    _native_equals_torch(model, monkeypatch)


# ---- encoder–decoder ----------------------------------------------------------------------------
def _t5(**kw):
    cfg = genmodels.preset("t5-tiny", **{**dict(vocab_size=VOCAB, d_model=64, n_heads=4, head_dim=16, d_ff=128),
                                         **kw})
    return randomise(genmodels.build_model(cfg)).eval()


def _sources():
    src, mask = random_ids(3, 9, seed=5), torch.ones(3, 9, dtype=torch.long)
    mask[1, 6:] = 0
    mask[2, 3:] = 0
    return src, mask


@pytest.mark.parametrize("path", PATHS)
def test_seq2seq_huge_max_new_tokens_allocates_a_small_cache(path, monkeypatch):
    _path(monkeypatch, path)
    model = _t5(max_seq_len=HUGE)  # relative positions: no table of HUGE rows
    src, mask = _sources()
    eos = int(generate_seq2seq(model, src[:1], 4, eos_token_id=[])[0, -1])
    caches = _record_caches(monkeypatch, model)
    out = generate_seq2seq(model, src[:1], HUGE, eos_token_id=eos)
    assert out.shape[1] <= 1 + 4 and int(out[0, -1]) == eos
    assert caches[0].self_kv.max_len <= kv_cache.CHUNK and caches[0].dist_bias.shape[1] <= kv_cache.CHUNK


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("beams", [1, 3])
def test_seq2seq_cache_growth_changes_nothing(path, beams, monkeypatch):
    """Greedy and beam search (which reorders the cache) with a 2-slot cache that grows: the same
    tokens and step logits as with a big preallocated one."""
    _path(monkeypatch, path)
    model = _t5()
    src, mask = _sources()
    logits = _record_logits(monkeypatch, seq2seq_mod)
    caches = _record_caches(monkeypatch, model)
    monkeypatch.setattr(kv_cache, "CHUNK", 1000)
    big = generate_seq2seq(model, src, 20, attention_mask=mask, num_beams=beams, eos_token_id=[])
    want, logits[:] = list(logits), []
    monkeypatch.setattr(kv_cache, "CHUNK", 2)
    grown = generate_seq2seq(model, src, 20, attention_mask=mask, num_beams=beams, eos_token_id=[])
    assert caches[0].start_len == 20 and caches[1].start_len == 2 and caches[1].self_kv.max_len == 20
    assert torch.equal(big, grown)
    for a, b in zip(logits, want, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_seq2seq_cache_growth_native_equals_torch(monkeypatch):
    require_native()
    model = _t5()
    src, mask = _sources()
    monkeypatch.setattr(kv_cache, "CHUNK", 2)
    runs = [dict(eos_token_id=[]), dict(num_beams=3, eos_token_id=[])]
    fast = [generate_seq2seq(model, src, 20, attention_mask=mask, **kw) for kw in runs]
    monkeypatch.setenv("GENMODELS_NATIVE", "0")
    slow = [generate_seq2seq(model, src, 20, attention_mask=mask, **kw) for kw in runs]
    assert fast[0].shape == (3, 21)
    for a, b in zip(fast, slow):
        assert torch.equal(a, b)


def test_prompt_filling_the_context_is_refused_in_one_line():
    model = tiny_model("llama", eos_token_id=None, max_seq_len=16)  # RoPE, no window
    with pytest.raises(ValueError, match=r"^input_ids: the prompt \(16 tokens\) fills the model's context "
                                         r"\(max_seq_len=16\)"):
        genmodels.generate(model, random_ids(1, 16), 4)
