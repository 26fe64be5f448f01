"""Beam search (genmodels/generation/beam.py) without a reference library: the algorithm against an
exhaustive search, RetNet's recurrent-state beams against a model that recomputes the whole parallel
forward every step (no cache), and the argument errors of decoder-only beam search."""
from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import nn

import genmodels
from genmodels.generation.beam import beam_search
from genmodels.nn.kv_cache import KVCache
from tests.helpers.native import require_native, threads  # noqa: F401  (fixture: 1 and 2 threads)
from tests.helpers.tiny import left_pad_mask, random_ids, tiny_model
from tests.models.retnet.test_retnet import V as V_RET  # the tiny randomised RetNet and its vocabulary
from tests.models.retnet.test_retnet import _model as _retnet



# ---- the algorithm: with beams enough to keep every prefix it is the exhaustive search --------------
def _bigram(v: int, seed: int) -> torch.Tensor:
    """A toy language model: logits of the next token given the last one, (V, V)."""
    return torch.randn(v, v, generator=torch.Generator().manual_seed(seed)) * 2.0


def _exhaustive(table, first, n, ends, lp):
    """Best hypothesis over every continuation of ``first`` of at most n tokens, ending at the first end
    token or the limit, scored Σ log p / length^lp."""
    logp = table.log_softmax(-1)
    best, best_score = None, -math.inf
    for seq in itertools.product(range(table.shape[0]), repeat=n):
        cut = next((i + 1 for i, t in enumerate(seq) if t in ends), n)
        seq = seq[:cut]
        prev, total = first, 0.0
        for t in seq:
            total, prev = total + float(logp[prev, t]), t
        if total / cut ** lp > best_score:
            best, best_score = list(seq), total / cut ** lp
    return best


@pytest.mark.parametrize("ends,lp", [((), 0.0), ((2,), 0.0), ((2,), 1.5), ((1, 3), 0.7)])
def test_enough_beams_find_the_exhaustive_best(ends, lp):
    """transformers' note: ``early_stopping="never"`` is the canonical search; with K ≥ Vⁿ⁻¹ beams no
    prefix is ever dropped, so the result is the exact maximiser (each source on its own)."""
    v, n, k = 4, 4, 64
    table = _bigram(v, seed=len(ends) + int(lp * 10))
    prompt = torch.tensor([[0], [1], [3]])                                  # (B, 1): three sources

    def advance(rows, tokens):
        return table[tokens]
    got = beam_search(table[prompt[:, 0]].repeat_interleave(k, 0), advance, prompt, n, num_beams=k, ends=ends,
                      pad=0, length_penalty=lp, early_stopping="never")
    for row in range(3):
        want = _exhaustive(table, int(prompt[row, 0]), n, ends, lp)
        fill = ends[0] if ends else -1                                       # pad 0: transformers fills eos[0]
        assert got[row].tolist() == [int(prompt[row, 0])] + want + [fill] * (got.shape[1] - 1 - len(want))


def test_zero_new_tokens_returns_the_prompt():
    prompt = torch.tensor([[5, 6]])
    out = beam_search(torch.zeros(2, 8), lambda r, t: torch.zeros(2, 8), prompt, 0, num_beams=2, ends=(), pad=0)
    assert torch.equal(out, prompt)


def test_kv_cache_reorder_moves_rows_in_place():
    """The KV cache follows the beams without new storage (the native step keeps its pointers)."""
    cache = KVCache(2, 3, 2, 6, 4)
    g = torch.Generator().manual_seed(0)
    for layer in cache.layers:
        layer.k.normal_(generator=g), layer.v.normal_(generator=g)
    cache.pos = 4
    cache.set_key_mask(torch.tensor([[0, 1, 1, 1], [1, 1, 1, 1], [0, 0, 1, 1]]))
    before = [(layer.k.clone(), layer.v.clone(), layer.k.data_ptr()) for layer in cache.layers]
    mask_before, index = cache.key_mask.clone(), torch.tensor([2, 2, 0])
    cache.reorder(index)
    for layer, (k, v, ptr) in zip(cache.layers, before):
        assert layer.k.data_ptr() == ptr
        assert torch.equal(layer.k[:, :, :4], k[index, :, :4]) and torch.equal(layer.v[:, :, :4], v[index, :, :4])
    assert torch.equal(cache.key_mask, mask_before[index])


# ---- RetNet: the recurrent state follows the beams --------------------------------------------------
class _History:
    """The no-cache reference's "cache": every row's tokens so far (and its prompt padding)."""

    def __init__(self):
        self.pos, self.key_mask, self.ids, self.real = 0, None, None, None

    def reserve(self, n):
        pass

    def set_key_mask(self, mask):
        pass

    def reorder(self, index):
        self.ids, self.real = self.ids.index_select(0, index), self.real.index_select(0, index)


class FullForward(nn.Module):
    """A RetNet that keeps no state: each call runs the parallel form over every row's whole sequence
    (its real tokens only) and returns the hidden states of the new positions."""

    family = "retnet"

    def __init__(self, model):
        super().__init__()
        self.model, self.config, self.embed, self.head = model, model.config, model.embed, model.head

    def new_cache(self, batch, max_len=None, *, limit=None):
        return _History()

    def hidden_states(self, input_ids, attention_mask=None, position_ids=None, cache=None):
        b, t = input_ids.shape
        real = torch.ones(b, t, dtype=torch.bool) if cache.pos or attention_mask is None else attention_mask.bool()
        cache.ids = input_ids if cache.ids is None else torch.cat([cache.ids, input_ids], 1)
        cache.real = real if cache.real is None else torch.cat([cache.real, real], 1)
        cache.pos += t
        h = input_ids.new_zeros(b, t, self.config.d_model, dtype=torch.float32)
        for r in range(b):
            full = self.model.hidden_states(cache.ids[r:r + 1, cache.real[r]])[0]  # (n_r, D) parallel form
            keep = real[r]
            h[r, keep] = full[full.shape[0] - int(keep.sum()):]
        return h


def _native_or_torch(path, monkeypatch):
    if path == "native":
        require_native()
    else:
        monkeypatch.setenv("GENMODELS_NATIVE", "0")


def test_the_reference_is_greedy_decoding_by_full_forwards():
    m = _retnet()
    ids = random_ids(2, 6, seed=3) % V_RET
    want = ids
    with torch.no_grad():
        for _ in range(5):
            want = torch.cat([want, m(want)[:, -1].argmax(-1, keepdim=True)], 1)
    assert torch.equal(genmodels.generate(FullForward(m), ids, 5, eos_token_id=[]), want)


@pytest.mark.parametrize("path", ["native", "torch"])
@pytest.mark.parametrize("beams,lp,early,rep", [(3, 1.0, False, None), (4, 2.0, "never", None),
                                                (2, 0.5, True, 1.3)])
@pytest.mark.usefixtures("threads")  # native vs PyTorch on 1 and 2 threads (tests/helpers/native.py)
def test_retnet_beams_equal_full_forward_beams(path, beams, lp, early, rep, monkeypatch):
    """Left-padded batch; no end token, then one that the best beam of row 0 emits at its 3rd step."""
    _native_or_torch(path, monkeypatch)
    m = _retnet()
    mask = left_pad_mask([4, 8, 2], 8)
    ids = (random_ids(3, 8, seed=5) % V_RET).masked_fill(mask == 0, 0)
    kw = dict(attention_mask=mask, num_beams=beams, length_penalty=lp, early_stopping=early, pad_token_id=0,
              repetition_penalty=rep)
    free = genmodels.generate(m, ids, 10, eos_token_id=[], **kw)
    assert free.shape == (3, 18)
    assert torch.equal(free, genmodels.generate(FullForward(m), ids, 10, eos_token_id=[], **kw))
    eos = int(free[0, 8 + 2])
    ended = genmodels.generate(m, ids, 10, eos_token_id=eos, **kw)
    assert not torch.equal(ended, free)
    assert torch.equal(ended, genmodels.generate(FullForward(m), ids, 10, eos_token_id=eos, **kw))


# ---- errors name the argument ------------------------------------------------------------------------
@pytest.mark.parametrize("kw,name", [
    (dict(num_beams=0), "num_beams"),
    (dict(num_beams=2.0), "num_beams"),
    (dict(num_beams=True), "num_beams"),
    (dict(num_beams=2, temperature=0.7), "num_beams=2 with temperature=0.7"),
    (dict(num_beams=2, length_penalty=math.inf), "length_penalty"),
    (dict(num_beams=2, early_stopping="sometimes"), "early_stopping"),
    (dict(num_beams=2, early_stopping=1), "early_stopping"),
    (dict(num_beams=2, streamer=print), "streamer"),
])
def test_decoder_beam_arguments_are_refused_by_name(kw, name):
    model = tiny_model("llama")
    with pytest.raises(ValueError, match=name):
        genmodels.generate(model, random_ids(1, 4), 3, **kw)


# ---- the CLI -----------------------------------------------------------------------------------------
def test_cli_num_beams_prints_the_api_result(tmp_path, capsys):
    """``genmodels generate --num-beams 3``: greedy-free by default (no --temperature needed), the text of
    ``genmodels.generate(num_beams=3)``."""
    from genmodels.cli import main
    from genmodels.data.tokenizer import train_bpe_tokenizer
    tok = train_bpe_tokenizer(["def foo(x):\n    return x + 1\n"] * 10, 280)
    model = tiny_model("llama", seed=1, vocab_size=tok.get_vocab_size())
    genmodels.save(model, tmp_path / "m", tokenizer=tok)
    assert main(["generate", str(tmp_path / "m"), "--prompt", "def foo", "--max-new-tokens", "8",
                 "--num-beams", "3"]) == 0
    ids = torch.tensor([tok.encode("def foo").ids])
    out = genmodels.generate(model, ids, max_new_tokens=8, num_beams=3)
    assert not torch.equal(out, genmodels.generate(model, ids, max_new_tokens=8))  # beams differ from greedy
    assert capsys.readouterr().out == tok.decode(out[0].tolist()) + "\n"
