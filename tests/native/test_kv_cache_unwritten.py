"""The KV cache's new buffers are not zero-filled (nn/kv_cache.py LayerKVCache): nothing may read a slot before
writing it. Every new buffer is filled with NaN here (what a reused allocation may hold; 0 · NaN is NaN, so a
masked key's value read would show) and a whole serving scenario — rows joining at different steps (the cache's
rows stacked with front padding), left-padded prompts, a cache grown between steps (CHUNK 2) — must give exactly
what it gives with zero-filled buffers: on the PyTorch path, the native fp32 path and the native bf16 prefill."""
from __future__ import annotations

import pytest
import torch

from genmodels.generation import DecodeSession, Sampling
from genmodels.nn import kv_cache
from tests.helpers.tiny import left_pad_mask, random_ids, tiny_model

torch.set_num_threads(1)


def _filled(monkeypatch, value: float) -> None:
    """Every new buffer the cache does not zero-fill (kv_cache.unwritten) holds ``value``."""
    monkeypatch.setattr(kv_cache, "unwritten", lambda shape, dtype, device: torch.full(shape, value, dtype=dtype,
                                                                                       device=device))


def _serve(model) -> list[torch.Tensor]:
    """Three requests joining at steps 0, 2 and 4 (one a left-padded pair), greedy; their tokens."""
    reqs = [(random_ids(1, 5, seed=2), None, 7), (random_ids(2, 9, seed=3), left_pad_mask([9, 4], 9), 9),
            (random_ids(1, 3, seed=4), None, 6)]
    session, got, joins, step = DecodeSession(model), [], {0: 0, 2: 1, 4: 2}, 0
    while step in joins or session.requests:
        if step in joins:
            ids, mask, n = reqs[joins[step]]
            got.append(session.add(ids, Sampling(max_new_tokens=n), attention_mask=mask))
        session.step()
        step += 1
    return [r.output for r in got]


def _prefill_logits(model) -> torch.Tensor:
    """A left-padded prefill's logits then two more chunks into the same (grown) cache."""
    ids, mask = random_ids(2, 11, seed=7), left_pad_mask([11, 6], 11)
    session = DecodeSession(model)
    cache, first = session.prefill(ids, 40, attention_mask=mask)
    more = [session.prefill(random_ids(2, 3, seed=s), 40, cache=cache)[1] for s in (8, 9)]
    return torch.cat([first, *more])


@pytest.mark.parametrize("path", ["torch", "native", "native-bf16"])
def test_a_cache_full_of_nan_gives_what_a_zeroed_one_gives(path, monkeypatch):
    from genmodels import native
    from genmodels.native import prefill as native_prefill
    if path == "torch":
        monkeypatch.setenv("GENMODELS_NATIVE", "0")
    elif native.library() is None:
        pytest.skip("native kernels unavailable")
    elif path == "native-bf16":
        if native_prefill.bf16_unavailable() is not None:
            pytest.skip(native_prefill.bf16_unavailable())
        monkeypatch.setenv("GENMODELS_NATIVE_PREFILL", "bf16")
    monkeypatch.setattr(kv_cache, "CHUNK", 2)
    model = tiny_model("llama", eos_token_id=None)
    out = []
    for value in (0.0, float("nan")):
        _filled(monkeypatch, value)
        with torch.inference_mode():
            out.append((_serve(model), _prefill_logits(model)))
    (tokens0, logits0), (tokens1, logits1) = out
    assert torch.isfinite(logits1).all() and torch.equal(logits0, logits1)
    assert all(torch.equal(a, b) for a, b in zip(tokens0, tokens1))
