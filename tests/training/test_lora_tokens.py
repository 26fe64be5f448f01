"""Trainable token rows in LoRA runs (``train.lora.trainable_tokens``; nn/trainable_tokens.py): a gist run under LoRA
trains its <GIST> row (the base frozen, the row grown as the vocabulary mean would otherwise never move), keeps it in
its checkpoints and state.json, resumes bit for bit, and writes it in final/'s PEFT files, which load back."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import genmodels
from genmodels.data import load_tokenizer
from genmodels.data.gist_examples import GIST_TOKEN
from genmodels.training import RunConfig, train
from genmodels.training.rundir import RunDirError
from tests.training.conftest import losses
from tests.training.test_objective_contract import GIST_EXAMPLES, examples_tokenizer

TINY = {"d_model": 32, "n_layers": 2, "n_heads": 2, "n_kv_heads": 1, "d_ff": 64, "tie_embeddings": True}
ROWS = "embed.trainable_tokens.weight"


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory) -> Path:
    return examples_tokenizer(tmp_path_factory.mktemp("gist-tok"), GIST_EXAMPLES)


def _base(tok_dir: Path, where: Path, vocab: int) -> Path:
    tok = load_tokenizer(tok_dir)
    torch.manual_seed(7)
    model = genmodels.build_model(genmodels.preset("llama-tiny", **TINY, vocab_size=vocab, max_seq_len=64))
    return genmodels.save(model, where, tok)


@pytest.fixture(scope="module")
def base(tok_dir, tmp_path_factory) -> Path:
    """A tiny tied Llama whose vocabulary already holds <GIST> (bench_gist.py's grown start)."""
    return _base(tok_dir, tmp_path_factory.mktemp("gist-base") / "base", load_tokenizer(tok_dir).get_vocab_size())


def recipe(base: Path, tok_dir: Path, run: Path, tokens="auto", **train_over) -> dict:
    return {"model": {"init_from": str(base)},
            "data": {"kind": "examples", "path": str(GIST_EXAMPLES), "tokenizer": str(tok_dir), "seq_len": 64,
                     "val_fraction": 0.2},
            "train": {"objective": {"name": "gist", "k": 1, "mask": "gist"}, "batch_size": 4, "max_steps": 4,
                      "warmup_steps": 1, "lr": 1e-2, "eval_every": 2, "ckpt_every": 2, "eval_batches": 1, "threads": 1,
                      "mfu_peak_tflops": 0.1, "lora": {"targets": "all-linear", "r": 4, "alpha": 8,
                                                       "trainable_tokens": tokens}, **train_over},
            "sample": {"prompts": []}, "run_dir": str(run)}


def test_a_gist_lora_run_trains_its_gist_row_resumes_bit_for_bit_and_writes_it_for_peft(base, tok_dir, tmp_path):
    gist = load_tokenizer(tok_dir).token_to_id(GIST_TOKEN)
    whole, part = tmp_path / "whole", tmp_path / "part"
    train(RunConfig.from_dict(recipe(base, tok_dir, whole)), progress=False, log=lambda s: None)
    ckpt = whole / "checkpoints" / "step-000004"
    held = load_file(ckpt / "model.safetensors")
    start = genmodels.load(base).embed.weight[gist].detach()
    assert held[ROWS].shape == (1, 32) and not torch.equal(held[ROWS][0], start)  # the <GIST> row trained
    assert "embed.weight" not in held  # the table itself stays out of the checkpoint (frozen)
    assert json.loads((ckpt / "state.json").read_text())["lora_tokens"] == [gist]
    train(RunConfig.from_dict(recipe(base, tok_dir, part, max_steps=2)), progress=False, log=lambda s: None)
    train(RunConfig.from_dict(recipe(base, tok_dir, part)), resume=True, progress=False, log=lambda s: None)
    assert sorted(losses(whole)) == [1, 2, 3, 4] and losses(part) == losses(whole)
    a, b = (load_file(r / "final" / "adapter_model.safetensors") for r in (whole, part))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    key = "base_model.model.model.embed_tokens.token_adapter.trainable_tokens_delta"
    assert torch.equal(a[key], held[ROWS])
    assert json.loads((whole / "final" / "adapter_config.json").read_text())["trainable_token_indices"] == [gist]
    loaded = genmodels.load(whole / "final")  # base + adapter + rows
    assert torch.equal(loaded.embed.trainable_tokens.weight, held[ROWS])
    with torch.no_grad():
        assert torch.equal(loaded.embed.table()[gist], held[ROWS][0])
        assert torch.equal(loaded.head.get_weight()[gist], held[ROWS][0])  # the tied head reads the trained row


def test_trainable_tokens_none_keeps_the_old_frozen_row_and_a_resume_with_other_rows_is_refused(base, tok_dir,
                                                                                                  tmp_path):
    run = tmp_path / "run"
    train(RunConfig.from_dict(recipe(base, tok_dir, run, tokens=[], max_steps=2)), progress=False, log=lambda s: None)
    held = load_file(run / "checkpoints" / "step-000002" / "model.safetensors")
    assert held and all(".lora_" in k for k in held)
    with pytest.raises(RunDirError, match=r"^--resume: the checkpoint trained token rows \[\], train\.lora\.trainable_tokens='auto'"):
        train(RunConfig.from_dict(recipe(base, tok_dir, run)), resume=True, progress=False, log=lambda s: None)


def test_new_means_the_rows_model_init_from_grew(tok_dir, tmp_path):
    vocab = load_tokenizer(tok_dir).get_vocab_size()
    small = _base(tok_dir, tmp_path / "small", vocab - 1)  # no <GIST> row: the run grows it
    run = tmp_path / "run"
    said = []
    train(RunConfig.from_dict(recipe(small, tok_dir, run, tokens="new", max_steps=1, eval_every=1, ckpt_every=1)),
          progress=False, log=said.append)
    assert json.loads((run / "checkpoints" / "step-000001" / "state.json").read_text())["lora_tokens"] == [vocab - 1]
    assert any(s.startswith(f"lora: embedding rows [{vocab - 1}] train too") for s in said)


@pytest.mark.parametrize("bad", ["all", [1, 1], [-1], [True], 3])
def test_a_bad_trainable_tokens_is_refused_naming_the_field(bad, base, tok_dir, tmp_path):
    with pytest.raises(genmodels.config.ConfigError, match=r"^train\.lora\.trainable_tokens="):
        RunConfig.from_dict(recipe(base, tok_dir, tmp_path / "run", tokens=bad))


def test_the_gist_row_trains_under_bf16_autocast_too(base, tok_dir, tmp_path):
    """train.precision: bf16 (autocast; the head loss on its own path, objectives/head_bf16.py, which keeps the
    tied table's gradient since it is a non-leaf that requires grad): the row still trains."""
    gist = load_tokenizer(tok_dir).token_to_id(GIST_TOKEN)
    run = tmp_path / "run"
    train(RunConfig.from_dict(recipe(base, tok_dir, run, max_steps=2, precision="bf16")), progress=False,
          log=lambda s: None)
    held = load_file(run / "checkpoints" / "step-000002" / "model.safetensors")
    assert not torch.equal(held[ROWS][0], genmodels.load(base).embed.weight[gist].detach())
