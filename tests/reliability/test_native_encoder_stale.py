"""The native encoder never uses stale packed weights (issue #8, item 5): each kind of weight update,
including those that bypass the version counter (``p.data`` in place), is seen before the next call."""
from __future__ import annotations

import pytest
import torch

import genmodels
from genmodels import native
from genmodels.native.encoder import forget, native_encoder
from tests.helpers.tiny import randomise

pytestmark = pytest.mark.skipif(not native.enabled(), reason="GENMODELS_NATIVE=0: native kernels disabled on purpose")
TOL = dict(atol=1e-5, rtol=1e-4)


def bert() -> torch.nn.Module:
    return randomise(genmodels.build_model(genmodels.preset("bert-tiny")), seed=0).eval()


def linear_weights(model) -> list[torch.nn.Parameter]:
    return [p for name, p in model.named_parameters() if p.dim() == 2 and "blocks" in name]


def ema(model):  # shadow ← 0.9 · shadow + 0.1 · online, written through .data (no version bump)
    g = torch.Generator().manual_seed(1)
    for p in model.parameters():
        p.data.mul_(0.9).add_(torch.randn(p.shape, generator=g), alpha=0.1)


def prune(model):  # magnitude pruning of a few elements: the 3 smallest of one weight matrix
    w = linear_weights(model)[2]
    mask = torch.zeros(w.numel(), dtype=torch.bool)
    mask[w.detach().abs().flatten().argsort()[:3]] = True
    w.data[mask.view_as(w)] = 0


def prune_all(model):  # the 2 % smallest of every matrix
    for w in linear_weights(model):
        cut = w.detach().abs().flatten().kthvalue(max(1, w.numel() // 50)).values
        w.data[w.detach().abs() <= cut] = 0


def prune_rows(model):  # structured pruning: 8 output rows of a weight zeroed through .data, rows holding
    qkv = linear_weights(model)[0]  # none of the 16 smallest weights (magnitude alone would miss them)
    small_rows = set((qkv.detach().abs().flatten().argsort()[:16] // qkv.shape[1]).tolist())
    r = next(r for r in range(0, qkv.shape[0], 8) if not small_rows & set(range(r, r + 8)))
    qkv.data[r:r + 8] = 0


def quantise(model):  # round to a grid of 1/8, in place through .data
    for w in linear_weights(model):
        w.data.copy_(torch.round(w.data * 8) / 8)


def replace(model):  # p.data = a new tensor
    for w in linear_weights(model):
        w.data = w.data * 1.5


def copy_no_grad(model):  # load other weights in place (bumps the version counter)
    other = randomise(genmodels.build_model(genmodels.preset("bert-tiny")), seed=7)
    with torch.no_grad():
        for p, q in zip(model.parameters(), other.parameters()):
            p.copy_(q)


@pytest.mark.parametrize("update", [ema, prune, prune_all, prune_rows, quantise, replace,
                                    copy_no_grad],
                         ids=lambda f: f.__name__)
def test_native_encoder_sees_weight_update(update):
    model = bert()
    ids = torch.randint(0, model.config.vocab_size, (2, 11), generator=torch.Generator().manual_seed(3))
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0
    enc = native_encoder(model)
    assert enc is not None, native.unavailable_reason()
    before = enc(ids, mask)  # packed now
    update(model)
    assert native_encoder(model).stale()  # seen before the next call...
    want = model.encode(ids, mask, skip_padding=True).detach()  # (B, T, D)
    if update is not prune:  # (zeroing the 3 smallest weights moves the output by less than the tolerance)
        assert not torch.allclose(want, before, **TOL)  # the update matters
    torch.testing.assert_close(native_encoder(model)(ids, mask), want, **TOL)  # ...and repacked
    assert not native_encoder(model).stale()


def test_forget_repacks_after_a_single_element_edit():
    """An edit away from the sample is the documented blind spot: forget(model) repacks."""
    model = bert()
    ids = torch.randint(0, model.config.vocab_size, (1, 9), generator=torch.Generator().manual_seed(4))
    native_encoder(model)(ids)
    w = linear_weights(model)[0]
    sample = native_encoder(model).watched[0]
    assert sample.bits.data_ptr() == w.data_ptr()
    index = sample.index
    watched = set(index.tolist())
    flat = next(i for i in range(w.numel()) if i not in watched)
    w.data.view(-1)[flat] += 5.0
    assert not native_encoder(model).stale()  # unseen...
    forget(model)
    torch.testing.assert_close(native_encoder(model)(ids), model.encode(ids, skip_padding=True).detach(), **TOL)
