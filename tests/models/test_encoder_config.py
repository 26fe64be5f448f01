"""Encoder / seq2seq presets and the config checks that guard them."""
from __future__ import annotations

import pytest

import genmodels
from genmodels.config import ConfigError


def test_presets_describe_the_published_layouts():
    b = genmodels.preset("bert-base")
    assert (b.norm_placement, b.norm_eps, b.mlp, b.type_vocab_size, b.embedding_norm, b.final_norm) == \
        ("post", 1e-12, "gelu", 2, True, False)
    m = genmodels.preset("minilm-l6")
    assert (m.d_model, m.n_layers, m.n_heads, m.d_ff, m.pooler, m.mlm_head) == (384, 6, 12, 1536, True, False)
    t = genmodels.preset("t5-small")
    assert (t.attn_scale, t.attn_bias, t.norm, t.mlp, t.position) == (1.0, False, "rmsnorm", "relu", "relative")
    assert t.output_scale == pytest.approx(512 ** -0.5) and t.tie_embeddings
    assert genmodels.preset("t5-tiny").output_scale == pytest.approx(128 ** -0.5)
    v11 = genmodels.preset("t5-v1_1-small")
    assert (v11.mlp, v11.tie_embeddings, v11.output_scale) == ("geglu_tanh", False, None)
    o = genmodels.preset("transformer-base")
    assert (o.position, o.norm_placement, o.attn_scale, o.embed_scale) == ("sinusoidal", "post", None, 512 ** 0.5)
    for name in ("bert-tiny", "minilm-l6", "t5-tiny", "transformer-tiny"):
        c = genmodels.preset(name)
        assert genmodels.ModelConfig.from_dict(c.to_dict()) == c  # JSON round trip


@pytest.mark.parametrize("kw,field", [
    (dict(family="encoder", position="rope"), "position"),
    (dict(family="seq2seq", position="alibi"), "position"),
    (dict(family="decoder", position="relative"), "position"),
    (dict(family="decoder", embed_scale=2.0), "embed_scale"),
    (dict(family="encoder", position="learned", embed_scale=0.0), "embed_scale"),
])
def test_bad_combinations_name_the_field(kw, field):
    with pytest.raises(ConfigError, match=field):
        genmodels.ModelConfig(**kw)
