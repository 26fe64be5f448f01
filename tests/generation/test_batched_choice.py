"""The greedy choice of a batched decode step (issue 25, deliverable 6): every greedy request's tokens come from
ONE argmax over the session's logits (the server's batch), which is ``torch.argmax`` — first of ties, a NaN
counts as highest — and each request still gets what it gets alone; sampled requests keep their own path."""
from __future__ import annotations

import pytest
import torch

from genmodels.generation import DecodeSession, Sampling
from genmodels.generation import sampling, session as session_module
from tests.helpers.tiny import random_ids, tiny_model

torch.set_num_threads(1)


def test_argmax_is_torchs_first_of_ties_nan_highest_over_strided_and_half_rows():
    x = torch.randn(6, 300, generator=torch.Generator().manual_seed(0))
    x[0, 5] = x[0, 7] = 50.0                      # a tie: the first
    x[1] = float("-inf")                          # every token masked: 0
    x[2, 3] = x[2, 9] = float("nan")              # NaN is the highest, the first NaN
    x[3, 10] = x[3, 20] = float("inf")
    x[4] = 0.0
    x[4, 40] = -0.0                               # -0.0 == 0.0: still the first
    for t in (x, x[:, ::2], x.t().contiguous().t(), x[1:4], x.bfloat16(), x.double()):
        got = sampling.argmax(t)
        assert got.dtype == torch.long and got.tolist() == t.argmax(-1).tolist()


def _alone(model, ids, s: Sampling) -> torch.Tensor:
    sess = DecodeSession(model)
    req = sess.add(ids, s)
    sess.run()
    return req.output


@pytest.mark.parametrize("native", [True, False])
def test_greedy_requests_share_one_argmax_per_step_and_each_gets_what_it_gets_alone(native, monkeypatch):
    if native:
        from genmodels import native as nat
        if nat.library() is None:
            pytest.skip("native kernels unavailable")
    else:
        monkeypatch.setenv("GENMODELS_NATIVE", "0")
    model = tiny_model("llama", eos_token_id=None)
    prompts = [random_ids(2, 5, seed=2), random_ids(1, 7, seed=3), random_ids(1, 4, seed=4), random_ids(1, 6, seed=5)]
    settings = [lambda: Sampling(9),                                   # greedy, 2 rows
                lambda: Sampling(6),                                   # greedy
                lambda: Sampling(8, temperature=0.9, generator=torch.Generator().manual_seed(3)),  # sampled
                lambda: Sampling(7, repetition_penalty=1.3)]           # greedy with a penalty: its own choice
    want = [_alone(model, ids, s()) for ids, s in zip(prompts, settings)]
    calls = []
    real = session_module.argmax
    monkeypatch.setattr(session_module, "argmax", lambda logits: (calls.append(tuple(logits.shape)), real(logits))[1])
    sess = DecodeSession(model)
    got = [sess.add(ids, s()) for ids, s in zip(prompts, settings)]
    live = []  # rows of the session at each step where two or more plain greedy requests decode
    while sess.requests:
        if sum(r.greedy for r in sess.requests) > 1:
            live.append(sess.logits.shape[0])
        sess.step()
    for g, w in zip(got, want):
        assert torch.equal(g.output, w)
    assert calls == [(rows, 128) for rows in live] and len(calls) == 6  # one argmax a step, over every row
    assert [r.greedy for r in got] == [True, True, False, False]
