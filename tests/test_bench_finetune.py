"""benchmarks/bench_finetune.py --data tasks gives both sides the same supervised positions (transformers shifts
its labels itself; ours are next-token targets)."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

FOLDER = Path(__file__).resolve().parents[1] / "benchmarks"


def _bench(monkeypatch):
    monkeypatch.syspath_prepend(str(FOLDER))
    spec = importlib.util.spec_from_file_location("bench_finetune_under_test", FOLDER / "bench_finetune.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


def test_tasks_rows_supervise_the_same_positions_on_both_sides(monkeypatch):
    bench = _bench(monkeypatch)
    torch.manual_seed(0)
    x = torch.randint(0, 100, (2, 9))
    loss = torch.rand(2, 9) < 0.4
    inputs, targets, hf = bench.shifted(x, loss)
    assert inputs.shape == targets.shape == hf.shape == (2, 8)
    assert torch.equal(hf[:, 1:], targets[:, :-1])  # what transformers' shift leaves: ours but the last position
    assert torch.equal(targets != -100, loss[:, 1:]) and torch.equal(targets[loss[:, 1:]], x[:, 1:][loss[:, 1:]])
    assert torch.equal(inputs, x[:, :-1])
