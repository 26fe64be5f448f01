"""Issue #8, deliverables 7b and 9a, and read errors: what transformers loads, genmodels loads; a config
too large for this machine is refused before anything is allocated; a broken file in a model folder
is one line naming it."""
from __future__ import annotations

import json
import warnings

import pytest
import torch

import genmodels
from genmodels import io
from genmodels.models.flops import count_parameters, parameter_count
from tests.helpers.tiny import random_ids, tiny_model

transformers = pytest.importorskip("transformers")

GB = 10 ** 9
SMALL = dict(vocab_size=300, d_model=64, n_layers=2, n_heads=4, d_ff=96, max_seq_len=50)


# ---- 7b: the estimate, and the refusal before allocation ---------------------------------------------
@pytest.mark.parametrize("preset,kw", [
    ("gpt2-tiny", {}), ("gpt2-tiny", {"tie_embeddings": False}),
    ("llama-tiny", {}), ("llama-tiny", {"tie_embeddings": True, "attn_bias": True, "head_dim": 48}),
    ("bert-tiny", {}), ("bert-tiny", {"pooler": True, "mlm_head": True, "tie_embeddings": False}),
    ("t5-tiny", {}), ("t5-tiny", {"tie_embeddings": False, "mlp": "geglu_tanh", "n_decoder_layers": 3}),
    ("transformer-tiny", {}),
])
def test_parameter_estimate_equals_built_model(preset, kw):
    cfg = genmodels.preset(preset, **{**SMALL, **kw})
    assert parameter_count(cfg) == count_parameters(genmodels.build_model(cfg))


@pytest.fixture
def no_build(monkeypatch):
    """Building a model is a test failure: the refusal must come first."""
    def fail(cfg):
        raise AssertionError("build_model called before the memory check")
    monkeypatch.setattr(io, "build_model", fail)
    monkeypatch.setattr(io, "machine_memory", lambda: 16 * GB)


def test_huge_genmodels_config_refused_before_allocation(tmp_path, no_build):
    cfg = genmodels.preset("gpt2-tiny", d_model=1_000_000, n_heads=4, d_ff=1024)
    (tmp_path / "config.json").write_text(json.dumps({"format": "genmodels", "model": cfg.to_dict()}))
    with pytest.raises(genmodels.ConfigError) as e:  # no model.safetensors: the check comes first
        genmodels.load(tmp_path)
    msg = str(e.value)
    assert str(tmp_path / "config.json") in msg and "16 GB" in msg and f"{parameter_count(cfg):,}" in msg
    assert f"~{parameter_count(cfg) * 4 / GB:.3g} GB" in msg and "\n" not in msg


def test_huge_hf_config_refused_before_allocation(tmp_path, no_build):
    transformers.GPT2Config(n_embd=200_000, n_head=4, n_layer=4, vocab_size=50257).save_pretrained(tmp_path)
    with pytest.raises(genmodels.ConfigError, match=r"config\.json: this model needs ~.* more than this machine's"):
        genmodels.load(tmp_path)  # no weights file at all: refused before reading weights


def test_memory_limit_is_the_machines(tmp_path, monkeypatch):
    """The same small model loads with enough memory and is refused with too little."""
    genmodels.save(tiny_model("gpt2", d_ff=128), tmp_path)
    monkeypatch.setattr(io, "machine_memory", lambda: 10 ** 12)
    genmodels.load(tmp_path)
    monkeypatch.setattr(io, "machine_memory", lambda: 1000)
    with pytest.raises(genmodels.ConfigError, match="more than this machine's"):
        genmodels.load(tmp_path)


# ---- 9a: special ids outside the vocabulary load as None, with one warning -----------------------------
@torch.no_grad()
def test_gpt2_with_default_special_ids_and_small_vocab_loads(tmp_path):
    hf_cfg = transformers.GPT2Config(vocab_size=157, n_layer=2, n_head=4, n_embd=32, n_positions=64)
    assert hf_cfg.bos_token_id == 50256 and hf_cfg.eos_token_id == 50256
    hf = transformers.GPT2LMHeadModel(hf_cfg).eval()
    hf.save_pretrained(tmp_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ours = genmodels.load(tmp_path)
    ours_warnings = [w for w in caught if "outside the vocabulary" in str(w.message)]
    assert len(ours_warnings) == 1
    assert "bos_token_id=50256" in str(ours_warnings[0].message) and "eos_token_id" in str(ours_warnings[0].message)
    assert ours.config.bos_token_id is None and ours.config.eos_token_id is None
    ids = random_ids(2, 10) % 157
    torch.testing.assert_close(ours(ids), hf(ids).logits, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("arch,hf,field", [
    ("LlamaForCausalLM", dict(model_type="llama", vocab_size=100, hidden_size=32, num_hidden_layers=1,
                              num_attention_heads=2, intermediate_size=64, bos_token_id=1, eos_token_id=2,
                              pad_token_id=100), "pad_token_id"),
    ("BertModel", dict(model_type="bert", vocab_size=50, pad_token_id=50), "pad_token_id"),
    ("T5ForConditionalGeneration", dict(model_type="t5", vocab_size=64, eos_token_id=64), "eos_token_id"),
])
def test_every_converter_drops_out_of_vocabulary_ids(arch, hf, field):
    from genmodels.interop.hf import converter_for_hf
    hf = {**hf, "architectures": [arch]}
    with pytest.warns(UserWarning, match=field) as rec:
        cfg = converter_for_hf(hf).config_from_hf(hf)
    assert len(rec) == 1 and getattr(cfg, field) is None


def test_t5_out_of_vocabulary_decoder_start_falls_back_to_pad():
    """An unusable decoder_start_token_id is dropped (warned), then T5's rule applies: start with pad."""
    from genmodels.interop.t5_hf import T5Converter
    with pytest.warns(UserWarning, match="decoder_start_token_id=32000"):
        cfg = T5Converter().config_from_hf(dict(model_type="t5", vocab_size=64, decoder_start_token_id=32000))
    assert cfg.decoder_start_token_id == cfg.pad_token_id == 0


# ---- a broken file is one line naming it ----------------------------------------------------------------
@pytest.fixture
def saved(tmp_path):
    from tokenizers import Tokenizer, models
    d = tmp_path / "m"
    genmodels.save(tiny_model("gpt2", d_ff=128), d, tokenizer=Tokenizer(models.BPE()))
    return d


def _one_line_naming(exc_info, file):
    msg = str(exc_info.value)
    assert str(file) in msg and "\n" not in msg, msg


@pytest.mark.parametrize("text", ['{"format": "genmodels", "model": {', "\xff\xfe", "[1, 2]"])
def test_corrupt_config_json_is_named(saved, text):
    (saved / "config.json").write_bytes(text.encode("latin-1"))
    with pytest.raises(ValueError) as e:
        genmodels.load(saved)
    _one_line_naming(e, saved / "config.json")


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_broken_safetensors_is_named(saved, damage):
    f = saved / "model.safetensors"
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"\x00garbage" * 100)
    with pytest.raises(ValueError) as e:
        genmodels.load(saved)
    _one_line_naming(e, f)


def test_unreadable_tokenizer_is_named(saved):
    (saved / "tokenizer.json").write_text('{"version": "1.0", "model": 42}')
    with pytest.raises(ValueError) as e:
        genmodels.load(saved)
    _one_line_naming(e, saved / "tokenizer.json")


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_corrupt_pytorch_model_bin_is_named(tmp_path, damage):
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(vocab_size=64, n_layer=1, n_head=2, n_embd=16,
                                                              n_positions=32, bos_token_id=0, eos_token_id=0))
    hf.config.save_pretrained(tmp_path)
    f = tmp_path / "pytorch_model.bin"
    torch.save(hf.state_dict(), f)
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"not a pickle" * 50)
    with pytest.raises(ValueError) as e:
        genmodels.load(tmp_path)
    _one_line_naming(e, f)


@pytest.mark.parametrize("file,text", [("modules.json", "[{"), ("modules.json", '{"a": 1}'),
                                       ("1_Pooling/config.json", "{oops")])
def test_a_broken_sentence_transformers_file_is_named(saved, file, text):
    """A folder with sentence-transformers files: a broken one is named (interop/sentence_transformers.py)."""
    (saved / "1_Pooling").mkdir(exist_ok=True)
    (saved / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]))
    (saved / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_mean_tokens": True}))
    (saved / file).write_text(text)
    with pytest.raises(ValueError) as e:
        genmodels.load(saved)
    _one_line_naming(e, saved / file)
