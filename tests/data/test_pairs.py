"""The ``pairs`` data kind (issue 23 d1): records checked and named by file and line, both sides tokenised as the
examples kind renders them, one row slot layout per pair whose single forward equals each side run alone, pairs
built offline from the task set."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from genmodels.data import train_bpe_tokenizer
from genmodels.data.examples import read_records, tokenize_examples
from genmodels.data.pairs import PackedPairs, PairError, encode_reply, read_pairs, tokenize_pairs
from genmodels.data.pairs_kind import PairsDataConfig, prepare_pairs_run
from genmodels.data.task_pairs import task_pairs
from genmodels.data.tasks import build_taskset, exact_match
from genmodels.objectives.pairwise import last_slots, pair_hidden, reply_logps
from genmodels.registry import build_model, preset

PAIRS = Path(__file__).parent.parent / "fixtures" / "pairs" / "pairs.jsonl"


@pytest.fixture(scope="module")
def tok():
    return train_bpe_tokenizer([PAIRS.read_text()] * 4, 300)


def _write(tmp_path, lines: list[str]) -> Path:
    p = tmp_path / "p.jsonl"
    p.write_text("\n".join(lines) + "\n")
    return p


GOOD = json.dumps({"prompt": "q", "chosen": "a", "rejected": "b"})


@pytest.mark.parametrize("bad, says", [
    ("not json", "invalid JSON"),
    ("[1]", "expected a JSON object"),
    (json.dumps({"prompt": "q", "chosen": "a"}), "missing ['rejected']"),
    (json.dumps({"prompt": "q", "chosen": "a", "rejected": "b", "x": 1}), "unknown ['x']"),
    (json.dumps({"prompt": "q", "chosen": "", "rejected": "b"}), "\"chosen\" is empty"),
    (json.dumps({"prompt": "q", "chosen": 3, "rejected": "b"}), "\"chosen\" must be a string"),
    (json.dumps({"prompt": "q", "chosen": "a", "rejected": "a"}), "are the same reply"),
    (json.dumps({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "x"}],
                 "chosen": "a", "rejected": "b"}), "must end with a user turn"),
    (json.dumps({"messages": [{"role": "robot", "content": "q"}], "chosen": "a", "rejected": "b"}),
     "messages[0].role must be one of"),
    (json.dumps({"messages": "q", "chosen": "a", "rejected": "b"}), "\"messages\" must be a non-empty list"),
    (json.dumps({"messages": [], "chosen": "a", "rejected": "b"}), "\"messages\" must be a non-empty list"),
    (json.dumps({"question": "q"}), "match no pair form"),
])
def test_a_malformed_pair_is_named_by_file_and_line(tmp_path, bad, says):
    p = _write(tmp_path, [GOOD, "", bad])
    with pytest.raises(PairError) as e:
        read_pairs(p)
    assert str(e.value).startswith(f"{p}, line 3: ") and says in str(e.value)


def test_each_side_is_tokenised_as_the_examples_kind_renders_it(tok, tmp_path):
    """Prompt form and messages form: the prompt + reply tokens equal the examples kind's {"prompt", "response"}
    / conversation tokens, so DPO scores what SFT trained."""
    eos = 0
    recs = read_pairs(PAIRS)
    data = tokenize_pairs(recs, tok, eos)
    ex = []
    for r in recs:
        f = r.fields
        for side in ("chosen", "rejected"):
            ex.append({"prompt": f["prompt"], "response": f[side]} if "prompt" in f else
                      {"messages": f["messages"] + [{"role": "assistant", "content": f[side]}]})
    p = _write(tmp_path, [json.dumps(e) for e in ex])
    want = tokenize_examples(read_records(p), tok, eos)
    for i in range(len(recs)):
        for k, side in enumerate(("chosen", "rejected")):
            tokens, loss = want.example(2 * i + k)
            got = list(data.prompt(i)) + list(data.reply(i, side))
            assert tokens.tolist() == got
            assert loss.tolist() == [0] * len(data.prompt(i)) + [1] * len(data.reply(i, side))
    assert encode_reply({"prompt": recs[0].fields["prompt"], "response": recs[0].fields["chosen"]}, tok, eos) == (
        data.prompt(0).tolist(), data.reply(0, "chosen").tolist())


def test_one_forward_per_pair_equals_each_side_alone(tok):
    """The packed [prompt | chosen | rejected] rows give each reply's summed log-probability of prompt + reply
    run alone (1e-5), several pairs a row; the last slots are each reply's last token."""
    recs = read_pairs(PAIRS)
    data = tokenize_pairs(recs, tok, 0)
    packed = PackedPairs(data, range(len(data)), 160, 0)
    assert any(len(r) > 1 for r in packed.rows)
    torch.manual_seed(0)
    model = build_model(preset("llama-tiny").replace(vocab_size=300, d_model=32, n_layers=2, n_heads=2,
                                                     n_kv_heads=1, d_ff=64, head_dim=16)).eval()
    rows = [0, 1, 2]
    batch = packed.batch(rows)
    with torch.no_grad():
        chosen, rejected, n_c, n_r = reply_logps(pair_hidden(model, batch), model.head, batch, 5)
    order = [int(packed.pairs[j]) for r in rows for j in packed.rows[r]]
    assert len(chosen) == len(order)
    last_c, last_r = last_slots(batch)
    for k, i in enumerate(order):
        for side, got, n, last in (("chosen", chosen, n_c, last_c), ("rejected", rejected, n_r, last_r)):
            ids = torch.tensor([list(data.prompt(i)) + list(data.reply(i, side))])
            with torch.no_grad():
                lp = F.log_softmax(model(ids).float(), -1)[0]
            p = len(data.prompt(i))
            want = sum(float(lp[t - 1, ids[0, t]]) for t in range(p, ids.shape[1]))
            assert abs(float(got[k]) - want) < 1e-5 * max(1.0, abs(want))
            assert int(n[k]) == ids.shape[1] - p
            assert int(batch["input_ids"][last][k]) == int(ids[0, -1])


def test_a_pair_over_seq_len_is_refused_naming_its_line(tok):
    data = tokenize_pairs(read_pairs(PAIRS), tok, 0)
    with pytest.raises(PairError, match=r"pairs.jsonl, line \d+: the pair takes \d+ slots .* over data.seq_len = 20"):
        PackedPairs(data, range(len(data)), 20, 0, str(PAIRS))


def test_task_pairs_set_the_right_answer_against_a_wrong_one_of_the_same_task(tmp_path):
    recs = [r for r in build_taskset(seed=0, per_task=10) if r.split == "seen-train"]
    for form in ("prompt", "messages"):
        pairs = task_pairs(recs, form)
        assert len(pairs) == len(recs)
        for r, p in zip(recs, pairs):
            assert exact_match(p["chosen"], r.answer) and not exact_match(p["rejected"], r.answer)
            others = {o.answer for o in recs if o.task == r.task}
            assert p["rejected"].strip() in others  # the same form: another instance's answer
    p = _write(tmp_path, [json.dumps(x) for x in task_pairs(recs[:20], "messages")])  # a form the kind reads
    assert len(read_pairs(p)) == 20


def test_the_kind_prepares_split_rows_and_refuses_a_wrong_kind(tok, tmp_path):
    from genmodels.data import save_tokenizer
    save_tokenizer(tok, tmp_path / "tok")
    dc = PairsDataConfig.from_dict({"kind": "pairs", "path": str(PAIRS), "seq_len": 160, "val_fraction": 0.25,
                                    "tokenizer": str(tmp_path / "tok")}, "data")
    lines = []
    run = prepare_pairs_run(dc, say=lines.append)
    assert run.train.num_pairs() + run.val.num_pairs() == 12 and len(run.val) >= 1
    assert lines and lines[0].startswith("data: 12 pairs from")
    from genmodels.config import ConfigError
    with pytest.raises(ConfigError, match="data.kind='examples': this section is for kind 'pairs'"):
        PairsDataConfig.from_dict({"kind": "examples", "path": str(PAIRS)}, "data")
