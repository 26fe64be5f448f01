"""Improved precision and recall (Kynkäänniemi, Karras, Laine, Lehtinen & Aila, NeurIPS 2019).

Each set of features Φ defines a manifold: the union of balls around its points, each ball reaching
the point's k-th nearest neighbour in the same set (k = 3, the paper's choice):

    f(φ, Φ) = 1  if ∃ φ' ∈ Φ: ‖φ − φ'‖₂ ≤ ‖φ' − NN_k(φ', Φ)‖₂,  else 0

    precision = 1/|Φ_g| Σ_{φ_g ∈ Φ_g} f(φ_g, Φ_r)      (generated samples that look real)
    recall    = 1/|Φ_r| Σ_{φ_r ∈ Φ_r} f(φ_r, Φ_g)      (real samples the generator covers)

A collapsed generator (every sample the same image) keeps a high precision but its balls shrink to
points, so its recall falls towards 0. The radii depend on the set sizes, so the larger set is cut
to the size of the smaller one (a seeded random subset; the paper uses equal sizes). Distances in
float64, ``chunk`` rows at a time (memory O(chunk · N)).
"""
from __future__ import annotations

import torch

__all__ = ["kth_neighbour_radii", "precision_recall"]

_CHUNK = 1024


def kth_neighbour_radii(x: torch.Tensor, k: int = 3, chunk: int = _CHUNK) -> torch.Tensor:
    """Distance from each row of ``x (N, d)`` to its k-th nearest other row: ``(N,)``."""
    out = []
    for start in range(0, x.shape[0], chunk):
        d = torch.cdist(x[start:start + chunk], x)  # (c, N); the row itself is at distance ~0
        d[torch.arange(d.shape[0]), torch.arange(start, start + d.shape[0])] = float("inf")
        out.append(d.kthvalue(k, dim=1).values)
    return torch.cat(out)


def _covered(query: torch.Tensor, points: torch.Tensor, radii: torch.Tensor, chunk: int) -> torch.Tensor:
    """For each query row, whether it lies in some ball (points[j], radii[j]): ``(Q,)`` bool."""
    out = []
    for start in range(0, query.shape[0], chunk):
        d = torch.cdist(query[start:start + chunk], points)  # (c, P)
        out.append((d <= radii[None, :]).any(dim=1))
    return torch.cat(out)


def precision_recall(real: torch.Tensor, fake: torch.Tensor, k: int = 3, seed: int = 0,
                     chunk: int = _CHUNK) -> tuple[float, float]:
    """``(precision, recall)`` of ``fake (M, d)`` against ``real (N, d)`` features (module docstring)."""
    if real.ndim != 2 or fake.ndim != 2 or real.shape[1] != fake.shape[1]:
        raise ValueError(f"precision_recall needs real and fake features of shape (N, d) with one d; got "
                         f"{tuple(real.shape)} and {tuple(fake.shape)}")
    n = min(real.shape[0], fake.shape[0])
    if n <= k:
        raise ValueError(f"precision_recall with k={k} needs more than {k} rows in each set; got "
                         f"{real.shape[0]} real and {fake.shape[0]} generated")
    g = torch.Generator().manual_seed(seed)
    real, fake = real.double().cpu(), fake.double().cpu()
    if real.shape[0] > n:
        real = real[torch.randperm(real.shape[0], generator=g)[:n]]
    if fake.shape[0] > n:
        fake = fake[torch.randperm(fake.shape[0], generator=g)[:n]]
    precision = _covered(fake, real, kth_neighbour_radii(real, k, chunk), chunk).double().mean()
    recall = _covered(real, fake, kth_neighbour_radii(fake, k, chunk), chunk).double().mean()
    return float(precision), float(recall)
