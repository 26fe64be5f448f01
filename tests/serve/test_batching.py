"""Continuous batching: requests joining a running batch give what they give alone; a long prompt is
prefilled in chunks between decode steps; a client that leaves frees its row; a full queue answers 429;
a bug inside a step is a 500 with OpenAI's body and the server goes on."""
from __future__ import annotations

import threading
import time

from tests.serve import raw
import openai
import pytest

from genmodels.serve import ServerThread, Service, build_app
from tests.helpers.serve_load import alone

LONG = "The cat"  # the tiny model's greedy text from it has no end token within 200 tokens


def _wait(condition, what: str, polls: int = 2000) -> None:
    """Poll ``condition`` (bounded: a count of 5 ms sleeps, not a deadline the test's speed depends on)."""
    for _ in range(polls):
        if condition():
            return
        time.sleep(0.005)
    raise AssertionError(f"never happened: {what}")


class hold:
    """From decode step ``at`` on, the engine waits inside its step until :meth:`set`: the test's "meanwhile"
    happens while the batch is running, however fast or slow the machine is."""

    def __init__(self, engine, at: int):
        self.released, self.holding, step = threading.Event(), threading.Event(), engine.session.step

        def held():
            if engine.steps >= at and not self.released.is_set():
                self.holding.set()
                self.released.wait(timeout=60)
            return step()
        engine.session.step = held

    def wait_holding(self) -> None:
        _wait(self.holding.is_set, "the engine held at its step")

    def set(self) -> None:
        self.released.set()


def _stream_in_thread(client, out: dict, key: str, **kw) -> threading.Thread:
    def run():
        stream = client.completions.create(model="tiny", temperature=0, stream=True, **kw)
        out[key] = "".join(c.choices[0].text for c in stream)
    t = threading.Thread(target=run)
    t.start()
    return t


def test_requests_joining_a_running_batch_give_what_they_give_alone(chat_model):
    prompts = ["Hello", "Once upon", "abc", "Paris is"]
    service = Service(chat_model, "tiny", max_batch=8)
    engine, out, rows = service.engine, {}, []  # rows: of each prefill forward
    prefill = engine.session.prefill
    engine.session.prefill = lambda ids, *a, **k: (rows.append(ids.shape[0]), prefill(ids, *a, **k))[1]
    gate = hold(engine, 3)
    with ServerThread(build_app(service)) as s:
        c = openai.OpenAI(base_url=s.url + "/v1", api_key="none", max_retries=0)
        t = _stream_in_thread(c, out, "long", prompt=LONG, max_tokens=120)
        gate.wait_holding()
        threads = [_stream_in_thread(c, out, p, prompt=p, max_tokens=12) for p in prompts]
        _wait(lambda: len(engine.waiting) == 4, "the four requests queued while the long one runs")
        gate.set()
        for th in threads + [t]:
            th.join()
    assert [out[p] for p in prompts] == alone(chat_model, prompts, 12)
    assert out["long"] == alone(chat_model, [LONG], 120)[0]
    assert engine.steps < 120 + 12  # they joined the long one's steps
    assert rows == [1, 4]  # the four queued requests were prefilled together, in one forward


def test_a_long_prompt_is_prefilled_in_chunks_between_decode_steps(chat_model):
    service = Service(chat_model, "tiny", max_batch=4, prefill_chunk=8)
    engine, log = service.engine, []  # (tokens prefilled, decode steps so far, requests running)
    prefill = engine.session.prefill
    engine.session.prefill = lambda ids, *a, **k: (log.append((ids.shape[1], engine.steps,
                                                               len(engine.session.requests))), prefill(ids, *a, **k))[1]
    prompt = "Once upon a time there was a small cat who sat on a mat all day."  # 64 tokens
    out: dict = {}
    gate = hold(engine, 3)
    with ServerThread(build_app(service)) as s:
        c = openai.OpenAI(base_url=s.url + "/v1", api_key="none", max_retries=0)
        t = _stream_in_thread(c, out, "long", prompt=LONG, max_tokens=200)
        gate.wait_holding()
        t2 = _stream_in_thread(c, out, "prompt", prompt=prompt, max_tokens=8)
        _wait(lambda: len(engine.waiting) == 1, "the long prompt queued while the long request runs")
        gate.set()
        t.join()
        t2.join()
    assert out["prompt"] == alone(chat_model, [prompt], 8)[0]
    assert out["long"] == alone(chat_model, [LONG], 200)[0]
    chunks = log[1:]  # after the long request's own prefill
    assert [n for n, _, _ in chunks] == [8] * 8, log  # the prompt went in 8 chunks of 8 (the last through add)
    for (_, before, running), (_, after, _) in zip(chunks, chunks[1:]):
        assert running == 0 or after > before, log  # never two chunks without a decode step of the running row
    assert all(running for _, _, running in chunks), log  # all while the long request ran


def test_a_client_that_disconnects_frees_its_row(chat_model):
    service = Service(chat_model, "tiny", max_batch=8)
    engine = service.engine
    gate = hold(engine, 3)
    with ServerThread(build_app(service)) as s:
        c = openai.OpenAI(base_url=s.url + "/v1", api_key="none", max_retries=0)
        stream = c.completions.create(model="tiny", prompt=LONG, max_tokens=200, temperature=0, stream=True)
        next(iter(stream))
        (job,) = engine.running.values()
        stream.close()
        _wait(lambda: job.cancelled, "the server saw the client go")
        gate.set()
        _wait(lambda: engine.rows() == 0, "the row freed")
        assert engine.steps <= 4 and job.request.finished  # the row left at the next tick, not at 200 tokens
        assert engine.session.requests == []


def test_a_full_queue_answers_429_and_the_waiting_request_completes(chat_model):
    service = Service(chat_model, "tiny", max_batch=1, max_queue=1)
    engine = service.engine
    gate = hold(engine, 3)
    with ServerThread(build_app(service)) as s:
        c = openai.OpenAI(base_url=s.url + "/v1", api_key="none", max_retries=0)
        running = c.completions.create(model="tiny", prompt=LONG, max_tokens=200, temperature=0, stream=True)
        next(iter(running))
        out: dict = {}
        waiting = _stream_in_thread(c, out, "waiting", prompt="Hello", max_tokens=5)
        _wait(lambda: len(engine.waiting) == 1, "the second request queued")
        with pytest.raises(openai.RateLimitError) as e:
            c.with_options(timeout=20).completions.create(model="tiny", prompt="abc", max_tokens=5)
        assert e.value.body["code"] == "queue_full" and e.value.status_code == 429
        running.close()  # frees the only row: the waiting request runs
        gate.set()
        waiting.join()
    assert out["waiting"] == alone(chat_model, ["Hello"], 5)[0]


def test_a_bug_inside_a_step_is_a_500_with_openais_body_and_the_server_goes_on(chat_model, capsys):
    service = Service(chat_model, "tiny", max_batch=2)
    step = service.engine.session.step

    def broken():
        service.engine.session.step = step  # once
        raise RuntimeError("planted bug")
    service.engine.session.step = broken
    with ServerThread(build_app(service)) as s:
        r = raw.post(s.url + "/v1/completions", {"prompt": "Hello", "max_tokens": 3})
        assert r.status_code == 500
        assert r.json()["error"]["code"] == "internal_error" and "Traceback" not in r.text
        ok = raw.post(s.url + "/v1/completions", {"prompt": "Hello", "max_tokens": 3, "temperature": 0})
        assert ok.status_code == 200 and ok.json()["choices"][0]["text"] == alone(chat_model, ["Hello"], 3)[0]
    assert "planted bug" in capsys.readouterr().err  # the traceback is in the server's log
