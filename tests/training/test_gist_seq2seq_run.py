"""`train.objective: {name: gist}` on an encoder–decoder (#24 d2, T5): the prompt (instruction → <GIST>×k → input) is
the source, the response the target; the loss is the target's cross-entropy under the gist mask, per example; the
controls; a 2-step run from a T5 model.init_from grows <GIST> (the mean row) and its model decodes after
`compress` as the full masked forward does."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import genmodels
from genmodels.data.examples_kind import ExamplesDataConfig, prepare_example_run
from genmodels.data.gist_examples import GIST_TOKEN, gist_record
from genmodels.nn.gist_mask import gist_allowed, gist_cross_allowed
from genmodels.objectives import build_objective
from genmodels.objectives.gist_seq2seq import unpack
from genmodels.training import RunConfig, train
from tests.training.test_gist_run import make_folders

TINY = {"d_model": 32, "n_layers": 2, "n_heads": 2, "head_dim": 16, "d_ff": 64, "max_seq_len": 64}
WORDS = ["cat", "dog", "bird", "fish", "lion", "bear", "wolf", "frog"]
TASKS = {"Reverse the word.": lambda w: w[::-1], "Write the word in capitals.": str.upper}


def _records() -> list[dict]:
    return [gist_record(inst, w, f(w), 1) for inst, f in TASKS.items() for w in WORDS]


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    return make_folders(tmp_path_factory.mktemp("gist-t5"), lambda v: genmodels.preset("t5-tiny", **TINY, vocab_size=v),
                        _records(), seed=5)


def _setup(folders, mask="gist"):
    dc = {"kind": "examples", "path": str(folders["data"]), "tokenizer": str(folders["tok"]), "seq_len": 64,
          "val_fraction": 0.2}
    data = prepare_example_run(ExamplesDataConfig.from_dict(dc, "data"), say=lambda s: None)
    torch.manual_seed(0)
    model = genmodels.build_model(genmodels.preset("t5-tiny", **TINY, vocab_size=data.tokenizer.get_vocab_size()))
    obj = build_objective("gist", model, loss_chunk=16, mask=mask)
    obj.check_data(data)
    return data, obj.eval(), model


def test_the_loss_is_each_example_target_cross_entropy_under_its_own_gist_mask(folders):
    data, obj, model = _setup(folders)
    gist = data.tokenizer.token_to_id(GIST_TOKEN)
    batch = data.train.batch([0, 1])
    sources, targets = unpack(batch)
    assert len(sources) > 2 and all(s.count(gist) == 1 for s in sources)
    assert int((batch["labels"] != -100).sum()) == sum(map(len, targets))  # SFT's count: the target tokens
    total = 0.0
    with torch.no_grad():
        for src, tgt in zip(sources, targets):  # each example alone, no padding
            s, t = torch.tensor([src]), torch.tensor([tgt])
            g = torch.tensor([src.index(gist)])
            logits = model(s, model.shift_right(t), allowed=gist_allowed(g, 1, s.shape[1]),
                           memory_mask=gist_cross_allowed(g, 1, s.shape[1], t.shape[1]))
            total += float(F.cross_entropy(logits[0], t[0], reduction="sum"))
        got, _ = obj(batch)
    torch.testing.assert_close(got, torch.tensor(total / sum(map(len, targets))), rtol=1e-6, atol=1e-6)


def test_neg_control_never_reads_the_instruction_and_gist_does(folders):
    gist_id = None
    for mask, reads in (("neg_control", False), ("gist", True), ("pos_control", True)):
        data, obj, _ = _setup(folders, mask)
        gist_id = data.tokenizer.token_to_id(GIST_TOKEN)
        batch = data.train.batch([0, 1])
        other = dict(batch, input_ids=batch["input_ids"].clone())
        ids, seg = other["input_ids"], batch["segment_ids"]
        for b in range(ids.shape[0]):  # every instruction token (before its example's gist) replaced
            for s in seg[b].unique().tolist():
                cols = (seg[b] == s).nonzero()[:, 0]
                if s and bool((ids[b, cols] == gist_id).any()):
                    g = cols[ids[b, cols] == gist_id][0]
                    ids[b, cols[cols < g]] = 7
        with torch.no_grad():
            assert bool(obj(batch)[0] != obj(other)[0]) is reads, mask


def test_a_two_step_t5_run_grows_gist_and_decodes_after_compress_as_the_full_masked_forward(folders, tmp_path):
    recipe = {"model": {"init_from": str(folders["base"])},
              "data": {"kind": "examples", "path": str(folders["data"]), "tokenizer": str(folders["tok"]),
                       "seq_len": 64, "val_fraction": 0.2},
              "train": {"objective": {"name": "gist", "k": 1, "mask": "gist"}, "batch_size": 2, "max_steps": 2,
                        "warmup_steps": 1, "lr": 1e-2, "eval_every": 2, "ckpt_every": 2, "eval_batches": 1,
                        "threads": 1, "mfu_peak_tflops": 0.1},
              "sample": {"prompts": []}, "run_dir": str(tmp_path / "run")}
    said: list[str] = []
    train(RunConfig.from_dict(recipe), progress=False, log=said.append)
    v = genmodels.load(folders["base"]).config.vocab_size
    assert any(f"this run needs {v + 1}: the 1 new embedding rows are the mean" in s for s in said)
    model = genmodels.load(tmp_path / "run" / "final").eval()
    tok = model.tokenizer
    assert tok.token_to_id(GIST_TOKEN) == v and model.config.vocab_size == v + 1
    head, tail = "Instruction: Reverse the word.\n", "\nInput: cat\nOutput:"
    out = genmodels.generate(model, torch.tensor([tok.encode(tail).ids]), 4, cache=genmodels.compress(model, head),
                             eos_token_id=[])
    p, x = tok.encode(head).ids, tok.encode(tail).ids
    src, g = torch.tensor([p + [v] + x]), torch.tensor([len(p)])
    want = [int(out[0, 0])]
    with torch.no_grad():
        for _ in range(4):
            logits = model(src, torch.tensor([want]), allowed=gist_allowed(g, 1, src.shape[1]),
                           memory_mask=gist_cross_allowed(g, 1, src.shape[1], len(want)))
            want.append(int(logits[0, -1].argmax()))
    assert out[0].tolist() == want
