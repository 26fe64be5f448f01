"""The semantic pyramid (nn/pyramid.py): SAQ against residual quantisation (../shared/reference/diffusion.md §6)."""
from __future__ import annotations

import torch

from genmodels.nn.codebook import LexicalCodebook
from genmodels.nn.pyramid import PyramidQuantizer, ResidualSum, StreamingAverage


def _identity_codebook(vectors: torch.Tensor) -> LexicalCodebook:
    """A codebook whose projection is the identity: entries are the vectors themselves."""
    k, d = vectors.shape
    cb = LexicalCodebook(k, d, d)
    cb.fill(vectors, torch.arange(k))
    with torch.no_grad():
        cb.proj.weight.copy_(torch.eye(d))
        cb.proj.bias.zero_()
    return cb


def _unit_table(k=256, d=8, seed=1234) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    t = torch.randn(k, d, generator=g)
    return t / t.norm(dim=1, keepdim=True)  # equal norms: what word embeddings are like


def test_saq_picks_the_same_entry_at_every_layer_when_z_is_an_entry():
    """z = e(a): SAQ chooses a at every layer with zero error (§6 SAQ test 1); residual quantisation does not."""
    table = _unit_table()
    z = table[17].view(1, -1, 1, 1).expand(1, -1, 4, 4).contiguous()
    q = PyramidQuantizer(_identity_codebook(table), (1, 2, 4), StreamingAverage())
    out = q(z)
    assert all(bool((ids == 17).all()) for ids in out.ids)
    assert torch.allclose(q.embed(out.ids), z, atol=1e-6)
    r = PyramidQuantizer(_identity_codebook(table), (1, 2, 4), ResidualSum())(z)
    assert not bool((r.ids[1] == 17).all())  # the residual is 0: no unit-norm entry is near it


def _mean_error(rule, depth: int, table: torch.Tensor, z: torch.Tensor) -> float:
    q = PyramidQuantizer(_identity_codebook(table), (1,) * depth, rule)
    out = q(z)
    return float((q.embed(out.ids) - z).detach().pow(2).sum(1).mean())


def test_saq_error_falls_with_depth_and_beats_residual_on_equal_norm_entries():
    """§6 SAQ test 2: on a table of equal-norm entries, SAQ's mean error over random z (of the table's norm
    scale) falls as layers are added and is below residual quantisation's at the same depth."""
    table = _unit_table()
    z = torch.randn(200, 8, 1, 1)
    z = z / z.norm(dim=1, keepdim=True)
    saq = [_mean_error(StreamingAverage(), n, table, z) for n in (1, 2, 4, 8)]
    res = [_mean_error(ResidualSum(), n, table, z) for n in (1, 2, 4, 8)]
    assert saq[0] == res[0]  # one layer: the same nearest entry
    assert saq[1] < saq[0] and saq[2] < saq[1] and saq[3] < saq[2]
    assert all(s < r for s, r in zip(saq[1:], res[1:]))


def test_pyramid_counts_and_shapes():
    """(1, 2, 4): 1 + 4 + 16 = 21 ids, valid; an input per depth; the top target is z pooled to one token."""
    cb = LexicalCodebook(32, 10, 6)
    cb.fill(torch.randn(32, 10), torch.arange(32))
    q = PyramidQuantizer(cb, (1, 2, 4))
    z = torch.randn(3, 6, 4, 4)
    out = q(z)
    assert q.tokens == 21 and [tuple(i.shape) for i in out.ids] == [(3, 1), (3, 4), (3, 16)]
    assert all(0 <= int(i.min()) and int(i.max()) < 32 for i in out.ids)
    assert len(out.inputs) == 3 and all(tuple(x.shape) == (3, 6, 4, 4) for x in out.inputs)
    assert torch.allclose(out.top, z.mean((2, 3)))
    for d in (1, 2, 3):  # the straight-through input has the value of the quantised reconstruction
        assert torch.allclose(out.inputs[d - 1], q.embed(out.ids, d), atol=1e-5)


def test_the_encoder_gradient_flows_through_every_depth():
    cb = LexicalCodebook(32, 10, 6)
    cb.fill(torch.randn(32, 10), torch.arange(32))
    z = torch.randn(2, 6, 4, 4, requires_grad=True)
    out = PyramidQuantizer(cb, (1, 2, 4))(z)
    for x in out.inputs:
        z.grad = None
        x.sum().backward(retain_graph=True)
        assert z.grad is not None and z.grad.abs().sum() > 0
