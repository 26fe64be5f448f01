"""The CLI end to end on a tiny model with a real BPE tokenizer: generate (streamed), info, convert."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

import genmodels
from genmodels.cli import main

from tests.helpers.tiny import randomise


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(["def foo(x):\n    return x + 1\n", "import os\nprint(os.getcwd())\n"] * 20,
                            trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"],
                                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    cfg = genmodels.preset("llama-tiny", vocab_size=tok.get_vocab_size(), d_model=64, n_layers=2, n_heads=4,
                           n_kv_heads=2, d_ff=128, max_seq_len=256)
    d = tmp_path_factory.mktemp("m") / "model"
    genmodels.save(randomise(genmodels.build_model(cfg)), d, tokenizer=tok)
    return d


def test_generate_streams_the_same_text_as_the_api(model_dir, capsys):
    assert main(["generate", str(model_dir), "--prompt", "def foo", "--max-new-tokens", "12",
                 "--temperature", "0"]) == 0
    printed = capsys.readouterr().out
    model = genmodels.load(model_dir)
    ids = torch.tensor([model.tokenizer.encode("def foo").ids])
    out = genmodels.generate(model, ids, max_new_tokens=12)
    assert printed == model.tokenizer.decode(out[0].tolist()) + "\n"


def test_generate_stop_text_ends_the_reply_and_is_not_printed(model_dir, capsys):
    """--stop (repeatable) is matched on the text: what is printed ends where the first stop string starts."""
    args = ["generate", str(model_dir), "--prompt", "def foo", "--max-new-tokens", "24", "--temperature", "0"]
    assert main(args) == 0
    reply = capsys.readouterr().out[len("def foo"):-1]
    stop = reply[5:8]
    assert len(reply) > 8 and stop.strip()
    assert main(args + ["--stop", stop, "--stop", "no such text"]) == 0
    assert capsys.readouterr().out == "def foo" + reply[:reply.find(stop)] + "\n"
    assert main(args + ["--stop", ""]) == 2
    assert capsys.readouterr().err == "error: --stop '' is empty; give the text that ends generation (e.g. --stop $'\\n\\n')\n"


def test_info_reports_family_parameters_and_flops(model_dir, capsys):
    assert main(["info", str(model_dir), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    model = genmodels.load(model_dir)
    assert info["family"] == "decoder"
    assert info["parameters"] == sum(p.numel() for p in model.parameters())
    assert info["config"]["d_model"] == 64
    assert info["forward_flops_per_token"]["context 1"] > 2 * 64 * 64


@pytest.mark.parametrize("name", ["llama-tiny", "retnet-tiny"])
def test_info_describes_a_preset_without_weights(name, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no folder of that name here
    assert main(["info", name, "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    built = genmodels.build_model(genmodels.preset(name))
    assert info["parameters"] == sum(p.numel() for p in built.parameters())
    assert info["family"] == built.config.family and info["forward_flops_per_token"]


def test_convert_to_hf_and_back(model_dir, tmp_path):
    assert main(["convert", str(model_dir), str(tmp_path / "hf"), "--to", "hf"]) == 0
    assert (tmp_path / "hf" / "tokenizer.json").is_file()
    assert main(["convert", str(tmp_path / "hf"), str(tmp_path / "back"), "--to", "genmodels"]) == 0
    a, b = genmodels.load(model_dir), genmodels.load(tmp_path / "back")
    ids = torch.randint(0, 200, (2, 10))
    torch.testing.assert_close(a(ids), b(ids), atol=1e-6, rtol=1e-5)


def test_bad_path_is_one_clear_line(tmp_path):
    r = subprocess.run([sys.executable, "-m", "genmodels.cli", "info", str(tmp_path / "nope")],
                       capture_output=True, text=True)
    assert r.returncode == 2
    assert r.stderr.startswith("error:") and "Traceback" not in r.stderr


def test_generate_cli_on_a_seq2seq_model_prints_the_target(tmp_path, capsys):
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(["translate this text please"] * 10,
                            trainers.BpeTrainer(vocab_size=280, special_tokens=["<pad>", "</s>"],
                                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    cfg = genmodels.preset("t5-tiny", vocab_size=tok.get_vocab_size(), d_model=32, n_heads=2, head_dim=16, d_ff=64)
    model = randomise(genmodels.build_model(cfg)).eval()
    genmodels.save(model, tmp_path / "t5", tokenizer=tok)
    assert main(["generate", str(tmp_path / "t5"), "--prompt", "translate this", "--max-new-tokens", "6",
                 "--temperature", "0"]) == 0
    out = genmodels.generate(model, torch.tensor([tok.encode("translate this").ids]), max_new_tokens=6)
    assert capsys.readouterr().out == tok.decode(out[0].tolist(), skip_special_tokens=True) + "\n"
