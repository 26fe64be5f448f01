"""The `examples` data kind: JSONL records → segments with loss flags → tokens (cached by content) → packed
rows with segment ids, positions restarting per example and shifted, masked labels."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from genmodels.data import BatchSampler, eos_id, train_bpe_tokenizer
from genmodels.data.chat_template import PLAIN_TEMPLATE, render
from genmodels.data.example_cache import cached_examples, examples_cache_path, prepare_examples
from genmodels.data.example_pack import IGNORE_INDEX, PackedExamples, pack_rows
from genmodels.data.examples import ExampleError, read_records, record_segments, tokenize_examples

CHAT = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"}, {"role": "user", "content": "again"},
        {"role": "assistant", "content": "hello again"}]
RECORDS = [{"text": "def f(x): return x"}, {"prompt": "Q: two plus two?", "response": " A: four"},
           {"messages": CHAT}]
# a model's own template (ChatML-like): it writes its own end-of-turn mark, so no EOS is appended
CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


@pytest.fixture(scope="module")
def tok():
    docs = ["def f(x): return x\n", "Q: two plus two? A: four\n", "User: hi\n\nAssistant: hello again\n\n",
            "System: be brief\n\n"] * 30
    return train_bpe_tokenizer(docs, 300, special_tokens=("<|endoftext|>", "<|pad|>", "<|im_start|>", "<|im_end|>"))


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def decode(tok, ids):
    return tok.decode([int(i) for i in ids], skip_special_tokens=False)


def trained_text(tok, data, i):
    tokens, loss = data.example(i)
    return decode(tok, tokens[loss.astype(bool)]), decode(tok, tokens)


def test_each_form_puts_the_loss_where_the_record_says(tmp_path, tok):
    data = tokenize_examples(read_records(write_jsonl(tmp_path / "ex.jsonl", RECORDS)), tok, eos_id(tok))
    eos = "<|endoftext|>"
    assert trained_text(tok, data, 0) == ("def f(x): return x" + eos,) * 2
    assert trained_text(tok, data, 1) == (" A: four" + eos, "Q: two plus two? A: four" + eos)
    loss_text, full = trained_text(tok, data, 2)
    assert full == render(PLAIN_TEMPLATE, CHAT) + eos  # the plain template, as chat renders it
    assert loss_text == " hello\n\n hello again\n\n" + eos  # the assistant turns (after "Assistant:") only
    assert data.lines.tolist() == [1, 2, 3]


def test_a_models_own_template_renders_messages_without_an_added_eos(tmp_path, tok):
    records = read_records(write_jsonl(tmp_path / "ex.jsonl", [{"messages": CHAT}]))
    data = tokenize_examples(records, tok, eos_id(tok), template=CHATML)
    loss_text, full = trained_text(tok, data, 0)
    assert full == render(CHATML, CHAT)
    assert loss_text == "hello<|im_end|>\nhello again<|im_end|>\n"
    assert "<|im_end|>" in tok.get_vocab() and int(data.tokens[-2]) == tok.token_to_id("<|im_end|>")


def test_a_template_that_rewrites_earlier_turns_is_refused(tmp_path, tok):
    path = write_jsonl(tmp_path / "ex.jsonl", [{"messages": CHAT}])
    upper = "{% for m in messages %}{{ m['content'] if loop.last else m['content'] | upper }}|{% endfor %}"
    with pytest.raises(ExampleError, match=r"ex\.jsonl, line 1: the chat template does not render messages\[:2\]"):
        record_segments(read_records(path)[0], upper)


BAD = [
    ('{"text": "a"', "invalid JSON"),
    ('["text"]', "expected a JSON object"),
    ('{"prompt": "a"}', r"missing \['response'\]"),
    ('{"text": "a", "id": 3}', r"unknown \['id'\]"),
    ('{"input": "a"}', "match no example form"),
    ('{"text": 3}', '"text" must be a string, got int'),
    ('{"text": ""}', '"text" is empty'),
    ('{"prompt": "a", "response": ""}', '"response" is empty'),
    ('{"messages": []}', "non-empty list"),
    ('{"messages": [{"role": "user"}]}', r'messages\[0\] must be an object with exactly "role" and "content"'),
    ('{"messages": [{"role": "bot", "content": "x"}]}', r"messages\[0\]\.role must be one of"),
    ('{"messages": [{"role": "user", "content": "x"}]}', "no assistant turn"),
    ('{"messages": [{"role": "assistant", "content": 5}]}', r"messages\[0\]\.content must be a string"),
]


@pytest.mark.parametrize("line,why", BAD, ids=[b[1][:24] for b in BAD])
def test_a_bad_record_is_refused_in_one_line_naming_the_file_and_line(tmp_path, line, why):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "fine"}\n\n' + line + "\n", encoding="utf-8")
    with pytest.raises(ExampleError, match=why) as e:
        read_records(path)
    assert str(e.value).startswith(f"{path}, line 3: ") and "\n" not in str(e.value)


def test_an_empty_or_non_utf8_file_is_refused_naming_it(tmp_path):
    (tmp_path / "e.jsonl").write_text("\n  \n")
    with pytest.raises(ExampleError, match=r"e\.jsonl: no examples"):
        read_records(tmp_path / "e.jsonl")
    (tmp_path / "b.jsonl").write_bytes(b'{"text": "\xff"}\n')
    with pytest.raises(ExampleError, match=r"b\.jsonl: not UTF-8"):
        read_records(tmp_path / "b.jsonl")


def test_packed_rows_keep_examples_apart_with_shifted_masked_labels(tmp_path, tok):
    data = tokenize_examples(read_records(write_jsonl(tmp_path / "ex.jsonl", RECORDS * 3)), tok, eos_id(tok))
    packed = PackedExamples(data, range(len(data)), seq_len=64, pad_id=1)
    batch = packed.get_batch(range(len(packed)))
    assert set(batch) == {"input_ids", "labels", "segment_ids", "position_ids"}
    assert all(v.shape == (len(packed), 64) and v.dtype == torch.long for v in batch.values())
    seen = []
    for b in range(len(packed)):
        seg, pos = batch["segment_ids"][b], batch["position_ids"][b]
        for k in range(1, int(seg.max()) + 1):
            at = (seg == k).nonzero().squeeze(1)
            assert at.tolist() == list(range(int(at[0]), int(at[-1]) + 1))  # contiguous
            assert pos[at].tolist() == list(range(len(at)))  # positions restart at 0
            seen.append((batch["input_ids"][b, at], batch["labels"][b, at]))
        pad = seg == 0
        assert bool((batch["labels"][b][pad] == IGNORE_INDEX).all()) and bool((batch["input_ids"][b][pad] == 1).all())
    assert len(seen) == len(data)
    by_length = {}
    for i in range(len(data)):  # each example appears once: inputs x[:-1], labels x[1:] where trained
        x, m = (torch.from_numpy(a.astype(np.int64)) for a in data.example(i))
        by_length.setdefault(len(x) - 1, []).append((x[:-1], torch.where(m[1:].bool(), x[1:], IGNORE_INDEX)))
    for ids, labels in seen:
        assert any(torch.equal(ids, x) and torch.equal(labels, y) for x, y in by_length[len(ids)])


def test_first_fit_packing_fills_earlier_rows():
    assert pack_rows([3, 9, 3, 5, 2], seq_len=8) == [[0, 2, 3], [1], [4]]  # slots 2, 8, 2, 4, 1
    with pytest.raises(ValueError, match="seq_len=8"):
        pack_rows([10], seq_len=8)


def test_long_examples_are_cut_and_said_once_empty_ones_dropped(tmp_path, tok):
    long_prompt = {"prompt": "Q: two plus two? " * 20, "response": " A: four"}
    records = [{"text": "def f(x): return x " * 20}, {"text": "hi"}, long_prompt] + [{"text": "def f(x)"}] * 5
    lines = []
    splits = prepare_examples(write_jsonl(tmp_path / "ex.jsonl", records), tok, 16, 0.3, eos_id(tok),
                              root=tmp_path / "cache", say=lines.append)
    assert len(lines) == 1 and "cut to fit" in lines[0] and "data.seq_len+1 = 17" in lines[0]
    everything = {*splits.train.dropped, *splits.val.dropped}
    assert everything == {3}  # (line 3) the prompt filled all 17 tokens: nothing of the response was left to learn
    assert max(splits.train.lengths.max(), splits.val.lengths.max()) == 17


def test_the_cache_is_keyed_by_content_template_and_tokenizer(tmp_path, tok):
    path = write_jsonl(tmp_path / "ex.jsonl", RECORDS)
    root, eos = tmp_path / "cache", eos_id(tok)
    first = cached_examples(path, tok, eos, root=root)
    entry = examples_cache_path(path, tok, None, eos, root)
    assert entry.is_file()
    stat = os.stat(path)
    path.write_text(path.read_text().replace("four", "five"))  # same size, same mtime
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    edited = cached_examples(path, tok, eos, root=root)
    assert examples_cache_path(path, tok, None, eos, root) != entry
    assert "five" in decode(tok, edited.tokens) and "five" not in decode(tok, first.tokens)
    assert examples_cache_path(path, tok, CHATML, eos, root) != examples_cache_path(path, tok, None, eos, root)
    other = train_bpe_tokenizer(["something else entirely"] * 10, 280)
    assert examples_cache_path(path, other, None, eos, root) != examples_cache_path(path, tok, None, eos, root)


def test_a_damaged_cache_entry_is_rebuilt_with_one_line(tmp_path, tok):
    path, root, eos = write_jsonl(tmp_path / "ex.jsonl", RECORDS), tmp_path / "cache", eos_id(tok)
    good = cached_examples(path, tok, eos, root=root)
    entry = examples_cache_path(path, tok, None, eos, root)
    blob = bytearray(entry.read_bytes())
    blob[-40] ^= 0xFF
    entry.write_bytes(bytes(blob))
    said = []
    again = cached_examples(path, tok, eos, root=root, say=said.append)
    assert len(said) == 1 and "corrupted" in said[0] and "rebuilding" in said[0]
    assert np.array_equal(again.tokens, good.tokens) and np.array_equal(again.loss, good.loss)
    said.clear()
    cached_examples(path, tok, eos, root=root, say=said.append)
    assert said == []  # the rebuilt entry is sound


def test_the_shared_sampler_resumes_packed_batches_exactly(tmp_path, tok):
    splits = prepare_examples(write_jsonl(tmp_path / "ex.jsonl", RECORDS * 8), tok, 24, 0.2, eos_id(tok),
                              root=tmp_path / "cache", say=lambda s: None)
    rows = splits.train
    sampler = BatchSampler(len(rows), 2, seed=3)
    for _ in range(3):
        next(sampler)
    state = sampler.state_dict()
    expected = [rows.get_batch(next(sampler)) for _ in range(4)]
    again = prepare_examples(tmp_path / "ex.jsonl", tok, 24, 0.2, eos_id(tok), root=tmp_path / "cache",
                             say=lambda s: None).train  # as a resumed run reads them: from the cache
    resumed = BatchSampler(len(again), 2, seed=3)
    resumed.load_state_dict(state)
    for want in expected:
        got = again.get_batch(next(resumed))
        assert all(torch.equal(got[k], want[k]) for k in want)


def test_ignore_index_is_the_losss():
    from genmodels.objectives.losses import IGNORE_INDEX as LOSS_IGNORE
    assert IGNORE_INDEX == LOSS_IGNORE == -100


@pytest.mark.parametrize("name", ["llama-tiny", "gpt2-tiny", "mixtral-tiny"])  # rotary; learned positions; MoE
def test_the_causal_objective_on_packed_rows_equals_the_examples_one_by_one(tmp_path, tok, name):
    from genmodels.models import build_model
    from genmodels.objectives.causal import CausalLM
    from genmodels.registry import preset
    records = (RECORDS + [{"prompt": "Q: two?", "response": " A: four"}, {"text": "return x"}]) * 3
    data = tokenize_examples(read_records(write_jsonl(tmp_path / "ex.jsonl", records)), tok, eos_id(tok))
    packed = PackedExamples(data, range(len(data)), seq_len=48, pad_id=eos_id(tok))
    batch = packed.get_batch(range(len(packed)))
    assert int(batch["segment_ids"].max()) >= 3  # several examples share a row
    cfg = preset(name).replace(vocab_size=tok.get_vocab_size(), d_model=32, n_layers=2, d_ff=64, max_seq_len=64)
    torch.manual_seed(0)
    model = build_model(cfg).eval()  # (eval: the MoE routes without jitter; no dropout)
    with torch.no_grad():
        packed_loss, _ = CausalLM(model).eval()(batch)
        total, count = 0.0, 0
        for i in range(len(data)):  # each example alone: inputs x[:-1], targets x[1:] where the record trains
            x, m = (torch.from_numpy(a.astype(np.int64)) for a in data.example(i))
            logits = model(x[None, :-1])[0].double()  # (n-1, V)
            nll = torch.nn.functional.cross_entropy(logits, x[1:], reduction="none")
            total += float(nll[m[1:].bool()].sum())
            count += int(m[1:].sum())
    assert count == int((batch["labels"] != IGNORE_INDEX).sum())
    assert abs(float(packed_loss) - total / count) < 1e-6
