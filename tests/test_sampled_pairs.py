"""Pairs from a model's sampled answers scored by the task checker (issue 23 d1): the pairing rule on given
replies, and a real sampled run on a tiny model whose pairs the pairs kind reads, the same for the same seed."""
from __future__ import annotations

import pytest
import torch

import genmodels
import genmodels.sampled_pairs as sp
from genmodels.data import train_bpe_tokenizer
from genmodels.data.pairs import read_pairs
from genmodels.data.task_pairs import write_pairs
from genmodels.data.tasks import build_taskset

RECORDS = [r for r in build_taskset(seed=0, per_task=10) if r.split == "seen-train" and r.task == "add"][:3]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    text = " ".join(r.question + " " + r.answer for r in build_taskset(seed=0, per_task=10))
    tok = train_bpe_tokenizer([text] * 2, 300)
    torch.manual_seed(0)
    m = genmodels.build_model(genmodels.preset("llama-tiny", vocab_size=tok.get_vocab_size(), d_model=32, n_layers=1,
                                               n_heads=2, n_kv_heads=1, d_ff=64, head_dim=16, max_seq_len=128))
    return genmodels.load(genmodels.save(m, tmp_path_factory.mktemp("sp") / "m", tok))


def test_the_first_right_reply_is_set_against_the_first_wrong_one(model, monkeypatch):
    a = [r.answer for r in RECORDS]
    given = ["7x", a[0], "", a[0],  # right and wrong
             "no", "", "nope", "",  # wrong only: the gold answer against it
             a[2], a[2] + ".", "", ""]  # right only: no pair
    monkeypatch.setattr(sp, "_replies", lambda *args, **kw: given)
    pairs, info = sp.sampled_pairs(model, RECORDS, n=4)
    assert pairs == [{"messages": [{"role": "user", "content": RECORDS[0].question}], "chosen": a[0], "rejected": "7x"},
                     {"messages": [{"role": "user", "content": RECORDS[1].question}], "chosen": a[1], "rejected": "no"}]
    assert info == {"sampled right and wrong": 1, "gold against a sampled wrong reply": 1, "no pair (all right)": 1}
    pairs, info = sp.sampled_pairs(model, RECORDS, n=4, gold=False, form="prompt")
    assert pairs == [{"prompt": RECORDS[0].prompt_form()["prompt"], "chosen": f" {a[0]}", "rejected": " 7x"}]


def test_a_sampled_run_gives_pairs_the_kind_reads_the_same_for_the_same_seed(model, tmp_path):
    pairs, info = sp.sampled_pairs(model, RECORDS, n=3, max_new_tokens=6, seed=1)
    again, _ = sp.sampled_pairs(model, RECORDS, n=3, max_new_tokens=6, seed=1)
    assert pairs == again and sum(info.values()) == len(RECORDS)
    assert pairs  # (an untrained model answers wrong: the true answer against its reply)
    write_pairs(pairs, tmp_path / "p.jsonl")
    assert len(read_pairs(tmp_path / "p.jsonl")) == len(pairs)
    other, _ = sp.sampled_pairs(model, RECORDS, n=3, max_new_tokens=6, seed=2)
    assert other != pairs  # sampled, not greedy
