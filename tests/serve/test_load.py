"""The load check scaled for CI (tests/helpers/serve_load.py; the full 256 requests from 64 clients on
SmolLM2 is benchmarks/serve_load.py): 32 streamed requests from 16 concurrent clients on the tiny model
with --max-batch 8, so requests queue, join and leave all the time. Every response is complete and equal
to the prompt's greedy completion alone; none is lost; memory stays flat over a second round
(RSS sampled after every request) and no request object outlives its response."""
from __future__ import annotations

import gc

from genmodels.serve.engine import Job
from tests.helpers.serve_load import alone, prompts_for, run_load


def test_32_streams_from_16_clients_all_complete_and_equal_alone(server, chat_model):
    prompts = prompts_for(32)
    expected = alone(chat_model, prompts, 16)
    texts, rss1 = run_load(server.url, "tiny", prompts, concurrency=16, max_tokens=16)
    assert [i for i, t in enumerate(texts) if t is None] == []  # none lost
    assert texts == expected
    texts2, rss2 = run_load(server.url, "tiny", prompts, concurrency=16, max_tokens=16)
    assert texts2 == expected
    assert max(rss2) - max(rss1) < 32, (rss1, rss2)  # MiB: flat (a leak of a cache per request would show)
    assert server.service.engine.rows() == 0 and not server.service.engine.waiting
    gc.collect()
    assert [o for o in gc.get_objects() if type(o) is Job] == []  # no request (nor its cache) kept
