"""Converters refuse what does not fit in one line naming the key or file, and convert what does (issue 19:
B-6 Mixtral experts, B-11 half-precision torchscale decoders, B-17 DCGAN files, B-23 swapped G and D)."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

import genmodels
from genmodels.interop.base import ConversionError
from tests.helpers.torchscale import require_torchscale
from tests.parity.torch_dcgan.test_dcgan import _pair


# ---- B-6: a 4.x Mixtral checkpoint with one mis-shaped expert ----------------------------------------
def _mixtral_v4(folder, bad: str | None = None, shape=()):
    """A 1-layer MixtralForCausalLM folder in transformers 4.x's per-expert layout (D 16, F 8, 2 experts)."""
    d, f, e, v = 16, 8, 2, 32
    g = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    pre = "model.layers.0."
    sd = {"model.embed_tokens.weight": r(v, d), "lm_head.weight": r(v, d), "model.norm.weight": r(d),
          pre + "input_layernorm.weight": r(d), pre + "post_attention_layernorm.weight": r(d),
          pre + "self_attn.q_proj.weight": r(d, d), pre + "self_attn.k_proj.weight": r(d // 2, d),
          pre + "self_attn.v_proj.weight": r(d // 2, d), pre + "self_attn.o_proj.weight": r(d, d),
          pre + "block_sparse_moe.gate.weight": r(e, d)}
    for i in range(e):
        for w, s in (("w1", (f, d)), ("w2", (d, f)), ("w3", (f, d))):
            sd[f"{pre}block_sparse_moe.experts.{i}.{w}.weight"] = r(*s)
    if bad:
        sd[pre + bad] = torch.zeros(*shape)
    folder.mkdir()
    save_file(sd, str(folder / "model.safetensors"), metadata={"format": "pt"})
    (folder / "config.json").write_text(json.dumps(dict(
        architectures=["MixtralForCausalLM"], model_type="mixtral", vocab_size=v, hidden_size=d, intermediate_size=f,
        num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2, num_local_experts=e,
        num_experts_per_tok=2, max_position_embeddings=64, tie_word_embeddings=False)))
    return folder


def test_mixtral_v4_layout_loads(tmp_path):
    model = genmodels.load(_mixtral_v4(tmp_path / "ok"))
    assert model.config.n_experts == 2


@pytest.mark.parametrize("bad,shape", [("block_sparse_moe.experts.1.w1.weight", (8, 12)),
                                       ("block_sparse_moe.experts.1.w3.weight", (9, 16)),
                                       ("block_sparse_moe.experts.0.w2.weight", (16, 5))])
def test_mixtral_v4_misshaped_expert_is_named_not_a_traceback(tmp_path, bad, shape):
    folder = _mixtral_v4(tmp_path / "bad", bad, shape)
    with pytest.raises(ConversionError) as info:
        genmodels.load(folder)
    msg = str(info.value)
    assert f"model.layers.0.{bad}" in msg and str(tuple(shape)) in msg and "\n" not in msg, msg


# ---- B-11: half-precision torchscale decoders ---------------------------------------------------------
def _torchscale_decoder():
    config_cls, decoder_cls = require_torchscale()
    args = config_cls(vocab_size=61, decoder_embed_dim=32, decoder_value_embed_dim=48, decoder_retention_heads=2,
                      decoder_ffn_embed_dim=64, decoder_layers=2, activation_fn="swish")
    torch.manual_seed(0)
    dec = decoder_cls(args, embed_tokens=torch.nn.Embedding(61, 32))
    with torch.no_grad():
        for p in dec.parameters():
            p.normal_(0, 0.3) if p.dim() > 1 else p.uniform_(0.5, 1.5)
    return dec.eval()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_torchscale_decoder_converts_to_float32(dtype):
    dec, ref = _torchscale_decoder(), _torchscale_decoder()
    with torch.no_grad():  # the same weights, rounded to dtype, in a float32 decoder
        for p in ref.parameters():
            p.copy_(p.to(dtype).float())
    want = genmodels.from_torchscale(ref)
    got = genmodels.from_torchscale(dec.to(dtype))
    assert all(p.dtype == torch.float32 for p in got.parameters())
    ids = torch.randint(0, 61, (2, 9), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(got(ids), want(ids), rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_modified_decay_is_still_refused_at_every_precision(dtype):
    dec = _torchscale_decoder().to(dtype)
    dec.retnet_rel_pos.decay.mul_(0.9)
    with pytest.raises(ConversionError, match=r"retnet_rel_pos\.decay"):
        genmodels.from_torchscale(dec)


def test_a_decoder_cast_to_half_and_back_is_refused_saying_so():
    dec = _torchscale_decoder().half().float()  # fp32 buffers holding fp16-rounded values: not the definition
    with pytest.raises(ConversionError, match=r"rounded to float16: a decoder cast to float16 and back"):
        genmodels.from_torchscale(dec)


# ---- B-17: from_torch_dcgan reads files through the one safe reader ------------------------------------
def test_dcgan_pickled_module_file_is_named_without_suggesting_unsafe_loading(tmp_path):
    net_g, _ = _pair()
    f = tmp_path / "netG_module.pth"
    torch.save(net_g, f)  # a whole module, as torch.save(netG) writes
    with pytest.raises(ConversionError) as info:
        genmodels.from_torch_dcgan(f)
    msg = str(info.value)
    assert str(f) in msg and "pickled Python objects" in msg and "state_dict()" in msg, msg
    assert "weights_only" not in msg and "\n" not in msg, msg


@pytest.mark.parametrize("content", [b"\x80\x04garbage" * 10, b"hello", b""])
def test_dcgan_garbage_file_is_named_without_suggesting_unsafe_loading(tmp_path, content):
    f = tmp_path / "netG.pth"
    f.write_bytes(content)
    with pytest.raises(ConversionError) as info:
        genmodels.from_torch_dcgan(str(f))
    msg = str(info.value)
    assert str(f) in msg and "not a readable PyTorch checkpoint" in msg and msg.count("EOFError") <= 1, msg
    assert "weights_only" not in msg and "\n" not in msg, msg


def test_dcgan_state_dict_files_still_convert(tmp_path):
    net_g, net_d = _pair()
    torch.save(net_g.state_dict(), tmp_path / "g.pth")
    torch.save(net_d.state_dict(), tmp_path / "d.pth")
    model = genmodels.from_torch_dcgan(tmp_path / "g.pth", str(tmp_path / "d.pth"))
    z = torch.randn(2, 8, 1, 1, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(model.generator(z.flatten(1)), net_g(z), atol=1e-5, rtol=1e-4)


# ---- B-23: swapped generator and discriminator ---------------------------------------------------------
def test_dcgan_swapped_state_dicts_are_said_to_be_swapped():
    net_g, net_d = _pair()
    g, d = net_g.state_dict(), net_d.state_dict()
    with pytest.raises(ConversionError, match="look swapped.*pass the generator first"):
        genmodels.from_torch_dcgan(d, g)
    with pytest.raises(ConversionError, match="netG_state_dict looks like a discriminator"):
        genmodels.from_torch_dcgan(d)
    with pytest.raises(ConversionError, match="netD_state_dict looks like a generator"):
        genmodels.from_torch_dcgan(g, g)
