"""GAN losses on discriminator LOGITS, and the R1 gradient penalty.

Notation: ℓ_r = D(x) on real images, ℓ_f = D(G(z)) on generated ones (logits: no sigmoid — a
``Sigmoid`` + ``BCELoss`` pair is unstable, and unsafe under autocast), softplus(t) = ln(1 + eᵗ),
so −ln σ(t) = softplus(−t) and −ln(1 − σ(t)) = softplus(t).

    loss              L_D                                         L_G
    non_saturating    E softplus(−ℓ_r) + E softplus(ℓ_f)          E softplus(−ℓ_f)
    hinge             E relu(1 − ℓ_r) + E relu(1 + ℓ_f)           −E ℓ_f

- Non-saturating (Goodfellow et al., 2014, "Generative Adversarial Nets", §3): D minimises the binary
  cross-entropy of real vs fake; G maximises ln D(G(z)) instead of minimising ln(1 − D(G(z))), whose
  gradient vanishes while D wins. At ℓ ≡ 0, L_D = 2 ln 2.
- Hinge (Lim & Ye, 2017, "Geometric GAN"; Miyato et al., 2018, SNGAN): D is a margin classifier,
  G raises D's score of its samples. At ℓ ≡ 0, L_D = 2.

R1 (Mescheder, Geiger & Nowozin, 2018, "Which Training Methods for GANs do actually Converge?", eq. 9):

    R1 = γ/2 · E_x~real ‖∇_x D(x)‖²

penalises D's gradient on real data only. Lazy regularisation (Karras et al., 2020, StyleGAN2, §3.1):
add it every N-th discriminator step, multiplied by N, so its average weight is unchanged.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F


def d_non_saturating(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """L_D = E softplus(−ℓ_r) + E softplus(ℓ_f)."""
    return F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()


def g_non_saturating(fake_logits: torch.Tensor) -> torch.Tensor:
    """L_G = E softplus(−ℓ_f) = −E ln σ(D(G(z)))."""
    return F.softplus(-fake_logits).mean()


def d_hinge(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """L_D = E relu(1 − ℓ_r) + E relu(1 + ℓ_f)."""
    return F.relu(1.0 - real_logits).mean() + F.relu(1.0 + fake_logits).mean()


def g_hinge(fake_logits: torch.Tensor) -> torch.Tensor:
    """L_G = −E ℓ_f."""
    return -fake_logits.mean()


@dataclass(frozen=True)
class GANLoss:
    """A loss by its two halves: ``discriminator(ℓ_r, ℓ_f)`` and ``generator(ℓ_f)``."""

    name: str
    discriminator: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    generator: Callable[[torch.Tensor], torch.Tensor]


GAN_LOSSES = {"non_saturating": GANLoss("non_saturating", d_non_saturating, g_non_saturating),
              "hinge": GANLoss("hinge", d_hinge, g_hinge)}


def gan_loss(name: str) -> GANLoss:
    if name not in GAN_LOSSES:
        raise ValueError(f"loss={name!r} is not allowed; choose one of {', '.join(GAN_LOSSES)}")
    return GAN_LOSSES[name]


def r1_penalty(real_logits: torch.Tensor, real_images: torch.Tensor, gamma: float) -> torch.Tensor:
    """γ/2 · E ‖∇_x D(x)‖² over the batch; ``real_images`` must have required grad before D saw them.

    The gradient keeps its graph (``create_graph``), so the penalty trains D (a double backward)."""
    if not real_images.requires_grad:
        raise ValueError("r1_penalty: real_images must require grad before the discriminator's forward "
                         "(call real_images.requires_grad_(True) first)")
    (grad,) = torch.autograd.grad(real_logits.sum(), real_images, create_graph=True)  # (N, C, H, W)
    return 0.5 * gamma * grad.pow(2).flatten(1).sum(1).mean()


def r1_due(step: int, every: int) -> bool:
    """Lazy R1: whether discriminator step ``step`` (0-based) adds the penalty (weighted by ``every``)."""
    return step % every == 0
