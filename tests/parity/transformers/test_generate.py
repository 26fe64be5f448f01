"""Generation against transformers (llm-anchors §5, test 4): greedy token ids exact, logit warpers equal."""
from __future__ import annotations

import pytest
import torch

import genmodels
from genmodels.generation import process_logits, repetition_penalty, top_k_filter, top_p_filter

from ._hf import hf_model, left_pad_mask, random_ids, to_ours  # first: skips the module without transformers

from transformers.generation.logits_process import (RepetitionPenaltyLogitsProcessor,
                                                    TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper)

torch.set_num_threads(1)
pytestmark = pytest.mark.parity

NEW = 32
PAD = 0

VARIANTS = {
    "gpt2": ("gpt2", {}),
    "llama-gqa": ("llama", {"num_key_value_heads": 2}),
    "mistral-window": ("mistral", {"sliding_window": 6}),  # the window slides during decoding
}


@pytest.fixture(scope="module", params=list(VARIANTS))
def pair(request, tmp_path_factory):
    kind, kw = VARIANTS[request.param]
    hf = hf_model(kind, **kw)  # eos_token_id=None: neither side stops early
    return hf, to_ours(hf, tmp_path_factory.mktemp(request.param))


def hf_greedy(hf, ids, mask, n=NEW, **kw):
    with torch.no_grad():
        return hf.generate(ids, attention_mask=mask, max_new_tokens=n, do_sample=False, pad_token_id=PAD,
                           **kw)


def test_greedy_matches_hf(pair):
    hf, ours = pair
    ids = random_ids(2, 10)
    mask = torch.ones_like(ids)
    want = hf_greedy(hf, ids, mask)
    got = genmodels.generate(ours, ids, NEW, attention_mask=mask, pad_token_id=PAD)
    assert want.shape == (2, 10 + NEW)
    assert torch.equal(got, want)


def test_greedy_left_padded_batch_matches_hf(pair):
    hf, ours = pair
    ids = random_ids(3, 12, seed=2)
    mask = left_pad_mask([7, 12, 4], 12)
    ids = ids.masked_fill(mask == 0, PAD)
    want = hf_greedy(hf, ids, mask)
    got = genmodels.generate(ours, ids, NEW, attention_mask=mask, pad_token_id=PAD)
    assert torch.equal(got, want)


def test_greedy_with_repetition_penalty_matches_hf(pair):
    hf, ours = pair
    ids = random_ids(2, 8, seed=3)
    mask = torch.ones_like(ids)
    want = hf_greedy(hf, ids, mask, repetition_penalty=1.5)
    got = genmodels.generate(ours, ids, NEW, attention_mask=mask, pad_token_id=PAD, repetition_penalty=1.5)
    assert torch.equal(got, want)
    assert not torch.equal(got, genmodels.generate(ours, ids, NEW))  # the penalty changed something


def test_eos_reached_matches_hf(tmp_path):
    """EOS set in the config: the row that emits it is padded afterwards; both stop at the same length."""
    free_hf = hf_model("llama", num_key_value_heads=2)
    ids = random_ids(2, 10, seed=4)
    mask = left_pad_mask([6, 10], 10)
    ids = ids.masked_fill(mask == 0, PAD)
    free = hf_greedy(free_hf, ids, mask)
    for eos_row, step in ((0, 5), (1, 3)):
        eos = int(free[eos_row, 10 + step])
        hf = hf_model("llama", num_key_value_heads=2, eos_token_id=eos)
        ours = to_ours(hf, tmp_path / f"eos{eos_row}")
        assert ours.config.eos_token_id == eos
        want = hf_greedy(hf, ids, mask)
        got = genmodels.generate(ours, ids, NEW, attention_mask=mask, pad_token_id=PAD)  # EOS from the config
        assert torch.equal(got, want)
        first = free[eos_row, 10:].tolist().index(eos)
        assert got[eos_row, 10 + first] == eos and (got[eos_row, 11 + first:] == PAD).all()


def test_eos_stops_generation_early_like_hf(tmp_path):
    free_hf = hf_model("gpt2")
    ids = random_ids(1, 10, seed=5)
    free = hf_greedy(free_hf, ids, torch.ones_like(ids))
    eos = int(free[0, 10 + 4])
    hf = hf_model("gpt2", eos_token_id=eos)
    ours = to_ours(hf, tmp_path / "m")
    want = hf_greedy(hf, ids, torch.ones_like(ids))
    got = genmodels.generate(ours, ids, NEW, pad_token_id=PAD)
    assert want.shape[1] < 10 + NEW
    assert torch.equal(got, want)


# ---- logit processors on random scores ----------------------------------------------------------
def random_scores(seed, b=4, v=128, scale=3.0):
    return torch.randn(b, v, generator=torch.Generator().manual_seed(seed)) * scale


@pytest.mark.parametrize("k", [1, 5, 40, 128, 500])
def test_top_k_vs_hf(k):
    scores = random_scores(k)
    want = TopKLogitsWarper(top_k=k)(None, scores.clone())
    got = top_k_filter(scores, k)
    assert torch.equal(torch.isinf(got), torch.isinf(want))
    assert torch.equal(got, want)


@pytest.mark.parametrize("p", [0.05, 0.3, 0.9, 0.999])
@pytest.mark.parametrize("scale", [0.5, 3.0])
def test_top_p_vs_hf(p, scale):
    scores = random_scores(int(p * 1000), scale=scale)
    want = TopPLogitsWarper(top_p=p)(None, scores.clone())
    got = top_p_filter(scores, p)
    assert torch.equal(torch.isinf(got), torch.isinf(want))
    assert torch.equal(got, want)


@pytest.mark.parametrize("penalty", [1.3, 0.7])
def test_repetition_penalty_vs_hf(penalty):
    scores = random_scores(7)
    seen = torch.randint(0, 128, (4, 20), generator=torch.Generator().manual_seed(8))  # with repeats
    want = RepetitionPenaltyLogitsProcessor(penalty=penalty)(seen, scores.clone())
    got = repetition_penalty(scores, seen, penalty)
    torch.testing.assert_close(got, want, atol=0, rtol=0)


def test_processor_chain_vs_hf():
    scores = random_scores(9)
    seen = torch.randint(0, 128, (4, 12), generator=torch.Generator().manual_seed(10))
    want = scores.clone()
    for proc in (RepetitionPenaltyLogitsProcessor(1.2), TemperatureLogitsWarper(0.8), TopKLogitsWarper(30),
                 TopPLogitsWarper(0.85)):
        want = proc(seen, want)
    got = process_logits(scores, seen, temperature=0.8, top_k=30, top_p=0.85, rep_penalty=1.2)
    assert torch.equal(torch.isinf(got), torch.isinf(want))
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)
