"""Folders and checkpoints written by an older genmodels keep loading (issue #9: the house is rebuilt,
the files stay readable). tests/fixtures/folders-4df6e84/ holds what main 4df6e84 wrote — a tiny
Llama, GPT-2, BERT and T5 and a 4-step training run — with the outputs those models gave then
(tests/fixtures/make_folders.py made them once; never regenerate them to make this test pass)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import genmodels
from genmodels.training import RunConfig, train

OLD = Path(__file__).parents[1] / "fixtures" / "folders-4df6e84"


@pytest.mark.parametrize("name", ["llama", "gpt2", "bert", "t5"])
def test_an_old_model_folder_loads_and_gives_the_same_outputs(name):
    expected = load_file(str(OLD / "expected.safetensors"))
    ids = expected["input_ids"]
    model = genmodels.load(OLD / name)
    with torch.no_grad():
        if name == "t5":
            out = model(ids, decoder_input_ids=ids[:, :5])
        elif name == "bert":
            out = model.encode(ids)
        else:
            out = model(ids)
    torch.testing.assert_close(out, expected[name], atol=1e-5, rtol=1e-4)


def test_an_old_model_folder_saves_again_in_place(tmp_path):
    copy = shutil.copytree(OLD / "llama", tmp_path / "llama")
    genmodels.save(genmodels.load(copy), copy)  # a re-save recognises the old folder as genmodels'
    torch.testing.assert_close(genmodels.load(copy)(load_file(str(OLD / "expected.safetensors"))["input_ids"]),
                               load_file(str(OLD / "expected.safetensors"))["llama"], atol=1e-5, rtol=1e-4)


def test_an_old_training_run_resumes(tmp_path):
    run = shutil.copytree(OLD / "run", tmp_path / "run")
    recipe = (OLD / "recipe.json").read_text().replace("CORPUS", str(OLD / "corpus")).replace("RUN", str(run))
    cfg = json.loads(recipe)
    cfg["train"]["max_steps"] = 6
    said: list[str] = []
    res = train(RunConfig.from_dict(cfg), resume=True, progress=False, log=said.append)
    assert any("resumed from" in s and "step-000004" in s for s in said), said
    assert sorted(res.train_losses) == [5, 6] and all(map(lambda v: v == v and abs(v) < 100,
                                                         res.train_losses.values()))
    assert genmodels.load(run / "final") is not None
