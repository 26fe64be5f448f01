"""Weights both ways between transformers and genmodels, and the errors for checkpoints that do not fit."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

import genmodels
from genmodels.interop.base import ConversionError

from ._hf import MODEL_TOL, hf_from_dir, hf_model, random_ids, randomise, to_ours

torch.set_num_threads(1)
pytestmark = pytest.mark.parity

HF_VARIANTS = {
    "gpt2": ("gpt2", {}),
    "gpt2-untied": ("gpt2", {"tie_word_embeddings": False}),
    "llama-gqa": ("llama", {"num_key_value_heads": 2}),
    "llama-mqa-tied": ("llama", {"num_key_value_heads": 1, "tie_word_embeddings": True}),
    "mistral-window": ("mistral", {"sliding_window": 8}),
    "mixtral-window": ("mixtral", {"sliding_window": 8}),  # save_pretrained writes 4.x keys; export_hf 5.x
}


@pytest.mark.parametrize("name", list(HF_VARIANTS))
@torch.no_grad()
def test_hf_to_ours_to_hf(tmp_path, name):
    kind, kw = HF_VARIANTS[name]
    hf = hf_model(kind, **kw)
    ours = to_ours(hf, tmp_path / "hf")
    genmodels.export_hf(ours, tmp_path / "export")
    back = hf_from_dir(tmp_path / "export")
    assert type(back) is type(hf)
    a, b = hf.state_dict(), back.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    ids = random_ids(2, 20)
    torch.testing.assert_close(back(ids).logits, hf(ids).logits, atol=0, rtol=0)
    for key in ("vocab_size", "tie_word_embeddings", "sliding_window", "num_key_value_heads", "rms_norm_eps",
                "num_local_experts", "num_experts_per_tok", "intermediate_size",
                "layer_norm_epsilon", "activation_function", "n_positions", "max_position_embeddings"):
        assert getattr(back.config, key, None) == getattr(hf.config, key, None), key


OUR_PRESETS = {
    "llama-tiny-gqa": ("llama-tiny", dict(n_kv_heads=2)),
    "llama-tiny-tied-mqa": ("llama-tiny", dict(n_kv_heads=1, tie_embeddings=True)),
    "mistral-window": ("llama-tiny", dict(n_kv_heads=2, sliding_window=8)),
    "gpt2-tiny": ("gpt2-tiny", dict(d_ff=256, n_kv_heads=None)),
}


@pytest.mark.parametrize("name", list(OUR_PRESETS))
@torch.no_grad()
def test_ours_to_hf_to_ours(tmp_path, name):
    preset, kw = OUR_PRESETS[name]
    base = dict(vocab_size=128, d_model=64, n_layers=2, n_heads=4, d_ff=176, max_seq_len=128)
    cfg = genmodels.preset(preset, **{**base, **kw})
    ours = randomise(genmodels.build_model(cfg)).eval()
    genmodels.export_hf(ours, tmp_path / "hf")
    hf = hf_from_dir(tmp_path / "hf")
    assert hf.config._attn_implementation == "eager"
    ids = random_ids(2, 20, seed=2)
    torch.testing.assert_close(ours(ids), hf(ids).logits, **MODEL_TOL)
    back = genmodels.load(tmp_path / "hf")
    for k, v in ours.state_dict().items():
        assert torch.equal(back.state_dict()[k], v), k
    assert torch.equal(back(ids), ours(ids))
    # and HF's own save_pretrained of that model loads back too
    hf.save_pretrained(tmp_path / "hf2")
    torch.testing.assert_close(genmodels.load(tmp_path / "hf2")(ids), ours(ids), atol=0, rtol=0)


@pytest.mark.parametrize("name", ["gpt2", "llama-gqa", "llama-mqa-tied"])
@torch.no_grad()
def test_legacy_pytorch_model_bin_loads(tmp_path, name):
    kind, kw = HF_VARIANTS[name]
    hf = hf_model(kind, **kw)
    hf.config.save_pretrained(tmp_path)
    torch.save(hf.state_dict(), tmp_path / "pytorch_model.bin")
    assert not list(tmp_path.glob("*.safetensors"))
    ours = genmodels.load(tmp_path)
    ids = random_ids(2, 20, seed=3)
    torch.testing.assert_close(ours(ids), hf(ids).logits, **MODEL_TOL)


@torch.no_grad()
def test_bare_gpt2_model_checkpoint_loads(tmp_path):
    """A ``GPT2Model`` checkpoint (no ``transformer.`` prefix, no head) loads with the tied head."""
    hf = hf_model("gpt2")
    hf.transformer.save_pretrained(tmp_path)
    ours = genmodels.load(tmp_path)
    ids = random_ids(2, 20, seed=4)
    torch.testing.assert_close(ours(ids), hf(ids).logits, **MODEL_TOL)


def test_save_load_after_hf_import_is_exact(tmp_path):
    ours = to_ours(hf_model("mistral", sliding_window=8), tmp_path / "hf")
    genmodels.save(ours, tmp_path / "ours")
    back = genmodels.load(tmp_path / "ours")
    assert back.config == ours.config
    ids = random_ids(2, 20)
    with torch.no_grad():
        assert torch.equal(back(ids), ours(ids))
    genmodels.export_hf(back, tmp_path / "again")  # remembers it came from Mistral
    assert json.loads((tmp_path / "again" / "config.json").read_text())["architectures"] == ["MistralForCausalLM"]


# ---- partial rotary: HF Llama/Mistral always rotate the full head ----------------------------------
@torch.no_grad()
def test_partial_rotary_export_is_not_silently_wrong(tmp_path):
    cfg = genmodels.preset("llama-tiny", vocab_size=128, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=176,
                           rotary_fraction=0.5)
    ours = randomise(genmodels.build_model(cfg)).eval()
    try:
        genmodels.export_hf(ours, tmp_path / "hf")
    except ConversionError as e:  # refusing is a correct outcome
        assert "rotary_fraction" in str(e)
        return
    ids = random_ids(2, 20)
    torch.testing.assert_close(ours(ids), hf_from_dir(tmp_path / "hf")(ids).logits, **MODEL_TOL)


@torch.no_grad()
def test_llama_config_with_partial_rotary_factor_loads_like_hf(tmp_path):
    """transformers' Llama ignores rope_parameters.partial_rotary_factor (it rotates the whole head): the folder
    must load (any refusal used to end this test green) as a full rotation, equal to HF."""
    hf = hf_model("llama", num_key_value_heads=2,
                  rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.5})
    ours = to_ours(hf, tmp_path / "hf")
    assert ours.config.rotary_fraction == 1.0
    ids = random_ids(2, 20)
    torch.testing.assert_close(ours(ids), hf(ids).logits, **MODEL_TOL)


# ---- configs transformers cannot express must not export silently wrong -----------------------------
UNEXPORTABLE = {  # name: (preset, overrides) — none of these has an equivalent in the exported HF class
    "llama-post-norm": ("llama-tiny", dict(norm_placement="post")),
    "llama-unscaled-attention": ("llama-tiny", dict(attn_scale=1.0)),
    "llama-out-bias-only": ("llama-tiny", dict(attn_out_bias=True)),
    "gpt2-sliding-window": ("gpt2-tiny", dict(sliding_window=4, n_kv_heads=None)),
    "gpt2-no-mlp-bias": ("gpt2-tiny", dict(mlp_bias=False, n_kv_heads=None)),
    "gpt2-no-final-norm": ("gpt2-tiny", dict(final_norm=False, n_kv_heads=None)),
}


@pytest.mark.parametrize("name", list(UNEXPORTABLE))
@torch.no_grad()
def test_export_refuses_or_matches(tmp_path, name):
    preset, kw = UNEXPORTABLE[name]
    base = dict(vocab_size=128, d_model=64, n_layers=2, n_heads=4, d_ff=176, max_seq_len=128)
    ours = randomise(genmodels.build_model(genmodels.preset(preset, **{**base, **kw}))).eval()
    try:
        genmodels.export_hf(ours, tmp_path / "hf")
    except ConversionError as e:  # refusing, naming the field, is a correct outcome
        assert any(field in str(e) for field in kw)
        return
    ids = random_ids(2, 16)
    torch.testing.assert_close(ours(ids), hf_from_dir(tmp_path / "hf")(ids).logits, **MODEL_TOL)


# ---- errors for checkpoints that do not fit -------------------------------------------------------
@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory):
    out = {}
    for kind, kw in (("llama", {"num_key_value_heads": 2}), ("gpt2", {})):
        d = tmp_path_factory.mktemp(kind)
        hf_model(kind, **kw).save_pretrained(d)
        out[kind] = d
    return out


def edited_copy(src, dst, edit):
    dst.mkdir()
    (dst / "config.json").write_text((src / "config.json").read_text())
    sd = load_file(str(src / "model.safetensors"))
    edit(sd)
    save_file(sd, str(dst / "model.safetensors"))
    return dst


@pytest.mark.parametrize("kind,key", [("llama", "model.layers.1.mlp.down_proj.weight"),
                                      ("llama", "model.layers.0.self_attn.k_proj.weight"),
                                      ("llama", "lm_head.weight"),
                                      ("gpt2", "transformer.h.1.attn.c_attn.weight"),
                                      ("gpt2", "transformer.wpe.weight")])
def test_missing_key_is_named(tmp_path, hf_dirs, kind, key):
    d = edited_copy(hf_dirs[kind], tmp_path / "m", lambda sd: sd.pop(key))
    with pytest.raises(ConversionError, match=key.replace(".", r"\.")):
        genmodels.load(d)


@pytest.mark.parametrize("kind,key", [("llama", "model.layers.5.self_attn.q_proj.weight"),
                                      ("llama", "model.extra_thing"), ("gpt2", "transformer.h.0.attn.extra")])
def test_extra_key_is_named(tmp_path, hf_dirs, kind, key):
    d = edited_copy(hf_dirs[kind], tmp_path / "m", lambda sd: sd.update({key: torch.zeros(3)}))
    with pytest.raises(ConversionError, match="unexpected keys") as e:
        genmodels.load(d)
    assert key in str(e.value)


@pytest.mark.parametrize("kind,key,shape", [
    ("llama", "model.layers.0.mlp.down_proj.weight", (64, 100)),
    ("llama", "model.norm.weight", (65,)),
    ("llama", "model.layers.1.self_attn.v_proj.weight", (48, 64)),
    ("gpt2", "transformer.h.0.mlp.c_proj.weight", (100, 64)),
])
def test_wrong_shape_raises_conversion_error(tmp_path, hf_dirs, kind, key, shape):
    """The message names the checkpoint's own key and the shape stored in the file."""
    d = edited_copy(hf_dirs[kind], tmp_path / "m", lambda sd: sd.update({key: torch.zeros(shape)}))
    with pytest.raises(ConversionError, match="wrong shape") as e:
        genmodels.load(d)
    assert key in str(e.value) and str(tuple(shape)) in str(e.value)


@pytest.mark.parametrize("key,shape", [("model.layers.0.self_attn.q_proj.weight", (64, 32)),
                                       ("model.layers.1.mlp.up_proj.weight", (176, 63))])
def test_wrong_shape_in_fused_projection_is_a_conversion_error(tmp_path, hf_dirs, key, shape):
    d = edited_copy(hf_dirs["llama"], tmp_path / "m", lambda sd: sd.update({key: torch.zeros(shape)}))
    with pytest.raises(ConversionError, match=key.replace(".", r"\.")):
        genmodels.load(d)


@pytest.mark.parametrize("kind,key,shape", [
    ("llama", "model.layers.0.mlp.down_proj.weight", (64, 100)),
    ("llama", "model.layers.1.self_attn.v_proj.weight", (48, 64)),
    ("gpt2", "transformer.h.0.mlp.c_proj.weight", (100, 64)),
])
def test_wrong_shape_names_the_checkpoint_key(tmp_path, hf_dirs, kind, key, shape):
    d = edited_copy(hf_dirs[kind], tmp_path / "m", lambda sd: sd.update({key: torch.zeros(shape)}))
    with pytest.raises(ConversionError) as e:
        genmodels.load(d)
    assert key in str(e.value) and str(shape) in str(e.value)


def test_unsupported_architecture_names_it(tmp_path, hf_dirs):
    d = tmp_path / "m"
    d.mkdir()
    cfg = json.loads((hf_dirs["llama"] / "config.json").read_text())
    cfg.update(architectures=["FooForCausalLM"], model_type="foo")
    (d / "config.json").write_text(json.dumps(cfg))
    (d / "model.safetensors").write_bytes((hf_dirs["llama"] / "model.safetensors").read_bytes())
    with pytest.raises(ConversionError, match="FooForCausalLM") as e:
        genmodels.load(d)
    assert "supported" in str(e.value)
    for arch in ("GPT2LMHeadModel", "LlamaForCausalLM", "MistralForCausalLM"):
        assert arch in str(e.value)
