"""ModelConfig: unknown keys and bad values fail loudly, naming the field; JSON round trip; presets."""
from __future__ import annotations

import pytest

import genmodels
from genmodels import ConfigError, ModelConfig


def test_unknown_key_is_named():
    with pytest.raises(ConfigError, match="d_modle") as e:
        ModelConfig.from_dict({"d_modle": 3})
    assert "d_model" in str(e.value)  # lists the allowed keys


@pytest.mark.parametrize("kw,field,allowed", [
    (dict(norm="batchnorm"), "norm", "rmsnorm"),
    (dict(position="xpos2"), "position", "rope"),
    (dict(mlp="swish"), "mlp", "swiglu"),
    (dict(family="rnn"), "family", "decoder"),
    (dict(norm_placement="middle"), "norm_placement", "pre"),
])
def test_bad_choice_names_field_and_allowed_values(kw, field, allowed):
    with pytest.raises(ConfigError) as e:
        ModelConfig(**kw)
    msg = str(e.value)
    assert f"model.{field}" in msg and repr(kw[field]) in msg and allowed in msg


@pytest.mark.parametrize("kw,field", [
    (dict(n_heads=4, n_kv_heads=3, d_model=64), "n_kv_heads"),
    (dict(d_model=0), "d_model"),
    (dict(n_layers=-1), "n_layers"),
    (dict(vocab_size=1.5), "vocab_size"),
    (dict(sliding_window=0), "sliding_window"),
    (dict(n_kv_heads=0), "n_kv_heads"),
    (dict(d_model=65, n_heads=4), "d_model"),
    (dict(rotary_fraction=1.5), "rotary_fraction"),
    (dict(rotary_fraction=0.0), "rotary_fraction"),
    (dict(dropout=1.0), "dropout"),
    (dict(norm_eps=0.0), "norm_eps"),
])
def test_bad_value_names_field(kw, field):
    with pytest.raises(ConfigError, match=f"model.{field}"):
        ModelConfig(**kw)


def test_from_dict_validates_values_too():
    with pytest.raises(ConfigError, match="model.norm"):
        ModelConfig.from_dict({"norm": "batchnorm"})
    with pytest.raises(ConfigError, match="n_kv_heads"):
        ModelConfig().replace(n_heads=4, n_kv_heads=3, d_model=64)


def test_valid_grouped_and_multi_query():
    assert ModelConfig(d_model=64, n_heads=4, n_kv_heads=2).kv_heads == 2
    assert ModelConfig(d_model=64, n_heads=4, n_kv_heads=1).kv_heads == 1
    assert ModelConfig(d_model=64, n_heads=4).kv_heads == 4
    assert ModelConfig(d_model=64, n_heads=4).dim_head == 16


def test_json_round_trip(tmp_path):
    cfg = genmodels.preset("mistral-7b", vocab_size=128, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2,
                           d_ff=176, sliding_window=8, extra={"note": "x"})
    cfg.save(tmp_path / "c.json")
    assert ModelConfig.load(tmp_path / "c.json") == cfg
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg


def test_presets():
    g = genmodels.preset("gpt2")
    assert (g.position, g.norm, g.mlp, g.tie_embeddings, g.attn_bias) == ("learned", "layernorm", "gelu_tanh",
                                                                         True, True)
    ll = genmodels.preset("llama2-7b")
    assert (ll.position, ll.norm, ll.mlp, ll.tie_embeddings, ll.norm_eps) == ("rope", "rmsnorm", "swiglu", False,
                                                                             1e-5)
    assert genmodels.preset("mistral-7b").sliding_window == 4096
    assert genmodels.preset("llama-tiny", d_model=64).d_model == 64
    with pytest.raises(ConfigError, match="llama-tiny"):
        genmodels.preset("llama-huge")
    with pytest.raises(ConfigError, match="d_modle"):
        genmodels.preset("llama-tiny", d_modle=64)


@pytest.mark.parametrize("kw,field", [
    (dict(norm_eps="1e-5"), "norm_eps"),
    (dict(dropout="0.1"), "dropout"),
    (dict(tie_embeddings="false"), "tie_embeddings"),
    (dict(attn_bias="no"), "attn_bias"),
    (dict(rope_theta=-1.0), "rope_theta"),
])
def test_wrongly_typed_value_names_field(kw, field):
    with pytest.raises(ConfigError, match=f"model.{field}"):
        ModelConfig(**kw)
