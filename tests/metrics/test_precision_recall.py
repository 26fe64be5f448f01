"""Improved precision/recall (Kynkäänniemi et al. 2019) against its definition, one point at a time."""
import pytest
import torch

from genmodels.metrics import kth_neighbour_radii, precision_recall


def _in_manifold(p, points, k):
    """f(φ, Φ): φ lies within the k-th-neighbour ball of some φ' ∈ Φ."""
    for i, q in enumerate(points):
        others = sorted(float((q - r).norm()) for j, r in enumerate(points) if j != i)
        if float((p - q).norm()) <= others[k - 1]:
            return True
    return False


def test_matches_the_definition():
    g = torch.Generator().manual_seed(0)
    real = torch.randn(25, 3, generator=g, dtype=torch.float64)
    fake = torch.randn(25, 3, generator=g, dtype=torch.float64) * 0.5 + 1.5
    want_p = sum(_in_manifold(f, real, 3) for f in fake) / 25
    want_r = sum(_in_manifold(r, fake, 3) for r in real) / 25
    assert 0 < want_p < 1 and 0 < want_r < 1
    assert precision_recall(real, fake, k=3, chunk=7) == pytest.approx((want_p, want_r), abs=1e-12)


def test_radii_are_the_kth_other_neighbour():
    x = torch.tensor([[0.0], [1.0], [3.0], [7.0]], dtype=torch.float64)
    torch.testing.assert_close(kth_neighbour_radii(x, k=1, chunk=3), torch.tensor([1.0, 1.0, 2.0, 4.0], dtype=x.dtype))
    torch.testing.assert_close(kth_neighbour_radii(x, k=3), torch.tensor([7.0, 6.0, 4.0, 7.0], dtype=x.dtype))


def test_identical_sets_and_a_collapsed_set():
    g = torch.Generator().manual_seed(1)
    real = torch.randn(200, 8, generator=g)
    assert precision_recall(real, real.clone()) == (1.0, 1.0)
    collapsed = real[:1].expand(200, -1)  # every sample the same real point
    precision, recall = precision_recall(real, collapsed)
    assert precision == 1.0 and recall <= 0.02


def test_larger_set_is_cut_to_the_smaller_and_small_sets_refused():
    g = torch.Generator().manual_seed(2)
    real, fake = torch.randn(100, 4, generator=g), torch.randn(30, 4, generator=g)
    p, r = precision_recall(real, fake, seed=5)
    g = torch.Generator().manual_seed(5)
    cut = real[torch.randperm(100, generator=g)[:30]]
    assert (p, r) == precision_recall(cut, fake)
    with pytest.raises(ValueError, match="more than 3 rows"):
        precision_recall(real, fake[:3])


def test_a_point_on_a_ball_boundary_is_inside():
    real = torch.tensor([[0.0], [1.0], [2.0], [3.0]])  # k = 1: every radius 1
    fake = torch.tensor([[4.0], [10.0], [11.0], [12.0]])  # 4 lies exactly on the ball of 3
    assert precision_recall(real, fake, k=1) == (0.25, 1.0)
