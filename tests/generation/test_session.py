"""Cache protocol v2 and the decode session (issue #20, deliverable 4): a prefilled cache continues as one
call would, rows join and leave a session at different steps and each gets what it gets alone, each request
keeps its own sampling settings, allowed tokens and generator — on the native and the PyTorch paths."""
from __future__ import annotations

import pytest
import torch

import genmodels
from genmodels.generation import DecodeSession, Sampling
from genmodels.nn import kv_cache
from tests.helpers.tiny import left_pad_mask, random_ids, randomise, tiny_model

torch.set_num_threads(1)


def _retnet():
    cfg = genmodels.preset("retnet-tiny", vocab_size=128, d_model=32, n_layers=2, n_heads=2, value_dim=48, d_ff=64,
                           max_seq_len=256, eos_token_id=None)
    return randomise(genmodels.build_model(cfg)).eval()


MODELS = {
    "llama": lambda: tiny_model("llama", eos_token_id=None),
    "gpt2": lambda: tiny_model("gpt2", eos_token_id=None),
    "mistral-window": lambda: tiny_model("llama", sliding_window=5, eos_token_id=None),
    "alibi": lambda: tiny_model("llama", position="alibi", eos_token_id=None),
    "retnet": _retnet,
}


@pytest.fixture(params=["native", "torch"])
def path(request, monkeypatch):
    if request.param == "torch":
        monkeypatch.setenv("GENMODELS_NATIVE", "0")
    else:
        from genmodels import native
        if native.library() is None:
            pytest.skip("native kernels unavailable")
    return request.param


@pytest.mark.parametrize("kind", MODELS)
def test_continuing_a_prefilled_cache_equals_one_call(kind, path, monkeypatch):
    """generate(ids2, cache=prefix(ids1)) == generate(ids1 + ids2); the returned cache has consumed every
    returned token, so a third call continues as well. Left-padded rows included; CHUNK 2 makes the cache
    grow (and the window compact) between the calls."""
    monkeypatch.setattr(kv_cache, "CHUNK", 2)
    model, ids = MODELS[kind](), random_ids(2, 13)
    mask = left_pad_mask([9, 6], 9)
    full_mask = torch.cat([mask, torch.ones(2, 4, dtype=torch.long)], dim=1)
    want = genmodels.generate(model, ids, 12, attention_mask=full_mask)               # (2, 25)
    prefix, cache = genmodels.generate(model, ids[:, :9], 0, attention_mask=mask, return_cache=True)
    assert torch.equal(prefix, ids[:, :9]) and cache.row_pos.tolist() == [9, 6]
    out, cache = genmodels.generate(model, ids[:, 9:], 12, cache=cache, return_cache=True)
    assert torch.equal(out, want[:, 9:])
    assert cache.row_pos.tolist() == [25, 22]                                           # the last token fed too
    more = random_ids(2, 3, seed=5)
    again = genmodels.generate(model, more, 5, cache=cache)
    whole = genmodels.generate(model, torch.cat([want, more], 1), 5, attention_mask=torch.cat(
        [full_mask, torch.ones(2, 15, dtype=torch.long)], dim=1))
    assert torch.equal(again, whole[:, 25:])


@pytest.mark.parametrize("kind", MODELS)
def test_a_prefill_that_continues_a_cache_gives_the_logits_of_one_prefill(kind):
    model, ids, mask = MODELS[kind](), random_ids(2, 13), left_pad_mask([13, 10], 13)
    session = DecodeSession(model, native=False)
    cache, _ = session.prefill(ids[:, :9], 30, attention_mask=mask[:, :9])
    cache, logits = session.prefill(ids[:, 9:], 30, cache=cache)
    _, want = session.prefill(ids, 30, attention_mask=mask)
    torch.testing.assert_close(logits, want, atol=1e-5, rtol=1e-4)


def _alone(model, ids, mask, s: Sampling) -> torch.Tensor:
    session = DecodeSession(model)
    req = session.add(ids, s, attention_mask=mask)
    session.run()
    return req.output


@pytest.mark.parametrize("kind", MODELS)
def test_rows_joining_and_leaving_get_what_they_get_alone(kind, path, monkeypatch):
    """Three requests (one a left-padded pair) join at steps 0, 2 and 5 and leave at different steps (their
    max_new_tokens, or an end token; the first leaves from the front, with rows after it); each row's greedy
    tokens equal the row decoded alone."""
    monkeypatch.setattr(kv_cache, "CHUNK", 2)
    model = MODELS[kind]()
    reqs = [(random_ids(1, 5, seed=2), None, dict(max_new_tokens=4)),
            (random_ids(2, 9, seed=3), left_pad_mask([9, 4], 9), dict(max_new_tokens=10)),
            (random_ids(1, 3, seed=4), None, dict(max_new_tokens=9))]
    alone = [_alone(model, ids, mask, Sampling(**kw)) for ids, mask, kw in reqs]
    end = int(alone[2][0, 3 + 5])  # the third request also ends on its 6th token
    reqs[2][2]["ends"] = (end,)
    want = alone[:2] + [_alone(model, reqs[2][0], None, Sampling(**reqs[2][2]))]
    assert want[2].shape[1] <= 3 + 6
    session, got, joins = DecodeSession(model), [], {0: 0, 2: 1, 5: 2}
    step, finished = 0, []
    while step in joins or session.requests:
        if step in joins:
            ids, mask, kw = reqs[joins[step]]
            got.append(session.add(ids, Sampling(**kw), attention_mask=mask))
        finished += session.step()
        step += 1
    assert [id(r) for r in finished] == [id(got[0]), id(got[2]), id(got[1])]  # the first to join leaves first
    for g, w in zip(got, want):
        assert torch.equal(g.output, w)
    assert session.cache is None and session.requests == []


def test_each_request_keeps_its_sampling_settings_allowed_tokens_and_generator(path):
    model = tiny_model("llama", eos_token_id=None)
    a_ids, b_ids, c_ids = random_ids(1, 6, seed=2), random_ids(1, 4, seed=3), random_ids(1, 7, seed=4)
    allowed = torch.zeros(128, dtype=torch.bool)
    allowed[[3, 17, 40, 99]] = True
    settings = [lambda: Sampling(10, temperature=0.9, top_k=30, generator=torch.Generator().manual_seed(7)),
                lambda: Sampling(8, repetition_penalty=1.5),
                lambda: Sampling(9, temperature=1.2, top_p=0.9, allowed=allowed,
                                 generator=torch.Generator().manual_seed(8))]
    want = [_alone(model, ids, None, s()) for ids, s in zip((a_ids, b_ids, c_ids), settings)]
    assert torch.equal(want[0], genmodels.generate(model, a_ids, 10, temperature=0.9, top_k=30, seed=7))
    session = DecodeSession(model)
    got = [session.add(a_ids, settings[0]())]
    session.step()
    got += [session.add(b_ids, settings[1]()), session.add(c_ids, settings[2]())]
    session.run()
    for g, w in zip(got, want):
        assert torch.equal(g.output, w)
    assert set(got[2].output[0, 7:].tolist()) <= {3, 17, 40, 99}
    rows = torch.zeros(2, 128, dtype=torch.bool)  # one allowed set per row of a request
    rows[0, [5, 6]], rows[1, [7]] = True, True
    pair = _alone(model, random_ids(2, 4), None, Sampling(4, allowed=rows))
    assert set(pair[0, 4:].tolist()) <= {5, 6} and pair[1, 4:].tolist() == [7] * 4


def test_a_kv_cache_truncated_to_a_common_prefix_continues_as_a_fresh_prefill():
    """truncate(n) forgets the slots from n on and moves each row's position back by the real tokens lost."""
    model, ids = tiny_model("llama", eos_token_id=None), random_ids(2, 10)
    mask = left_pad_mask([10, 7], 10)
    _, cache = genmodels.generate(model, ids, 4, attention_mask=mask, return_cache=True)
    cache.truncate(8)
    assert cache.pos == 8 and cache.row_pos.tolist() == [8, 5]
    got = genmodels.generate(model, ids[:, 8:], 6, cache=cache)
    assert torch.equal(got, genmodels.generate(model, ids, 6, attention_mask=mask)[:, 8:])
    with pytest.raises(ValueError, match=r"truncate\(17\): the cache holds 16 slots"):
        cache.truncate(cache.pos + 1)


def test_continuing_a_cache_refuses_what_does_not_fit():
    model, ids = tiny_model("llama", eos_token_id=None), random_ids(2, 6)
    _, cache = genmodels.generate(model, ids, 0, return_cache=True)
    with pytest.raises(ValueError, match="cache holds 2 rows; input_ids has 1"):
        genmodels.generate(model, ids[:1], 2, cache=cache)
    retnet = MODELS["retnet"]()  # padded new tokens after a cache: fine for a KV cache (tests/test_gist.py), not here
    _, state = genmodels.generate(retnet, ids, 0, return_cache=True)
    with pytest.raises(ValueError, match="attention_mask: padded new tokens after a cache .* not a key/value cache"):
        genmodels.generate(retnet, ids, 2, cache=state, attention_mask=left_pad_mask([6, 5], 6))
    with pytest.raises(ValueError, match="beam search"):
        genmodels.generate(model, ids, 2, num_beams=2, return_cache=True)
    with pytest.raises(ValueError, match="pass a cache returned by generate"):
        genmodels.generate(model, ids, 2, cache=object())


@pytest.mark.parametrize("kind", ["llama", "retnet"])
def test_a_request_that_keeps_its_cache_leaves_with_its_own_rows(kind, path):
    """A request finishing while another decodes takes a cache of its rows only (every returned token
    consumed): continuing it equals one call over everything."""
    model = MODELS[kind]()
    a_ids, b_ids, more = random_ids(1, 4, seed=2), random_ids(1, 8, seed=3), random_ids(1, 3, seed=4)
    session = DecodeSession(model)
    a = session.add(a_ids, Sampling(max_new_tokens=3, keep_cache=True))  # first in the rows, first to leave
    session.step()
    b = session.add(b_ids, Sampling(max_new_tokens=10))
    session.run()
    assert a.cache.row_pos.tolist() == [7] and b.cache is None
    assert torch.equal(b.output, _alone(model, b_ids, None, Sampling(max_new_tokens=10)))
    got = genmodels.generate(model, more, 4, cache=a.cache)
    assert torch.equal(got, genmodels.generate(model, torch.cat([a.output, more], 1), 4)[:, 7:])


def test_retnet_refuses_positions_other_than_its_rows_own():
    """Its decay and rotation count each row's tokens: other position_ids are refused, never ignored."""
    model, ids = _retnet(), random_ids(2, 5)
    with torch.no_grad():
        model.hidden_states(ids, position_ids=torch.arange(5)[None])  # its own: taken
        with pytest.raises(ValueError, match=r"position_ids: RetNetLM counts each row's own tokens"):
            model.hidden_states(ids, position_ids=torch.arange(1, 6)[None])
        cache = model.new_cache(2)
        model.hidden_states(ids, attention_mask=left_pad_mask([3, 5], 5), cache=cache)
        model.hidden_states(ids[:, :1], position_ids=torch.tensor([[3], [5]]), cache=cache)
        with pytest.raises(ValueError, match=r"here \[\[4\], \[6\]\]"):
            model.hidden_states(ids[:, :1], position_ids=torch.tensor([[6], [6]]), cache=cache)


def test_a_step_is_choose_then_feed_so_a_front_end_can_show_the_token_before_the_forward():
    model, ids = tiny_model("llama", eos_token_id=None), random_ids(1, 5)
    session = DecodeSession(model)
    req = session.add(ids, Sampling(max_new_tokens=3))
    session.choose_tokens()
    assert req.output.shape == (1, 6) and session.cache.pos == 5  # chosen, not yet through the model
    assert session.feed_tokens() == [] and session.cache.pos == 6
    session.run()
    assert torch.equal(req.output, genmodels.generate(model, ids, 3))


def test_a_request_with_bad_settings_is_refused_naming_the_setting():
    model, ids = tiny_model("llama", eos_token_id=None), random_ids(1, 5)
    session = DecodeSession(model)
    for s, name in ((Sampling(temperature=-1.0), "temperature"), (Sampling(top_p=1.5), "top_p"),
                    (Sampling(ends=(128,)), "ends"), (Sampling(pad=-1), "pad"),
                    (Sampling(allowed=torch.zeros(128, dtype=torch.bool)), "allowed"),
                    (Sampling(allowed=torch.ones(5, dtype=torch.bool)), "allowed"),
                    (Sampling(allowed=torch.ones(2, 128, dtype=torch.bool)), "allowed"),
                    (Sampling(stop=("x",)), "stop")):
        with pytest.raises(ValueError, match=name):
            session.add(ids, s)
    assert session.requests == [] and session.cache is None


@pytest.mark.parametrize("kind", ["llama", "retnet"])
def test_a_cancelled_request_leaves_at_once_and_the_others_go_on(kind, path):
    model = MODELS[kind]()
    ids = [random_ids(1, 5, seed=2), random_ids(2, 6, seed=3), random_ids(1, 4, seed=4)]
    session = DecodeSession(model)
    reqs = [session.add(i, Sampling(max_new_tokens=6)) for i in ids]
    session.step(), session.step()
    session.cancel(reqs[2])                       # between steps, from the back
    session.choose_tokens()
    session.cancel(reqs[0])                       # between the halves of a step, from the front
    assert session.feed_tokens() == [] and [id(r) for r in session.requests] == [id(reqs[1])]
    assert session.cache.row_pos.shape == (2,)
    session.run()
    assert reqs[0].output.shape == (1, 8) and reqs[2].output.shape == (1, 6) and reqs[0].finished
    assert torch.equal(reqs[1].output, _alone(model, ids[1], None, Sampling(max_new_tokens=6)))
    session.cancel(reqs[1])  # no longer live: nothing to do


@pytest.mark.parametrize("kind", MODELS)
def test_requests_added_together_take_one_forward_and_each_gets_what_it_gets_alone(kind, path, monkeypatch):
    """add_many: prompts of different lengths (one of two rows) are left-padded into ONE prefill and join a
    running request; each row's greedy tokens equal the request decoded alone (the server's joins of a tick)."""
    monkeypatch.setattr(kv_cache, "CHUNK", 2)
    model = MODELS[kind]()
    running = random_ids(1, 6, seed=1)
    new = [(random_ids(1, 5, seed=2), 4), (random_ids(2, 9, seed=3), 7), (random_ids(1, 3, seed=4), 5)]
    session = DecodeSession(model)
    first = session.add(running, Sampling(max_new_tokens=9))
    session.step(), session.step()
    forwards = []
    prefill = session.prefill
    monkeypatch.setattr(session, "prefill", lambda ids, *a, **k: (forwards.append(ids.shape), prefill(ids, *a, **k))[1])
    got = session.add_many([(ids, Sampling(max_new_tokens=n)) for ids, n in new])
    assert forwards == [(4, 9)]                                     # one forward, every new row, padded to 9
    session.run()
    assert torch.equal(first.output, _alone(model, running, None, Sampling(max_new_tokens=9)))
    for req, (ids, n) in zip(got, new):
        assert torch.equal(req.output, _alone(model, ids, None, Sampling(max_new_tokens=n)))
    with pytest.raises(ValueError, match="keep_cache"):
        session.add_many([(running, Sampling(keep_cache=True))])


@pytest.mark.parametrize("kind", ["llama", "gpt2", "alibi"])
def test_a_request_that_joins_after_one_left_takes_its_rows_in_place(kind, path):
    """The rows a request leaves are taken by the next one to join (no copy into new buffers, the native step
    stays bound); free rows no request takes are dropped at the next step; a prompt longer than what the cache
    holds is appended. Every request gets what it gets alone."""
    model = MODELS[kind]()
    a, b = (random_ids(1, 4, seed=2), 3), (random_ids(2, 9, seed=3), 30)
    c, d, e = (random_ids(1, 6, seed=4), 5), (random_ids(1, 5, seed=5), 4), (random_ids(1, 30, seed=6), 10)
    session = DecodeSession(model)
    ra = session.add(a[0], Sampling(max_new_tokens=a[1]))
    rb = session.add(b[0], Sampling(max_new_tokens=b[1]), attention_mask=left_pad_mask([9, 5], 9))
    assert ra.rows == [0] and rb.rows == [1, 2]
    while not ra.finished:
        session.step()
    step, buffer = session._step, session.cache.layers[0].k
    rc = session.add(c[0], Sampling(max_new_tokens=c[1]))           # into a's free row
    assert rc.rows == [0] and session.cache.batch == 3 and session.free == []
    assert session.cache.layers[0].k is buffer
    session.step()
    assert session._step is step or not session.native              # not bound again
    while not rc.finished:
        session.step()
    re_ = session.add(e[0], Sampling(max_new_tokens=e[1]))         # longer than the cache holds: appended
    rd = session.add(d[0], Sampling(max_new_tokens=d[1]))          # c's free row
    assert re_.rows == [3] and rd.rows == [0]
    while not rd.finished:
        session.step()
    session.step()                                                   # d's row, untaken, is dropped
    assert session.cache.batch == 3 and rb.rows == [0, 1] and re_.rows == [2]
    session.run()
    mask_b = left_pad_mask([9, 5], 9)
    assert torch.equal(rb.output, _alone(model, b[0], mask_b, Sampling(max_new_tokens=b[1])))
    for r, (ids, n) in ((ra, a), (rc, c), (rd, d), (re_, e)):
        assert torch.equal(r.output, _alone(model, ids, None, Sampling(max_new_tokens=n)))
