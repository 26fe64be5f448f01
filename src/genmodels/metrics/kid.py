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

Two ways to the same sums, the cheaper one chosen by operation count: per subset, three m×m kernel
matrices (cost ∝ subsets·m²·d); or the kernel matrices of the whole sets once, each subset's sum read
as sᵀKs with s its 0/1 indicator column (cost ∝ N²·(d + subsets), rows in chunks), which is 7–30×
cheaper for the sets of a few thousand rows the offline metrics see (360–1,000 samples, 1,437 real).
"""
from __future__ import annotations

import torch

__all__ = ["kid", "mmd2_unbiased", "polynomial_kernel"]

_CHUNK = 2048  # kernel rows held at once by the whole-set path


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


def _subset_sums(a: torch.Tensor, b: torch.Tensor, sa: torch.Tensor, sb: torch.Tensor,
                 same: bool) -> torch.Tensor:
    """Σ_{i∈A_s, j∈B_s} k(a_i, b_j) for every subset s (without i = j when ``same``): ``(subsets,)``.
    ``sa (Na, S)``, ``sb (Nb, S)`` are 0/1 subset indicators."""
    total = torch.zeros(sa.shape[1], dtype=a.dtype)
    for start in range(0, a.shape[0], _CHUNK):
        k = polynomial_kernel(a[start:start + _CHUNK], b)  # (c, Nb)
        total += (sa[start:start + _CHUNK] * (k @ sb)).sum(0)  # s_aᵀ K s_b, this chunk's rows
        if same:
            total -= sa[start:start + _CHUNK].T @ k.diagonal(offset=start)  # k(a_i, a_i) of these rows
    return total


def _per_subset(real: torch.Tensor, fake: torch.Tensor,
                picks: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """MMD²_u of each subset pair ``(real rows, fake rows)``: ``(subsets,)``."""
    return torch.stack([mmd2_unbiased(real[i], fake[j]) for i, j in picks])


def _whole_sets(real: torch.Tensor, fake: torch.Tensor,
                picks: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """The same as :func:`_per_subset`, from the whole sets' kernel matrices (module docstring)."""
    m = len(picks[0][0])
    sr = torch.zeros(real.shape[0], len(picks), dtype=real.dtype)  # (N, S) indicators
    sf = torch.zeros(fake.shape[0], len(picks), dtype=fake.dtype)  # (M, S)
    for s, (i, j) in enumerate(picks):
        sr[i, s], sf[j, s] = 1.0, 1.0
    xx, yy = _subset_sums(real, real, sr, sr, True), _subset_sums(fake, fake, sf, sf, True)
    xy = _subset_sums(real, fake, sr, sf, False)
    return (xx + yy) / (m * (m - 1)) - 2.0 * xy / (m * m)


def kid(real: torch.Tensor, fake: torch.Tensor, subsets: int = 100, subset_size: int | None = None,
        seed: int = 0) -> tuple[float, float]:
    """``(mean, std)`` of MMD²_u over ``subsets`` subset pairs of ``subset_size`` rows of ``real (N, d)``
    and ``fake (M, d)`` features."""
    if real.ndim != 2 or fake.ndim != 2 or real.shape[1] != fake.shape[1]:
        raise ValueError(f"kid needs real and fake features of shape (N, d) with one d; got {tuple(real.shape)} "
                         f"and {tuple(fake.shape)}")
    limit = min(real.shape[0], fake.shape[0])
    m = min(1000, limit) if subset_size is None else subset_size
    if not 2 <= m <= limit:
        raise ValueError(f"subset_size={m} must be in [2, {limit}] (at most the smaller set: "
                         f"{real.shape[0]} real, {fake.shape[0]} generated)")
    if subsets < 1:
        raise ValueError(f"subsets={subsets} must be >= 1")
    g = torch.Generator().manual_seed(seed)
    real, fake = real.double().cpu(), fake.double().cpu()
    picks = [(torch.randperm(real.shape[0], generator=g)[:m], torch.randperm(fake.shape[0], generator=g)[:m])
             for _ in range(subsets)]
    per_subset = subsets * 3 * m * m * real.shape[1]
    whole_sets = (real.shape[0] + fake.shape[0]) ** 2 * (real.shape[1] + subsets)
    values = _per_subset(real, fake, picks) if per_subset <= whole_sets else _whole_sets(real, fake, picks)
    return float(values.mean()), float(values.std(unbiased=False)) if subsets > 1 else 0.0
