"""Parity with Hugging Face transformers: BERT (BertModel, BertForMaskedLM) and T5 (ReLU tied,
gated-GELU untied), every parameter randomised, HF eager attention, float32."""
from __future__ import annotations

import torch
import pytest

transformers = pytest.importorskip("transformers")

import genmodels  # noqa: E402
from genmodels.interop.base import ConversionError  # noqa: E402

ATOL, RTOL = 1e-5, 1e-4


def randomise(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return module


def close(a, b):
    torch.testing.assert_close(a, b, atol=ATOL, rtol=RTOL)


# ---- BERT ---------------------------------------------------------------------------------------
def bert_config(**kw):
    return transformers.BertConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
                                   vocab_size=128, max_position_embeddings=64, type_vocab_size=2,
                                   attn_implementation="eager", **kw)


def bert_inputs():
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 128, (3, 17), generator=g)
    types = torch.zeros_like(ids)
    types[:, 9:] = 1
    mask = torch.ones_like(ids)
    mask[1, 12:] = 0
    mask[2, 5:] = 0
    return ids, types, mask


@pytest.mark.parametrize("cls", ["BertModel", "BertForMaskedLM"])
def test_bert_parity_and_round_trip(cls, tmp_path):
    hf = randomise(getattr(transformers, cls)(bert_config())).eval()
    hf.save_pretrained(tmp_path / "hf")
    ours = genmodels.load(tmp_path / "hf")
    assert ours.config.family == "encoder"
    ids, types, mask = bert_inputs()
    keep = mask.bool()
    with torch.no_grad():
        out = hf(input_ids=ids, token_type_ids=types, attention_mask=mask, output_hidden_states=True)
        hidden = ours.encode(ids, mask, types)
        close(hidden[keep], out.hidden_states[-1][keep])
        if cls == "BertModel":
            assert ours.mlm is None
            close(ours.pool(hidden), out.pooler_output)
            close(ours(ids, mask, types), out.last_hidden_state)
        else:
            assert ours.pooler is None and ours.mlm.head.tied
            close(ours(ids, mask, types)[keep], out.logits[keep])
        # no types, no mask
        ref = hf(input_ids=ids, output_hidden_states=True).hidden_states[-1]
        close(ours.encode(ids), ref)
        ours.set_attention_kernel("reference")
        close(ours.encode(ids, mask, types)[keep], out.hidden_states[-1][keep])
    # export and read back with transformers
    genmodels.export_hf(ours, tmp_path / "out")
    hf2 = getattr(transformers, cls).from_pretrained(tmp_path / "out", attn_implementation="eager").eval()
    with torch.no_grad():
        a = hf2(input_ids=ids, token_type_ids=types, attention_mask=mask, output_hidden_states=True)
        close(a.hidden_states[-1][keep], out.hidden_states[-1][keep])
        if cls == "BertForMaskedLM":
            close(a.logits[keep], out.logits[keep])
        else:
            close(a.pooler_output, out.pooler_output)


def test_bert_padding_independent_of_batch():
    """A padded row gives the same hidden states as the row alone."""
    model = randomise(genmodels.build_model(genmodels.preset("bert-tiny", vocab_size=128, d_model=64, d_ff=128))).eval()
    ids, types, mask = bert_inputs()
    with torch.no_grad():
        full = model.encode(ids, mask, types)
        packed = model.encode(ids, mask, types, skip_padding=True)  # token-wise layers on real tokens only
        close(packed[mask.bool()], full[mask.bool()])
        assert bool((packed[~mask.bool()] == 0).all())
        for b in range(3):
            n = int(mask[b].sum())
            close(model.encode(ids[b:b + 1, :n], None, types[b:b + 1, :n])[0], full[b, :n])


def test_bert_checkpoint_mismatch_names_keys(tmp_path):
    hf = transformers.BertModel(bert_config()).eval()
    hf.save_pretrained(tmp_path)
    from safetensors.torch import load_file, save_file
    sd = load_file(str(tmp_path / "model.safetensors"))
    sd.pop("encoder.layer.1.intermediate.dense.bias")
    save_file(sd, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ConversionError, match="encoder.layer.1.intermediate.dense.bias"):
        genmodels.load(tmp_path)


# ---- T5 -----------------------------------------------------------------------------------------
def t5_config(**kw):
    return transformers.T5Config(d_model=64, d_kv=16, d_ff=128, num_layers=2, num_heads=4, vocab_size=128,
                                 relative_attention_num_buckets=8, relative_attention_max_distance=20,
                                 decoder_start_token_id=0, pad_token_id=0, eos_token_id=1,
                                 attn_implementation="eager", **kw)


def t5_inputs():
    g = torch.Generator().manual_seed(2)
    src = torch.randint(2, 128, (2, 23), generator=g)
    tgt = torch.randint(2, 128, (2, 13), generator=g)
    tgt[:, 0] = 0
    mask = torch.ones_like(src)
    mask[1, 15:] = 0
    return src, tgt, mask


@pytest.mark.parametrize("variant", ["relu-tied", "gated-gelu-untied"])
def test_t5_parity_and_round_trip(variant, tmp_path):
    if variant == "relu-tied":
        hf = randomise(transformers.T5ForConditionalGeneration(t5_config(feed_forward_proj="relu"))).eval()
    else:
        hf = transformers.T5ForConditionalGeneration(t5_config(feed_forward_proj="gated-gelu",
                                                               tie_word_embeddings=False, num_decoder_layers=3))
        hf.lm_head.weight = torch.nn.Parameter(torch.empty_like(hf.lm_head.weight))  # untie (transformers 5 ties)
        hf = randomise(hf).eval()
    hf.save_pretrained(tmp_path / "hf")
    ours = genmodels.load(tmp_path / "hf")
    c = ours.config
    if variant == "relu-tied":
        assert c.tie_embeddings and c.output_scale == pytest.approx(64 ** -0.5) and c.mlp == "relu"
    else:
        assert not c.tie_embeddings and c.output_scale is None and c.mlp == "geglu_tanh"
        assert len(ours.dec_blocks) == 3
    src, tgt, mask = t5_inputs()
    with torch.no_grad():
        ref = hf(input_ids=src, attention_mask=mask, decoder_input_ids=tgt, output_hidden_states=True)
        memory = ours.encode(src, mask)
        close(memory[mask.bool()], ref.encoder_last_hidden_state[mask.bool()])
        close(ours(src, tgt, mask), ref.logits)
        ours.set_attention_kernel("reference")
        close(ours(src, tgt, mask), ref.logits)
        ours.set_attention_kernel("sdpa")
        # incremental decoding with the cache equals the full pass
        cache = ours.new_cache(memory, mask, max_len=16)
        steps = torch.cat([ours.decode(tgt[:, :5], cache=cache)] +
                          [ours.decode(tgt[:, t:t + 1], cache=cache) for t in range(5, 13)], dim=1)
        close(steps, ref.logits)
    genmodels.export_hf(ours, tmp_path / "out")
    hf2 = transformers.T5ForConditionalGeneration.from_pretrained(tmp_path / "out", attn_implementation="eager").eval()
    with torch.no_grad():
        close(hf2(input_ids=src, attention_mask=mask, decoder_input_ids=tgt).logits, ref.logits)


def test_relative_position_bucket_exact():
    from transformers.models.t5.modeling_t5 import T5Attention
    from genmodels.nn import relative_position_bucket
    rel = torch.arange(-300, 301)  # key - query, both directions, past max_distance
    for bidirectional in (True, False):
        for nb, md in ((32, 128), (8, 20), (16, 40), (64, 256)):
            ours = relative_position_bucket(rel, bidirectional, nb, md)
            ref = T5Attention._relative_position_bucket(rel, bidirectional=bidirectional, num_buckets=nb,
                                                        max_distance=md)
            assert torch.equal(ours, ref), (bidirectional, nb, md)
    # a (Tq, Tk) grid, as the model uses it
    q, k = torch.arange(40)[:, None], torch.arange(40)[None, :]
    assert torch.equal(relative_position_bucket(k - q, True, 32, 128),
                       T5Attention._relative_position_bucket(k - q, True, 32, 128))


def test_original_transformer_preset_runs_and_is_causal(tmp_path):
    cfg = genmodels.preset("transformer-tiny", vocab_size=64, d_model=32, n_heads=4, d_ff=64)
    assert cfg.embed_scale == pytest.approx(32 ** 0.5) and cfg.norm_placement == "post"
    model = randomise(genmodels.build_model(cfg)).eval()
    src = torch.randint(0, 64, (2, 9))
    tgt = torch.randint(0, 64, (2, 7))
    with torch.no_grad():
        full = model(src, tgt)
        # changing a later target token does not change earlier logits (causal decoder)
        tgt2 = tgt.clone()
        tgt2[:, 5] = (tgt2[:, 5] + 1) % 64
        close(model(src, tgt2)[:, :5], full[:, :5])
        memory = model.encode(src)
        cache = model.new_cache(memory, max_len=8)
        steps = torch.cat([model.decode(tgt[:, t:t + 1], cache=cache) for t in range(7)], dim=1)
        close(steps, full)
    with pytest.raises(ConversionError):
        genmodels.export_hf(model, tmp_path / "never")
