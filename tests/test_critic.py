"""The Shepherd-style critic (issue 23 d4): triples from the task set whose verdicts are the checker's, their
critique stating the right answer before the verdict, verdicts and stated answers parsed, agreement with the
checker (a fake critic that always judges right agrees fully; one that copies the given answer is counted as
copying; a tiny random model runs end to end), and critique-data's file rules and CLI refusals."""
from __future__ import annotations

import json

import pytest
import torch

import genmodels
import genmodels.critic as critic
from genmodels.cli import main
from genmodels.data import train_bpe_tokenizer
from genmodels.data.examples import read_records
from genmodels.data.task_files import write_taskset
from genmodels.data.tasks import build_taskset, exact_match

RECORDS = [r for r in build_taskset(seed=0, per_task=10) if r.split == "seen-train"]
FEW = [r for r in RECORDS if r.task in ("add", "reverse_word")][:4]


@pytest.mark.parametrize("text, verdict", [
    ("Verdict: correct. 5 answers the question.", True), ("verdict: WRONG. The answer is 5.", False),
    ("The right answer is 5. Verdict: correct.", True), ("The right answer is 5, not 6. Verdict: wrong.", False),
    ("The right answer is a, b, not c. Verdict: wrong.", False), ("The right answer is 5.", None),
    ("Verdict: incorrect, it is 4", False), ("Verdict: right", True), ("**Verdict:** wrong", False),
    ("Verdict: **wrong**", False), ("The answer looks correct.", None), ("", None),
    ("Verdict: correctly guessed", None), ("The answer is incorrect. 17 + 25 equals 32.", False),
    ("The correct answer is 42.", None), ("This is not correct", False), ("It is right. Verdict: wrong", False), ("I think so. Verdict: wrong. Verdict: correct.", False)])
def test_verdicts_parse(text, verdict):
    assert critic.parse_verdict(text) is verdict


@pytest.mark.parametrize("text, stated", [
    ("The right answer is 5. Verdict: correct.", "5"), ("The right answer is 63, not 464. Verdict: wrong.", "63"),
    ("the right answer is 1, 4, 18, not 1, 4. Verdict: wrong.", "1, 4, 18"),
    ("The right answer is Tuesday\nVerdict: correct", "Tuesday"), ("The right answer is lraep", "lraep"),
    ("Verdict: wrong. The answer is 5.", None), ("The right answer is . Verdict: wrong.", None), ("", None)])
def test_the_stated_right_answer_is_read(text, stated):
    assert critic.stated_answer(text) == stated


def test_the_critique_states_the_right_answer_before_the_verdict():
    assert critic.critique_text("63", "63") == "The right answer is 63. Verdict: correct."
    assert critic.critique_text("464", "63") == "The right answer is 63, not 464. Verdict: wrong."
    for row in critic.triples(RECORDS, seed=0):
        text = row["critique"]
        assert text.index(row["right_answer"]) < text.index("Verdict:")
        assert critic.stated_answer(text) == row["right_answer"]


def test_the_triples_verdicts_are_the_checkers_half_right_half_wrong():
    rows = critic.triples(RECORDS, seed=0)
    answers = {r.id: r.answer for r in RECORDS}
    assert len(rows) == 2 * len(RECORDS) and sum(r["correct"] for r in rows) == len(RECORDS)
    for row in rows:
        right = exact_match(row["answer"], answers[row["id"]])
        assert row["correct"] is right and critic.parse_verdict(row["critique"]) is right
        if not right:  # a wrong answer's critique names the right one, then the one it judges
            assert row["critique"] == f"The right answer is {answers[row['id']]}, not {row['answer']}. Verdict: wrong."
    assert rows == critic.triples(RECORDS, seed=0) and rows != critic.triples(RECORDS, seed=1)
    example = critic.critic_messages(rows[0])["messages"]
    assert rows[0]["question"] in example[0]["content"] and rows[0]["answer"] in example[0]["content"]
    assert example[1] == {"role": "assistant", "content": rows[0]["critique"]}


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    text = " ".join(critic.critic_prompt(r.question, r.answer) for r in FEW)
    tok = train_bpe_tokenizer([text] * 2, 300)
    torch.manual_seed(0)
    m = genmodels.build_model(genmodels.preset("llama-tiny", vocab_size=tok.get_vocab_size(), d_model=32, n_layers=1,
                                               n_heads=2, n_kv_heads=1, d_ff=64, head_dim=16, max_seq_len=256))
    return genmodels.load(genmodels.save(m, tmp_path_factory.mktemp("critic") / "m", tok))


@pytest.mark.parametrize("writes, expected, unparsable", [
    ("truth", 1.0, 0), ("always correct", 0.5, 0), ("nothing", 0.0, 8)])
def test_agreement_counts_verdicts_against_the_checker(model, monkeypatch, writes, expected, unparsable):
    rows = critic.triples(FEW, seed=0)
    texts = {"truth": [r["critique"] for r in rows], "always correct": ["Verdict: correct."] * len(rows),
             "nothing": ["I cannot tell."] * len(rows)}[writes]
    monkeypatch.setattr(critic, "_replies", lambda *args, **kw: texts)
    report = critic.agreement(model, FEW, batch=3)
    assert (report["pairs"], report["right_answers"]) == (8, 4)
    assert report["agreement"] == expected and report["unparsable"] == unparsable


@pytest.mark.parametrize("writes, counts", [
    ("truth", {"separated": 4, "same": 0, "solved": 8, "copied": 0}),
    ("copy", {"separated": 0, "same": 4, "solved": 4, "copied": 4}),
    ("verdict first", {"separated": 4, "same": 0, "solved": 0, "copied": 0})])
def test_agreement_counts_separation_solving_and_copying(model, monkeypatch, writes, counts):
    rows = critic.triples(FEW, seed=0)
    texts = {"truth": [r["critique"] for r in rows],
             "copy": [f"The right answer is {r['answer']}. Verdict: correct." for r in rows],
             "verdict first": [f"Verdict: {'correct' if r['correct'] else 'wrong'}." for r in rows]}[writes]
    monkeypatch.setattr(critic, "_replies", lambda *args, **kw: texts)
    report = critic.agreement(model, FEW, batch=3)
    assert {k: report[k] for k in counts} == counts and report["questions"] == 4
    assert [r["stated"] for r in report["rows"]] == [critic.stated_answer(t) for t in texts]


def test_the_cli_prints_separation_and_copies_with_the_critics_budget(model, tmp_path, monkeypatch, capsys):
    from genmodels.cli_critic import CRITIQUE_TOKENS
    assert CRITIQUE_TOKENS == critic.DEFAULT_MAX_NEW_TOKENS
    write_taskset(tmp_path / "tasks", seed=0, per_task=10)
    path = genmodels.save(model, tmp_path / "m", model.tokenizer)
    seen = {}

    def copies(model, rows, batch, max_new_tokens, say=None):
        seen["budget"] = max_new_tokens
        return [f"The right answer is {r['answer']}. Verdict: correct." for r in rows]
    monkeypatch.setattr(critic, "critiques", copies)
    assert main(["critic-agreement", str(path), "--tasks", str(tmp_path / "tasks"), "--split", "seen-train",
                 "--limit", "2"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert seen["budget"] == CRITIQUE_TOKENS and out[0].endswith("0 verdicts unreadable)")
    n = int(out[0].split("/")[1].split(" ")[0]) // 2  # questions: a right and a wrong answer each
    assert out[1] == (f"separates right from wrong in 0/{n} questions (same verdict for both in {n}); "
                      f"right answer stated {n}/{2 * n}; wrong answers copied as the right one {n}/{n}")


def test_a_tiny_model_critiques_and_is_scored(model):
    report = critic.agreement(model, FEW, batch=3, max_new_tokens=4)
    assert report["pairs"] == 8 and 0.0 <= report["agreement"] <= 1.0
    assert report["agree"] + report["unparsable"] <= 8 and len(report["rows"]) == 8
    one = critic.critique(model, FEW[0].question, FEW[0].answer, max_new_tokens=4)
    assert isinstance(one, str) and critic.parse_verdict(one) in (True, False, None)
    with pytest.raises(ValueError, match="batch=0"):
        critic.agreement(model, FEW, batch=0)


def test_critique_data_writes_its_own_file_and_refuses_others(tmp_path):
    out = tmp_path / "c.jsonl"
    record = critic.write_critique_data(FEW, out, seed=0)
    assert record["triples"] == 8 and record["right"] == 4
    examples = [r.fields for r in read_records(out)]  # the examples kind reads it
    assert [e["messages"][1]["content"] for e in examples] == [r["critique"] for r in critic.triples(FEW, 0)]
    critic.write_critique_data(FEW, out, seed=1)  # ours: replaced
    out.write_text(out.read_text() + "\n")
    with pytest.raises(FileExistsError, match="changed since genmodels critique-data wrote it"):
        critic.write_critique_data(FEW, out)
    foreign = tmp_path / "mine.jsonl"
    foreign.write_text("keep me\n")
    with pytest.raises(FileExistsError, match="genmodels critique-data did not write it"):
        critic.write_critique_data(FEW, foreign)
    assert foreign.read_text() == "keep me\n"


def test_cli_writes_and_refuses_in_one_line(tmp_path, capsys):
    write_taskset(tmp_path / "tasks", seed=0, per_task=10)
    out = tmp_path / "c.jsonl"
    assert main(["critique-data", "--tasks", str(tmp_path / "tasks"), "--out", str(out), "--limit", "2"]) == 0
    assert "triples" in capsys.readouterr().out and out.exists()
    foreign = tmp_path / "x.jsonl"
    foreign.write_text("{}\n")
    for argv in (["critique-data", "--tasks", str(tmp_path / "tasks"), "--out", str(foreign)],
                 ["critique-data", "--tasks", str(tmp_path / "none"), "--out", str(tmp_path / "n.jsonl")],
                 ["critique-data", "--tasks", str(tmp_path / "tasks"), "--out", str(tmp_path / "n.txt")],
                 ["critic-agreement", str(tmp_path / "m"), "--tasks", str(tmp_path / "tasks"), "--batch", "0"],
                 ["critic-agreement", str(tmp_path / "m"), "--tasks", str(tmp_path / "tasks"), "--limit", "0"]):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1, err
    assert foreign.read_text() == "{}\n" and json.loads(out.read_text().splitlines()[0])["messages"]
