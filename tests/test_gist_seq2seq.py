"""Gist caching for encoder–decoders (src/genmodels/gist_seq2seq.py, #24 d3): the gist's encoder keys/values and
outputs, then an input encoded against them, give the memory, logits and greedy tokens of the full gist-masked
forward (1e-5) — T5 (relative bias) and the original Transformer (absolute positions), rows of different
instructions and input lengths batched; saved and loaded; pos_control refused with the reason."""
from __future__ import annotations

import pytest
import torch

import genmodels
from genmodels.gist import GistCache, compress
from genmodels.nn.gist_mask import gist_allowed, gist_cross_allowed
from tests.helpers.tiny import randomise

GIST = 1
SMALL = dict(vocab_size=48, d_model=32, n_layers=2, n_heads=4, max_seq_len=64)
MODELS = {
    "t5": lambda: genmodels.preset("t5-tiny", **SMALL, d_ff=64, head_dim=8),  # relative bias
    "transformer": lambda: genmodels.preset("transformer-tiny", **SMALL, d_ff=64),  # absolute positions
}
INSTRUCTIONS = [[5, 6, 7, 8, 9, 10, 11], [12, 13, 14], [20, 21, 22, 23, 24]]
INPUTS = [[30, 31, 32, 33], [34], [35, 36, 37]]
TARGET = [2, 40, 41, 42]  # decoder start, then any tokens (teacher forcing)


def _model(name, seed=0):
    return randomise(genmodels.build_model(MODELS[name]()), seed=seed).eval()


def _full(model, p, k, x, tgt, mode):
    """Decoder logits ``(T, V)`` of one row under the full gist-masked forward (no cache)."""
    src = torch.tensor([p + [GIST] * k + x])
    g = torch.tensor([len(p)])
    with torch.no_grad():
        return model(src, torch.tensor([tgt]), allowed=gist_allowed(g, k, src.shape[1], mode=mode),
                     memory_mask=gist_cross_allowed(g, k, src.shape[1], len(tgt), mode=mode))[0]


def _right_padded(rows):
    width = max(map(len, rows))
    x, mask = torch.zeros(len(rows), width, dtype=torch.long), torch.zeros(len(rows), width, dtype=torch.long)
    for i, r in enumerate(rows):
        x[i, :len(r)], mask[i, :len(r)] = torch.tensor(r), 1
    return x, mask


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("mode, k", [("gist", 1), ("gist", 2), ("neg_control", 2)])
def test_the_encoder_gist_cache_gives_the_full_masked_forward(name, mode, k, tmp_path):
    model = _model(name)
    gist = compress(model, INSTRUCTIONS, k=k, gist_id=GIST, mode=mode)
    assert gist.slots == (k if mode == "gist" else 0) and gist.next_pos.tolist() == [len(p) + k for p in INSTRUCTIONS]
    gist = GistCache.load(gist.save(tmp_path / "g.safetensors"), model)  # (the memory travels)
    x, mask = _right_padded(INPUTS)
    memory, memory_mask = gist.encoded(model, x, mask)
    with torch.no_grad():
        logits = model.decode(torch.tensor([TARGET] * 3), memory, memory_mask)  # (3, T, V)
    for row, (p, xs) in enumerate(zip(INSTRUCTIONS, INPUTS)):
        torch.testing.assert_close(logits[row], _full(model, p, k, xs, TARGET, mode), rtol=0, atol=1e-5)
    out = genmodels.generate(model, x, 5, cache=gist, attention_mask=mask, eos_token_id=[])
    for row, (p, xs) in enumerate(zip(INSTRUCTIONS, INPUTS)):
        tgt = [out[row, 0].item()]
        for _ in range(5):
            tgt.append(int(_full(model, p, k, xs, tgt, mode)[-1].argmax()))
        assert out[row].tolist() == tgt, (mode, row)


def test_one_gist_row_serves_every_input_and_pos_control_is_refused():
    model = _model("t5")
    gist = compress(model, [INSTRUCTIONS[0]], k=1, gist_id=GIST)
    x, mask = _right_padded(INPUTS)
    memory, memory_mask = gist.encoded(model, x, mask)
    with torch.no_grad():
        logits = model.decode(torch.tensor([TARGET] * 3), memory, memory_mask)
    for row, xs in enumerate(INPUTS):
        torch.testing.assert_close(logits[row], _full(model, INSTRUCTIONS[0], 1, xs, TARGET, "gist"), rtol=0,
                                   atol=1e-5)
    with pytest.raises(ValueError, match=r"mode='pos_control' on an encoder–decoder caches nothing: its "
                                         r"instruction's encoder states read the input") as e:
        compress(model, [5, 6], gist_id=GIST, mode="pos_control")
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match=r"right-padded \(the first column all 1\)"):
        gist.encoded(model, x, mask.flip(1))
    with pytest.raises(ValueError, match="made by another model"):
        genmodels.generate(_model("t5", seed=1), x, 2, cache=gist, attention_mask=mask)


def test_the_cli_compresses_for_t5_and_generates_after_the_gist(tmp_path, capsys, monkeypatch):
    from genmodels.cli import main
    from genmodels.data.tokenizer import train_bpe_tokenizer
    tok = train_bpe_tokenizer(["Translate to French: the cat. Le chat. Reverse the word: abc cba. " * 3],
                              vocab_size=300, special_tokens=("<|endoftext|>", "<GIST>"), min_frequency=1)
    model = randomise(genmodels.build_model(genmodels.preset("t5-tiny", **{**SMALL, "vocab_size": tok.get_vocab_size()},
                                                             d_ff=64, head_dim=8))).eval()
    model.tokenizer = tok
    path = genmodels.save(model, tmp_path / "m")
    out = tmp_path / "g.safetensors"
    assert main(["compress", str(path), "--prompt", "Translate to French:", "--out", str(out)]) == 0
    capsys.readouterr()
    seen, real = [], genmodels.generate
    monkeypatch.setattr(genmodels, "generate", lambda *a, **kw: seen.append(kw.get("cache")) or real(*a, **kw))
    assert main(["generate", str(path), "--gist", str(out), "--prompt", " the cat", "--max-new-tokens", "5",
                 "--temperature", "0"]) == 0
    assert len(seen) == 1 and isinstance(seen[0], GistCache) and seen[0].memory is not None  # the gist is used
    want = genmodels.generate(model, torch.tensor([tok.encode(" the cat").ids]), 5,
                              cache=compress(model, "Translate to French:"))
    assert capsys.readouterr().out == tok.decode(want[0].tolist(), skip_special_tokens=True) + "\n"
