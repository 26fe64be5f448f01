"""genmodels.selfchat (Baize's self-chat, #22 d4): the filters (empty, looping, over-long: each counted, its
message dropped and its conversation cut there), batched decoding equal to one conversation at a time
(greedy, and sampled: each message has its own generator), the output read by the ``examples`` data kind,
the seeds read from text or examples JSONL, ``--out`` ownership (CLI refusals before the model loads), and
one short run of the real SmolLM2 (2 seeds, 2 turns, 16 tokens).

The mechanics run on a tiny random chat model; the scripted runs replace only the token choice
(``self_chat(choose=…)``, the decode session's seam) by a script that reads each row's prompt."""
from __future__ import annotations

import json

import pytest
import torch

import genmodels
from genmodels.cli import main
from genmodels.data.examples import read_records, tokenize_examples
from genmodels.generation.sampling import choose_next
from genmodels.selfchat import looping, self_chat, summary, turn_problem
from genmodels.selfchat_files import check_out, read_seeds, record_path, write_dialogues

from tests.helpers.tiny_chat import CHATML, tiny_chat_model

EOS = 2  # <|im_end|>
START = "<|im_start|>assistant\n"  # where the reply (assistant's or, roles swapped, the user's) begins


@pytest.fixture(scope="module")
def model():
    return tiny_chat_model(tokenizer="char", max_seq_len=1024)


def scripted(model):
    """A token choice that writes each message by its seed: ``LONG`` never ends, ``EMPTY`` ends at once,
    ``LOOP`` writes "abcd" three times, ``SAME`` repeats one text, any other seed writes "reply N." (N: the
    prompt's turn count, so messages differ)."""
    tok = model.tokenizer

    def choose(logits, seen, **kw):
        out = []
        for row in seen.tolist():
            text = tok.decode(row, skip_special_tokens=False)
            prompt, _, done = text.rpartition(START)
            want = ("x" * 1000 if "LONG" in prompt else "" if "EMPTY" in prompt else "abcd" * 3 if "LOOP" in prompt
                    else "same text" if "SAME" in prompt else f"reply {prompt.count('<|im_start|>')}.")
            out.append(tok.token_to_id(want[len(done)]) if len(done) < len(want) else EOS)
        return torch.tensor(out, dtype=torch.long)
    return choose


def run_script(model, seeds, **kw):
    # repetition_penalty makes the session hand each row's tokens (prompt + reply so far) to the choice
    return self_chat(model, seeds, turns=3, max_new_tokens=20, temperature=0.0, repetition_penalty=1.5,
                     choose=scripted(model), **kw)


def test_turn_problem_names_each_reason():
    assert turn_problem(" \n ", [5, 6], True, []) == "empty"
    assert turn_problem("abc", [5, 6, 7], False, []) == "over_long"
    assert turn_problem("abc", [1, 2, 3, 4] * 3, True, []) == "looping"
    assert turn_problem("Same  Text", [1, 2], True, ["seed", "same text"]) == "looping"  # equal to an earlier one
    assert turn_problem("fine", [1, 2, 3, 4, 1, 2, 3, 4, 9], True, ["seed"]) is None  # twice is not a loop
    assert looping([7] * 6) and not looping([7] * 5)  # 4-gram (7,7,7,7) three times needs 6 tokens


def test_each_filter_counts_and_drops_its_message(model):
    seeds = ["OK one", "EMPTY two", "LONG three", "LOOP four", "SAME five"]
    r = run_script(model, seeds, batch=2)
    c = r.counts
    assert (c["empty"], c["over_long"], c["looping"], c["context"]) == (1, 1, 2, 0)
    # OK: 3 replies (5 messages); EMPTY/LONG/LOOP: their first reply dropped, nothing left; SAME: the reply
    # kept, the user's next message (the same text) dropped as a loop, so it ends after one reply
    assert (c["kept"], c["dropped"], c["cut"], c["replies"]) == (2, 3, 1, 4)
    assert c["generated"] == 5 + 1 + 1 + 1 + 2
    ok, same = r.conversations
    assert [m["role"] for m in ok] == ["user", "assistant"] * 3 and ok[0]["content"] == "OK one"
    assert all(m["content"].startswith("reply ") for m in ok[1:])
    assert same == [{"role": "user", "content": "SAME five"}, {"role": "assistant", "content": "same text"}]
    line = summary(c)
    assert "2/5 conversations kept (1 cut short, 3 dropped)" in line
    assert "1 empty, 2 looping, 1 over-long" in line


def ends_sooner(bias: float):
    """Greedy or sampled choice with the end token raised, so random replies end within a few tokens."""
    def choose(logits, seen, **kw):
        logits = logits.clone()
        logits[:, EOS] += bias
        return choose_next(logits, seen, **kw)
    return choose


@pytest.mark.parametrize("sampling", [dict(temperature=0.0), dict(temperature=1.0, top_k=None, seed=3)])
def test_batched_equals_one_conversation_at_a_time(model, sampling):
    seeds = ["What is 2+2?", "Sort 3 1 2.", "Reverse abc.", "Hello there", "Count to five.", "Name a colour."]
    runs = [self_chat(model, seeds, turns=2, batch=b, max_new_tokens=12, choose=ends_sooner(2.5), **sampling)
            for b in (4, 1)]
    # a model in training mode decodes in eval mode (no dropout), and gets its mode back
    noisy = tiny_chat_model(tokenizer="char", max_seq_len=1024, dropout=0.5)
    evaluated = self_chat(noisy.eval(), seeds, turns=2, batch=4, max_new_tokens=12, choose=ends_sooner(2.5), **sampling)
    trained = self_chat(noisy.train(), seeds, turns=2, batch=4, max_new_tokens=12, choose=ends_sooner(2.5), **sampling)
    assert noisy.training and trained.conversations == evaluated.conversations
    assert runs[0].counts["replies"] >= 3  # something survives the filters, so the comparison means something
    assert runs[0].conversations == runs[1].conversations
    assert runs[0].counts == runs[1].counts


def test_the_output_is_read_by_the_examples_kind(model, tmp_path):
    r = run_script(model, ["OK one", "OK two"], batch=2)
    out = tmp_path / "chat.jsonl"
    tasks = tmp_path / "seen-train.messages.jsonl"  # --include: the recipe's task-set records follow, as they are
    task = {"messages": [{"role": "user", "content": "Reverse 'ab'."}, {"role": "assistant", "content": "ba"}]}
    tasks.write_text(json.dumps(task) + "\n")
    record = write_dialogues(out, r.conversations, {"counts": r.counts}, include=[tasks])
    records = read_records(out)  # the examples kind's reader: every line a valid messages record
    assert [rec.fields["messages"] for rec in records] == r.conversations + [task["messages"]]
    tokens = tokenize_examples(records, model.tokenizer, EOS, template=CHATML)
    assert len(tokens) == 3 and tokens.loss.sum() > 0  # loss on the assistant turns
    assert json.loads(record_path(out).read_text())["sha256"] == record["sha256"]


def test_seeds_from_text_or_examples_jsonl(tmp_path):
    text = tmp_path / "seeds.txt"
    text.write_text("First question?\n\n  Second one \n")
    assert read_seeds(text) == ["First question?", "Second one"]
    jsonl = tmp_path / "seen-train.messages.jsonl"
    jsonl.write_text(json.dumps({"messages": [{"role": "user", "content": "Reverse 'ab'."},
                                              {"role": "assistant", "content": "ba"}]}) + "\n"
                     + json.dumps({"prompt": "Sort 2 1\nAnswer:", "response": " 1 2"}) + "\n")
    assert read_seeds(jsonl) == ["Reverse 'ab'.", "Sort 2 1\nAnswer:"]
    (tmp_path / "empty.txt").write_text("\n \n")
    with pytest.raises(ValueError, match="empty.txt: no seed questions"):
        read_seeds(tmp_path / "empty.txt")


def test_only_its_own_output_is_replaced(tmp_path):
    out = tmp_path / "data.jsonl"
    convs = [[{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]]
    write_dialogues(out, convs, {})
    write_dialogues(out, convs + convs, {})  # ours, unchanged: replaced
    assert len(read_records(out)) == 2
    out.write_text(out.read_text() + "\n")  # changed since: never replaced
    with pytest.raises(FileExistsError, match="was changed since genmodels selfchat wrote it"):
        check_out(out)
    user = tmp_path / "mine.jsonl"
    user.write_text("{}\n")
    with pytest.raises(FileExistsError, match="did not write it"):
        check_out(user)
    record_path(user).write_text('{"api_key": 1}')  # a record that is not ours: never replaced either
    with pytest.raises(FileExistsError, match="mine.jsonl.selfchat.json exists and genmodels selfchat did not"):
        check_out(user)
    with pytest.raises(ValueError, match="no conversation survived the filters"):
        write_dialogues(tmp_path / "new.jsonl", [], {"counts": {}})
    assert not (tmp_path / "new.jsonl").exists()


def test_cli_refuses_another_out_before_the_model_loads(tmp_path, capsys):
    seeds = tmp_path / "seeds.txt"
    seeds.write_text("Hi?\n")
    user = tmp_path / "notes.jsonl"
    user.write_text("my notes\n")
    missing = tmp_path / "no-such-model.gguf"  # never read: the refusals come first
    for argv, expect in [([f"--out={user}"], "notes.jsonl exists and genmodels selfchat did not write it"),
                         ([f"--out={tmp_path / 'x.txt'}"], "give a .jsonl file name"),
                         ([f"--out={tmp_path / 'o.jsonl'}", "--turns=0"], "--turns 0: give at least 1"),
                         ([f"--out={tmp_path / 'o.jsonl'}", "--top-p=2"], "--top-p"),
                         ([f"--out={tmp_path / 'o.jsonl'}", "--threads=0"], "--threads 0: give at least 1"),
                         ([f"--out={tmp_path / 'o.jsonl'}", f"--include={user}"], "notes.jsonl, line 1: invalid JSON")]:
        argv = ["selfchat", str(missing), "--seeds", str(seeds), "--turns", "1", *argv]
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and expect in err and err.count("\n") == 1
    assert user.read_text() == "my notes\n"


def test_smollm2_writes_a_short_dialogue(smollm2):
    seeds = ["Reply with one word: what colour is the sky on a clear day?", "What is 2 + 3? Reply with the number."]
    r = self_chat(smollm2, seeds, turns=2, batch=2, max_new_tokens=16, temperature=0.0)
    c = r.counts
    assert 2 <= c["generated"] <= 6  # 2 conversations, 3 generated messages each at most
    assert c["empty"] + c["looping"] + c["over_long"] + c["context"] <= 2  # one per conversation at most
    assert c["kept"] + c["dropped"] == 2 and c["kept"] >= 1
    for conv in r.conversations:
        assert conv[0]["content"] in seeds and [m["role"] for m in conv] == ["user", "assistant"] * (len(conv) // 2)
        # the assistant's first reply is the model's chat reply (greedy)
        assert conv[1]["content"] == genmodels.chat(smollm2, conv[:1], max_new_tokens=16).strip()


@pytest.mark.parametrize("native", ["1", "0"])
def test_a_model_still_trains_after_self_chat(native, monkeypatch):
    monkeypatch.setenv("GENMODELS_NATIVE", native)  # "0": the PyTorch path, with the column-major decode layout
    m = tiny_chat_model(tokenizer="char", max_seq_len=1024).train()
    self_chat(m, ["Hello there", "Sort 3 1 2."], turns=2, batch=2, max_new_tokens=16, choose=ends_sooner(1.0))
    assert m.training and all(p.is_contiguous() and not p.is_inference() for p in m.parameters())
    m(torch.tensor([[5, 6, 7, 8]])).sum().backward()
    assert all(p.grad is not None for p in m.parameters())
