"""The decoder-only model's own invariants: KV-cache decoding equals a full forward, the SDPA and
reference kernels agree, padding does not leak into real tokens."""
from __future__ import annotations

import pytest
import torch

from tests.helpers.tiny import left_pad_mask, random_ids, tiny_model

torch.set_num_threads(1)

MODEL_TOL = dict(atol=1e-5, rtol=1e-4)
SEQ = 24

VARIANTS = {  # name: (layout, config overrides)
    "llama-gqa": ("llama", {}),
    "llama-mqa": ("llama", {"n_kv_heads": 1}),
    "llama-partial-rope": ("llama", {"rotary_fraction": 0.5}),
    "mistral-window": ("llama", {"sliding_window": 5}),  # window smaller than the sequence
    "gpt2": ("gpt2", {}),
    "alibi": ("llama", {"position": "alibi"}),
    "sinusoidal-window": ("gpt2", {"position": "sinusoidal", "sliding_window": 7}),
}


def model_of(name, seed=0):
    kind, kw = VARIANTS[name]
    return tiny_model(kind, seed=seed, **kw)


def incremental_logits(model, ids, mask=None, schedule=(10, 1, 1, 1, 3, 1, 3)):
    """Feed ``ids`` through one KV cache in pieces (prefill, single tokens, chunks) and return the
    logits of every position, concatenated. The remainder after ``schedule`` goes one at a time."""
    b, t = ids.shape
    cache = model.new_cache(b, t)
    pieces, pos = [], 0
    sizes = list(schedule) + [1] * t
    for n in sizes:
        if pos >= t:
            break
        n = min(n, t - pos)
        m = mask[:, : pos + n] if mask is not None else None
        pieces.append(model(ids[:, pos: pos + n], attention_mask=m, cache=cache))
        pos += n
        assert cache.pos == pos
    return torch.cat(pieces, dim=1)


@pytest.mark.parametrize("name", list(VARIANTS))
@torch.no_grad()
def test_kv_cache_decode_equals_full_forward(name):
    model = model_of(name)
    ids = random_ids(2, SEQ)
    full = model(ids)
    inc = incremental_logits(model, ids)
    torch.testing.assert_close(inc, full, **MODEL_TOL)


@pytest.mark.parametrize("schedule", [(10, 1, 1, 1, 3), (2, 1, 3, 1)])  # the second starts inside the pads
@pytest.mark.parametrize("name", ["llama-gqa", "mistral-window", "gpt2", "alibi"])
@torch.no_grad()
def test_kv_cache_decode_with_left_padding(name, schedule):
    model = model_of(name)
    ids = random_ids(2, SEQ, seed=2)
    mask = left_pad_mask([SEQ - 6, SEQ], SEQ)
    full = model(ids, attention_mask=mask)
    inc = incremental_logits(model, ids, mask, schedule)
    real = mask.bool()
    torch.testing.assert_close(inc[real], full[real], **MODEL_TOL)


@pytest.mark.parametrize("name", ["llama-gqa", "mistral-window", "gpt2", "alibi"])
@torch.no_grad()
def test_left_padding_does_not_change_real_tokens(name):
    """A row's logits are the same whether it is alone and unpadded or left-padded in a batch."""
    model = model_of(name)
    ids = random_ids(2, SEQ, seed=3)
    n = SEQ - 7
    mask = left_pad_mask([n, SEQ], SEQ)
    batch = model(ids, attention_mask=mask)
    alone = model(ids[:1, SEQ - n:])
    torch.testing.assert_close(batch[0, SEQ - n:], alone[0], **MODEL_TOL)
    torch.testing.assert_close(batch[1], model(ids[1:])[0], **MODEL_TOL)


@pytest.mark.parametrize("name", list(VARIANTS))
@torch.no_grad()
def test_reference_kernel_equals_sdpa_whole_model(name):
    model = model_of(name)
    ids = random_ids(2, SEQ, seed=4)
    mask = left_pad_mask([SEQ - 5, SEQ], SEQ)
    real = mask.bool()
    sdpa = model(ids), model(ids, attention_mask=mask), incremental_logits(model, ids, mask)
    model.set_attention_kernel("reference")
    assert all(m.kernel == "reference" for m in model.modules() if hasattr(m, "kernel"))
    ref = model(ids), model(ids, attention_mask=mask), incremental_logits(model, ids, mask)
    torch.testing.assert_close(ref[0], sdpa[0], **MODEL_TOL)
    torch.testing.assert_close(ref[1][real], sdpa[1][real], **MODEL_TOL)
    torch.testing.assert_close(ref[2][real], sdpa[2][real], **MODEL_TOL)


@torch.no_grad()
def test_sliding_window_limits_what_a_token_sees():
    """With window w, the logits at position t do not depend on tokens before t − w + 1 (in one layer
    stack of L layers information travels L·(w−1) back, so perturb beyond that)."""
    model = model_of("mistral-window")  # window 5, 2 layers: reach 8 positions back
    ids = random_ids(1, SEQ, seed=5)
    other = ids.clone()
    other[0, :3] = (other[0, :3] + 1) % 128
    a, b = model(ids), model(other)
    torch.testing.assert_close(a[0, 12:], b[0, 12:], **MODEL_TOL)
    assert not torch.allclose(a[0, 3:6], b[0, 3:6], atol=1e-3)
    no_window = tiny_model("llama", sliding_window=None)
    a, b = no_window(ids), no_window(other)
    assert not torch.allclose(a[0, 12:], b[0, 12:], atol=1e-3)


@torch.no_grad()
def test_causality():
    model = model_of("llama-gqa")
    ids = random_ids(1, SEQ, seed=6)
    other = ids.clone()
    other[0, 15:] = (other[0, 15:] + 1) % 128
    a, b = model(ids), model(other)
    torch.testing.assert_close(a[0, :15], b[0, :15], **MODEL_TOL)
    assert not torch.allclose(a[0, 15:], b[0, 15:], atol=1e-3)


def test_cache_overflow_names_capacity():
    model = model_of("llama-gqa")
    cache = model.new_cache(1, 8)
    with torch.no_grad():
        model(random_ids(1, 6), cache=cache)
        with pytest.raises(ValueError, match="capacity 8"):
            model(random_ids(1, 3), cache=cache)


def test_tied_head_shares_the_embedding():
    model = tiny_model("gpt2")
    assert model.head.tied and model.head.get_weight() is model.embed.weight
    assert "head.weight" not in model.state_dict()
    with torch.no_grad():
        model.embed.weight[5].mul_(3.0)
    logits = model(random_ids(1, 4))
    h = model.hidden_states(random_ids(1, 4))
    torch.testing.assert_close(logits, h @ model.embed.weight.T, **MODEL_TOL)
    untied = tiny_model("llama")
    assert not untied.head.tied and "head.weight" in untied.state_dict()
