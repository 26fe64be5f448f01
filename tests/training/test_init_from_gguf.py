"""``model.init_from: x.gguf``: a run starts from a GGUF file (llama.cpp's one file, as SmolLM2-135M-Instruct is
installed) as from a model folder — the model section from its metadata, its weights, its tokenizer (written as
RUN/tokenizer.json, read back with the same ids) and its chat template; a resume reloads the base from the file
(LoRA runs too, whose final/ names the file as its base); a missing or garbled file is refused in one line naming
model.init_from. Tiny files are written here (tests/helpers/gguf_files.py); the real SmolLM2 file is only opened
for its config and tokenizer (a few seconds, no weights)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

import genmodels
from genmodels.cli import main
from genmodels.config import ConfigError
from genmodels.data import load_tokenizer
from genmodels.training import RunConfig, train

from tests.helpers.gguf_files import SAMPLE, byte_level_tokenizer, tiny_llama, write_llama_gguf
from tests.training.conftest import losses
from tests.training.test_init_from import _start_weights

EXAMPLES = Path(__file__).resolve().parents[1] / "fixtures" / "examples" / "sft.jsonl"
TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
            "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
TRAIN = {"batch_size": 4, "max_steps": 4, "warmup_steps": 1, "lr": 1e-2, "eval_every": 2, "ckpt_every": 2,
         "eval_batches": 1, "threads": 1, "mfu_peak_tflops": 0.1}


@pytest.fixture(scope="module")
def gguf_file(tmp_path_factory) -> Path:
    """A random tiny Llama (GQA, untied) with a byte-level BPE tokenizer and a chat template, in F32."""
    add, n = byte_level_tokenizer()

    def tokenizer(w):
        add(w)
        w.add_chat_template(TEMPLATE)
    cfg, sd = tiny_llama(vocab=n, d=64, heads=4, kv_heads=2, d_ff=96, layers=2, seed=3)
    path = tmp_path_factory.mktemp("gguf") / "tiny.gguf"
    write_llama_gguf(path, cfg, sd, tokenizer=tokenizer)
    return path


def causal_recipe(gguf: Path, corpus: Path, run: Path, **train_over) -> dict:
    return {"model": {"init_from": str(gguf)},
            "data": {"corpus": "folder", "path": str(corpus), "seq_len": 32, "val_fraction": 0.2},
            "train": {**TRAIN, **train_over}, "sample": {"prompts": []}, "run_dir": str(run)}


def sft_lora_recipe(gguf: Path, run: Path, **train_over) -> dict:
    return {"model": {"init_from": str(gguf)},
            "data": {"kind": "examples", "path": str(EXAMPLES), "seq_len": 128, "val_fraction": 0.2},
            "train": {**TRAIN, "objective": "sft", "grad_accum": 2,
                      "lora": {"targets": "q,v", "r": 4, "alpha": 8}, **train_over},
            "sample": {"prompts": []}, "run_dir": str(run)}


def _quiet(cfg: dict, resume: bool = False, log=lambda s: None):
    return train(RunConfig.from_dict(cfg), resume=resume, progress=False, log=log)


def test_a_causal_run_starts_from_the_files_model_tokenizer_and_resumes_bit_for_bit(gguf_file, corpus_dir,
                                                                                     tmp_path, monkeypatch):
    source = genmodels.load(gguf_file)
    seen = _start_weights(monkeypatch)
    whole, part = tmp_path / "whole", tmp_path / "part"
    _quiet(causal_recipe(gguf_file, corpus_dir, whole))
    # the model section is the file's config; the first weights are its weights
    section = yaml.safe_load((whole / "config.yaml").read_text())["model"]
    assert section["d_model"] == 64 and section["n_kv_heads"] == 2 and section["vocab_size"] == source.config.vocab_size
    want = source.state_dict()
    assert set(seen) == set(want) and all(torch.equal(seen[k], want[k]) for k in want)
    # RUN/tokenizer.json is the file's tokenizer: read back, the same ids
    back = load_tokenizer(whole / "tokenizer.json")
    assert back.encode(SAMPLE).ids == source.tokenizer.encode(SAMPLE).ids
    assert back.to_str() == source.tokenizer.to_str()
    # 2 steps, then --resume to 4 (the base and the tokenizer read again): the same losses, bit for bit
    _quiet(causal_recipe(gguf_file, corpus_dir, part, max_steps=2))
    _quiet(causal_recipe(gguf_file, corpus_dir, part), resume=True)
    assert sorted(losses(whole)) == [1, 2, 3, 4] and losses(part) == losses(whole)
    assert losses(part, "val_loss") == losses(whole, "val_loss")


def test_an_sft_lora_run_from_the_file_keeps_its_template_and_names_it_as_base(gguf_file, tmp_path):
    whole, part = tmp_path / "whole", tmp_path / "part"
    said: list[str] = []
    _quiet(sft_lora_recipe(gguf_file, whole), log=said.append)
    assert any("its own chat template" in s for s in said), said
    assert (whole / "chat_template.jinja").read_text() == TEMPLATE
    # 2 steps, then --resume to 4: the base comes from the file again; the same losses, bit for bit
    _quiet(sft_lora_recipe(gguf_file, part, max_steps=2))
    _quiet(sft_lora_recipe(gguf_file, part), resume=True)
    assert sorted(losses(whole)) == [1, 2, 3, 4] and losses(part) == losses(whole)
    # final/: the adapter over the file, read back by genmodels.load with the template it trained with
    adapter = json.loads((whole / "final" / "adapter_config.json").read_text())
    assert Path(adapter["base_model_name_or_path"]) == gguf_file.resolve()
    loaded = genmodels.load(whole / "final")
    assert loaded.chat_template == TEMPLATE
    ids = torch.tensor([[1, 5, 9, 3, 7]])
    with torch.no_grad():
        assert not torch.allclose(loaded(ids), genmodels.load(gguf_file)(ids))  # the adapter trained


@pytest.mark.parametrize("fault, why", [
    ("missing", "is not an existing folder or file"),
    ("garbled", "is not a readable GGUF file (not a GGUF file (starts with b'not '"),
    ("truncated", "is not a readable GGUF file"),
])
@pytest.mark.parametrize("section", ["only", "preset"])
def test_a_missing_or_garbled_file_is_refused_naming_model_init_from(fault, why, section, gguf_file, tmp_path):
    path = tmp_path / "bad.gguf"
    if fault == "garbled":
        path.write_bytes(b"not a model at all")
    elif fault == "truncated":
        path.write_bytes(gguf_file.read_bytes()[:600])  # the magic, then the metadata cut short
    cfg = sft_lora_recipe(path, tmp_path / "run")
    if section == "preset":  # (else the model section is read from the file)
        cfg["model"] = {"preset": "llama-tiny", "init_from": str(path)}
    with pytest.raises(ConfigError) as e:
        _quiet(cfg)
    msg = str(e.value)
    assert msg.startswith(f"model.init_from={str(path)!r} {why}") and "\n" not in msg, msg


def test_the_cli_refuses_a_garbled_file_in_one_line(tmp_path, capsys):
    (tmp_path / "bad.gguf").write_bytes(b"GGUF" + b"\xff" * 40)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(sft_lora_recipe(tmp_path / "bad.gguf", tmp_path / "run")))
    assert main(["train", str(recipe)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: model.init_from=") and "\n" not in err and "Traceback" not in err, err
    assert "is not a readable GGUF file (" in err, err


def test_smollm2_as_init_from_gives_its_config_tokenizer_and_template(smollm2_reference):
    """The real chat model people fine-tune, as a fresh run reads it (no weights: a few seconds): the model section
    from its metadata; its tokenizer, saved as RUN/tokenizer.json and read back, gives transformers' ids; its
    template renders as transformers renders it."""
    from tokenizers import Tokenizer

    from genmodels.data.chat_template import render
    from genmodels.data.examples_kind import run_tokenizer, started
    from tests.parity.transformers.make_gguf_reference import QUESTION, smollm2_file
    path = smollm2_file()
    cfg = RunConfig.from_dict(sft_lora_recipe(path, Path("/nonexistent-run")))
    m = cfg.model_config()
    assert (m.family, m.d_model, m.n_layers, m.n_heads, m.n_kv_heads, m.vocab_size) == ("decoder", 576, 30, 9, 3, 49152)
    assert m.tie_embeddings and cfg.init_from == str(path)
    tok, _, template = run_tokenizer(started(cfg.data, cfg.init_from))
    saved = Tokenizer.from_str(tok.to_str())  # what RUN/tokenizer.json holds
    assert saved.encode(SAMPLE).ids == tok.encode(SAMPLE).ids == smollm2_reference["sample_ids"]
    assert render(template, QUESTION, add_generation_prompt=True) == smollm2_reference["chat_prompt"]
