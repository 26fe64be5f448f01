"""`train.objective: {name: gist, k, mask}` (#24 d2): SFT under the gist mask on examples laid out instruction →
<GIST>×k → input → output; the controls; the <GIST> token grown into a model.init_from's vocabulary (mean row); a
2-step run whose model compresses an instruction and decodes after it as the full masked forward does."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import genmodels
from genmodels.config import ConfigError
from genmodels.data import save_tokenizer, train_bpe_tokenizer
from genmodels.data.examples import ExampleError
from genmodels.data.examples_kind import ExamplesDataConfig, prepare_example_run
from genmodels.data.gist_examples import GIST_TOKEN, add_gist_token, gist_record
from genmodels.nn.gist_mask import gist_allowed
from genmodels.objectives import build_objective
from genmodels.objectives.losses import IGNORE_INDEX
from genmodels.training import RunConfig, train

TINY = {"d_model": 32, "n_layers": 2, "n_heads": 2, "n_kv_heads": 1, "d_ff": 64, "max_seq_len": 64}
WORDS = ["cat", "dog", "bird", "fish", "lion", "bear", "wolf", "frog", "duck", "goat", "mole", "crab"]
TASKS = {"Reverse the word.": lambda w: w[::-1], "Write the word in capitals.": str.upper,
         "Repeat the word twice.": lambda w: f"{w} {w}"}


def records(k: int = 1) -> list[dict]:
    return [gist_record(inst, w, f(w), k) for inst, f in TASKS.items() for w in WORDS]


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    """A tiny Llama saved with a BPE that has no <GIST> (the init_from), the same BPE with <GIST> (the run's
    tokenizer) and the examples (k = 1)."""
    return make_folders(tmp_path_factory.mktemp("gist"), lambda v: genmodels.preset("llama-tiny", **TINY, vocab_size=v),
                        records(), seed=123)


def make_folders(root: Path, config, rows: list[dict], seed: int) -> dict[str, Path]:
    """``root/base`` (a model of ``config(vocab_size)`` with a BPE trained on ``rows``, no <GIST>), ``root/gist-tok``
    (that BPE + <GIST>) and ``root/gist.jsonl`` (the rows)."""
    tok = train_bpe_tokenizer(["\n".join(json.dumps(r) for r in rows)] * 4, 300)
    torch.manual_seed(seed)
    base = genmodels.save(genmodels.build_model(config(tok.get_vocab_size())), root / "base", tok)
    save_tokenizer(add_gist_token(tok), root / "gist-tok")
    return {"base": base, "tok": root / "gist-tok", "data": write_jsonl(root / "gist.jsonl", rows)}


def _data(folders, path=None):
    dc = {"kind": "examples", "path": str(path or folders["data"]), "tokenizer": str(folders["tok"]), "seq_len": 64,
          "val_fraction": 0.2}
    return prepare_example_run(ExamplesDataConfig.from_dict(dc, "data"), say=lambda s: None)


def _objective(folders, data, **options):
    torch.manual_seed(0)
    model = genmodels.build_model(genmodels.preset("llama-tiny", **TINY, vocab_size=data.tokenizer.get_vocab_size()))
    obj = build_objective("gist", model, loss_chunk=16, **options)
    obj.check_data(data)
    return obj.eval(), model


def test_the_loss_is_the_output_tokens_cross_entropy_under_each_example_own_mask(folders):
    data = _data(folders)
    obj, model = _objective(folders, data)
    gist = data.tokenizer.token_to_id(GIST_TOKEN)
    tokens, loss_mask = data.train.data.example(int(data.train.examples[0]))
    ids, tgt = torch.tensor(tokens[:-1], dtype=torch.long)[None], torch.tensor(tokens[1:], dtype=torch.long)
    tgt = tgt.masked_fill(~torch.tensor(loss_mask[1:], dtype=torch.bool), IGNORE_INDEX)
    g = int((ids[0] == gist).nonzero()[0, 0])
    with torch.no_grad():
        logits = model(ids, allowed=gist_allowed(torch.tensor([g]), 1, ids.shape[1]))[0]
        want = torch.nn.functional.cross_entropy(logits, tgt, ignore_index=IGNORE_INDEX)
        got, _ = obj({"input_ids": ids, "labels": tgt[None]})
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)


def test_the_controls_on_packed_rows(folders):
    data = _data(folders)
    batch = data.train.batch([0, 1])
    assert int(batch["segment_ids"].max()) > 1  # several examples a row
    gist = data.tokenizer.token_to_id(GIST_TOKEN)
    other = dict(batch, input_ids=batch["input_ids"].clone())
    seg, ids = batch["segment_ids"], other["input_ids"]
    for b in range(ids.shape[0]):  # every instruction token replaced (each example's tokens before its gist)
        for s in seg[b].unique().tolist():
            cols = (seg[b] == s).nonzero()[:, 0]
            g = cols[ids[b, cols] == gist][0] if s else cols[0]
            ids[b, cols[cols < g]] = 7
    with torch.no_grad():
        for mask, reads_instruction in (("neg_control", False), ("gist", True), ("pos_control", True)):
            obj, model = _objective(folders, data, mask=mask)
            a, b = obj(batch)[0], obj(other)[0]
            assert bool(a != b) is reads_instruction, mask
        assert torch.equal(obj(batch)[0], build_objective("sft", model, loss_chunk=16).eval()(batch)[0])


def test_a_tokenizer_without_gist_or_an_example_without_k_gists_is_refused_in_one_line(folders, tmp_path):
    data = _data(folders)
    with pytest.raises(ExampleError, match=r"gist.jsonl, line 1: the example has 1 <GIST> token\(s\); "
                                           r"train.objective.k=2 wants 2 contiguous"):
        _objective(folders, data, k=2)
    bad = write_jsonl(tmp_path / "bad.jsonl", records()[:9] + [gist_record("Reverse.", "ab", "ba", 2)] + records()[9:])
    with pytest.raises(ExampleError, match=r"bad.jsonl, line 10: the example has 2 <GIST>"):
        _objective(folders, _data(folders, bad))
    plain = dict(vars(data))
    plain["tokenizer"] = genmodels.load_tokenizer(folders["base"])
    with pytest.raises(ConfigError, match=r"data.tokenizer\) has no <GIST> token; save one with "):
        _objective(folders, type(data)(**plain))
    for option, value, message in (("k", 0, "train.objective.k=0 must be an integer >= 1"),
                                   ("mask", "gisty", "train.objective.mask")):
        with pytest.raises(ConfigError, match=message):
            RunConfig.from_dict(_recipe(folders, tmp_path / "r", **{option: value}))


def _recipe(folders, run: Path, **objective) -> dict:
    return {"model": {"init_from": str(folders["base"])},
            "data": {"kind": "examples", "path": str(folders["data"]), "tokenizer": str(folders["tok"]),
                     "seq_len": 64, "val_fraction": 0.2},
            "train": {"objective": {"name": "gist", "k": 1, "mask": "gist", **objective}, "batch_size": 4,
                      "max_steps": 2, "warmup_steps": 1, "lr": 1e-2, "eval_every": 2, "ckpt_every": 2,
                      "eval_batches": 1, "threads": 1, "mfu_peak_tflops": 0.1},
            "sample": {"prompts": []}, "run_dir": str(run)}


def test_a_two_step_run_grows_gist_then_its_model_decodes_after_the_compressed_instruction(folders, tmp_path):
    said: list[str] = []
    train(RunConfig.from_dict(_recipe(folders, tmp_path / "run")), progress=False, log=said.append)
    source = genmodels.load(folders["base"])
    v = source.config.vocab_size
    assert any(f"has {v} token ids, this run needs {v + 1}: the 1 new embedding rows are the mean" in s for s in said)
    model = genmodels.load(tmp_path / "run" / "final").eval()
    assert model.config.vocab_size == v + 1 and model.tokenizer.token_to_id(GIST_TOKEN) == v
    instruction = "Instruction: Reverse the word.\n"
    gist = genmodels.compress(model, instruction)
    x = model.tokenizer.encode("\nInput: cat\nOutput:").ids
    out = genmodels.generate(model, torch.tensor([x]), 4, cache=gist)[0].tolist()
    p = model.tokenizer.encode(instruction).ids
    want = list(x)
    with torch.no_grad():
        for _ in range(4):
            ids = torch.tensor([p + [v] + want])
            logits = model(ids, allowed=gist_allowed(torch.tensor([len(p)]), 1, ids.shape[1]))
            want.append(int(logits[0, -1].argmax()))
    assert out == want


def test_a_model_without_the_allowed_rule_is_refused_for_gist():
    from genmodels.objectives import objective_for
    with pytest.raises(ConfigError, match=r"train.objective='gist' does not fit model.family='retnet': it needs the "
                                          r"'allowed' mask rule \(RetNetLM does not implement it\)"):
        objective_for("retnet", "gist")
    assert objective_for("decoder", "gist") == "gist"
