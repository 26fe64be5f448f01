"""Encoder–decoder generation against transformers' generate on the same (random) T5 weights."""
from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")

import genmodels  # noqa: E402
from genmodels.generation.seq2seq import generate_seq2seq  # noqa: E402


def randomise(module, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return module


@pytest.fixture(scope="module", params=["relu", "gated-gelu"])
def pair(request, tmp_path_factory):
    cfg = transformers.T5Config(d_model=64, d_kv=16, d_ff=128, num_layers=2, num_heads=4, vocab_size=32,
                                relative_attention_num_buckets=8, relative_attention_max_distance=20,
                                decoder_start_token_id=0, pad_token_id=0, eos_token_id=1,
                                feed_forward_proj=request.param, attn_implementation="eager")
    hf = randomise(transformers.T5ForConditionalGeneration(cfg)).eval()
    d = tmp_path_factory.mktemp("t5")
    hf.save_pretrained(d)
    return hf, genmodels.load(d)


def sources():
    g = torch.Generator().manual_seed(3)
    src = torch.randint(2, 32, (4, 11), generator=g)
    mask = torch.ones_like(src)
    mask[1, 7:] = 0
    mask[3, 4:] = 0
    return src, mask


def mid_eos(model, src, mask):
    """An end token that row 0 emits mid-sequence, so rows finish at different steps."""
    free = generate_seq2seq(model, src, 20, attention_mask=mask, eos_token_id=[])
    return int(free[0, 6])


def test_greedy_equals_transformers(pair):
    hf, ours = pair
    src, mask = sources()
    for eos in (1, mid_eos(ours, src, mask)):
        ref = hf.generate(input_ids=src, attention_mask=mask, max_new_tokens=20, do_sample=False, eos_token_id=eos)
        got = generate_seq2seq(ours, src, 20, attention_mask=mask, eos_token_id=eos)
        assert torch.equal(got, ref)
    # one source alone gives its row of the padded batch (up to the batch's extra padding)
    one = generate_seq2seq(ours, src[3:, :4], 20, eos_token_id=eos)
    assert torch.equal(one[0], got[3, :one.shape[1]])


@pytest.mark.parametrize("beams,lp,early", [(3, 1.0, False), (4, 0.5, True), (2, 2.0, "never")])
def test_beam_search_equals_transformers(pair, beams, lp, early):
    hf, ours = pair
    src, mask = sources()
    eos = mid_eos(ours, src, mask)
    ref = hf.generate(input_ids=src, attention_mask=mask, max_new_tokens=15, do_sample=False, num_beams=beams,
                      length_penalty=lp, early_stopping=early, eos_token_id=eos)
    got = generate_seq2seq(ours, src, 15, attention_mask=mask, num_beams=beams, length_penalty=lp,
                           early_stopping=early, eos_token_id=eos)
    assert torch.equal(got, ref)


def test_sampling_is_seeded_and_filtered(pair):
    _, ours = pair
    src, mask = sources()
    a = generate_seq2seq(ours, src, 12, attention_mask=mask, temperature=0.8, top_k=3, seed=7, eos_token_id=[])
    b = generate_seq2seq(ours, src, 12, attention_mask=mask, temperature=0.8, top_k=3, seed=7, eos_token_id=[])
    assert torch.equal(a, b) and a.shape == (4, 13)
    # every sampled token is among the 3 most likely given the prefix
    with torch.inference_mode():
        logits = ours(src, a[:, :-1], attention_mask=mask)
    top3 = logits.topk(3, dim=-1).indices
    assert bool((top3 == a[:, 1:, None]).any(-1).all())
