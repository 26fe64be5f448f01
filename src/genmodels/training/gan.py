"""Two-player (GAN) training on the shared trainer: the phases, their optimizers, the divergence watch.

One optimizer step of a GAN run (:class:`~genmodels.training.steps.TrainStep` with two phases, in order)::

    D phase   L_D (+ N·R1 when step % N == 0)      on model.discriminator   clip train.grad_clip_d   Adam(lr_d, betas_d)
    G phase   L_G through the D just updated       on model.generator       clip train.grad_clip     Adam(lr, betas)
    then      θ_ema ← β·θ_ema + (1 − β)·θ_G        (objective.after_step; objectives/gan.py)

Each optimizer is :func:`~genmodels.training.optim.build_optimizer`'s AdamW (``train.weight_decay``
0 makes it Adam, as in DCGAN) over its player's parameters only. Unset D fields follow G's:
``lr_d`` → ``lr``, ``betas_d`` → ``betas``, ``grad_clip_d`` → ``grad_clip``. The schedule (warm-up,
cosine) scales both learning rates alike: lr_D(s) = lr_sched(s) · lr_d / lr (the trainer's set_lr).
Both optimizers' states are in every checkpoint (``optimizer.safetensors``, keyed ``D/<i>`` and ``G/<i>``:
:meth:`TrainStep.optimizer_state`), with the EMA of G (the objective's ``ema.*`` tensors in
``model.safetensors``), so ``--resume`` continues exactly.

**Divergence** stops the run with :class:`GANDiverged` (one ``error:`` line from the CLI), never a silent
crash or a run that goes on producing noise:

- *non-finite*: a NaN/inf loss or gradient in either phase (the train step raises
  :class:`~genmodels.training.steps.NonFiniteError` before that optimizer step). The weights as they
  were, all finite, are saved as a model folder ``RUN/diverged/`` (``genmodels sample RUN/diverged``
  shows what G made); the last regular checkpoint is left for ``--resume``.
- *collapsed discriminator*: D's loss below ``train.collapse_d_loss`` (default 0.01) for
  ``train.collapse_steps`` consecutive steps (default 200). At 0 both losses mean D separates every real
  from every generated image with margin — hinge: all ℓ_r ≥ 1 and ℓ_f ≤ −1; non-saturating: σ(ℓ) at
  0/1 — so G's images are told apart outright and the game is lost (ganhacks #36; a healthy run sits
  near 2 for hinge, 2 ln 2 ≈ 1.4 for non-saturating). The state is a whole step, so a regular
  checkpoint is written (``--resume`` can continue it, e.g. with a lower ``train.lr_d``). The count of
  consecutive steps is saved in checkpoints and continues on resume; `train.collapse_d_loss: 0` turns the
  watch off.
- *stuck discriminator*: D's loss above 1.5 × the loss of a discriminator that outputs 0 for every image
  (hinge: 2 → 3; non-saturating: 2 ln 2 → 2.08) for ``train.stuck_steps`` consecutive steps (default 100).
  D then judges worse than not judging at all — pinned by a learning rate far too high, for one — so G gets
  no signal and the run would end "successfully" having learnt nothing. A regular checkpoint is written, as
  for a collapse; the count is saved in checkpoints as well; ``train.stuck_steps: 0`` turns it off.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial

from ..config import ConfigError
from .optim import build_optimizer
from .steps import Phase, TrainStep

DEFAULT_COLLAPSE_D_LOSS = 0.01
DEFAULT_COLLAPSE_STEPS = 200
DEFAULT_STUCK_STEPS = 100
STUCK_FACTOR = 1.5  # × the D loss of a discriminator that outputs 0 (no judgement): above it, D is stuck


class GANDiverged(FloatingPointError):
    """A GAN run diverged (non-finite values or a collapsed discriminator); the message says what was saved."""


def two_player(objective) -> bool:
    """Whether ``objective`` trains two players (a GAN): the trainer then builds :func:`gan_train_step`."""
    from ..objectives.gan import GANObjective
    return isinstance(objective, GANObjective)


def gan_train_step(objective, tc, info, amp_dtype=None, scaler=None) -> TrainStep:
    """The D-then-G :class:`TrainStep` of ``objective`` (a GANObjective) with the recipe's ``train:`` ``tc``."""
    if info.active:
        raise ConfigError(f"train.distributed={tc.distributed!r}: GAN runs train in one process for now "
                          "(set train.distributed: none)")
    d, g = objective.model.discriminator, objective.model.generator
    lr_d = tc.lr_d if tc.lr_d is not None else tc.lr
    betas_d = tc.betas_d if tc.betas_d is not None else tc.betas
    clip_d = tc.grad_clip_d if tc.grad_clip_d is not None else tc.grad_clip
    opt_d = build_optimizer(d, lr_d, tc.weight_decay, betas_d, tc.eps)
    opt_g = build_optimizer(g, tc.lr, tc.weight_decay, tc.betas, tc.eps)
    return TrainStep([Phase("D", partial(objective, player="D"), d, opt_d, clip_d, lr_d),
                      Phase("G", partial(objective, player="G"), g, opt_g, tc.grad_clip, tc.lr)],
                     info, amp_dtype, scaler)


def step_record(report, train_step: TrainStep) -> tuple[dict[str, float], str]:
    """``(record, bar text)`` of a two-phase step: ``D/loss``, ``G/loss``, ``D/grad_norm``, ``G/grad_norm``,
    ``lr`` (G's) and ``D/lr`` for metrics.jsonl (the objective's D/…, G/… metrics follow); ``D … G …`` for the bar."""
    out = {f"{name}/loss": v for name, v in report.losses.items()}
    out.update({f"{name}/grad_norm": v for name, v in report.grad_norms.items()})
    lrs = {ph.name: ph.optimizer.param_groups[0]["lr"] for ph in train_step.phases}
    out.update({"lr": lrs["G"], "D/lr": lrs["D"]})
    return out, " ".join(f"{name} {v:.3f}" for name, v in report.losses.items())


@dataclass
class CollapseWatch:
    """Counts consecutive steps with D's loss below ``threshold`` (collapsed) and above ``stuck_above`` (stuck);
    :meth:`update` says when either streak reaches its patience."""

    threshold: float = DEFAULT_COLLAPSE_D_LOSS
    patience: int = DEFAULT_COLLAPSE_STEPS
    count: int = 0
    stuck_above: float | None = None  # STUCK_FACTOR × the loss of a D that outputs 0 (None: not watched)
    stuck_patience: int = DEFAULT_STUCK_STEPS  # 0: not watched
    stuck_count: int = 0
    stuck: bool = False  # whether the last reason given was a stuck D

    @classmethod
    def from_config(cls, tc, loss=None) -> "CollapseWatch":
        """The recipe's watch; ``loss`` (the objective's GANLoss) sets the stuck level from its no-judgement loss."""
        above = None
        if loss is not None:
            import torch
            zero = torch.zeros(1)
            above = STUCK_FACTOR * float(loss.discriminator(zero, zero))
        return cls(tc.collapse_d_loss if tc.collapse_d_loss is not None else DEFAULT_COLLAPSE_D_LOSS,
                   tc.collapse_steps if tc.collapse_steps is not None else DEFAULT_COLLAPSE_STEPS,
                   stuck_above=above,
                   stuck_patience=tc.stuck_steps if tc.stuck_steps is not None else DEFAULT_STUCK_STEPS)

    def state(self) -> dict[str, int]:
        """The streaks, for a checkpoint's state.json (a resumed run continues them)."""
        return {"collapse_count": self.count, "stuck_count": self.stuck_count}

    def load_state(self, state: dict) -> None:
        self.count, self.stuck_count = int(state.get("collapse_count", 0)), int(state.get("stuck_count", 0))

    def update(self, d_loss: float) -> str | None:
        """The reason to stop (a sentence), or None."""
        self.count = self.count + 1 if d_loss < self.threshold else 0
        watched = self.stuck_above is not None and self.stuck_patience > 0
        self.stuck_count = self.stuck_count + 1 if watched and d_loss > self.stuck_above else 0
        if watched and self.stuck_count >= self.stuck_patience:
            self.stuck = True
            return (f"the discriminator is stuck: its loss stayed above {self.stuck_above:.3g} ({STUCK_FACTOR} × "
                    f"the {self.stuck_above / STUCK_FACTOR:.3g} of a discriminator that outputs 0) for "
                    f"train.stuck_steps={self.stuck_patience} consecutive steps (last {d_loss:.3g}): it judges "
                    "worse than not judging at all, so the generator learns nothing")
        if self.count < self.patience:
            return None
        return (f"the discriminator collapsed: its loss stayed below train.collapse_d_loss={self.threshold} for "
                f"train.collapse_steps={self.patience} consecutive steps (last {d_loss:.3g}): it tells every "
                "generated image from the real ones, so the generator learns nothing")


def advice(config, stuck: bool = False) -> str:
    """What to try after a divergence, for the GANConfig ``config`` (only the stabilisers it lacks); a stuck D
    (``stuck``) first of all needs lower learning rates."""
    tries = ["lower train.lr and train.lr_d" if stuck else "lower train.lr_d",
             "raise model.r1_gamma" if config.r1_gamma > 0 else "set model.r1_gamma (e.g. 0.1: R1)"]
    if not config.spectral_norm:
        tries.append("set model.spectral_norm: true (with d_batchnorm: false)")
    return f"try: {', '.join(tries)}; --resume continues from a checkpoint with new train settings"


def check_gan_train(t) -> None:
    """ConfigError naming the GAN-only ``train.*`` field (lr_d, betas_d, grad_clip_d, collapse_*, stuck_steps) whose
    value is bad."""
    from .values import integer as _integer, number as _number
    if t.lr_d is not None:
        _number("train.lr_d", t.lr_d, lo=0.0, lo_open=True)
    if t.betas_d is not None and (
            not isinstance(t.betas_d, (list, tuple)) or len(t.betas_d) != 2
            or not all(isinstance(b, (int, float)) and not isinstance(b, bool) and 0 <= b < 1 for b in t.betas_d)):
        raise ConfigError(f"train.betas_d={t.betas_d!r} must be two numbers in [0, 1), e.g. [0.5, 0.999]")
    if t.grad_clip_d is not None:
        _number("train.grad_clip_d", t.grad_clip_d, lo=0.0, lo_open=True)
    if t.collapse_d_loss is not None:
        _number("train.collapse_d_loss", t.collapse_d_loss, lo=0.0)
    if t.collapse_steps is not None:
        _integer("train.collapse_steps", t.collapse_steps, 1)
    if t.stuck_steps is not None:
        _integer("train.stuck_steps", t.stuck_steps, 0)
