"""Gist masks (nn/gist_mask.py): hand-drawn goldens, per-row spans, the controls, and the models' use of them."""
import pytest
import torch

from genmodels.nn import build_mask
from genmodels.nn.gist_mask import find_gists, gist_allowed, gist_allowed_for, gist_cross_allowed


def m(*rows: str) -> torch.Tensor:
    """A hand-drawn boolean matrix: one string of 0/1 per query row."""
    return torch.tensor([[c == "1" for c in r] for r in rows])


def decoder_pairs(allowed: torch.Tensor) -> torch.Tensor:
    """What a decoder query sees: the allowed pairs ANDed with causality by the one mask builder."""
    t = allowed.shape[-1]
    mask, _ = build_mask(t, t, causal=True, allowed=allowed)
    return (mask == 0)[:, 0]  # (B, T, T)


# the 5-token row of the paper's figure: a b c G d  (instruction [0, 3), gist at 3, k = 1)
DECODER_5 = {
    "gist": m("10000", "11000", "11100", "11110", "00011"),
    "neg_control": m("10000", "11000", "11100", "11110", "00001"),
    "pos_control": m("10000", "11000", "11100", "11110", "11111"),
}
ENCODER_5 = {
    "gist": m("11110", "11110", "11110", "11110", "00011"),
    "neg_control": m("11110", "11110", "11110", "11110", "00001"),
    "pos_control": m("11111", "11111", "11111", "11111", "11111"),
}
CROSS_5 = {"gist": m("00011"), "neg_control": m("00001"), "pos_control": m("11111")}


@pytest.mark.parametrize("mode", ["gist", "neg_control", "pos_control"])
def test_the_five_token_row_matches_the_hand_drawn_masks(mode):
    allowed = gist_allowed(torch.tensor([3]), 1, 5, mode=mode)
    assert torch.equal(decoder_pairs(allowed)[0], DECODER_5[mode])
    assert torch.equal(allowed[0], ENCODER_5[mode])  # bidirectional: the encoder uses the pairs as they are
    cross = gist_cross_allowed(torch.tensor([3]), 1, 5, 2, mode=mode)  # two decoder queries
    assert torch.equal(cross[0], CROSS_5[mode].expand(2, 5))


def test_a_batch_with_different_gist_positions_k_a_prefix_and_a_row_without_a_gist():
    # row 0: a b G G x y z (gist at 2, k = 2); row 1: s a b G x y z (prefix s, instruction [1, 3), gist at 3,
    # k = 1: x y z still see s); row 2: no gist — unrestricted (plain causal)
    allowed = gist_allowed(torch.tensor([2, 3, -1]), torch.tensor([2, 1, 1]), 7,
                           instruction_start=torch.tensor([0, 1, 0]))
    want = torch.stack([
        m("1000000", "1100000", "1110000", "1111000", "0011100", "0011110", "0011111"),
        m("1000000", "1100000", "1110000", "1111000", "1001100", "1001110", "1001111"),
        m("1000000", "1100000", "1110000", "1111000", "1111100", "1111110", "1111111"),
    ])
    assert torch.equal(decoder_pairs(allowed), want)
    neg = gist_allowed(torch.tensor([2, 3, -1]), torch.tensor([2, 1, 1]), 7, mode="neg_control",
                       instruction_start=torch.tensor([0, 1, 0]))
    assert torch.equal(decoder_pairs(neg)[0], m("1000000", "1100000", "1110000", "1111000", "0000100", "0000110",
                                                "0000111"))
    assert torch.equal(decoder_pairs(neg)[1], m("1000000", "1100000", "1110000", "1111000", "1000100", "1000110",
                                                "1000111"))
    assert torch.equal(decoder_pairs(neg)[2], want[2])


def test_padding_is_anded_in_and_the_spans_are_found_from_the_ids():
    gist = 9
    ids = torch.tensor([[0, 0, 5, 6, gist, 7, 8], [5, 6, 5, gist, gist, 7, 8]])
    mask = torch.tensor([[0, 0, 1, 1, 1, 1, 1], [1] * 7])
    assert [t.tolist() for t in find_gists(ids, gist)] == [[4, 3], [1, 2]]
    allowed = gist_allowed_for(ids, gist, attention_mask=mask)
    add, _ = build_mask(7, 7, causal=True, key_padding=mask, allowed=allowed)
    seen = (add == 0)[:, 0]  # pads are keys no query sees (each pad query too)
    assert torch.equal(seen[0], m("0000000", "0000000", "0010000", "0011000", "0011100", "0000110", "0000111"))
    assert torch.equal(seen[1], m("1000000", "1100000", "1110000", "1111000", "1111100", "0001110", "0001111"))
    with pytest.raises(ValueError, match="not contiguous"):
        find_gists(torch.tensor([[gist, 1, gist]]), gist)


def test_a_bad_mode_or_span_is_refused_in_one_line():
    with pytest.raises(ValueError, match="mode='gisty': expected one of gist, pos_control, neg_control"):
        gist_allowed(torch.tensor([1]), 1, 4, mode="gisty")
    with pytest.raises(ValueError, match="T - k"):
        gist_allowed(torch.tensor([3]), 2, 4)


SMALL = dict(vocab_size=32, d_model=32, n_layers=2, n_heads=4, max_seq_len=32)


def _tiny(name="llama-tiny", **kw):
    """A random tiny model in float64 (comparisons to 1e-6 with room to spare)."""
    import genmodels
    from tests.helpers.tiny import randomise
    return randomise(genmodels.build_model(genmodels.preset(name, **SMALL, **kw)), seed=0).eval().double()


def test_under_the_gist_mask_x_never_reads_the_instruction_and_under_neg_control_not_the_gist_either():
    model = _tiny()
    ids = torch.tensor([[3, 4, 5, 6, 7, 8, 9, 10]])  # P = [0, 4), G = [4, 5), X = [5, 8)
    other = ids.clone()
    other[0, :4] = torch.tensor([11, 12, 13, 14])
    g = torch.tensor([4])
    with torch.no_grad():
        for mode, same in (("neg_control", True), ("gist", False), ("pos_control", False)):
            allowed = gist_allowed(g, 1, 8, mode=mode)
            a, b = model(ids, allowed=allowed)[0, 5:], model(other, allowed=allowed)[0, 5:]
            assert torch.allclose(a, b, atol=1e-6) is same, mode
        # under the gist mask X reads P only through the gist: with the gist's own row fixed, P is invisible
        hidden = gist_allowed(g, 1, 8)
        hidden[0, 4, :4] = False  # the gist sees only itself: now nothing of P reaches X
        a, b = model(ids, allowed=hidden)[0, 5:], model(other, allowed=hidden)[0, 5:]
        assert torch.allclose(a, b, atol=1e-6)


def test_the_native_decode_step_refuses_a_gist_mask():
    from genmodels.native.decoder import unsupported_inputs
    reason = unsupported_inputs(allowed=gist_allowed(torch.tensor([1]), 1, 3))
    assert reason is not None and "allowed" in reason and "\n" not in reason


def test_the_encoder_decoder_takes_the_gist_masks():
    model = _tiny("t5-tiny", d_ff=64, head_dim=8)
    src = torch.tensor([[3, 4, 5, 6, 7, 8]])  # P = [0, 3), G = [3, 4), X = [4, 6)
    other = src.clone()
    other[0, :3] = torch.tensor([11, 12, 13])
    tgt = torch.tensor([[0, 5, 6]])
    g = torch.tensor([4 - 1])
    with torch.no_grad():
        for mode, same in (("neg_control", True), ("gist", False)):
            enc = gist_allowed(g, 1, 6, mode=mode)
            cross = gist_cross_allowed(g, 1, 6, 3, mode=mode)
            a = model(src, tgt, allowed=enc, memory_mask=cross)
            b = model(other, tgt, allowed=enc, memory_mask=cross)
            assert torch.allclose(a, b, atol=1e-6) is same, mode


def test_packed_examples_each_get_their_own_gist_mask():
    from genmodels.nn.gist_mask import gist_allowed_packed
    gist = 9
    # two examples in one row: [a b G x] [c G G y z] (segments 1 and 2), then a pad (segment 0), and a row
    # whose single example has no gist (unrestricted)
    ids = torch.tensor([[5, 6, gist, 7, 5, gist, gist, 7, 8, 0], [5, 6, 7, 8, 5, 6, 7, 8, 5, 6]])
    seg = torch.tensor([[1, 1, 1, 1, 2, 2, 2, 2, 2, 0], [1] * 10])
    allowed = gist_allowed_packed(ids, gist, seg)
    mask, _ = build_mask(10, 10, causal=True, allowed=allowed & (seg[:, :, None] == seg[:, None, :]))
    seen = (mask == 0)[:, 0]
    assert torch.equal(seen[0], m("1000000000", "1100000000", "1110000000", "0011000000",
                                  "0000100000", "0000110000", "0000111000", "0000011100", "0000011110",
                                  "0000000001"))
    assert torch.equal(seen[1], torch.ones(10, 10, dtype=torch.bool).tril())
    neg = gist_allowed_packed(ids, gist, seg, mode="neg_control")
    mask, _ = build_mask(10, 10, causal=True, allowed=neg & (seg[:, :, None] == seg[:, None, :]))
    assert torch.equal((mask == 0)[0, 0, 7:9], m("0000000100", "0000000110"))
    # one example per row: the same pairs as the span form
    row = torch.tensor([[5, 6, 7, gist, 8]])
    for mode in ("gist", "neg_control", "pos_control"):
        assert torch.equal(decoder_pairs(gist_allowed_packed(row, gist, mode=mode))[0], DECODER_5[mode])
