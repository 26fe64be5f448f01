"""Decoder-only beam search against transformers' ``generate(num_beams=K, do_sample=False)``: token ids
exact for randomised GPT-2 / Llama (GQA) / Mistral (a sliding window that compacts while the beams run),
left-padded batches, end tokens hit early or never, length penalties, early stopping, repetition penalty;
on the native decode step and on the PyTorch forward."""
from __future__ import annotations

import pytest
import torch

import genmodels
from genmodels.nn import kv_cache
from tests.helpers.native import require_native

from ._hf import hf_model, left_pad_mask, random_ids, to_ours  # first: skips the module without transformers

torch.set_num_threads(1)
pytestmark = pytest.mark.parity

NEW = 12
PAD = 0
T = 9
VARIANTS = {
    "gpt2": ("gpt2", {}),
    "llama-gqa": ("llama", {"num_key_value_heads": 2}),
    "mistral-window": ("mistral", {"sliding_window": 5}),  # with CHUNK = 2 the cache compacts while searching
}
# (beams, length_penalty, early_stopping, repetition_penalty)
SEARCHES = [(3, 1.0, False, None), (4, 0.5, True, None), (2, 2.0, "never", None), (3, -0.5, False, 1.5)]


@pytest.fixture(scope="module", params=list(VARIANTS))
def pair(request, tmp_path_factory):
    kind, kw = VARIANTS[request.param]
    hf = hf_model(kind, **kw)  # eos_token_id=None in the config: the tests pass it
    return hf, to_ours(hf, tmp_path_factory.mktemp(request.param))


def _prompts():
    mask = left_pad_mask([5, T, 3], T)
    return random_ids(3, T, seed=6).masked_fill(mask == 0, PAD), mask


def _ours(model, ids, mask, path, monkeypatch, **kw):
    """Our beam search on the named path, with a 2-slot start cache (it grows, or compacts a window)."""
    with monkeypatch.context() as m:
        if path == "native":
            require_native()
        else:
            m.setenv("GENMODELS_NATIVE", "0")
        m.setattr(kv_cache, "CHUNK", 2)
        caches, new_cache = [], model.new_cache
        m.setattr(model, "new_cache", lambda *a, **k: caches.append(new_cache(*a, **k)) or caches[-1])
        out = genmodels.generate(model, ids, NEW, attention_mask=mask, pad_token_id=PAD, **kw)
    if model.config.sliding_window is not None:
        assert caches[0].offset > 0  # the window slid: slots were compacted under the beams
    return out


def _hf(hf, ids, mask, beams, lp, early, rep, eos):
    with torch.no_grad():
        return hf.generate(ids, attention_mask=mask, max_new_tokens=NEW, do_sample=False, num_beams=beams,
                           length_penalty=lp, early_stopping=early, repetition_penalty=rep, eos_token_id=eos,
                           pad_token_id=PAD)


@pytest.mark.parametrize("path", ["native", "torch"])
@pytest.mark.parametrize("beams,lp,early,rep", SEARCHES)
def test_left_padded_beam_search_matches_hf(pair, beams, lp, early, rep, path, monkeypatch):
    """No end token (every hypothesis runs to the limit), then an end token that the best beam of
    row 0 emits at its third step (rows finish apart; the fill value is transformers')."""
    hf, ours = pair
    ids, mask = _prompts()
    free = _hf(hf, ids, mask, beams, lp, early, rep, eos=None)
    assert free.shape == (3, T + NEW)
    got = _ours(ours, ids, mask, path, monkeypatch, num_beams=beams, length_penalty=lp, early_stopping=early,
                repetition_penalty=rep, eos_token_id=[])
    assert torch.equal(got, free)
    eos = int(free[0, T + 2])
    want = _hf(hf, ids, mask, beams, lp, early, rep, eos=eos)
    got = _ours(ours, ids, mask, path, monkeypatch, num_beams=beams, length_penalty=lp, early_stopping=early,
                repetition_penalty=rep, eos_token_id=eos)
    assert not torch.equal(want, free)  # the end token changed the search
    assert torch.equal(got, want)


def test_beam_search_stops_early_like_hf(pair, monkeypatch):
    """One prompt whose beams all end early: the output is shorter than the limit, as transformers'."""
    hf, ours = pair
    ids = random_ids(1, T, seed=9)
    mask = torch.ones_like(ids)
    free = _hf(hf, ids, mask, 3, 1.0, True, None, eos=None)
    # the first token of the free search that, as the end token, ends every beam before the limit
    eos, want = next(((e, w) for e in free[0, T:].tolist()
                      if (w := _hf(hf, ids, mask, 3, 1.0, True, None, eos=e)).shape[1] < T + NEW), (None, None))
    assert eos is not None, "no token of the free search ends it early"
    got = _ours(ours, ids, mask, "torch", monkeypatch, num_beams=3, early_stopping=True, eos_token_id=eos)
    assert torch.equal(got, want)


def test_two_end_tokens_match_hf(pair, monkeypatch):
    """``eos_token_id`` and ``stop_tokens`` together are transformers' list of end tokens (3·K candidates
    a step; with pad 0, shorter hypotheses are filled with the first end token)."""
    hf, ours = pair
    ids, mask = _prompts()
    free = _hf(hf, ids, mask, 2, 1.0, False, None, eos=None)
    ends = [int(free[1, T + 1]), int(free[2, T + 3])]
    want = _hf(hf, ids, mask, 2, 1.0, False, None, eos=ends)
    got = _ours(ours, ids, mask, "torch", monkeypatch, num_beams=2, eos_token_id=ends[0], stop_tokens=ends[1:])
    assert not torch.equal(want, free)
    assert torch.equal(got, want)


def test_one_beam_is_greedy(pair):
    _, ours = pair
    ids, mask = _prompts()
    greedy = genmodels.generate(ours, ids, NEW, attention_mask=mask, pad_token_id=PAD, eos_token_id=[])
    assert torch.equal(genmodels.generate(ours, ids, NEW, attention_mask=mask, pad_token_id=PAD, eos_token_id=[],
                                          num_beams=1), greedy)
