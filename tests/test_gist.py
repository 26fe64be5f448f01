"""Gist caching (src/genmodels/gist.py, #24 d3): the cached gist equals the full gist-masked forward, batched over
different instructions; a GistCache saved and loaded, refused for another model; what cannot be cached is
refused with the reason; `genmodels compress` and `genmodels generate --gist`."""
from __future__ import annotations

import pytest
import torch

import genmodels
from genmodels.gist import GistCache, compress
from genmodels.nn.gist_mask import gist_allowed
from tests.helpers.tiny import randomise

GIST = 1  # the gist token id of the tiny models below
SMALL = dict(vocab_size=48, d_model=32, n_layers=2, n_heads=4, max_seq_len=64)
MODELS = {
    "llama": lambda: genmodels.preset("llama-tiny", **SMALL, n_kv_heads=2, d_ff=48),  # RoPE, GQA
    "gpt2": lambda: genmodels.preset("gpt2-tiny", **SMALL, d_ff=64),  # learned absolute positions
}


def _model(name="llama", seed=0):
    return randomise(genmodels.build_model(MODELS[name]()), seed=seed).eval()


def _full(model, instruction, k, x):
    """Logits (T_x, V) of ``x`` after ``instruction + gist × k`` under the gist mask, one row, no cache."""
    ids = torch.tensor([instruction + [GIST] * k + x])
    allowed = gist_allowed(torch.tensor([len(instruction)]), k, ids.shape[1])
    with torch.no_grad():
        return model(ids, allowed=allowed)[0, len(instruction) + k:]


def _full_greedy(model, instruction, k, x, n):
    """``n`` greedy tokens after ``x`` by the full gist-masked forward, one token at a time."""
    x = list(x)
    for _ in range(n):
        x.append(int(_full(model, instruction, k, x)[-1].argmax()))
    return x


INSTRUCTIONS = [[5, 6, 7, 8, 9, 10, 11], [12, 13, 14], [20, 21, 22, 23, 24]]
INPUTS = [[30, 31, 32], [33, 34, 35], [36, 37, 38]]


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("k", [1, 2])
def test_the_gist_cache_gives_the_logits_and_tokens_of_the_full_masked_forward(name, k):
    model = _model(name)
    gist = compress(model, INSTRUCTIONS, k=k, gist_id=GIST)  # three instructions of different lengths, batched
    assert gist.k == k and gist.next_pos.tolist() == [len(p) + k for p in INSTRUCTIONS]
    x = torch.tensor(INPUTS)
    cache = gist.decoding_cache(model, 3, x.shape[1])
    with torch.no_grad():
        cached = model(x, cache=cache)  # (3, T_x, V)
    for row, (p, xs) in enumerate(zip(INSTRUCTIONS, INPUTS)):
        torch.testing.assert_close(cached[row], _full(model, p, k, xs), rtol=0, atol=1e-5)
    out = genmodels.generate(model, x, 6, cache=gist)  # the native step serves the cached prefix on CPU
    for row, (p, xs) in enumerate(zip(INSTRUCTIONS, INPUTS)):
        assert out[row].tolist() == _full_greedy(model, p, k, xs, 6), row
    assert torch.equal(genmodels.generate(model, x, 6, cache=gist), out)  # the gist cache is reused, unchanged


def test_one_gist_row_serves_every_input_row_and_the_instruction_is_never_read_again():
    model = _model()
    gist = compress(model, [INSTRUCTIONS[0]], gist_id=GIST)
    x = torch.tensor(INPUTS)
    out = genmodels.generate(model, x, 4, cache=gist)
    for row, xs in enumerate(INPUTS):
        assert out[row].tolist() == _full_greedy(model, INSTRUCTIONS[0], 1, xs, 4)
    # another instruction, the same gist cache: the tokens follow the cache (nothing of the text is kept)
    assert torch.equal(genmodels.generate(model, x, 4, cache=GistCache(gist.keys, gist.values, gist.next_pos,
                                                                         gist.fingerprint, ["other"])), out)


def test_saved_and_loaded_it_is_the_same_and_another_model_is_refused(tmp_path):
    model = _model()
    gist = compress(model, INSTRUCTIONS[:2], k=2, gist_id=GIST)
    path = gist.save(tmp_path / "g.safetensors")
    back = GistCache.load(path, model)
    assert back.fingerprint == gist.fingerprint and torch.equal(back.next_pos, gist.next_pos)
    assert all(torch.equal(a, b) for a, b in zip(back.keys + back.values, gist.keys + gist.values))
    x = torch.tensor(INPUTS[:2])
    assert torch.equal(genmodels.generate(model, x, 3, cache=back), genmodels.generate(model, x, 3, cache=gist))
    other = _model(seed=1)
    with pytest.raises(ValueError, match="made by another model") as e:
        GistCache.load(path, other)
    assert "\n" not in str(e.value) and str(path) in str(e.value)
    with pytest.raises(ValueError, match="made by another model"):
        genmodels.generate(other, x, 3, cache=gist)
    genmodels.save(model, tmp_path / "m")
    with pytest.raises(ValueError, match="not a gist cache"):
        GistCache.load(tmp_path / "m" / "model.safetensors")


@pytest.mark.parametrize("make, reason", [
    (lambda: genmodels.preset("gpt2-tiny", **SMALL, d_ff=64, position="alibi"), "ALiBi biases scores by cache-slot"),
    (lambda: genmodels.preset("retnet-tiny", **SMALL), "recurrent state"),
])
def test_what_cannot_be_cached_is_refused_with_the_reason(make, reason):
    model = genmodels.build_model(make()).eval()
    with pytest.raises(ValueError, match=reason) as e:
        compress(model, [5, 6], gist_id=GIST)
    assert "\n" not in str(e.value)


def test_a_sliding_window_shorter_than_the_prompt_is_refused():
    model = randomise(genmodels.build_model(genmodels.preset("mistral-7b", **SMALL, n_kv_heads=2, d_ff=48,
                                                             sliding_window=12))).eval()
    with pytest.raises(ValueError, match=r"sliding window \(12\) is shorter than the instruction"):
        compress(model, list(range(5, 17)), gist_id=GIST)
    gist = compress(model, [5, 6, 7], gist_id=GIST)  # 4 positions: fits, and so do 3 inputs + 3 new tokens
    x = torch.tensor([INPUTS[0]])
    assert genmodels.generate(model, x, 3, cache=gist)[0].tolist() == _full_greedy(model, [5, 6, 7], 1, INPUTS[0], 3)
    with pytest.raises(ValueError, match=r"sliding window \(12\) is shorter than the prompt it must span \(14"):
        genmodels.generate(model, x, 7, cache=gist)


def test_an_instruction_without_a_gist_token_or_tokens_is_refused():
    model = _model()
    with pytest.raises(ValueError, match="no tokenizer"):
        compress(model, "an instruction", gist_id=GIST)
    with pytest.raises(ValueError, match="k=0"):
        compress(model, [5], k=0, gist_id=GIST)
    with pytest.raises(ValueError, match="no <GIST> token"):
        compress(model, [5])


def _gist_model_dir(tmp_path):
    """A tiny Llama saved with a byte-level BPE tokenizer that has a <GIST> token (id 1)."""
    from genmodels.data.tokenizer import train_bpe_tokenizer
    tok = train_bpe_tokenizer(["Translate to French: the cat. Le chat. Reverse the word: abc cba. " * 3],
                              vocab_size=300, special_tokens=("<|endoftext|>", "<GIST>"), min_frequency=1)
    cfg = genmodels.preset("llama-tiny", **{**SMALL, "vocab_size": tok.get_vocab_size()}, n_kv_heads=2, d_ff=48)
    model = randomise(genmodels.build_model(cfg)).eval()
    model.tokenizer = tok
    genmodels.save(model, tmp_path / "m")
    return tmp_path / "m", model


def test_the_cli_compresses_an_instruction_and_generates_after_it(tmp_path, capsys):
    from genmodels.cli import main
    path, model = _gist_model_dir(tmp_path)
    out = tmp_path / "g.safetensors"
    assert main(["compress", str(path), "--prompt", "Translate to French:", "--out", str(out)]) == 0
    n = len(model.tokenizer.encode("Translate to French:").ids)
    assert capsys.readouterr().out == (f"wrote {out}: {n} instruction tokens + 1 gist -> 1 cached position(s) "
                                       f"per layer ({n + 1:.1f}x fewer)\n")
    assert main(["generate", str(path), "--gist", str(out), "--prompt", " the cat", "--max-new-tokens", "5",
                 "--temperature", "0"]) == 0
    printed = capsys.readouterr().out
    x = model.tokenizer.encode(" the cat").ids
    want = _full_greedy(model, model.tokenizer.encode("Translate to French:").ids, 1, x, 5)
    assert printed == model.tokenizer.decode(want) + "\n"


def test_the_cli_refuses_a_gist_of_another_model_and_beams_in_one_line(tmp_path, capsys):
    from genmodels.cli import main
    path, model = _gist_model_dir(tmp_path)
    out = tmp_path / "g.safetensors"
    other = _model()
    compress(other, [5, 6], gist_id=GIST).save(out)
    assert main(["generate", str(path), "--gist", str(out), "--prompt", "x"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {out} was made by another model") and err.count("\n") == 1
    assert main(["generate", str(path), "--gist", str(out), "--prompt", "x", "--num-beams", "2"]) == 2
    assert capsys.readouterr().err == ("error: --gist with --num-beams 2: beam search does not continue a cache; "
                                       "use --num-beams 1\n")
    assert main(["compress", str(path), "--prompt", "x", "--k", "0", "--out", str(out)]) == 2
    assert capsys.readouterr().err == "error: --k 0: expected an integer >= 1 (gist tokens)\n"
    assert main(["generate", str(path), "--gist", str(tmp_path / "none.gist"), "--prompt", "x"]) == 2
    assert capsys.readouterr().err == (f"error: --gist {tmp_path / 'none.gist'}: no such file (make one with "
                                       "`genmodels compress PATH --prompt TEXT --out FILE`)\n")
    assert main(["compress", str(path), "--prompt", "x", "--out", str(tmp_path / "no" / "g.gist")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and str(tmp_path / "no") in err and err.count("\n") == 1


def test_a_model_changed_in_place_after_compress_is_refused():
    model = _model()
    gist = compress(model, [5, 6, 7], gist_id=GIST)
    x = torch.tensor([INPUTS[0]])
    genmodels.generate(model, x, 2, cache=gist)  # (its fingerprint is remembered here)
    with torch.no_grad():
        model.embed.weight[3, 0] += 1.0  # a training step would do this: same tensors, new values
    with pytest.raises(ValueError, match="made by another model"):
        genmodels.generate(model, x, 2, cache=gist)


def test_the_native_decode_step_serves_the_cached_gist(monkeypatch):
    from genmodels.generation import decode
    from genmodels.native.step import unsupported
    model = _model()
    if unsupported(model) is not None:
        pytest.skip(f"no native decode step here: {unsupported(model)}")
    built, real = [], decode.fused_step

    def spy(*args, **kw):  # the native step, counted
        built.append(1)
        return real(*args, **kw)
    monkeypatch.setattr(decode, "fused_step", spy)
    gist = compress(model, INSTRUCTIONS[:2], gist_id=GIST)
    out = genmodels.generate(model, torch.tensor(INPUTS[:2]), 5, cache=gist)
    assert built, "generate did not take the native step"
    for row in range(2):
        assert out[row].tolist() == _full_greedy(model, INSTRUCTIONS[row], 1, INPUTS[row], 5)


@pytest.mark.parametrize("mode, slots", [("pos_control", 7 + 2), ("neg_control", 0), ("gist", 2)])
def test_each_mask_has_its_cache_equal_to_its_full_masked_forward(mode, slots, tmp_path):
    model = _model()
    gist = compress(model, INSTRUCTIONS, k=2, gist_id=GIST, mode=mode)  # rows of 7, 3 and 5 instruction tokens
    assert gist.slots == slots and gist.k == 2 and gist.mode == mode
    gist = GistCache.load(gist.save(tmp_path / "g.safetensors"), model)  # (the key mask and mode travel)
    x = torch.tensor(INPUTS)
    cache = gist.decoding_cache(model, 3, x.shape[1])
    mask = None if cache.key_mask is None else torch.cat([cache.key_mask[:, :cache.pos], torch.ones_like(x)], 1)
    assert (mask is not None) is (mode == "pos_control")  # the shorter instructions' front padding
    with torch.no_grad():
        cached = model(x, mask, cache=cache)
    for row, (p, xs) in enumerate(zip(INSTRUCTIONS, INPUTS)):
        ids = torch.tensor([p + [GIST] * 2 + xs])
        with torch.no_grad():
            full = model(ids, allowed=gist_allowed(torch.tensor([len(p)]), 2, ids.shape[1], mode=mode))
        torch.testing.assert_close(cached[row], full[0, len(p) + 2:], rtol=0, atol=1e-5)
    out = genmodels.generate(model, x, 4, cache=gist)
    for row, (p, xs) in enumerate(zip(INSTRUCTIONS, INPUTS)):
        seq = list(xs)
        for _ in range(4):
            ids = torch.tensor([p + [GIST] * 2 + seq])
            with torch.no_grad():
                logits = model(ids, allowed=gist_allowed(torch.tensor([len(p)]), 2, ids.shape[1], mode=mode))
            seq.append(int(logits[0, -1].argmax()))
        assert out[row].tolist() == seq, (mode, row)


def _full_greedy_mode(model, p, k, xs, n, mode):
    """``n`` greedy tokens after ``xs`` by the full forward under ``mode``'s mask, one row."""
    seq = list(xs)
    for _ in range(n):
        ids = torch.tensor([p + [GIST] * k + seq])
        with torch.no_grad():
            logits = model(ids, allowed=gist_allowed(torch.tensor([len(p)]), k, ids.shape[1], mode=mode))
        seq.append(int(logits[0, -1].argmax()))
    return seq


RAGGED = [[30, 31, 32, 33, 34], [35], [36, 37, 38]]


def _left_padded(rows):
    width = max(len(r) for r in rows)
    x = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros_like(x)
    for i, r in enumerate(rows):
        x[i, width - len(r):], mask[i, width - len(r):] = torch.tensor(r), 1
    return x, mask


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("mode", ["gist", "pos_control", "neg_control"])
def test_inputs_of_different_lengths_after_the_gist_decode_as_each_row_alone(name, mode):
    """Left pads sit between the gist slots and each row's input, masked; positions continue from next_pos."""
    model = _model(name)
    gist = compress(model, INSTRUCTIONS, k=2, gist_id=GIST, mode=mode)
    x, mask = _left_padded(RAGGED)
    cache = gist.decoding_cache(model, 3, x.shape[1])
    held = cache.key_mask[:, :cache.pos] if cache.key_mask is not None else torch.ones(3, cache.pos, dtype=torch.long)
    with torch.no_grad():
        cached = model(x, torch.cat([held, mask], 1), cache=cache)  # (3, T, V)
    for row, (p, xs) in enumerate(zip(INSTRUCTIONS, RAGGED)):
        ids = torch.tensor([p + [GIST] * 2 + xs])
        with torch.no_grad():
            full = model(ids, allowed=gist_allowed(torch.tensor([len(p)]), 2, ids.shape[1], mode=mode))
        torch.testing.assert_close(cached[row, x.shape[1] - len(xs):], full[0, len(p) + 2:], rtol=0, atol=1e-5)
    out = genmodels.generate(model, x, 5, cache=gist, attention_mask=mask, eos_token_id=[])
    for row, (p, xs) in enumerate(zip(INSTRUCTIONS, RAGGED)):
        alone = genmodels.generate(model, torch.tensor([xs]), 5, eos_token_id=[],
                                   cache=compress(model, [p], k=2, gist_id=GIST, mode=mode))
        assert out[row, x.shape[1]:].tolist() == alone[0, len(xs):].tolist() == \
            _full_greedy_mode(model, p, 2, xs, 5, mode)[len(xs):], (mode, row)


def test_padded_inputs_continue_a_plain_cache_too_and_a_window_is_refused_with_the_reason():
    model = _model()
    prefix = [[5, 6, 7], [8, 9, 10]]
    _, cache = genmodels.generate(model, torch.tensor(prefix), 0, return_cache=True)
    x, mask = _left_padded([[30, 31, 32], [33]])
    out = genmodels.generate(model, x, 4, cache=cache, attention_mask=mask, eos_token_id=[])
    for row, xs in enumerate([[30, 31, 32], [33]]):
        alone = genmodels.generate(model, torch.tensor([prefix[row] + xs]), 4, eos_token_id=[])
        assert out[row, 3:].tolist() == alone[0, len(prefix[row]) + len(xs):].tolist(), row
    mistral = randomise(genmodels.build_model(genmodels.preset("mistral-7b", **SMALL, n_kv_heads=2, d_ff=48,
                                                               sliding_window=40))).eval()
    gist = compress(mistral, [5, 6, 7], gist_id=GIST)
    with pytest.raises(ValueError, match=r"attention_mask: padded new tokens after a cache .* a sliding window "
                                         r"counts slots, not positions \(sliding_window=40\)") as e:
        genmodels.generate(mistral, x, 2, cache=gist, attention_mask=mask)
    assert "\n" not in str(e.value)
