"""genmodels.save / load / export_hf without a reference library: exact round trips and the errors a
user sees for a checkpoint that does not fit."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

import genmodels
from genmodels.interop.base import ConversionError

from tests.helpers.tiny import random_ids, tiny_model

torch.set_num_threads(1)


def assert_same_model(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k
    ids = random_ids(2, 16)
    with torch.no_grad():
        assert torch.equal(a(ids), b(ids))


@pytest.mark.parametrize("kind,kw", [("llama", {}), ("llama", {"tie_embeddings": True}), ("gpt2", {}),
                                     ("llama", {"sliding_window": 6, "n_kv_heads": 1}),
                                     ("gpt2", {"position": "alibi", "norm_bias": False})])
def test_save_load_is_exact(tmp_path, kind, kw):
    model = tiny_model(kind, **kw)
    genmodels.save(model, tmp_path / "m")
    assert json.loads((tmp_path / "m" / "config.json").read_text())["format"] == "genmodels"
    back = genmodels.load(tmp_path / "m")
    assert not back.training
    assert back.config == model.config
    assert_same_model(model, back)
    if model.config.tie_embeddings:
        assert back.head.get_weight() is back.embed.weight


def test_save_overwrites_atomically(tmp_path):
    a, b = tiny_model("llama", seed=0), tiny_model("llama", seed=1)
    genmodels.save(a, tmp_path / "m")
    genmodels.save(b, tmp_path / "m")
    assert_same_model(genmodels.load(tmp_path / "m"), b)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]  # no temp folders left behind


@pytest.mark.parametrize("kind,kw", [("llama", {}), ("llama", {"tie_embeddings": True, "n_kv_heads": 1}),
                                     ("llama", {"sliding_window": 6}), ("gpt2", {})])
def test_export_hf_then_load_is_exact(tmp_path, kind, kw):
    """ours → Hugging Face directory → ours, through the converters both ways (no transformers)."""
    model = tiny_model(kind, **kw)
    genmodels.export_hf(model, tmp_path / "hf")
    hf_cfg = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert hf_cfg["architectures"] == [{"llama": "MistralForCausalLM" if kw.get("sliding_window") else
                                        "LlamaForCausalLM", "gpt2": "GPT2LMHeadModel"}[kind]]
    back = genmodels.load(tmp_path / "hf")
    assert_same_model(model, back)


# ---- errors -------------------------------------------------------------------------------------
@pytest.fixture
def saved(tmp_path):
    genmodels.save(tiny_model("llama"), tmp_path / "m")
    return tmp_path / "m"


def rewrite(path, edit):
    f = path / "model.safetensors"
    sd = load_file(str(f))
    edit(sd)
    save_file(sd, str(f))


def test_missing_key_is_named(saved):
    rewrite(saved, lambda sd: sd.pop("blocks.1.mlp.down.weight"))
    with pytest.raises(ConversionError, match=r"missing keys: blocks\.1\.mlp\.down\.weight"):
        genmodels.load(saved)


def test_extra_key_is_named(saved):
    rewrite(saved, lambda sd: sd.update({"blocks.9.surprise": torch.zeros(2)}))
    with pytest.raises(ConversionError, match=r"unexpected keys: blocks\.9\.surprise"):
        genmodels.load(saved)


def test_wrong_shape_is_named(saved):
    rewrite(saved, lambda sd: sd.update({"norm.weight": torch.zeros(65)}))
    with pytest.raises(ConversionError, match=r"wrong shape for norm\.weight.*\(65,\).*\(64,\)"):
        genmodels.load(saved)


def test_unsupported_architecture_lists_supported(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["FooForCausalLM"], "model_type": "foo"}))
    with pytest.raises(ConversionError, match="FooForCausalLM") as e:
        genmodels.load(tmp_path)
    for arch in ("GPT2LMHeadModel", "LlamaForCausalLM", "MistralForCausalLM"):
        assert arch in str(e.value)


def test_bad_genmodels_config_names_field(saved):
    cfg = json.loads((saved / "config.json").read_text())
    cfg["model"]["d_modle"] = 3
    (saved / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(genmodels.ConfigError, match="d_modle"):
        genmodels.load(saved)


def test_not_a_model_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        genmodels.load(tmp_path)
    with pytest.raises(FileNotFoundError, match="no such file or folder"):
        genmodels.load(tmp_path / "nope")
    (tmp_path / "notes.txt").write_text("notes")
    with pytest.raises(FileNotFoundError, match="not a directory"):
        genmodels.load(tmp_path / "notes.txt")
