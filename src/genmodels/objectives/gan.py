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

On the trainer: the ``images`` data kind; two phases (:meth:`phases`: D with its own ``lr_d``, ``betas_d``,
``grad_clip_d``, each unset one following G's ``train.*``; then G), one process; the divergence watch of
:mod:`.gan_watch` (:meth:`watch`). Options (``train.objective: {name: gan, …}``): those and the watch's
``collapse_d_loss``, ``collapse_steps``, ``stuck_steps``, and ``eval_samples`` (:mod:`.images`); the loss,
R1 and EMA are the model's (GANConfig).

One optimizer step of a GAN run (:class:`~genmodels.training.steps.TrainStep` with two phases, in order)::

    D phase   L_D (+ N·R1 when step % N == 0)      on model.discriminator   clip grad_clip_d   Adam(lr_d, betas_d)
    G phase   L_G through the D just updated       on model.generator       clip train.grad_clip   Adam(lr, betas)
    then      θ_ema ← β·θ_ema + (1 − β)·θ_G        (after_step)

Each optimizer is the trainer's AdamW (``train.weight_decay`` 0 makes it Adam, as in DCGAN) over its player's
parameters only. The schedule (warm-up, cosine) scales both learning rates alike: lr_D(s) = lr_sched(s) · lr_d / lr.
Both optimizers' states are in every checkpoint (keyed ``D/<i>`` and ``G/<i>``), with the EMA of G (the
objective's ``ema.*`` tensors), so ``--resume`` continues exactly.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from functools import partial

import torch
from torch import nn

from ..config import ConfigError
from ..values import integer, number
from .base import Batch, Metrics, PhaseSpec, Watch
from .diffusion import ema_decay_at
from .gan_ema import ema_update_
from .gan_losses import gan_loss, r1_due, r1_penalty
from .gan_watch import CollapseWatch
from .images import ImageObjective, ImageOptions

PLAYERS = ("D", "G")


@dataclass
class GANOptions(ImageOptions):
    """A GAN's options: the D phase's optimizer (null: G's value), the divergence watch (null: the default)."""

    name: str = "gan"
    lr_d: float | None = None  # D's peak learning rate (null: train.lr)
    betas_d: list[float] | None = None  # D's Adam betas (null: train.betas)
    grad_clip_d: float | None = None  # D's gradient clipping (null: train.grad_clip)
    collapse_d_loss: float | None = None  # D loss below this … (default 0.01; 0: no watch)
    collapse_steps: int | None = None  # … for this many consecutive steps stops the run (default 200)
    stuck_steps: int | None = None  # D loss above 1.5 × a no-judgement D's for this many steps stops it (100; 0: off)

    def validate(self) -> None:
        super().validate()
        for name, lo_open in (("lr_d", True), ("grad_clip_d", True), ("collapse_d_loss", False)):
            if getattr(self, name) is not None:
                number(self.where(name), getattr(self, name), lo=0.0, lo_open=lo_open)
        b = self.betas_d
        if b is not None and (len(b) != 2 or not all(isinstance(x, (int, float)) and not isinstance(x, bool)
                                                     and 0 <= x < 1 for x in b)):
            raise ConfigError(f"{self.where('betas_d')}={b!r} must be two numbers in [0, 1), e.g. [0.5, 0.999]")
        for name, lo in (("collapse_steps", 1), ("stuck_steps", 0)):
            if getattr(self, name) is not None:
                integer(self.where(name), getattr(self, name), lo)


class GANObjective(ImageObjective):
    name = "gan"
    Options = GANOptions
    requires = ImageObjective.requires + ("config:z_dim",)
    distributed = False  # GAN runs train in one process for now
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
        self.options = GANOptions()

    @classmethod
    def for_model(cls, model: nn.Module) -> "GANObjective":
        """The objective a GANConfig describes (loss, R1, EMA) around ``model``."""
        c = model.config
        return cls(model, z_dim=c.z_dim, loss=c.loss, r1_gamma=c.r1_gamma, r1_every=c.r1_every,
                   ema_decay=c.ema_decay)

    @classmethod
    def build(cls, model: nn.Module, options: GANOptions, *, n_tokens: int = 0, eos_id: int | None = None,
              loss_chunk: int = 256) -> "GANObjective":
        """The trainer's objective: the loss, R1 and EMA are the model's GANConfig; ``options`` set the D phase's
        optimizer and the watch."""
        objective = cls.for_model(model)
        objective.options = options
        return objective

    def phases(self) -> list[PhaseSpec]:
        """D (its own lr_d, betas_d, grad_clip_d: null follows G's) then G, each its player's parameters."""
        o = self.options
        return [PhaseSpec("D", self.model.discriminator, partial(self, player="D"), o.lr_d, o.betas_d, o.grad_clip_d),
                PhaseSpec("G", self.model.generator, partial(self, player="G"))]

    def watch(self) -> Watch:
        return CollapseWatch.from_config(self.options, self.loss)

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

    def before_step(self, step: int) -> None:
        """The number of steps done so far (decides lazy R1)."""
        self.step = step

    set_step = before_step

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
