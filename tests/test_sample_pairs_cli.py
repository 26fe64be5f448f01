"""Self-distillation with feedback's data (issue 23 d5): sampled replies ranked by a judge (the checker, a critic),
the best reply kept as SFT examples, and `genmodels sample-pairs` (writes pairs or examples the kinds read, never
replaces a file it did not write, each bad input refused in one line before any model loads)."""
from __future__ import annotations

import json

import pytest
import torch

import genmodels
import genmodels.critic as critic
import genmodels.sampled_pairs as sp
from genmodels.cli import main
from genmodels.data import train_bpe_tokenizer
from genmodels.data.examples import read_records
from genmodels.data.pairs import read_pairs
from genmodels.data.task_files import write_taskset
from genmodels.data.tasks import build_taskset

RECORDS = [r for r in build_taskset(seed=0, per_task=10) if r.split == "seen-train" and r.task == "add"][:3]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    text = " ".join(critic.critic_prompt(r.question, r.answer) for r in build_taskset(seed=0, per_task=10))
    tok = train_bpe_tokenizer([text] * 2, 300)
    torch.manual_seed(0)
    m = genmodels.build_model(genmodels.preset("llama-tiny", vocab_size=tok.get_vocab_size(), d_model=32, n_layers=1,
                                               n_heads=2, n_kv_heads=1, d_ff=64, head_dim=16, max_seq_len=256))
    return genmodels.save(m, tmp_path_factory.mktemp("sdf") / "m", tok)


def given(monkeypatch, replies):
    monkeypatch.setattr(sp, "_replies", lambda *args, **kw: replies)


def test_a_judge_ranks_the_replies_and_none_ranks_nowhere(model_dir, monkeypatch):
    model, a = genmodels.load(model_dir), [r.answer for r in RECORDS]
    given(monkeypatch, ["7x", a[0], "8y", "", "no", "", "nope", "", a[2], "5", "", ""])
    backwards = lambda records, replies: [None if x == "8y" else x != r.answer for r, x in zip(records, replies)]
    pairs, info = sp.sampled_pairs(model, RECORDS, n=4, judge=backwards)
    assert [(p["chosen"], p["rejected"]) for p in pairs] == [("7x", a[0]), ("5", a[2])]
    assert info == {"sampled right and wrong": 2, "no pair (all right)": 1}
    best, info = sp.sampled_best(model, RECORDS, n=4)  # the checker: first right reply, else the true answer
    assert [e["messages"][1]["content"] for e in best] == [a[0], a[1], a[2]]
    assert info == {"sampled right": 2, "gold (none sampled right)": 1}
    best, _ = sp.sampled_best(model, RECORDS, n=4, gold=False, form="prompt")
    assert best == [{"prompt": RECORDS[0].prompt_form()["prompt"], "response": f" {a[0]}"},
                    {"prompt": RECORDS[2].prompt_form()["prompt"], "response": f" {a[2]}"}]


def test_a_critic_judges_by_its_verdicts(model_dir, monkeypatch):
    model = genmodels.load(model_dir)
    monkeypatch.setattr(critic, "_replies", lambda *args, **kw: ["Verdict: correct.", "Verdict: wrong.", "hmm"])
    judge = critic.critic_judge(model, batch=2)
    assert judge(RECORDS, ["1", "2", "3"]) == [True, False, None]


def test_sample_pairs_writes_pairs_and_examples_the_kinds_read(model_dir, tmp_path, capsys):
    write_taskset(tmp_path / "tasks", seed=0, per_task=10)
    base = ["sample-pairs", str(model_dir), "--tasks", str(tmp_path / "tasks"), "--limit", "1", "--n", "2",
            "--max-new-tokens", "4", "--threads", "1"]
    assert main(base + ["--out", str(tmp_path / "p.jsonl")]) == 0  # an untrained model: gold against its replies
    assert "pairs" in capsys.readouterr().out and read_pairs(tmp_path / "p.jsonl")
    record = json.loads((tmp_path / "p.jsonl.sample-pairs.json").read_text())
    assert record["format"] == "genmodels-sample-pairs" and record["judge"] == "checker"
    assert main(base + ["--out", str(tmp_path / "p.jsonl"), "--seed", "1"]) == 0  # ours: replaced
    assert main(base + ["--out", str(tmp_path / "b.jsonl"), "--best", "--critic", str(model_dir)]) == 0
    assert [r.fields["messages"][1]["role"] for r in read_records(tmp_path / "b.jsonl")] == ["assistant"] * 19


def test_sample_pairs_refuses_in_one_line(model_dir, tmp_path, capsys):
    write_taskset(tmp_path / "tasks", seed=0, per_task=10)
    foreign = tmp_path / "x.jsonl"
    foreign.write_text("{}\n")
    base = ["sample-pairs", str(model_dir), "--tasks", str(tmp_path / "tasks")]
    out = ["--out", str(tmp_path / "o.jsonl")]
    for bad in (["--n", "0"], ["--batch", "0"], ["--max-new-tokens", "0"], ["--threads", "0"], ["--temperature", "0"],
                ["--top-p", "1.5"], ["--n", "1", "--no-gold"], ["--limit", "0"], ["--out", str(foreign)],
                ["--out", str(tmp_path / "o.txt")], ["--out", str(tmp_path / "no" / "o.jsonl")]):
        argv = base + (bad if "--out" in bad else out + bad)
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1, (argv, err)
    assert main(base + out + ["--tasks", str(tmp_path / "none")]) == 2
    assert foreign.read_text() == "{}\n" and not (tmp_path / "o.jsonl").exists()
