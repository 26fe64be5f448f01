"""The time budget reads an injected clock: no test depends on the machine's speed (issue #8, 9b)."""
from __future__ import annotations

import json

from genmodels.training import RunConfig, latest_checkpoint, train
from tests.training.test_train import StepClock

from .conftest import tiny_config


def test_budget_stops_at_the_deadline_when_steps_slow_down(corpus_dir, tmp_path, monkeypatch):
    """Steps that slow down after the fit end the run at the deadline, saved, with the clock's elapsed time."""
    run = tmp_path / "slow"
    over = dict(train={"max_steps": 100000, "max_minutes": 0.1, "eval_every": 1000, "ckpt_every": 1000})
    clock = StepClock(0.125).install(monkeypatch)
    real_fit = __import__("genmodels.training.loop", fromlist=["x"]).fit_steps_to_budget

    def fit_then_slow(*a, **kw):
        out = real_fit(*a, **kw)
        clock.dt = 0.5  # the machine gets busy right after the schedule was fitted (46 steps)
        return out

    monkeypatch.setattr("genmodels.training.loop.fit_steps_to_budget", fit_then_slow)
    said = []
    res = train(RunConfig.from_dict(tiny_config(corpus_dir, run, **over)), progress=False, log=said.append,
                clock=clock)
    # the clock passes the 6 s deadline (1.0 + 0.5 × 11 = 6.5 s) as step 20 begins: step 20 is the last
    assert res.steps == 20
    assert any("time budget train.max_minutes=0.1 reached at step 20/46" in s for s in said)
    state = json.loads((latest_checkpoint(run) / "state.json").read_text())
    assert (state["step"], state["max_steps"], state["elapsed_s"]) == (20, 46, 7.0)
    last = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()][-2]
    assert last["step"] == 20 and last["time_s"] == 7.0  # elapsed read from the clock
