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
D phase, ``g_fake`` in the G phase) and ``r1``, the penalty, on the steps that compute it (absent on the others).

EMA of G (``ema_decay``): the average θ_ema ← β_n·θ_ema + (1 − β_n)·θ_G after every step n (β_n warms up)
(:meth:`after_step`; :func:`~genmodels.objectives.gan_ema.ema_update_`, BN statistics copied) is the
submodule ``ema`` (so its tensors are in every checkpoint, keys ``ema.*``, and in no optimizer); it is
what sampling and the run's ``final/`` use (:meth:`sampling_model`, :meth:`final_state`). It stays in
eval mode whatever ``train()`` is called with.

On the trainer (``training/gan.py``): ``data = "images"`` (the image data and sample sections),
``train_options`` the train fields only a GAN reads.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from .base import Batch, Metrics, Objective
from .diffusion import ema_decay_at
from .gan_ema import ema_update_
from .gan_losses import gan_loss, r1_due, r1_penalty

PLAYERS = ("D", "G")


class GANObjective(Objective):
    name = "gan"
    unit = "images"
    flops_apply = False
    perplexity = False
    usage = "sample"
    data = "images"
    # train.* fields only a GAN reads (training/gan.py; refused for the other families)
    train_options = ("lr_d", "betas_d", "grad_clip_d", "collapse_d_loss", "collapse_steps", "stuck_steps")
    ema_field = "model.ema_decay"  # the config field that turns the EMA of G on or off (named on resume)

    def __init__(self, model: nn.Module, *, z_dim: int, loss: str = "non_saturating", r1_gamma: float = 0.0,
                 r1_every: int = 16, ema_decay: float | None = None):
        super().__init__(model)
        if r1_gamma < 0 or r1_every < 1:
            raise ValueError(f"r1_gamma={r1_gamma} must be >= 0 and r1_every={r1_every} >= 1")
        if ema_decay is not None and not 0.0 <= ema_decay < 1.0:
            raise ValueError(f"ema_decay={ema_decay} must be in [0, 1) (or None: no EMA)")
        self.z_dim, self.loss = z_dim, gan_loss(loss)
        self.r1_gamma, self.r1_every, self.ema_decay = r1_gamma, r1_every, ema_decay
        self.step = 0
        self._bar_r1: float | None = None  # the last R1 the bar showed
        self.ema = None if ema_decay is None else copy.deepcopy(model.generator).requires_grad_(False).eval()

    @classmethod
    def for_model(cls, model: nn.Module) -> "GANObjective":
        """The objective a GANConfig describes (loss, R1, EMA) around ``model``."""
        c = model.config
        return cls(model, z_dim=c.z_dim, loss=c.loss, r1_gamma=c.r1_gamma, r1_every=c.r1_every,
                   ema_decay=c.ema_decay)

    @classmethod
    def from_config(cls, model: nn.Module, train=None) -> "GANObjective":
        """The trainer's objective: everything it needs is in the model's GANConfig (the train fields a GAN
        reads — lr_d, betas_d, … — are the optimizers', training/gan.py)."""
        return cls.for_model(model)

    def train(self, mode: bool = True) -> "GANObjective":
        super().train(mode)
        if self.ema is not None:
            self.ema.eval()  # the average never uses batch statistics
        return self

    # ---- the EMA of G ----------------------------------------------------------------------
    def after_step(self, step: int) -> None:
        """After optimizer step ``step`` (1-based): θ_ema ← β_n·θ_ema + (1 − β_n)·θ_G with the warm-up
        β_n = min(ema_decay, (1 + n)/(10 + n)) of the diffusion objective (diffusers' EMAModel), so a short
        run's average is not dominated by the initial weights."""
        if self.ema is not None:
            ema_update_(self.ema, self.model.generator, ema_decay_at(self.ema_decay, step))

    @torch.no_grad()
    def restart_ema(self) -> None:
        """Start the average from the current generator (a resume from a checkpoint that kept none)."""
        if self.ema is not None:
            self.ema.load_state_dict(self.model.generator.state_dict())

    def sampling_model(self) -> nn.Module:
        """The model to sample from: the pair with the EMA average as its generator, when there is one."""
        return self.model if self.ema is None else self.model.with_generator(self.ema)

    def final_state(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The model state of ``final/`` from a full checkpoint state (model keys + ``ema.*``): the EMA
        generator (when kept) with the trained discriminator."""
        if self.ema is None:
            return {k: v for k, v in state.items() if not k.startswith("ema.")}
        out = {k: v for k, v in state.items() if k.startswith("discriminator.")}
        out.update({"generator." + k[len("ema."):]: v for k, v in state.items() if k.startswith("ema.")})
        return out

    def bar_metrics(self, metrics: dict[str, float]) -> dict[str, float]:
        """D(real), D(fake) and the latest R1 in the bar (the losses are shown by the trainer); R1 is computed
        every ``r1_every`` steps, so the bar keeps the last value seen."""
        shown = {k.split("/")[-1]: v for k, v in metrics.items() if k.split("/")[-1] in ("d_real", "d_fake", "r1")}
        self._bar_r1 = shown.get("r1", self._bar_r1)
        return {**shown, **({"r1": self._bar_r1} if self._bar_r1 is not None else {})}

    def set_step(self, step: int) -> None:
        """The number of steps done so far (decides lazy R1)."""
        self.step = step

    def units(self, batch: Batch) -> int:
        return batch["images"].shape[0]

    def noise(self, like: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """z ~ N(0, I): (N, z_dim), on ``like``'s device and dtype (drawn with ``generator`` if given)."""
        return torch.randn(like.shape[0], self.z_dim, device=like.device, dtype=like.dtype, generator=generator)

    def forward(self, batch: Batch, player: str = "D",
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, Metrics]:
        """``player``'s loss and metrics; ``generator`` draws z (the trainer's validation: fixed noise).
        R1 is added in training mode only (validation runs without autograd)."""
        if player not in PLAYERS:
            raise ValueError(f"player={player!r} is not allowed; choose one of {', '.join(PLAYERS)}")
        real, labels = batch["images"], batch.get("labels")
        g, d = self.model.generator, self.model.discriminator
        if player == "G":
            fake_logits = d(g(self.noise(real, generator), labels), labels)  # (N,)
            return self.loss.generator(fake_logits), {"g_fake": fake_logits.mean().detach()}
        with torch.no_grad():
            fake = g(self.noise(real, generator), labels)
        lazy_r1 = self.training and self.r1_gamma > 0 and r1_due(self.step, self.r1_every)
        if lazy_r1:
            real = real.detach().requires_grad_(True)
        real_logits = d(real, labels)  # (N,)
        fake_logits = d(fake, labels)  # (N,): a separate forward (BN statistics per batch)
        loss = self.loss.discriminator(real_logits, fake_logits)
        metrics = {"d_real": real_logits.mean().detach(), "d_fake": fake_logits.mean().detach()}
        if lazy_r1:
            r1 = r1_penalty(real_logits, real, self.r1_gamma)
            loss = loss + self.r1_every * r1  # lazy: N × the penalty every N-th step
            metrics["r1"] = r1.detach()
        return loss, metrics
