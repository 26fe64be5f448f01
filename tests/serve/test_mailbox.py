"""The engine thread's events reach the request queues through one :class:`Mailbox` per event loop: a burst (a
decode step's tokens for every stream of the batch) costs the loop one wake-up, each queue gets its events in
order, and a closed loop refuses (the engine then cancels the request). No server, no clock."""
from __future__ import annotations

import asyncio
import threading

import pytest

from genmodels.serve.app import Mailbox


def test_a_burst_from_another_thread_is_one_wake_up_and_each_queue_keeps_its_order():
    loop = asyncio.new_event_loop()
    try:
        wakeups = []
        real = loop.call_soon_threadsafe
        loop.call_soon_threadsafe = lambda *a: (wakeups.append(a), real(*a))[1]
        box = Mailbox(loop)
        queues = [asyncio.Queue() for _ in range(3)]

        def engine():  # a step's events for three streams, then their ends
            for step in range(4):
                for i, q in enumerate(queues):
                    box.post(q, ("delta", 0, f"{i}:{step}", None))
            for q in queues:
                box.post(q, ("end", {}))
        t = threading.Thread(target=engine)
        t.start()
        t.join()  # (the loop is not running: the whole burst waits for one callback)
        assert len(wakeups) == 1

        async def drain():
            return [[(await q.get()) for _ in range(5)] for q in queues]
        got = loop.run_until_complete(drain())
        for i, events in enumerate(got):
            assert [e[2] for e in events[:4]] == [f"{i}:{s}" for s in range(4)] and events[4][0] == "end"
        box.post(queues[0], ("end", {}))  # after a delivery, the next event schedules again
        assert len(wakeups) == 2
    finally:
        loop.close()
    with pytest.raises(RuntimeError):
        box.post(queues[0], ("end", {}))
