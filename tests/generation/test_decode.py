"""genmodels.generate and the logit processors, checked against their definitions.

Token-exact comparisons with transformers' generate() live in tests/parity/transformers/test_generate.py.
"""
from __future__ import annotations

import pytest
import torch

import genmodels
from genmodels.generation import process_logits, repetition_penalty, top_k_filter, top_p_filter

from tests.helpers.tiny import left_pad_mask, random_ids, tiny_model

torch.set_num_threads(1)

NEW = 32


@pytest.fixture(scope="module")
def model():
    return tiny_model("llama", eos_token_id=None)


# ---- argument checks ------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs,name", [
    (dict(top_p=1.5), "top_p"),
    (dict(top_p=0.0), "top_p"),
    (dict(temperature=-1.0), "temperature"),
    (dict(top_k=-2), "top_k"),
    (dict(repetition_penalty=0.0), "repetition_penalty"),
    (dict(max_new_tokens=-1), "max_new_tokens"),
])
def test_bad_arguments_name_the_argument(model, kwargs, name):
    with pytest.raises(ValueError, match=name):
        genmodels.generate(model, random_ids(1, 4), **kwargs)


def test_bad_input_shape(model):
    with pytest.raises(ValueError, match="input_ids"):
        genmodels.generate(model, torch.zeros(1, 0, dtype=torch.long))


def test_learned_positions_overflow_is_reported():
    m = tiny_model("gpt2", max_seq_len=16)
    with pytest.raises(ValueError, match="16"):
        genmodels.generate(m, random_ids(1, 10), max_new_tokens=8)


def test_sinusoidal_positions_overflow_is_reported_or_works():
    m = tiny_model("gpt2", position="sinusoidal", max_seq_len=16)
    try:
        out = genmodels.generate(m, random_ids(1, 10), max_new_tokens=8)
    except ValueError as e:
        assert "16" in str(e)
        return
    assert out.shape == (1, 18)


# ---- greedy is argmax of the full forward ---------------------------------------------------
def check_greedy(model, prompt, out, mask=None):
    """Every generated token is the argmax of a *full* (cache-free) forward over what precedes it."""
    t = prompt.shape[1]
    assert torch.equal(out[:, :t], prompt)
    full_mask = None
    if mask is not None:
        full_mask = torch.cat([mask, torch.ones(mask.shape[0], out.shape[1] - t, dtype=mask.dtype)], 1)
    with torch.no_grad():
        logits = model(out[:, :-1], attention_mask=full_mask[:, :-1] if full_mask is not None else None)
    want = logits[:, t - 1:].argmax(-1)
    assert torch.equal(out[:, t:], want)


def test_greedy_equals_argmax_of_full_forward(model):
    prompt = random_ids(2, 10)
    out = genmodels.generate(model, prompt, NEW)
    assert out.shape == (2, 10 + NEW)
    check_greedy(model, prompt, out)


def test_greedy_left_padded_batch(model):
    prompt = random_ids(3, 10, seed=2)
    mask = left_pad_mask([6, 10, 3], 10)
    prompt = prompt.masked_fill(mask == 0, 0)
    out = genmodels.generate(model, prompt, NEW, attention_mask=mask, pad_token_id=0)
    check_greedy(model, prompt, out, mask)
    # and each row equals that row generated alone, without padding
    for row, n in enumerate([6, 10, 3]):
        alone = genmodels.generate(model, prompt[row:row + 1, 10 - n:], NEW)
        assert torch.equal(out[row, 10:], alone[0, n:]), f"row {row}"


def test_greedy_left_padded_window_gpt2_alibi():
    for m in (tiny_model("llama", sliding_window=6, eos_token_id=None), tiny_model("gpt2", eos_token_id=None),
              tiny_model("llama", position="alibi", eos_token_id=None)):
        prompt = random_ids(2, 9, seed=3)
        mask = left_pad_mask([5, 9], 9)
        out = genmodels.generate(m, prompt, 20, attention_mask=mask, pad_token_id=0)
        check_greedy(m, prompt, out, mask)


def test_streamer_sees_every_step(model):
    seen = []
    out = genmodels.generate(model, random_ids(2, 5), 7, streamer=lambda t: seen.append(t.clone()))
    assert torch.equal(torch.stack(seen, 1), out[:, 5:])


def test_max_new_tokens_zero_returns_prompt(model):
    prompt = random_ids(2, 5)
    assert torch.equal(genmodels.generate(model, prompt, 0), prompt)


# ---- stopping -------------------------------------------------------------------------------
def expected_after_stop(free, t, stop, pad):
    """What a run with ``stop`` ids must return, given the unstopped run ``free``."""
    rows, ends = [], []
    for r in range(free.shape[0]):
        gen = free[r, t:].tolist()
        hit = [i for i, tok in enumerate(gen) if tok in stop]
        end = hit[0] + 1 if hit else len(gen)
        rows.append(gen[:end] + [pad] * (len(gen) - end))
        ends.append(end)
    n = max(ends)  # generation stops once every row has ended
    return torch.cat([free[:, :t], torch.tensor(rows)[:, :n]], 1)


def test_stop_tokens_stop_a_row(model):
    prompt = random_ids(2, 8, seed=4)
    free = genmodels.generate(model, prompt, NEW)
    stop = int(free[0, 8 + 4])  # a token row 0 emits at step 4 (or earlier)
    out = genmodels.generate(model, prompt, NEW, stop_tokens=[stop], pad_token_id=127)
    want = expected_after_stop(free, 8, {stop}, 127)
    assert torch.equal(out, want)
    first = free[0, 8:].tolist().index(stop)
    assert out[0, 8 + first] == stop and (out[0, 9 + first:] == 127).all()


def test_all_rows_stopped_ends_generation(model):
    prompt = random_ids(1, 8, seed=5)
    free = genmodels.generate(model, prompt, NEW)
    stop = int(free[0, 8 + 3])
    out = genmodels.generate(model, prompt, NEW, eos_token_id=stop)
    first = free[0, 8:].tolist().index(stop)
    assert out.shape == (1, 8 + first + 1)
    assert torch.equal(out, free[:, : 8 + first + 1])


def test_eos_defaults_to_the_config():
    m = tiny_model("llama", eos_token_id=None)
    prompt = random_ids(1, 8, seed=6)
    free = genmodels.generate(m, prompt, NEW)
    stop = int(free[0, 8 + 2])
    m.config.eos_token_id = stop
    out = genmodels.generate(m, prompt, NEW)
    assert out.shape[1] == 8 + free[0, 8:].tolist().index(stop) + 1


# ---- sampling -------------------------------------------------------------------------------
def test_seeded_sampling_is_reproducible(model):
    prompt = random_ids(2, 6, seed=7)
    kw = dict(temperature=1.3, top_k=50, top_p=0.95)
    a = genmodels.generate(model, prompt, NEW, seed=11, **kw)
    b = genmodels.generate(model, prompt, NEW, seed=11, **kw)
    c = genmodels.generate(model, prompt, NEW, seed=12, **kw)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert not torch.equal(a, genmodels.generate(model, prompt, NEW))  # sampling is not greedy


def test_top_k_one_sampling_is_greedy(model):
    prompt = random_ids(2, 6, seed=8)
    assert torch.equal(genmodels.generate(model, prompt, 12, temperature=0.7, top_k=1, seed=0),
                       genmodels.generate(model, prompt, 12))


def test_sampling_respects_top_k(model):
    """Every sampled token is among the k most likely under the full forward."""
    prompt = random_ids(2, 6, seed=9)
    out = genmodels.generate(model, prompt, 16, temperature=2.0, top_k=3, seed=1)
    with torch.no_grad():
        logits = model(out[:, :-1])[:, 5:]
    top3 = logits.topk(3, dim=-1).indices
    assert (top3 == out[:, 6:, None]).any(-1).all()


def test_top_k_filter_keeps_exactly_k():
    scores = torch.randn(4, 128, generator=torch.Generator().manual_seed(0))
    kept = torch.isfinite(top_k_filter(scores, 10))
    assert (kept.sum(-1) == 10).all()
    assert torch.equal(kept, torch.zeros_like(kept).scatter(1, scores.topk(10).indices, True))


def test_top_p_filter_keeps_smallest_nucleus():
    scores = torch.randn(4, 128, generator=torch.Generator().manual_seed(1)) * 3
    p = 0.8
    kept = torch.isfinite(top_p_filter(scores, p))
    probs = scores.softmax(-1)
    for r in range(4):
        order = probs[r].argsort(descending=True)
        cum = probs[r][order].cumsum(0)
        n = int((cum < p).sum()) + 1  # the smallest prefix whose mass reaches p
        want = torch.zeros(128, dtype=torch.bool)
        want[order[:n]] = True
        assert torch.equal(kept[r], want)


def test_repetition_penalty_definition():
    scores = torch.tensor([[2.0, -2.0, 1.0, -1.0, 0.5]])
    seen = torch.tensor([[0, 1, 1]])
    got = repetition_penalty(scores, seen, 2.0)
    assert torch.equal(got, torch.tensor([[1.0, -4.0, 1.0, -1.0, 0.5]]))


def test_process_logits_order():
    """Repetition penalty, then temperature, then top-k, then top-p (HF's order)."""
    scores = torch.randn(2, 128, generator=torch.Generator().manual_seed(2))
    seen = torch.randint(0, 128, (2, 5), generator=torch.Generator().manual_seed(3))
    got = process_logits(scores, seen, temperature=0.7, top_k=20, top_p=0.9, rep_penalty=1.3)
    want = top_p_filter(top_k_filter(repetition_penalty(scores, seen, 1.3) / 0.7, 20), 0.9)
    assert torch.equal(got, want)


def test_generate_dispatches_seq2seq_and_rejects_encoders():
    import genmodels
    from genmodels.generation.seq2seq import generate_seq2seq
    t5 = genmodels.build_model(genmodels.preset("t5-tiny", vocab_size=64, d_model=32, n_heads=2, head_dim=16,
                                                d_ff=64)).eval()
    src = torch.randint(2, 64, (2, 7))
    assert torch.equal(genmodels.generate(t5, src, max_new_tokens=5), generate_seq2seq(t5, src, 5))
    bert = genmodels.build_model(genmodels.preset("bert-tiny", vocab_size=64, d_model=32, n_heads=2, d_ff=64))
    with pytest.raises(ValueError, match="encoder"):
        genmodels.generate(bert, src, max_new_tokens=3)
