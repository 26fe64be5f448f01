"""The divergence watch of a GAN run: what stops it, and what to try then (objectives/gan.py declares it).

**Divergence** stops the run with :class:`GANDiverged` (one ``error:`` line from the CLI), never a silent
crash or a run that goes on producing noise:

- *non-finite*: a NaN/inf loss or gradient in either phase (the train step raises
  :class:`~genmodels.training.steps.NonFiniteError` before that optimizer step). The weights as they
  were, all finite, are saved as a model folder ``RUN/diverged/`` (``genmodels sample RUN/diverged``
  shows what G made); the last regular checkpoint is left for ``--resume``.
- *collapsed discriminator*: D's loss below ``collapse_d_loss`` (default 0.01) for
  ``collapse_steps`` consecutive steps (default 200). At 0 both losses mean D separates every real
  from every generated image with margin — hinge: all ℓ_r ≥ 1 and ℓ_f ≤ −1; non-saturating: σ(ℓ) at
  0/1 — so G's images are told apart outright and the game is lost (ganhacks #36; a healthy run sits
  near 2 for hinge, 2 ln 2 ≈ 1.4 for non-saturating). The state is a whole step, so a regular
  checkpoint is written (``--resume`` can continue it, e.g. with a lower ``lr_d``). The count of
  consecutive steps is saved in checkpoints and continues on resume; ``collapse_d_loss: 0`` turns the
  watch off.
- *stuck discriminator*: D's loss above 1.5 × the loss of a discriminator that outputs 0 for every image
  (hinge: 2 → 3; non-saturating: 2 ln 2 → 2.08) for ``stuck_steps`` consecutive steps (default 100).
  D then judges worse than not judging at all — pinned by a learning rate far too high, for one — so G gets
  no signal and the run would end "successfully" having learnt nothing. A regular checkpoint is written, as
  for a collapse; the count is saved in checkpoints as well; ``stuck_steps: 0`` turns it off.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .base import Watch

DEFAULT_COLLAPSE_D_LOSS = 0.01
DEFAULT_COLLAPSE_STEPS = 200
DEFAULT_STUCK_STEPS = 100
STUCK_FACTOR = 1.5  # × the D loss of a discriminator that outputs 0 (no judgement): above it, D is stuck


class GANDiverged(FloatingPointError):
    """A GAN run diverged (non-finite values or a collapsed discriminator); the message says what was saved."""


@dataclass
class CollapseWatch(Watch):
    """Counts consecutive steps with D's loss below ``threshold`` (collapsed) and above ``stuck_above`` (stuck);
    :meth:`update` says when either streak reaches its patience."""

    threshold: float = DEFAULT_COLLAPSE_D_LOSS
    patience: int = DEFAULT_COLLAPSE_STEPS
    count: int = 0
    stuck_above: float | None = None  # STUCK_FACTOR × the loss of a D that outputs 0 (None: not watched)
    stuck_patience: int = DEFAULT_STUCK_STEPS  # 0: not watched
    stuck_count: int = 0
    stuck: bool = False  # whether the last reason given was a stuck D
    path: str = "train"  # where the options were set (train.objective, or train in an old recipe): named in reasons

    error = GANDiverged  # (a non-finite step saves RUN/diverged/, then stops with this)

    @classmethod
    def from_config(cls, options, loss=None) -> "CollapseWatch":
        """The recipe's watch (GANOptions); ``loss`` (the objective's GANLoss) sets the stuck level from its
        no-judgement loss."""
        above = None
        if loss is not None:
            zero = torch.zeros(1)
            above = STUCK_FACTOR * float(loss.discriminator(zero, zero))
        return cls(options.collapse_d_loss if options.collapse_d_loss is not None else DEFAULT_COLLAPSE_D_LOSS,
                   options.collapse_steps if options.collapse_steps is not None else DEFAULT_COLLAPSE_STEPS,
                   stuck_above=above,
                   stuck_patience=options.stuck_steps if options.stuck_steps is not None else DEFAULT_STUCK_STEPS,
                   path=options.where("x")[:-2])

    def advice(self, model_config) -> str:
        return advice(model_config, self.stuck)

    def state(self) -> dict[str, int]:
        """The streaks, for a checkpoint's state.json (a resumed run continues them)."""
        return {"collapse_count": self.count, "stuck_count": self.stuck_count}

    def load_state(self, state: dict) -> None:
        self.count, self.stuck_count = int(state.get("collapse_count", 0)), int(state.get("stuck_count", 0))

    def update(self, losses: dict[str, float] | float) -> str | None:
        """The reason to stop after a step with these phase losses (D's is watched), or None."""
        d_loss = losses["D"] if isinstance(losses, dict) else losses
        self.count = self.count + 1 if d_loss < self.threshold else 0
        watched = self.stuck_above is not None and self.stuck_patience > 0
        self.stuck_count = self.stuck_count + 1 if watched and d_loss > self.stuck_above else 0
        if watched and self.stuck_count >= self.stuck_patience:
            self.stuck = True
            return (f"the discriminator is stuck: its loss stayed above {self.stuck_above:.3g} ({STUCK_FACTOR} × "
                    f"the {self.stuck_above / STUCK_FACTOR:.3g} of a discriminator that outputs 0) for "
                    f"{self.path}.stuck_steps={self.stuck_patience} consecutive steps (last {d_loss:.3g}): it judges "
                    "worse than not judging at all, so the generator learns nothing")
        if self.count < self.patience:
            return None
        return (f"the discriminator collapsed: its loss stayed below {self.path}.collapse_d_loss={self.threshold} for "
                f"{self.path}.collapse_steps={self.patience} consecutive steps (last {d_loss:.3g}): it tells every "
                "generated image from the real ones, so the generator learns nothing")


def advice(config, stuck: bool = False) -> str:
    """What to try after a divergence, for the GANConfig ``config`` (only the stabilisers it lacks); a stuck D
    (``stuck``) first of all needs lower learning rates."""
    tries = ["lower train.lr and train.lr_d" if stuck else "lower train.lr_d",
             "raise model.r1_gamma" if config.r1_gamma > 0 else "set model.r1_gamma (e.g. 0.1: R1)"]
    if not config.spectral_norm:
        tries.append("set model.spectral_norm: true (with d_batchnorm: false)")
    return f"try: {', '.join(tries)}; --resume continues from a checkpoint with new train settings"
