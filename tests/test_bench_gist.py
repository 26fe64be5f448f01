"""benchmarks/bench_gist.py (#24 d4): the replies it scores are each row's own — batched rows of different
instructions and input lengths decode as each row alone, for a decoder (left-padded after its cache) and for T5
(right-padded after its cache; pos_control, which has no encoder cache, from the whole prompt); the swap probe gives
every row another task's instruction; the report never averages runs of different lengths and states both targets."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

import genmodels
from tests.helpers.tiny import randomise

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
SMALL = dict(d_model=32, n_layers=2, n_heads=4, max_seq_len=96)
ROWS = [{"instruction": "Reverse the word '{word}'.", "input": "word: cat", "answer": "tac", "task": "reverse"},
        {"instruction": "Translate to French: {text}", "input": "text: the cat is here", "answer": "x", "task": "fr"},
        {"instruction": "Give the first letter.", "input": "word: abc", "answer": "a", "task": "first"}]


def _load(name):
    sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location(f"{name}_under_test", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _model(preset, **extra):
    from genmodels.data.tokenizer import train_bpe_tokenizer
    tok = train_bpe_tokenizer(["Instruction: Translate to French: the cat. Le chat. Input: word: abc cba. Output: "
                               "Reverse the word '{word}'. Give the first letter." * 3],
                              vocab_size=300, special_tokens=("<|endoftext|>", "<GIST>"), min_frequency=1)
    cfg = genmodels.preset(preset, **SMALL, vocab_size=tok.get_vocab_size(), **extra)
    model = randomise(genmodels.build_model(cfg), seed=1).eval()
    model.tokenizer = tok
    return model


@pytest.mark.parametrize("preset, extra, masks", [
    ("llama-tiny", dict(n_kv_heads=2, d_ff=48), ("gist", "neg_control", "pos_control")),
    ("t5-tiny", dict(d_ff=64, head_dim=8), ("gist", "neg_control", "pos_control")),
])
def test_batched_replies_are_each_rows_own(preset, extra, masks):
    bench = _load("bench_gist")
    model = _model(preset, **extra)
    for mask in masks:
        batched = bench.replies(model, ROWS, mask, 1, 6, [0])
        alone = [bench.replies(model, [r], mask, 1, 6, [0])[0] for r in ROWS]
        cut = [o[:next((j for j, i in enumerate(o) if i == 0), len(o))] for o in batched]
        assert cut == [o[:next((j for j, i in enumerate(o) if i == 0), len(o))] for o in alone], mask


def test_the_swap_probe_gives_every_row_another_tasks_instruction():
    bench = _load("bench_gist")
    rows = [{"instruction": f"do {t}", "task": t, "input": str(i)} for i, t in enumerate("aabbbc")]
    swapped = bench.swapped(rows)
    assert [r["input"] for r in swapped] == [r["input"] for r in rows]
    assert all(s["instruction"] != f"do {r['task']}" for s, r in zip(swapped, rows))


def _result(mask, k, seed, steps, seen):
    split = {"exact_match": seen, "n": 10, "per_task": {}, "samples": []}
    return {"mask": mask, "k": k, "seed": seed, "steps": steps, "seen-test": split, "unseen": split}


def test_the_report_keeps_step_counts_apart_and_states_both_targets():
    report = _load("bench_gist_report")
    results = [_result("pos_control", 1, 0, 30, 0.5), _result("gist", 1, 0, 30, 0.46), _result("neg_control", 1, 0, 30, 0.2),
               _result("gist", 1, 1, 30, 0.44), _result("gist", 1, 0, 80, 0.9)]
    rows = {(r["condition"], r["steps"]): r for r in report.table_rows(results)}
    assert rows["gist k=1", 30]["seeds"] == [0, 1] and rows["gist k=1", 30]["seen-test"][:3] == (0.45, 0.44, 0.46)
    assert rows["gist k=1", 80]["seen-test"][0] == 0.9
    [line] = report.targets(results)  # 80 steps has no controls: no verdict for it
    assert line.startswith("30 steps, seeds [0]") and "+0.260 (target ≥ 0.2: met)" in line
    assert "+0.040 (target ≤ 0.05: met)" in line


def test_more_training_instances_are_new_distinct_and_never_held_out(tmp_path):
    from genmodels.data.task_files import write_taskset
    from genmodels.data.tasks import SEEN_TASKS
    bench = _load("bench_gist")
    write_taskset(tmp_path, seed=0, per_task=20)
    more = bench.more_train(tmp_path, [1, 2], 20)
    key = lambda m: (m["task"], tuple(sorted(m["values"].items())))  # noqa: E731
    frozen = {key(m) for s in ("seen-train", "seen-val", "seen-test") for m in bench.read_split(tmp_path, s)}
    keys = [key(m) for m in more]
    assert len(more) > 20 * len(SEEN_TASKS) and len(set(keys)) == len(keys) and not set(keys) & frozen
    assert {m["task"] for m in more} == set(SEEN_TASKS) and {m["split"] for m in more} == {"seen-train"}
    assert bench.more_train(tmp_path, [], 20) == []
