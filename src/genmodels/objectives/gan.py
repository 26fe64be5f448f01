"""The two-player GAN objective: one module, two phases over the same batch (D, then G).

    batch = {"images": real samples (N, …) (images in [−1, 1]), "labels": (N,) class ids (conditional)}
    objective(batch, player="D")  ->  L_D [+ N·R1 every N-th D step],  metrics d_real, d_fake, r1
    objective(batch, player="G")  ->  L_G,                              metrics g_fake

``objective.model`` holds ``.generator(z, labels)`` and ``.discriminator(x, labels) -> logits (N,)``
(a :class:`~genmodels.models.gan.DCGAN`, or any such pair). The losses and R1 are
:mod:`genmodels.objectives.gan_losses`; each phase is one optimizer's part of a
:class:`~genmodels.training.steps.TrainStep` (``Phase("D", partial(objective, player="D"),
model.discriminator, opt_d)``, then ``Phase("G", …, model.generator, opt_g)``). As in the
pytorch/examples script, D sees the real and the generated batch in separate forwards (its BatchNorm
statistics are per batch), and fakes are labelled with the real batch's labels.

Lazy R1 needs the step number: call :meth:`GANObjective.set_step` before each step (the D phase of step s
adds N·R1 when s % N == 0). Metrics are mean logits (``d_real`` = E D(x), ``d_fake`` = E D(G(z)) in the
D phase, ``g_fake`` in the G phase) and ``r1``, the latest penalty computed (0 before the first).
"""
from __future__ import annotations

import torch
from torch import nn

from .base import Batch, Metrics, Objective
from .gan_losses import gan_loss, r1_due, r1_penalty

PLAYERS = ("D", "G")


class GANObjective(Objective):
    name = "gan"
    unit = "images"
    flops_apply = False
    perplexity = False
    usage = "sample"

    def __init__(self, model: nn.Module, *, z_dim: int, loss: str = "non_saturating", r1_gamma: float = 0.0,
                 r1_every: int = 16):
        super().__init__(model)
        if r1_gamma < 0 or r1_every < 1:
            raise ValueError(f"r1_gamma={r1_gamma} must be >= 0 and r1_every={r1_every} >= 1")
        self.z_dim, self.loss = z_dim, gan_loss(loss)
        self.r1_gamma, self.r1_every = r1_gamma, r1_every
        self.step = 0
        self.last_r1 = torch.zeros(())

    @classmethod
    def for_model(cls, model: nn.Module) -> "GANObjective":
        """The objective a GANConfig describes (loss, R1) around ``model``."""
        c = model.config
        return cls(model, z_dim=c.z_dim, loss=c.loss, r1_gamma=c.r1_gamma, r1_every=c.r1_every)

    def set_step(self, step: int) -> None:
        """The number of steps done so far (decides lazy R1)."""
        self.step = step

    def units(self, batch: Batch) -> int:
        return batch["images"].shape[0]

    def noise(self, like: torch.Tensor) -> torch.Tensor:
        """z ~ N(0, I): (N, z_dim), on ``like``'s device and dtype."""
        return torch.randn(like.shape[0], self.z_dim, device=like.device, dtype=like.dtype)

    def forward(self, batch: Batch, player: str = "D") -> tuple[torch.Tensor, Metrics]:
        if player not in PLAYERS:
            raise ValueError(f"player={player!r} is not allowed; choose one of {', '.join(PLAYERS)}")
        real, labels = batch["images"], batch.get("labels")
        g, d = self.model.generator, self.model.discriminator
        if player == "G":
            fake_logits = d(g(self.noise(real), labels), labels)  # (N,)
            return self.loss.generator(fake_logits), {"g_fake": fake_logits.mean().detach()}
        with torch.no_grad():
            fake = g(self.noise(real), labels)
        lazy_r1 = self.r1_gamma > 0 and r1_due(self.step, self.r1_every)
        if lazy_r1:
            real = real.detach().requires_grad_(True)
        real_logits = d(real, labels)  # (N,)
        fake_logits = d(fake, labels)  # (N,): a separate forward (BN statistics per batch)
        loss = self.loss.discriminator(real_logits, fake_logits)
        if lazy_r1:
            r1 = r1_penalty(real_logits, real, self.r1_gamma)
            loss = loss + self.r1_every * r1  # lazy: N × the penalty every N-th step
            self.last_r1 = r1.detach()
        return loss, {"d_real": real_logits.mean().detach(), "d_fake": fake_logits.mean().detach(),
                      "r1": self.last_r1.to(loss.device)}
