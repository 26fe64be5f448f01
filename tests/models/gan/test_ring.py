"""The ring test (issue #14, deliverable 4): a two-player run on the 2-D mixture of 8 Gaussians covers the modes.

A tiny MLP generator / discriminator pair is trained through the real parts — GANObjective's two phases on
training/steps.TrainStep, each player with its own Adam — for 300 steps (bounded by steps, never by time; one
thread and fixed seeds, so the run is deterministic; about 2 s). 2,000 samples are then assigned to their
nearest centre: a mode is covered when ≥ 1 % of the samples lie within 0.3 of it (15 σ; neighbouring centres
are 1.53 apart). The bound, ≥ 6 of 8 modes and ≥ 15 % of all samples near some centre, is out of reach of a
collapsed GAN (1–2 modes) and of an untrained one (a blob at the origin: no sample near a centre).
"""
from __future__ import annotations

import functools
import math

import pytest
import torch
from torch import nn

from genmodels.objectives.gan import GANObjective
from genmodels.training.steps import Phase, TrainStep

RADIUS, STD, Z = 2.0, 0.02, 8
CENTRES = RADIUS * torch.tensor([[math.cos(2 * math.pi * k / 8), math.sin(2 * math.pi * k / 8)] for k in range(8)])


class MLP(nn.Module):
    def __init__(self, d_in: int, d_out: int, width: int = 128):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(d_in, width), nn.LeakyReLU(0.2), nn.Linear(width, width),
                                 nn.LeakyReLU(0.2), nn.Linear(width, d_out))

    def forward(self, x: torch.Tensor, labels=None) -> torch.Tensor:
        return self.net(x).squeeze(-1)  # G: (N, 2); D: logits (N,)


class Pair(nn.Module):
    def __init__(self):
        super().__init__()
        self.generator, self.discriminator = MLP(Z, 2), MLP(2, 1)


def ring(n: int, g: torch.Generator) -> torch.Tensor:
    """(n, 2) points: a uniformly chosen centre + N(0, STD²)."""
    return CENTRES[torch.randint(0, 8, (n,), generator=g)] + STD * torch.randn(n, 2, generator=g)


def train(loss: str, r1_gamma: float, steps: int = 300, seed: int = 0) -> Pair:
    torch.manual_seed(seed)
    model = Pair()
    objective = GANObjective(model, z_dim=Z, loss=loss, r1_gamma=r1_gamma, r1_every=4)
    adam = functools.partial(torch.optim.Adam, lr=2e-3, betas=(0.5, 0.999))
    d, g = model.discriminator, model.generator
    step = TrainStep([Phase("D", functools.partial(objective, player="D"), d, adam(d.parameters())),
                      Phase("G", functools.partial(objective, player="G"), g, adam(g.parameters()))])
    data = torch.Generator().manual_seed(seed + 1)
    for s in range(steps):
        objective.set_step(s)
        report = step([{"images": ring(128, data)}], s)
        # R1 is logged on the steps that compute it (every 4th, from step 0)
        r1 = {"D/r1"} if r1_gamma > 0 and s % 4 == 0 else set()
        assert set(report.metrics) == {"D/d_real", "D/d_fake", "G/g_fake"} | r1
        assert not r1 or report.metrics["D/r1"] > 0
    return model


def coverage(model: Pair, n: int = 2000) -> tuple[int, float]:
    """(modes holding ≥ 1 % of the samples within 0.3 of their centre, fraction of samples near a centre)."""
    with torch.no_grad():
        x = model.generator(torch.randn(n, Z, generator=torch.Generator().manual_seed(7)))  # (n, 2)
    dist, nearest = torch.cdist(x, CENTRES).min(dim=1)
    near = dist < 0.3
    per_mode = torch.bincount(nearest[near], minlength=8)
    return int((per_mode >= n // 100).sum()), float(near.float().mean())


@pytest.mark.parametrize("loss,r1_gamma", [("non_saturating", 0.0), ("hinge", 0.1)])
def test_a_short_two_player_run_covers_the_ring(loss, r1_gamma):
    torch.set_num_threads(1)
    modes, near = coverage(train(loss, r1_gamma))
    assert modes >= 6 and near >= 0.15, (modes, near)


def test_an_untrained_generator_does_not_pass():
    """The bound is not met by chance: the same check on the initial generator fails."""
    torch.manual_seed(0)
    modes, near = coverage(Pair())
    assert modes < 6 and near < 0.15, (modes, near)
