"""Fréchet distance between Gaussians fitted to two feature sets (Heusel, Ramsauer, Unterthiner,
Nessler & Hochreiter, "GANs trained by a two time-scale update rule converge to a local Nash
equilibrium", NeurIPS 2017 — FID when the features are Inception's; here the scoring classifier's):

    FID = ‖μ_r − μ_g‖² + Tr(Σ_r + Σ_g − 2 (Σ_r Σ_g)^{1/2})

Tr((Σ_r Σ_g)^{1/2}) is computed as Σ √λ_i over the eigenvalues of the symmetric PSD matrix
Σ_r^{1/2} Σ_g Σ_r^{1/2} (which has the same eigenvalues as Σ_r Σ_g), in float64, with negative
round-off eigenvalues clipped to 0 — no complex square root needed. Covariances are unbiased (N − 1).
FID is biased upwards at small N (Chong & Forsyth 2020): compare values only at equal sample counts.
"""
from __future__ import annotations

import torch

__all__ = ["frechet_distance"]


def _sqrt_psd(a: torch.Tensor) -> torch.Tensor:
    w, v = torch.linalg.eigh(a)
    return (v * w.clamp_min(0).sqrt()) @ v.T


def frechet_distance(real: torch.Tensor, fake: torch.Tensor) -> float:
    """FID between ``real (N, d)`` and ``fake (M, d)`` features (N, M ≥ 2)."""
    if real.ndim != 2 or fake.ndim != 2 or real.shape[1] != fake.shape[1] or min(real.shape[0], fake.shape[0]) < 2:
        raise ValueError(f"frechet_distance needs two (N ≥ 2, d) feature sets with one d; got {tuple(real.shape)} "
                         f"and {tuple(fake.shape)}")
    real, fake = real.double().cpu(), fake.double().cpu()
    mu_r, mu_g = real.mean(0), fake.mean(0)
    cov_r, cov_g = torch.cov(real.T).reshape(real.shape[1], -1), torch.cov(fake.T).reshape(fake.shape[1], -1)
    s = _sqrt_psd(cov_r)
    m = s @ cov_g @ s
    cross = torch.linalg.eigvalsh((m + m.T) / 2).clamp_min(0).sqrt().sum()  # Tr((Σ_r Σ_g)^½)
    return float((mu_r - mu_g).square().sum() + cov_r.trace() + cov_g.trace() - 2.0 * cross)
