"""KID equals the unbiased MMD² written out pair by pair; FID equals its textbook form."""
import importlib

import numpy as np
import pytest
import scipy.linalg
import torch

from genmodels.metrics import frechet_distance, kid, mmd2_unbiased, polynomial_kernel

kid_module = importlib.import_module("genmodels.metrics.kid")  # the package's `kid` is the function


def _mmd2_by_loops(x, y):
    """Bińkowski et al. 2018, eq. for MMD²_u with k(a, b) = (aᵀb/d + 1)³, one term at a time."""
    m, n, d = len(x), len(y), x.shape[1]

    def k(a, b):
        return (float(a @ b) / d + 1.0) ** 3

    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(n)) / (m * n)
    return xx + yy - 2 * xy


def test_kid_equals_the_direct_formula():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(9, 5, generator=g, dtype=torch.float64)
    y = torch.randn(9, 5, generator=g, dtype=torch.float64) * 1.5 + 0.3
    want = _mmd2_by_loops(x.numpy(), y.numpy())
    assert mmd2_unbiased(x, y).item() == pytest.approx(want, rel=1e-12)
    mean, std = kid(x, y, subsets=3, subset_size=9)  # every subset is the whole set, permuted
    assert mean == pytest.approx(want, rel=1e-12) and std == pytest.approx(0.0, abs=1e-12)
    torch.testing.assert_close(polynomial_kernel(x, y)[2, 4], (x[2] @ y[4] / 5 + 1) ** 3)


def test_kid_subsets_average_subset_estimates():
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(30, 4, generator=g), torch.randn(20, 4, generator=g) + 1
    mean, std = kid(x, y, subsets=5, subset_size=10, seed=7)
    g = torch.Generator().manual_seed(7)
    vals = [mmd2_unbiased(x.double()[torch.randperm(30, generator=g)[:10]],
                          y.double()[torch.randperm(20, generator=g)[:10]]).item() for _ in range(5)]
    assert mean == pytest.approx(np.mean(vals), rel=1e-12) and std == pytest.approx(np.std(vals), rel=1e-9)


def test_whole_set_sums_equal_per_subset_sums(monkeypatch):
    g = torch.Generator().manual_seed(4)
    x, y = torch.randn(50, 6, generator=g, dtype=torch.float64), torch.randn(40, 6, generator=g, dtype=torch.float64)
    picks = [(torch.randperm(50, generator=g)[:20], torch.randperm(40, generator=g)[:20]) for _ in range(6)]
    monkeypatch.setattr(kid_module, "_CHUNK", 16)  # several row chunks, the diagonal inside each
    torch.testing.assert_close(kid_module._whole_sets(x, y, picks), kid_module._per_subset(x, y, picks),
                               rtol=1e-10, atol=1e-12)


def test_kid_refuses_subsets_larger_than_a_set():
    x, y = torch.randn(30, 4), torch.randn(20, 4)
    with pytest.raises(ValueError, match=r"subset_size=21 must be in \[2, 20\]"):
        kid(x, y, subset_size=21)
    assert kid(x, y, subsets=2)[0] == kid(x, y, subsets=2, subset_size=20)[0]  # default: min(1000, N)
    with pytest.raises(ValueError, match="one d"):
        kid(x, torch.randn(20, 3))


def test_fid_equals_the_textbook_form():
    g = torch.Generator().manual_seed(3)
    a = torch.randn(40, 6, generator=g, dtype=torch.float64)
    b = torch.randn(50, 6, generator=g, dtype=torch.float64) @ torch.randn(6, 6, generator=g, dtype=torch.float64) + 2
    ca, cb = np.cov(a.numpy().T), np.cov(b.numpy().T)
    root = scipy.linalg.sqrtm(ca @ cb).real
    want = np.sum((a.numpy().mean(0) - b.numpy().mean(0)) ** 2) + np.trace(ca + cb - 2 * root)
    assert frechet_distance(a, b) == pytest.approx(want, rel=1e-8)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-9)
    # one dimension: (μ1 − μ2)² + (σ1 − σ2)²
    u = torch.tensor([[0.0], [2.0]], dtype=torch.float64)
    v = torch.tensor([[5.0], [11.0]], dtype=torch.float64)
    assert frechet_distance(u, v) == pytest.approx((1 - 8) ** 2 + (2 ** 0.5 - 18 ** 0.5) ** 2, rel=1e-12)
