"""The lexical codebook (nn/codebook.py): nearest-neighbour VQ over frozen LM vectors, straight through."""
from __future__ import annotations

import torch

from genmodels.nn.codebook import LexicalCodebook, nearest


def _codebook(k=16, d_lm=12, d=6) -> LexicalCodebook:
    cb = LexicalCodebook(k, d_lm, d)
    cb.fill(torch.randn(k, d_lm), torch.arange(k) + 100)
    return cb


def test_nearest_is_the_argmin_of_the_squared_distance():
    t, table = torch.randn(50, 6), torch.randn(20, 6)
    assert torch.equal(nearest(t, table), torch.cdist(t, table).argmin(-1))


def test_straight_through_passes_the_gradient_to_z_unchanged():
    """dL/dz through z_q equals dL/dz_q (VQ-VAE test 1), while the forward value is the chosen entry."""
    cb = _codebook()
    z = torch.randn(8, 6, requires_grad=True)
    q = cb.quantize(z)
    assert torch.allclose(q.z_q, cb.table()[q.ids])
    w = torch.randn(8, 6)
    (q.z_q * w).sum().backward()
    assert torch.allclose(z.grad, w)


def test_loss_terms_train_the_projection_and_the_encoder_never_the_table():
    """The codebook term reaches only P (its gradient 2(ê − z)/N·∂ê/∂P), the commitment only z; the frozen
    vectors get no gradient and are unchanged by an optimiser step (§6 test 3)."""
    cb = _codebook()
    z = torch.randn(8, 6, requires_grad=True)
    q = cb.quantize(z)
    q.codebook.backward(retain_graph=True)
    assert z.grad is None and cb.proj.weight.grad.abs().sum() > 0
    cb.proj.weight.grad = None
    q.commitment.backward()
    assert z.grad.abs().sum() > 0 and cb.proj.weight.grad is None
    before = cb.vectors.clone()
    opt = torch.optim.SGD(cb.parameters(), lr=1.0)
    cb.quantize(z).codebook.backward()
    opt.step()
    assert torch.equal(cb.vectors, before) and not cb.vectors.requires_grad
    assert "vectors" in cb.state_dict() and "lm_ids" in cb.state_dict()  # buffers: saved, loaded, never trained


def test_the_codebook_term_is_the_mean_squared_distance_with_no_beta():
    cb = _codebook()
    z = torch.randn(8, 6)
    q = cb.quantize(z)
    e = cb.table()[q.ids]
    assert torch.allclose(q.codebook, (z - e).pow(2).mean()) and torch.allclose(q.commitment, q.codebook)


def test_fill_refuses_a_lexicon_of_another_shape():
    cb = LexicalCodebook(4, 3, 2)
    try:
        cb.fill(torch.zeros(5, 3), torch.zeros(5, dtype=torch.int64))
    except ValueError as e:
        assert "(5, 3)" in str(e) and "(4, 3)" in str(e)
    else:
        raise AssertionError("a 5-word lexicon filled a 4-entry codebook")
