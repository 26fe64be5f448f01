"""The task set (issue 22, genmodels.data.tasks): every answer right (checked here by an independent
oracle; code tracing by running the snippet), instances distinct and never in two splits, unseen tasks
in no training split, the default set frozen at the checksum docs/tasks.md states, scoring's
normalisation; the files `genmodels tasks` writes (read by the examples reader, manifest SHA-256s,
only our own files replaced); `genmodels eval-tasks` / genmodels.eval_tasks on a tiny random model
(batched replies equal one-by-one ones; a model answering right scores 1.0) and on the real SmolLM2."""
from __future__ import annotations

import contextlib
import datetime
import io
import json
import re
from pathlib import Path

import pytest
import torch

import genmodels
from genmodels.cli import main
from genmodels.data.examples import read_records
from genmodels.data.task_files import read_taskset, write_taskset
from genmodels.data.task_kinds import KINDS
from genmodels.data.tasks import (SEEN_TASKS, SPLITS, TASKSET_VERSION, UNSEEN_TASKS, build_taskset, checksum,
                                  exact_match, normalize)

from tests.helpers.tiny_chat import tiny_chat_model

DOCS = Path(__file__).resolve().parents[2] / "docs" / "tasks.md"


@pytest.fixture(scope="module")
def default_set():
    return build_taskset()


def _nums(text: str) -> list[int]:
    return [int(x) for x in text.split(", ")]


def _date(s: str) -> datetime.date:
    return datetime.date.fromisoformat(s)


def _printed(code: str) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(code, {})  # our own generated snippet, run only here to check the generator's answer
    return out.getvalue().strip()


ORACLE = {  # task -> values -> the answer, computed independently of task_kinds.py
    "reverse_word": lambda v: "".join(reversed(v["word"])),
    "reverse_list": lambda v: ", ".join(reversed(v["items"].split(", "))),
    "uppercase": lambda v: v["text"].upper(),
    "first_letter": lambda v: v["word"][:1],
    "last_letter": lambda v: v["word"][-1:],
    "word_length": lambda v: str(len(v["word"])),
    "caesar": lambda v: v["word"].translate(str.maketrans(
        "abcdefghijklmnopqrstuvwxyz", "abcdefghijklmnopqrstuvwxyz"[v["k"]:] + "abcdefghijklmnopqrstuvwxyz"[:v["k"]])),
    "count_letter": lambda v: str(sum(c == v["letter"] for c in v["word"])),
    "count_items": lambda v: str(v["items"].count(",") + 1),
    "sort_numbers": lambda v: ", ".join(map(str, sorted(_nums(v["items"])))),
    "sort_descending": lambda v: ", ".join(map(str, sorted(_nums(v["items"]))[::-1])),
    "sort_words": lambda v: ", ".join(sorted(v["items"].split(", "))),
    "max_list": lambda v: str(max(_nums(v["items"]))),
    "min_list": lambda v: str(min(_nums(v["items"]))),
    "add": lambda v: str(v["a"] + v["b"]),
    "subtract": lambda v: str(v["a"] - v["b"]),
    "multiply": lambda v: str(v["a"] * v["b"]),
    "km_to_m": lambda v: str(v["n"] * 1000),
    "kg_to_g": lambda v: str(v["n"] * 1000),
    "hours_to_minutes": lambda v: str(v["n"] * 60),
    "m_to_cm": lambda v: str(v["n"] * 100),
    "date_add_days": lambda v: str(_date(v["date"]) + datetime.timedelta(days=v["n"])),
    "date_subtract_days": lambda v: str(_date(v["date"]) - datetime.timedelta(days=v["n"])),
    "weekday": lambda v: ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday",
                          "Sunday")[_date(v["date"]).weekday()],
    "code_trace": lambda v: _printed(v["code"]),
}


def test_every_answer_is_right_by_an_independent_oracle(default_set):
    assert set(ORACLE) == set(SEEN_TASKS) | set(UNSEEN_TASKS) == set(KINDS)
    wrong = [(r.id, r.values, r.answer) for r in default_set if ORACLE[r.task](r.values) != r.answer]
    assert not wrong, wrong[:5]
    for r in default_set:  # the question is its template filled with the values
        assert r.question == KINDS[r.task].templates[r.template].format(**r.values)


def test_tasks_have_three_phrasings_each_used(default_set):
    for task, kind in KINDS.items():
        assert len(kind.templates) >= 3 and len(set(kind.templates)) == len(kind.templates), task
        used = {r.template for r in default_set if r.task == task}
        assert used == set(range(len(kind.templates))), task


def test_splits_by_instance_and_by_task(default_set):
    assert not set(SEEN_TASKS) & set(UNSEEN_TASKS)
    counts = {s: sum(r.split == s for r in default_set) for s in SPLITS}
    assert counts == {"seen-train": 80 * len(SEEN_TASKS), "seen-val": 10 * len(SEEN_TASKS),
                      "seen-test": 10 * len(SEEN_TASKS), "unseen": 20 * len(UNSEEN_TASKS)}
    assert {r.task for r in default_set if r.split.startswith("seen")} == set(SEEN_TASKS)
    assert {r.task for r in default_set if r.split == "unseen"} == set(UNSEEN_TASKS)
    keys = [(r.task, json.dumps(r.values, sort_keys=True)) for r in default_set]
    assert len(set(keys)) == len(keys)  # an instance is in one split only, whatever its phrasing
    assert len({r.id for r in default_set}) == len(default_set)


def test_the_default_set_is_frozen_at_the_documented_checksum(default_set):
    m = re.search(r"version (\d+), seed 0, per task 100: checksum `([0-9a-f]{64})`", DOCS.read_text())
    assert m is not None, f"{DOCS} must state the default set's checksum"
    assert (int(m.group(1)), checksum(default_set)) == (TASKSET_VERSION, m.group(2)), \
        "the task generator changed: bump TASKSET_VERSION and write the new checksum in docs/tasks.md"


def test_the_seed_decides_the_set():
    a, b, c = build_taskset(0, 10), build_taskset(0, 10), build_taskset(1, 10)
    assert checksum(a) == checksum(b) != checksum(c)
    assert [r.meta() for r in a] == [r.meta() for r in b]


@pytest.mark.parametrize("seed, per_task, flag", [(-1, 100, "--seed"), (0, 5, "--per-task"),
                                                  (0, 300, "--per-task 300: task reverse_word has only about 200")])
def test_bad_sizes_are_refused_naming_the_flag(seed, per_task, flag):
    with pytest.raises(ValueError, match=re.escape(flag)):
        build_taskset(seed, per_task)


@pytest.mark.parametrize("reply, answer, right", [
    ("  Paris. ", "paris", True), ("A\n  b", "a b", True), ("12", "12", True), ("12.", "12", True),
    ("12.0", "12", False), ("1,2", "1, 2", False), ("The answer is 12", "12", False), ("", "0", False),
    ("SUNDAY", "Sunday", True), ("2021-07-04", "2021-07-04.", True), ("x..", "x", False)])
def test_exact_match_after_normalisation(reply, answer, right):
    assert exact_match(reply, answer) is right
    assert normalize(" A  B. ") == "a b"


def test_the_report_scores_per_task_and_counts_answers_inside_sentences(default_set):
    from genmodels.task_eval import score_replies
    add = [r for r in default_set if r.task == "add"][:2]
    week = [r for r in default_set if r.task == "weekday"][:1]
    replies = [f" {add[0].answer}. ", f"The sum is {add[1].answer}.", "Never."]
    report = score_replies(add + week, replies)
    assert [r["correct"] for r in report["replies"]] == [True, False, False]
    assert report["tasks"] == {"add": {"n": 2, "correct": 1, "exact_match": 0.5},
                               "weekday": {"n": 1, "correct": 0, "exact_match": 0.0}}
    assert (report["exact_match"], report["macro_exact_match"], report["contains"]) == (1 / 3, 0.25, 2 / 3)


# ---- files -------------------------------------------------------------------------------------------
def test_written_files_are_examples_with_meta_and_a_manifest(tmp_path):
    out = tmp_path / "tasks"
    manifest = write_taskset(out, seed=0, per_task=10)
    records = build_taskset(0, 10)
    assert manifest["checksum"] == checksum(records) and manifest["version"] == TASKSET_VERSION
    for split in SPLITS:
        rows = [r for r in records if r.split == split]
        prompt = read_records(out / f"{split}.prompt.jsonl")  # H2's reader takes both forms as they are
        messages = read_records(out / f"{split}.messages.jsonl")
        assert [p.fields for p in prompt] == [r.prompt_form() for r in rows]
        assert [m.fields["messages"][1]["content"] for m in messages] == [r.answer for r in rows]
        assert manifest["counts"][split] == len(rows)
        assert [r.meta() for r in read_taskset(out, split)] == [r.meta() for r in rows]
    saved = json.loads((out / "manifest.json").read_text())
    assert saved == manifest and len(saved["files"]) == 3 * len(SPLITS)
    from genmodels.files import file_sha256
    assert all(file_sha256(out / name) == sha for name, sha in saved["files"].items())


def test_only_files_genmodels_tasks_wrote_are_replaced(tmp_path, capsys):
    out = tmp_path / "tasks"
    write_taskset(out, per_task=10)
    (out / "notes.txt").write_text("mine")
    write_taskset(out, seed=1, per_task=10)  # our own files: replaced; others untouched
    assert (out / "notes.txt").read_text() == "mine"
    assert json.loads((out / "manifest.json").read_text())["seed"] == 1
    (out / "unseen.meta.jsonl").write_text("edited\n")
    before = (out / "seen-train.prompt.jsonl").read_bytes()
    assert main(["tasks", "--out", str(out), "--per-task", "10"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "unseen.meta.jsonl was changed since genmodels tasks wrote it" in err
    assert (out / "seen-train.prompt.jsonl").read_bytes() == before  # refused before anything was written

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "seen-val.prompt.jsonl").write_text("{}\n")
    with pytest.raises(FileExistsError, match="seen-val.prompt.jsonl exists and genmodels tasks did not write it"):
        write_taskset(foreign, per_task=10)
    (foreign / "seen-val.prompt.jsonl").unlink()
    (foreign / "manifest.json").write_text('{"api_key": 1}')
    with pytest.raises(FileExistsError, match="manifest.json exists and is not a task-set manifest"):
        write_taskset(foreign, per_task=10)
    assert sorted(p.name for p in foreign.iterdir()) == ["manifest.json"]
    (tmp_path / "file").write_text("x")
    assert main(["tasks", "--out", str(tmp_path / "file"), "--per-task", "10"]) == 2
    assert "is a file" in capsys.readouterr().err


# ---- evaluation ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny():
    return tiny_chat_model(tokenizer="char", max_seq_len=512)


@pytest.mark.parametrize("form", ["messages", "prompt"])
def test_batched_replies_equal_one_by_one(tiny, default_set, form):
    records = [r for r in default_set if r.split == "unseen"][::7]  # 18 records of every unseen task
    batched = genmodels.eval_tasks(tiny, records, batch=5, max_new_tokens=6, form=form)
    single = genmodels.eval_tasks(tiny, records, batch=1, max_new_tokens=6, form=form)
    assert [r["reply"] for r in batched["replies"]] == [r["reply"] for r in single["replies"]]
    assert [r["id"] for r in batched["replies"]] == [r.id for r in records]  # in the order given
    assert batched["records"] == len(records) and set(batched["tasks"]) == set(UNSEEN_TASKS)
    assert batched["contains"] >= batched["exact_match"]
    first = records[0]
    if form == "messages":  # rendered and stopped as a chat's first turn
        reply = genmodels.chat(tiny, [{"role": "user", "content": first.question}], max_new_tokens=6)
    else:  # the prompt form's text as the examples kind encodes it, cut at the end token or a newline
        ids = tiny.tokenizer.encode(first.prompt_form()["prompt"], add_special_tokens=False).ids
        new = genmodels.generate(tiny, torch.tensor([ids]), 6, stop="\n")[0, len(ids):].tolist()
        new = new[:new.index(2)] if 2 in new else new
        reply = tiny.tokenizer.decode(new).split("\n")[0]
    assert batched["replies"][0]["reply"] == reply


@pytest.mark.parametrize("form", ["messages", "prompt"])
def test_a_model_answering_right_scores_one_and_the_reply_ends_at_the_end(tiny, default_set, monkeypatch, form):
    records = [r for r in default_set if r.split == "seen-test"][::10]
    tok = tiny.tokenizer
    by_prompt = {}
    for r in records:
        text = (genmodels.apply_chat_template(tiny, [{"role": "user", "content": r.question}])
                if form == "messages" else r.prompt_form()["prompt"])
        by_prompt[tuple(tok.encode(text, add_special_tokens=False).ids)] = r.answer
    end = [2] if form == "messages" else tok.encode("\nz", add_special_tokens=False).ids  # <|im_end|> | newline
    calls = []

    def answering(model, ids, n, attention_mask=None, eos_token_id=None, pad_token_id=None, stop=None):
        calls.append(ids.shape[0])
        rows = []
        for row, mask in zip(ids, attention_mask):
            answer = by_prompt[tuple(row[mask.bool()].tolist())]  # the left padding is masked out
            rows.append(tok.encode(answer + ".", add_special_tokens=False).ids + end + [5, 6] + [pad_token_id] * n)
        new = torch.tensor([r[:n] for r in rows])
        return torch.cat([ids, new], dim=1)

    monkeypatch.setattr("genmodels.task_eval.generate", answering)
    report = genmodels.eval_tasks(tiny, records, batch=4, form=form)
    assert report["exact_match"] == report["contains"] == 1.0 and report["correct"] == len(records)
    assert all(t["exact_match"] == 1.0 for t in report["tasks"].values())
    assert [r["reply"] for r in report["replies"]] == [r.answer + "." for r in records]  # cut at the end
    assert calls == [4] * (len(records) // 4) + ([len(records) % 4] if len(records) % 4 else [])


def test_cli_eval_tasks_prints_per_task_and_writes_the_report(tiny, tmp_path, capsys):
    folder = tmp_path / "model"
    genmodels.save(tiny, folder)
    report = tmp_path / "report.json"
    argv = ["eval-tasks", str(folder), "--split", "unseen", "--limit", "1", "--batch", "4",
            "--max-new-tokens", "4", "--out", str(report)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    for task in UNSEEN_TASKS:
        assert re.search(rf"^{task} +\d+/1 +\d\.\d{{3}}$", out, re.M), out
    assert re.search(r"^overall +\d+/6 ", out, re.M)
    saved = json.loads(report.read_text())
    assert saved["format"] == "genmodels-eval-tasks" and saved["records"] == 6 and len(saved["replies"]) == 6
    assert main(argv) == 0  # its own report is replaced


@pytest.mark.parametrize("args, words", [
    (["--out", "{tmp}/notes.json"], "exists and is not an eval-tasks report"),
    (["--out", "{tmp}/r.txt"], "--out {tmp}/r.txt: give a .json file name"),
    (["--tasks", "{tmp}"], "manifest.json: no task set there"),
    (["--batch", "0"], "--batch 0: give at least 1"),
    (["--limit", "0"], "--split unseen: no records")])
def test_cli_eval_tasks_refusals_come_before_the_model_loads(tmp_path, capsys, args, words):
    (tmp_path / "notes.json").write_text('{"mine": 1}')
    argv = ["eval-tasks", str(tmp_path / "no-such-model"), "--split", "unseen"]
    assert main(argv + [a.format(tmp=tmp_path) for a in args]) == 2
    err = capsys.readouterr().err.strip()
    assert err == err.splitlines()[0] and err.startswith("error: ") and words.format(tmp=tmp_path) in err, err
    assert (tmp_path / "notes.json").read_text() == '{"mine": 1}'


def test_real_smollm2_replies_as_its_chat_does(smollm2, default_set):
    records = [r for r in default_set if r.task in ("add", "weekday") and r.split == "seen-test"][:2]
    report = genmodels.eval_tasks(smollm2, records, batch=2, max_new_tokens=8)
    for row, r in zip(report["replies"], records):
        assert row["reply"] == genmodels.chat(smollm2, [{"role": "user", "content": r.question}], max_new_tokens=8)
        assert row["reply"].strip()  # a real model says something
    assert report["records"] == 2 and 0.0 <= report["exact_match"] <= 1.0
