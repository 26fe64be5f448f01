"""GAN losses, R1, EMA and the two-player objective on constructed cases (issue #14, deliverable 2)."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from genmodels.objectives.gan import GANObjective
from genmodels.objectives.gan_ema import EMA
from genmodels.objectives.gan_losses import (d_hinge, d_non_saturating, g_hinge, g_non_saturating, gan_loss,
                                             r1_due, r1_penalty)


def test_a_blind_discriminator_gives_the_textbook_values():
    """D ≡ 0: hinge L_D = 2, non-saturating L_D = 2 ln 2; L_G = ln 2 and 0."""
    zero = torch.zeros(7)
    assert float(d_hinge(zero, zero)) == pytest.approx(2.0, abs=1e-7)
    assert float(d_non_saturating(zero, zero)) == pytest.approx(2 * math.log(2), abs=1e-7)
    assert float(g_non_saturating(zero)) == pytest.approx(math.log(2), abs=1e-7)
    assert float(g_hinge(zero)) == 0.0


def test_losses_at_known_logits():
    real, fake = torch.tensor([2.0, 0.5]), torch.tensor([-2.0, 0.5])
    # hinge: mean(relu(1 − [2, .5])) + mean(relu(1 + [−2, .5])) = 0.25 + 0.75
    assert float(d_hinge(real, fake)) == pytest.approx(1.0, abs=1e-7)
    assert float(g_hinge(fake)) == pytest.approx(0.75, abs=1e-7)
    # non-saturating = binary cross-entropy of real → 1, fake → 0 (on logits), G's fake → 1
    bce = F.binary_cross_entropy_with_logits
    torch.testing.assert_close(d_non_saturating(real, fake), bce(real, torch.ones(2)) + bce(fake, torch.zeros(2)))
    torch.testing.assert_close(g_non_saturating(fake), bce(fake, torch.ones(2)))
    assert float(g_non_saturating(torch.tensor([-30.0]))) == pytest.approx(30.0, rel=1e-6)  # no saturation
    with pytest.raises(ValueError, match="loss='wgan' is not allowed; choose one of non_saturating, hinge"):
        gan_loss("wgan")


def test_r1_of_a_linear_discriminator_is_half_gamma_w_squared():
    """For D(x) = w·x, ∇ₓD = w for every sample: R1 = γ/2·‖w‖², and its gradient in w is γ·w."""
    w = torch.randn(1, 3, 4, 4, requires_grad=True)
    x = torch.randn(5, 3, 4, 4, requires_grad=True)
    logits = (x * w).flatten(1).sum(1)
    r1 = r1_penalty(logits, x, gamma=0.7)
    assert float(r1.detach()) == pytest.approx(0.35 * float(w.detach().pow(2).sum()), rel=1e-6)
    r1.backward()
    torch.testing.assert_close(w.grad, 0.7 * w.detach())


def test_r1_is_the_per_sample_gradient_norm():
    """D(x) = Σ x³ per sample: ∇ₓD = 3x², so R1 = γ/2 · mean_i ‖3x_i²‖² (not the norm of the batch sum)."""
    x = torch.randn(4, 2, 3, requires_grad=True)
    r1 = r1_penalty(x.pow(3).flatten(1).sum(1), x, gamma=2.0)
    want = (3 * x.detach() ** 2).pow(2).flatten(1).sum(1).mean()
    torch.testing.assert_close(r1, want)
    with pytest.raises(ValueError, match="real_images must require grad"):
        r1_penalty(x.detach().sum((1, 2)), x.detach(), 1.0)


def test_lazy_r1_schedule():
    assert [s for s in range(40) if r1_due(s, 16)] == [0, 16, 32]
    assert all(r1_due(s, 1) for s in range(5))


def test_ema_arithmetic_buffers_and_state():
    net = nn.Sequential(nn.Linear(2, 3), nn.BatchNorm1d(3))
    ema = EMA(net, decay=0.9)
    p0 = net[0].weight.detach().clone()
    assert not any(p.requires_grad for p in ema.module.parameters()) and not ema.module.training
    with torch.no_grad():
        net[0].weight.add_(1.0)
        net[1].running_mean.fill_(5.0)
    ema.update(net)
    torch.testing.assert_close(ema.module[0].weight, 0.9 * p0 + 0.1 * (p0 + 1))  # = p0 + 0.1
    torch.testing.assert_close(ema.module[1].running_mean, torch.full((3,), 5.0))
    ema.update(net)  # p0 + 0.1 → 0.9(p0 + 0.1) + 0.1(p0 + 1) = p0 + 0.19
    torch.testing.assert_close(ema.module[0].weight, p0 + 0.19)
    state = ema.state_dict()
    other = EMA(nn.Sequential(nn.Linear(2, 3), nn.BatchNorm1d(3)), decay=0.5)
    other.load_state_dict(state)
    assert (other.decay, other.num_updates) == (0.9, 2)
    torch.testing.assert_close(other.module[0].weight, p0 + 0.19)
    with pytest.raises(ValueError, match=r"ema_decay=1\.0 must be in \[0, 1\)"):
        EMA(net, 1.0)


class _Unlabelled(nn.Module):
    """``net`` called as the objective calls a player: ``(x, labels)``."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x, labels=None):
        return self.net(x)


class _Pair(nn.Module):
    def __init__(self):
        super().__init__()
        self.generator = _Unlabelled(nn.Linear(3, 2))
        self.discriminator = _Unlabelled(nn.Sequential(nn.Linear(2, 4), nn.Tanh(), nn.Linear(4, 1), nn.Flatten(0)))


def test_objective_phases_and_lazy_r1_weight():
    """D's loss gains N·R1 at steps ≡ 0 (mod N) and nothing in between; G's loss is the generator half."""
    model = _Pair()
    batch = {"images": torch.randn(6, 2)}

    def d_loss(objective, step, seed=0):
        objective.set_step(step)
        torch.manual_seed(seed)
        return objective(batch, player="D")

    plain = GANObjective(model, z_dim=3, loss="hinge")
    lazy = GANObjective(model, z_dim=3, loss="hinge", r1_gamma=0.5, r1_every=4)
    for step in range(6):
        (l0, m0), (l1, m1) = d_loss(plain, step), d_loss(lazy, step)
        if step % 4 == 0:
            assert float(m1["r1"]) > 0
            torch.testing.assert_close(l1, l0 + 4 * m1["r1"])
        else:
            torch.testing.assert_close(l1, l0)
    assert set(m0) == {"d_real", "d_fake"}  # r1 is logged on the steps that compute it only
    torch.manual_seed(1)
    lg, mg = plain(batch, player="G")
    torch.manual_seed(1)
    z = torch.randn(6, 3)
    torch.testing.assert_close(lg, g_hinge(model.discriminator(model.generator(z))))
    assert set(mg) == {"g_fake"}
    with pytest.raises(ValueError, match="player='X' is not allowed; choose one of D, G"):
        plain(batch, player="X")
