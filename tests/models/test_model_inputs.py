"""Forward inputs of the transformers (issue #20 d3): position_ids, inputs_embeds, segment_ids (packed
examples: attention never crosses a segment, positions restart in each) and allowed pairs; Seq2SeqLM's
encoder allowed pairs and memory_mask. Models declare their rules; RetNet refuses what it lacks."""
from __future__ import annotations

import pytest
import torch

import genmodels
from genmodels.nn.masks import refusal, segment_position_ids
from tests.helpers.tiny import random_ids, randomise

SMALL = dict(vocab_size=128, d_model=32, n_layers=2, n_heads=4, max_seq_len=64)
DECODERS = {
    "llama": lambda: genmodels.preset("llama-tiny", **SMALL, n_kv_heads=2, d_ff=48),
    "gpt2": lambda: genmodels.preset("gpt2-tiny", **SMALL, d_ff=64),  # learned absolute positions
    "mistral": lambda: genmodels.preset("mistral-7b", **SMALL, n_kv_heads=2, d_ff=48, sliding_window=4),
    "alibi": lambda: genmodels.preset("gpt2-tiny", **SMALL, d_ff=64, position="alibi"),
}
SEQ2SEQ = {
    "t5": lambda: genmodels.preset("t5-tiny", **SMALL, d_ff=64, head_dim=8),  # relative bias
    "transformer": lambda: genmodels.preset("transformer-tiny", **SMALL, d_ff=64),  # sinusoidal positions
}


def _model(make, seed=0):
    """In float64: the comparisons below then hold to 1e-6 with room to spare (fp32 rounding of
    different kernel paths alone reaches ~1e-6 on these logits)."""
    return randomise(genmodels.build_model(make()), seed=seed).eval().double()


def _close(a, b):
    torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", sorted(DECODERS))
def test_packed_row_equals_each_example_alone(name):
    model = _model(DECODERS[name])
    a, b = random_ids(1, 7, seed=1), random_ids(1, 5, seed=2)
    seg = torch.tensor([[3] * 7 + [9] * 5])
    with torch.no_grad():
        packed = model(torch.cat([a, b], 1), segment_ids=seg)
        _close(packed[:, :7], model(a))
        _close(packed[:, 7:], model(b))
        unpacked = model(torch.cat([a, b], 1))
    assert (unpacked[:, 7:] - packed[:, 7:]).abs().max() > 1e-3  # without segments the second one sees the first


def test_packed_rows_with_padding_and_a_batch():
    model = _model(DECODERS["gpt2"])
    a, b, c = random_ids(1, 4, seed=3), random_ids(1, 6, seed=4), random_ids(1, 9, seed=5)
    ids = torch.cat([torch.cat([a, b, torch.zeros(1, 2, dtype=torch.long)], 1), torch.cat([c, c[:, :3]], 1)])
    seg = torch.tensor([[0] * 4 + [1] * 6 + [2] * 2, [0] * 9 + [1] * 3])
    mask = torch.tensor([[1] * 10 + [0] * 2, [1] * 12])
    with torch.no_grad():
        out = model(ids, mask, segment_ids=seg)
        for row, lo, hi, alone in ((0, 0, 4, a), (0, 4, 10, b), (1, 0, 9, c), (1, 9, 12, c[:, :3])):
            _close(out[row:row + 1, lo:hi], model(alone))


def test_segment_positions_restart_and_skip_pads():
    seg = torch.tensor([[7, 7, 7, 2, 2, 5], [1, 1, 1, 1, 1, 1]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 0], [0, 0, 1, 1, 1, 1]])
    assert segment_position_ids(seg).tolist() == [[0, 1, 2, 0, 1, 0], [0, 1, 2, 3, 4, 5]]
    assert segment_position_ids(seg, mask).tolist() == [[0, 1, 2, 0, 1, 0], [0, 0, 0, 1, 2, 3]]


@pytest.mark.parametrize("name", ["llama", "gpt2"])
def test_allowed_all_true_and_inputs_embeds_equal_the_plain_forward(name):
    model = _model(DECODERS[name])
    ids = random_ids(2, 8)
    with torch.no_grad():
        ref = model(ids)
        _close(model(ids, allowed=torch.ones(2, 8, 8, dtype=torch.bool)), ref)
        _close(model(inputs_embeds=model.embed(ids)), ref)
        _close(model(ids, position_ids=torch.arange(8)[None].expand(2, 8)), ref)


def test_allowed_pairs_equal_the_segments_they_describe():
    model = _model(DECODERS["llama"])
    ids, seg = random_ids(1, 10), torch.tensor([[0] * 6 + [1] * 4])
    allowed = seg[:, :, None] == seg[:, None, :]
    pos = torch.tensor([[0, 1, 2, 3, 4, 5, 0, 1, 2, 3]])
    with torch.no_grad():
        _close(model(ids, allowed=allowed, position_ids=pos), model(ids, segment_ids=seg))
        # a gist-like rule: the last token may not see the first two
        allowed = torch.ones(1, 10, 10, dtype=torch.bool)
        allowed[0, 9, :2] = False
        out = model(ids, allowed=allowed)
        _close(out[:, :9], model(ids)[:, :9])
        assert (out[:, 9] - model(ids)[:, 9]).abs().max() > 1e-4


def test_segment_ids_refuse_a_cache():
    model = _model(DECODERS["llama"])
    with pytest.raises(ValueError, match="segment_ids .* cannot continue a cache"):
        model(random_ids(1, 4), cache=model.new_cache(1, 16), segment_ids=torch.zeros(1, 4, dtype=torch.long))


def test_encoder_packed_row_equals_each_example_alone():
    model = _model(lambda: genmodels.preset("bert-tiny", **SMALL, d_ff=64))
    a, b = random_ids(1, 5, seed=6), random_ids(1, 7, seed=7)
    with torch.no_grad():
        out = model.encode(torch.cat([a, b], 1), segment_ids=torch.tensor([[0] * 5 + [1] * 7]))
        _close(out[:, :5], model.encode(a))
        _close(out[:, 5:], model.encode(b))
        ids = torch.cat([a, b], 1)
        _close(model(ids, allowed=torch.ones(1, 12, 12, dtype=torch.bool)), model(ids))
        _close(model(inputs_embeds=model.embed(ids)), model(ids))


@pytest.mark.parametrize("name", sorted(SEQ2SEQ))
def test_seq2seq_packed_pairs_equal_each_pair_alone(name):
    model = _model(SEQ2SEQ[name])
    src = [random_ids(1, 6, seed=8), random_ids(1, 4, seed=9)]
    tgt = [random_ids(1, 3, seed=10), random_ids(1, 5, seed=11)]
    seg, dseg = torch.tensor([[0] * 6 + [1] * 4]), torch.tensor([[0] * 3 + [1] * 5])
    with torch.no_grad():
        out = model(torch.cat(src, 1), torch.cat(tgt, 1), segment_ids=seg, decoder_segment_ids=dseg)
        _close(out[:, :3], model(src[0], tgt[0]))
        _close(out[:, 3:], model(src[1], tgt[1]))
        # the same through explicit pairs: encoder allowed, decoder allowed, memory_mask (B, T, S)
        same = lambda q, k: q[:, :, None] == k[:, None, :]  # noqa: E731
        explicit = model.decode(torch.cat(tgt, 1), model.encode(torch.cat(src, 1), allowed=same(seg, seg)),
                                same(dseg, seg), allowed=same(dseg, dseg))
        if model.pos_embed is None:  # T5: no absolute positions, so the pairs alone say everything
            _close(explicit, out)
        ids, dec = torch.cat(src, 1), torch.cat(tgt, 1)
        _close(model(ids, dec, allowed=torch.ones(1, 10, 10, dtype=torch.bool),
                     memory_mask=torch.ones(1, 8, 10, dtype=torch.bool)), model(ids, dec))
        _close(model(None, None, inputs_embeds=model.embed(ids), decoder_inputs_embeds=model.embed(dec)),
               model(ids, dec))


def test_seq2seq_refuses_half_the_segments_and_a_per_query_memory_mask_in_a_cache():
    model = _model(SEQ2SEQ["t5"])
    ids = random_ids(1, 4)
    with pytest.raises(ValueError, match="segment_ids and decoder_segment_ids go together"):
        model(ids, ids, segment_ids=torch.zeros(1, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="per-query memory masks"):
        model.new_cache(model.encode(ids), torch.ones(1, 2, 4, dtype=torch.bool))


def test_models_declare_their_rules_and_retnet_refuses_segments():
    dec = genmodels.build_model(DECODERS["llama"]())
    assert {"causal", "window", "padding", "segments", "allowed"} <= dec.mask_rules
    assert refusal("x", dec.mask_rules, segment_ids=torch.zeros(1), allowed=torch.zeros(1)) is None
    retnet = genmodels.build_model(genmodels.preset("retnet-tiny", vocab_size=64, d_model=32, n_layers=1,
                                                    n_heads=2, d_ff=32))
    assert "segments" not in retnet.mask_rules
    ids = torch.zeros(1, 3, dtype=torch.long)
    for kw in ({"segment_ids": torch.zeros(1, 3, dtype=torch.long)}, {"allowed": torch.ones(1, 3, 3, dtype=torch.bool)}):
        with pytest.raises(ValueError, match=f"RetNetLM does not implement {next(iter(kw))}") as e:
            retnet(ids, **kw)
        assert "\n" not in str(e.value)


def test_native_paths_refuse_inputs_they_do_not_implement():
    from genmodels.native import decoder as native_decoder
    from genmodels.native import encoder as native_encoder
    seg = torch.zeros(1, 3, dtype=torch.long)
    assert native_decoder.unsupported_inputs(attention_mask=seg, position_ids=seg) is None
    reason = native_decoder.unsupported_inputs(attention_mask=seg, segment_ids=seg)
    assert reason.startswith("the native decode step does not implement segment_ids (segments)") and "\n" not in reason
    assert "allowed" in native_decoder.unsupported_inputs(allowed=torch.ones(1, 3, 3, dtype=torch.bool))
    assert native_encoder.unsupported_inputs(attention_mask=seg) is None
    assert "position_ids" in native_encoder.unsupported_inputs(position_ids=seg)
    model = genmodels.build_model(genmodels.preset("bert-tiny", **SMALL, d_ff=64, mlm_head=False)).eval()
    fast = native_encoder.native_encoder(model)
    if fast is None:
        pytest.skip(f"native encoder unavailable: {native_encoder.unsupported(model)}")
    with pytest.raises(ValueError, match="the native encoder does not implement segment_ids"):
        fast(torch.zeros(1, 3, dtype=torch.long), segment_ids=seg)


def test_allowed_pairs_continue_a_cache_in_slot_coordinates():
    model = _model(DECODERS["llama"])
    ids = random_ids(1, 6)
    allowed = torch.ones(1, 6, 6, dtype=torch.bool)
    allowed[0, 4:, 1] = False  # the last two tokens may not see token 1
    with torch.no_grad():
        full = model(ids, allowed=allowed)
        cache = model.new_cache(1, 16)
        model(ids[:, :4], allowed=allowed[:, :4, :4], cache=cache)
        step = model(ids[:, 4:], allowed=allowed[:, 4:, :6], cache=cache)
    _close(step, full[:, 4:])
    assert (full[:, 4:] - model(ids)[:, 4:]).abs().max() > 1e-4
