"""The training loop hands the EMA the number of the optimizer step just taken (1, 2, 3, ...).

The EMA's warm-up decay d_n = min(decay, (1 + n)/(10 + n)) depends on that number (objectives/diffusion.py
``ema_decay_at``); the unit tests call ``after_step(1)`` themselves and the resume tests compare two runs that
would share a wrong count, so a loop calling ``after_step`` before counting the step (d_0 = 0.1 at step 1 instead
of 2/11) passed the whole suite (test-audit-2026-12-07, M18). Here a real run's calls are recorded, and the final
EMA is rebuilt from the generator's weights after each step with the formula.
"""
from __future__ import annotations

import torch

from genmodels.objectives.diffusion import ema_decay_at
from genmodels.objectives.gan import GANObjective
from genmodels.training import RunConfig, train

from .test_gan_training import gan_recipe


def test_the_loop_passes_the_steps_done_and_the_ema_follows_the_warm_up(tmp_path, monkeypatch):
    """A 3-step GAN run (the loop is the diffusion objective's too): after_step(1), (2), (3), each update
    θ_ema ← d_n·θ_ema + (1 − d_n)·θ_G."""
    calls = []
    real = GANObjective.after_step

    def spy(self, step):
        ema = {k: p.detach().clone() for k, p in self.ema.named_parameters()}  # θ_ema before this update
        gen = {k: p.detach().clone() for k, p in self.model.generator.named_parameters()}  # θ_G after the step
        calls.append(step)
        real(self, step)
        d = ema_decay_at(self.ema_decay, len(calls))  # the n-th update uses d_n
        assert ema.keys() == gen.keys()
        for k, p in self.ema.named_parameters():
            torch.testing.assert_close(p, d * ema[k] + (1 - d) * gen[k], rtol=1e-6, atol=1e-7,
                                       msg=lambda m: f"update {len(calls)}, {k}: {m}")

    monkeypatch.setattr(GANObjective, "after_step", spy)
    cfg = gan_recipe(tmp_path / "run", max_steps=3, eval_every=1000, ckpt_every=1000, eval_samples=10)
    train(RunConfig.from_dict(cfg), progress=False, log=lambda s: None)
    assert calls == [1, 2, 3]
