"""Mixtral against transformers 5.24 (llm-anchors §5 test 9; retnet-moe-gist §2 tests 1): the sparse
block at 1e-6 with the same experts picked, a 2-layer MixtralForCausalLM (every parameter randomised)
at 1e-5 with greedy generation identical, checkpoints both ways and the exports HF cannot express
refused by name.

Two checkpoint layouts reach ``genmodels.load``: transformers 5.24's own ``save_pretrained`` writes
the 4.x per-expert keys (``block_sparse_moe.experts.{e}.w1/w2/w3``, converted back on save), and a
5.x state dict saved as is holds the stacked ``mlp.experts.gate_up_proj`` / ``down_proj`` (what
``export_hf`` writes); every model test runs on both."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from ._hf import (MODEL_TOL, MODULE_TOL, hf_from_dir, hf_model, hf_position_ids, left_pad_mask,  # first: skips
                  random_ids, randomise, to_ours)  # the module without transformers

import genmodels  # noqa: E402
from genmodels.cli import main  # noqa: E402
from genmodels.interop.base import ConversionError  # noqa: E402
from genmodels.interop.decoder_hf import GPT2Converter, LlamaConverter, MistralConverter  # noqa: E402
from genmodels.interop.mixtral_hf import MixtralConverter  # noqa: E402
from genmodels.nn.moe import SparseMoE, record_routing  # noqa: E402
from transformers import MixtralConfig  # noqa: E402
from transformers.models.mixtral.modeling_mixtral import MixtralSparseMoeBlock  # noqa: E402

torch.set_num_threads(1)
pytestmark = pytest.mark.parity

SEQ, NEW, PAD = 20, 24, 0
EXPERTS_IMPLEMENTATIONS = ("eager", "batched_mm", "grouped_mm")  # transformers' integrations/moe.py


# ---- the sparse block ----------------------------------------------------------------------
@pytest.mark.parametrize("implementation", EXPERTS_IMPLEMENTATIONS)
@pytest.mark.parametrize("k", [2, 3])  # HF renormalises a top-1 weight to 1 too; ours refuses that (no gradient)
@torch.no_grad()
def test_sparse_block_matches_hf(k, implementation):
    """Hidden 32, FFN 64, E=4 (anchors §5.9): output at 1e-6, router logits, picks and weights equal."""
    cfg = MixtralConfig(hidden_size=32, intermediate_size=64, num_local_experts=4, num_experts_per_tok=k)
    cfg._experts_implementation = implementation
    hf = randomise(MixtralSparseMoeBlock(cfg), seed=k).eval()
    ours = SparseMoE(32, 64, 4, k=k).eval()
    ours.router.weight.copy_(hf.gate.weight)
    ours.experts.gate_up_proj.copy_(hf.experts.gate_up_proj)  # rows [0:F] gate in both (HF: chunk(2), act first)
    ours.experts.down_proj.copy_(hf.experts.down_proj)
    x = torch.randn(3, 11, 32, generator=torch.Generator().manual_seed(5))
    with record_routing(ours) as routing:
        got = ours(x)
    want = hf(x.clone())
    logits, weights, picks = hf.gate(x.reshape(-1, 32))
    assert torch.equal(routing[0].picks, picks)  # the same experts, best first
    torch.testing.assert_close(routing[0].logits, logits, **MODULE_TOL)
    torch.testing.assert_close(routing[0].weights, weights, **MODULE_TOL)
    torch.testing.assert_close(got, want, **MODULE_TOL)
    assert want.abs().max() > 0.1 and len(set(picks[:, 0].tolist())) == 4  # every expert used


# ---- whole models ------------------------------------------------------------------------------
VARIANTS = {  # name: HF config overrides
    "mixtral": {},
    "mixtral-window-k3-tied": {"sliding_window": 8, "num_experts_per_tok": 3, "tie_word_embeddings": True},
}


LAYOUTS = ("v4-save_pretrained", "v5-stacked")


def save_stacked(hf, path):
    """The 5.x state dict as is (stacked experts), with its config.json."""
    hf.config.save_pretrained(path)
    sd = hf.state_dict()
    if hf.config.tie_word_embeddings:
        sd.pop("lm_head.weight")
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path / "model.safetensors"), metadata={"format": "pt"})
    assert "model.layers.0.mlp.experts.gate_up_proj" in load_file(path / "model.safetensors")


@pytest.fixture(scope="module", params=[(v, lay) for v in VARIANTS for lay in LAYOUTS], ids=str)
def pair(request, tmp_path_factory):
    variant, layout = request.param
    hf = hf_model("mixtral", **VARIANTS[variant])
    path = tmp_path_factory.mktemp(variant)
    if layout == "v5-stacked":
        save_stacked(hf, path)
        return hf, genmodels.load(path)
    ours = to_ours(hf, path)
    assert "model.layers.0.block_sparse_moe.experts.0.w1.weight" in load_file(path / "model.safetensors")
    return hf, ours


def test_config_read_from_hf(pair):
    hf, ours = pair
    c, h = ours.config, hf.config
    assert (c.d_model, c.n_layers, c.n_heads, c.kv_heads, c.expert_width, c.norm_eps, c.rope_theta) == (
        h.hidden_size, h.num_hidden_layers, h.num_attention_heads, h.num_key_value_heads, h.intermediate_size,
        h.rms_norm_eps, h.rope_parameters["rope_theta"])
    assert (c.n_experts, c.experts_per_token, c.sliding_window, c.tie_embeddings) == (
        h.num_local_experts, h.num_experts_per_tok, h.sliding_window, h.tie_word_embeddings)
    assert (c.router_renormalize, c.capacity_factor, c.moe_every) == (True, None, 1)


@pytest.mark.parametrize("kernel", ["sdpa", "reference"])
@torch.no_grad()
def test_logits_match(pair, kernel):
    hf, ours = pair
    ours.set_attention_kernel(kernel)
    ids = random_ids(2, SEQ)
    got, want = ours(ids), hf(ids).logits
    ours.set_attention_kernel("sdpa")
    torch.testing.assert_close(got, want, **MODEL_TOL)
    assert want.abs().max() > 0.1


@torch.no_grad()
def test_left_padded_batch_matches(pair):
    hf, ours = pair
    ids = random_ids(3, SEQ, seed=2)
    mask = left_pad_mask([SEQ - 5, SEQ, SEQ - 11], SEQ)
    want = hf(ids, attention_mask=mask, position_ids=hf_position_ids(mask)).logits
    got = ours(ids, attention_mask=mask)
    real = mask.bool()
    torch.testing.assert_close(got[real], want[real], **MODEL_TOL)


def test_greedy_generation_matches_hf(pair):
    hf, ours = pair
    ids = random_ids(3, 12, seed=3)
    mask = left_pad_mask([7, 12, 4], 12)
    ids = ids.masked_fill(mask == 0, PAD)
    with torch.no_grad():
        want = hf.generate(ids, attention_mask=mask, max_new_tokens=NEW, do_sample=False, pad_token_id=PAD)
    got = genmodels.generate(ours, ids, NEW, attention_mask=mask, pad_token_id=PAD)
    assert want.shape == (3, 12 + NEW)
    assert torch.equal(got, want)


# ---- checkpoints both ways ---------------------------------------------------------------------
# HF -> ours -> HF (state dicts and logits identical): test_roundtrip.py's "mixtral-window" variant.
def tiny_mixtral(**kw):
    base = dict(vocab_size=128, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=128, d_ff=96,
                expert_d_ff=48, n_experts=4)
    return randomise(genmodels.build_model(genmodels.preset("mixtral-tiny", **{**base, **kw}))).eval()


@torch.no_grad()
def test_ours_to_hf_to_ours(tmp_path):
    ours = tiny_mixtral(router_jitter=0.1)  # a training setting: exported as 0, the model unchanged
    genmodels.export_hf(ours, tmp_path / "hf")
    hf_cfg = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert hf_cfg["architectures"] == ["MixtralForCausalLM"] and hf_cfg["router_jitter_noise"] == 0.0
    assert hf_cfg["intermediate_size"] == 48  # the expert width, not the (unused) dense d_ff
    hf = hf_from_dir(tmp_path / "hf")
    ids = random_ids(2, SEQ)
    torch.testing.assert_close(hf(ids).logits, ours(ids), **MODEL_TOL)
    back = genmodels.load(tmp_path / "hf")
    assert back.state_dict().keys() == ours.state_dict().keys()
    for k, v in ours.state_dict().items():
        assert torch.equal(back.state_dict()[k], v), k
    assert (back.config.expert_width, back.config.n_experts) == (48, 4)


@torch.no_grad()
def test_stacked_folder_is_read_by_transformers_as_by_us(tmp_path):
    """The 5.x stacked layout export_hf writes is one transformers reads itself (no conversion)."""
    hf = hf_model("mixtral")
    save_stacked(hf, tmp_path)
    ids = random_ids(2, SEQ)
    want = hf(ids).logits
    torch.testing.assert_close(hf_from_dir(tmp_path)(ids).logits, want, atol=0, rtol=0)
    torch.testing.assert_close(genmodels.load(tmp_path)(ids), want, **MODEL_TOL)


def test_v4_missing_expert_is_named(tmp_path):
    hf_model("mixtral").save_pretrained(tmp_path)  # 4.x per-expert keys
    sd = load_file(tmp_path / "model.safetensors")
    del sd["model.layers.1.block_sparse_moe.experts.2.w3.weight"]
    save_file(sd, str(tmp_path / "model.safetensors"))
    with pytest.raises(ConversionError, match=r"model\.layers\.1\.block_sparse_moe\.experts\.2\.w3\.weight"):
        genmodels.load(tmp_path)


def test_wrong_expert_count_is_named(tmp_path):
    hf = hf_model("mixtral")
    hf.save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**cfg, "num_local_experts": 5}))
    with pytest.raises(ConversionError, match=r"wrong shape for model\.layers\.0\.mlp\.(gate\.weight|experts)"):
        genmodels.load(tmp_path)


def test_convert_cli_both_ways(tmp_path):
    hf = hf_model("mixtral")
    hf.save_pretrained(tmp_path / "hf")
    assert main(["convert", str(tmp_path / "hf"), str(tmp_path / "ours"), "--to", "genmodels"]) == 0
    assert main(["convert", str(tmp_path / "ours"), str(tmp_path / "back"), "--to", "hf"]) == 0
    ids = random_ids(2, SEQ)
    with torch.no_grad():
        torch.testing.assert_close(hf_from_dir(tmp_path / "back")(ids).logits, hf(ids).logits, atol=0, rtol=0)
        torch.testing.assert_close(genmodels.load(tmp_path / "ours")(ids), hf(ids).logits, **MODEL_TOL)


# ---- what HF cannot express is refused by name ------------------------------------------------------
@pytest.mark.parametrize("field, kw", [
    ("capacity_factor", dict(capacity_factor=1.25)),
    ("eval_capacity_factor", dict(eval_capacity_factor=2.0)),
    ("moe_every", dict(moe_every=2)),
    ("router_renormalize", dict(router_renormalize=False)),  # MixtralConfig 5.24 has no norm_topk_prob
    ("mlp", dict(mlp="geglu")),
])
def test_export_refuses_what_mixtral_cannot_express(tmp_path, field, kw):
    with pytest.raises(ConversionError, match=rf"MixtralForCausalLM: model\.{field}="):
        genmodels.export_hf(tiny_mixtral(**kw), tmp_path)
    assert not (tmp_path / "config.json").exists()


@pytest.mark.parametrize("converter", [LlamaConverter(), MistralConverter()])
def test_dense_exporters_refuse_an_moe_model(converter):
    cfg = tiny_mixtral(sliding_window=8 if converter.windowed else None).config
    assert not converter.exports(cfg) and MixtralConverter().exports(cfg)
    with pytest.raises(ConversionError, match=r"model\.n_experts=4"):
        converter.config_to_hf(cfg)


def test_gpt2_exporter_refuses_an_moe_model():
    cfg = genmodels.preset("gpt2-tiny", vocab_size=128, d_model=64, n_layers=2, n_heads=4, d_ff=96, mlp="swiglu",
                           mlp_bias=False, n_experts=4)
    with pytest.raises(ConversionError, match="cannot export as GPT2LMHeadModel"):
        GPT2Converter().config_to_hf(cfg)


def test_a_llama_loaded_then_made_sparse_is_refused(tmp_path):
    """The exporter follows the architecture a model was loaded from: a Llama folder's model given
    experts is not silently written as a Llama."""
    cfg = tiny_mixtral().config
    cfg.extra = {**cfg.extra, "hf_architecture": "LlamaForCausalLM"}
    model = genmodels.build_model(cfg)
    with pytest.raises(ConversionError, match=r"LlamaForCausalLM: model\.n_experts=4"):
        genmodels.export_hf(model, tmp_path)


# ---- the preset ----------------------------------------------------------------------------------
def test_mixtral_8x7b_preset_is_transformers_mixtral_config():
    """Every value of MixtralConfig()'s defaults (mistralai/Mixtral-8x7B-v0.1) read back from the preset.
    The one difference: HF's default max_position_embeddings is 4096·32 = 131072; the preset has the
    paper's 32768-token context (Jiang et al., 2024, Table 1)."""
    hf, c = MixtralConfig(), genmodels.preset("mixtral-8x7b")
    assert (c.vocab_size, c.d_model, c.n_layers, c.n_heads, c.kv_heads, c.d_ff) == (
        hf.vocab_size, hf.hidden_size, hf.num_hidden_layers, hf.num_attention_heads, hf.num_key_value_heads,
        hf.intermediate_size) == (32000, 4096, 32, 32, 8, 14336)
    assert (c.n_experts, c.experts_per_token, c.rope_theta, c.sliding_window, c.norm_eps) == (
        hf.num_local_experts, hf.num_experts_per_tok, hf.rope_parameters["rope_theta"], hf.sliding_window,
        hf.rms_norm_eps) == (8, 2, 1e6, None, 1e-5)
    assert (c.tie_embeddings, c.bos_token_id, c.eos_token_id, c.mlp) == (
        hf.tie_word_embeddings, hf.bos_token_id, hf.eos_token_id, {"silu": "swiglu"}[hf.hidden_act])
    assert (hf.max_position_embeddings, c.max_seq_len) == (131072, 32768)
    # and the converter reads HF's defaults into exactly the preset (but for that context length; the
    # reader spells "no output-projection bias" False where the preset leaves it None = attn_bias)
    same = dict(max_seq_len=32768, attn_out_bias=None)
    assert MixtralConverter().config_from_hf(hf.to_dict()).replace(**same) == c
    assert MixtralConverter().config_from_hf({"architectures": ["MixtralForCausalLM"], "vocab_size": 32000,
                                              "hidden_size": 4096, "intermediate_size": 14336,
                                              "num_hidden_layers": 32, "num_attention_heads": 32}
                                             ).replace(**same) == c  # absent keys: HF's defaults
