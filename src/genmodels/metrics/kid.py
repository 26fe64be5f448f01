"""Kernel Inception Distance (Bińkowski, Sutherland, Arbel & Gretton, "Demystifying MMD GANs", ICLR 2018).

KID is the squared maximum mean discrepancy between real and generated features under the cubic
polynomial kernel

    k(x, y) = (xᵀy / d + 1)³                                    (d: the feature width)

estimated without bias on ``subsets`` random pairs of subsets of ``m`` real rows X and ``m`` generated
rows Y each, then averaged:

    MMD²_u = 1/(m(m−1)) Σ_{i≠j} k(x_i, x_j) + 1/(m(m−1)) Σ_{i≠j} k(y_i, y_j) − 2/m² Σ_{i,j} k(x_i, y_j)

Unbiased, so it can be slightly negative when the two sets come from one distribution, and (unlike
FID) its expectation does not depend on the number of samples. ``m`` must not exceed either set
(torchmetrics' ``subset_size`` rule); by default it is min(1000, N_real, N_fake). Subsets are drawn
without replacement within a subset, from a seeded generator. Computed in float64.
"""
from __future__ import annotations

import torch

__all__ = ["kid", "mmd2_unbiased", "polynomial_kernel"]


def polynomial_kernel(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """k(x, y) = (xᵀy/d + 1)³ for every row pair: ``(n, d), (m, d) -> (n, m)``."""
    return (x @ y.T / x.shape[1] + 1.0) ** 3


def mmd2_unbiased(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The unbiased MMD² estimate of the module docstring for ``x (m, d)``, ``y (n, d)`` (m, n ≥ 2)."""
    m, n = x.shape[0], y.shape[0]
    kxx, kyy, kxy = polynomial_kernel(x, x), polynomial_kernel(y, y), polynomial_kernel(x, y)
    off_xx = (kxx.sum() - kxx.diagonal().sum()) / (m * (m - 1))
    off_yy = (kyy.sum() - kyy.diagonal().sum()) / (n * (n - 1))
    return off_xx + off_yy - 2.0 * kxy.mean()


def kid(real: torch.Tensor, fake: torch.Tensor, subsets: int = 100, subset_size: int | None = None,
        seed: int = 0) -> tuple[float, float]:
    """``(mean, std)`` of MMD²_u over ``subsets`` subset pairs of ``subset_size`` rows of ``real (N, d)``
    and ``fake (M, d)`` features."""
    if real.ndim != 2 or fake.ndim != 2 or real.shape[1] != fake.shape[1]:
        raise ValueError(f"kid needs real and fake features of shape (N, d) with one d; got {tuple(real.shape)} "
                         f"and {tuple(fake.shape)}")
    limit = min(real.shape[0], fake.shape[0])
    size = min(1000, limit) if subset_size is None else subset_size
    if not 2 <= size <= limit:
        raise ValueError(f"subset_size={size} must be in [2, {limit}] (at most the smaller set: "
                         f"{real.shape[0]} real, {fake.shape[0]} generated)")
    if subsets < 1:
        raise ValueError(f"subsets={subsets} must be >= 1")
    g = torch.Generator().manual_seed(seed)
    real, fake = real.double().cpu(), fake.double().cpu()
    values = torch.stack([
        mmd2_unbiased(real[torch.randperm(real.shape[0], generator=g)[:size]],
                      fake[torch.randperm(fake.shape[0], generator=g)[:size]])
        for _ in range(subsets)
    ])
    return float(values.mean()), float(values.std(unbiased=False)) if subsets > 1 else 0.0
