"""benchmarks/bench_alignment.py does the same work on both sides: on a tiny random Llama written as a transformers
folder, our DPO step (one row per pair, adapters-off reference) and the transformers + PEFT step written as TRL's
DPOTrainer computes it start from the same summed log-probabilities of the chosen replies, at loss ln 2."""
from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest
import torch

import genmodels

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_alignment.py"
pytest.importorskip("peft")


def _bench():
    spec = importlib.util.spec_from_file_location("bench_alignment_under_test", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_both_sides_score_the_same_replies(tmp_path):
    bench = _bench()
    torch.manual_seed(0)
    model = genmodels.build_model(genmodels.preset("llama-tiny", vocab_size=96, d_model=32, n_layers=2, n_heads=4,
                                                   n_kv_heads=2, d_ff=64, head_dim=8, max_seq_len=64))
    genmodels.export_hf(model, tmp_path / "hf")
    data = bench._tokens(3, 10, 5, vocab=96)
    firsts = []
    for side in (bench._ours, bench._peft):
        _, step = side(tmp_path / "hf", *data)
        firsts.append(step())
        step()  # a second step runs (the adapters train)
    assert firsts[0] == pytest.approx(firsts[1], rel=1e-5)
    assert -2 * 5 * math.log(96) < firsts[0] < -5 * math.log(96) / 2  # (5 reply tokens of a near-uniform model)
