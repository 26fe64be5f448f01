"""No wrong result is checkpointed (issue #8, 3): a non-finite loss or gradient stops the run before
the optimizer applies it; non-finite parameters are never checkpointed; the last good checkpoint stays."""
from __future__ import annotations

import math

import pytest
import torch

from genmodels.training import RunConfig, list_checkpoints, load_checkpoint, train
from genmodels.training import loop, trainer

from .conftest import tiny_config

OVER = dict(train={"max_steps": 14, "ckpt_every": 5, "eval_every": 5, "keep_last": 1},
            sample={"max_new_tokens": 0})


class Watch:
    """Counts optimizer steps and records whether any step was applied with non-finite gradients."""

    def __init__(self, monkeypatch):
        self.steps, self.bad_updates = 0, []
        real = trainer.build_optimizer

        def build(module, *a, **kw):
            opt = real(module, *a, **kw)
            opt.register_step_pre_hook(self._pre)
            opt.register_step_post_hook(lambda *_: setattr(self, "steps", self.steps + 1))
            self.module = module
            return opt

        monkeypatch.setattr(trainer, "build_optimizer", build)

    def _pre(self, opt, args, kwargs):
        grads = [p.grad for g in opt.param_groups for p in g["params"] if p.grad is not None]
        if not all(bool(torch.isfinite(g).all()) for g in grads):
            self.bad_updates.append(self.steps + 1)


def _train(corpus_dir, run, **over):
    cfg = tiny_config(corpus_dir, run, **OVER)
    for k, v in over.items():
        cfg[k].update(v)
    return train(RunConfig.from_dict(cfg), progress=False, log=lambda s: None)


def _assert_intact(run, step):
    """Only ``step-<step>`` is left (keep_last 1), complete and finite."""
    assert [p.name for p in list_checkpoints(run)] == [f"step-{step:06d}"]
    model_sd = load_checkpoint(list_checkpoints(run)[0])[0]
    assert all(bool(torch.isfinite(v).all()) for v in model_sd.values())
    assert not (run / "final").exists()


def test_a_nan_loss_stops_the_run_before_the_update(corpus_dir, tmp_path, monkeypatch):
    watch = Watch(monkeypatch)
    real_build = trainer.build_model

    def build(cfg):  # the embeddings turn NaN in training from the 12th step on
        model = real_build(cfg)
        emb = next(m for m in model.modules() if isinstance(m, torch.nn.Embedding))
        emb.register_forward_hook(lambda m, a, out: out * math.nan if m.training and watch.steps >= 11 else out)
        return model

    monkeypatch.setattr(trainer, "build_model", build)
    run = tmp_path / "nan-loss"
    with pytest.raises(FloatingPointError) as e:
        _train(corpus_dir, run)
    msg = str(e.value)
    assert msg.startswith("step 12: loss nan") and str(run / "checkpoints" / "step-000010") in msg
    assert "\n" not in msg
    assert watch.steps == 11 and watch.bad_updates == []
    _assert_intact(run, 10)


def test_non_finite_gradients_with_a_finite_loss_are_not_applied(corpus_dir, tmp_path, monkeypatch):
    """Without clipping too: the gradient norm is taken every step. Step 10 would write a checkpoint."""
    watch = Watch(monkeypatch)
    real_build = trainer.build_model

    def build(cfg):  # one gradient turns to inf in the 10th step
        model = real_build(cfg)
        p = next(model.parameters())
        p.register_hook(lambda g: g * math.inf if watch.steps == 9 else g)
        return model

    monkeypatch.setattr(trainer, "build_model", build)
    run = tmp_path / "inf-grad"
    with pytest.raises(FloatingPointError) as e:
        _train(corpus_dir, run, train={"grad_clip": None})
    msg = str(e.value)
    assert msg.startswith("step 10: gradient norm") and str(run / "checkpoints" / "step-000005") in msg
    assert watch.steps == 9 and watch.bad_updates == []
    _assert_intact(run, 5)


def test_non_finite_parameters_are_never_checkpointed(corpus_dir, tmp_path, monkeypatch):
    """The 10th update (lr = inf) ruins the parameters with a finite loss and gradients: the step-10
    checkpoint is refused and step 5 (which keep_last 1 would prune) stays."""
    real_lr = loop.lr_at
    monkeypatch.setattr(loop, "lr_at", lambda step, *a: math.inf if step == 9 else real_lr(step, *a))
    run = tmp_path / "nan-params"
    with pytest.raises(FloatingPointError) as e:
        _train(corpus_dir, run)
    msg = str(e.value)
    assert msg.startswith("step 10: parameter ") and "checkpoint not written" in msg
    assert str(run / "checkpoints" / "step-000005") in msg
    _assert_intact(run, 5)
