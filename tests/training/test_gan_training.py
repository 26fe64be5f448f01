"""GAN runs on the shared trainer (issue #14, deliverable 3): `genmodels train` end to end, both players'
optimizers and the EMA in checkpoints, the GAN side of `genmodels sample` / `evaluate`, divergence (a NaN, a
collapsed discriminator) stopping with a message and a saved state, and the recipe's GAN fields checked.
Exact resume is in tests/reliability/test_resume.py (the `gan` case). Tiny models: seconds each."""
from __future__ import annotations

import json
import math

import pytest
import torch
import yaml
from safetensors.torch import load_file

import genmodels
from genmodels.cli import main as cli_main
from genmodels.config import ConfigError
from genmodels.models.gan import DCGAN
from genmodels.objectives.gan import GANObjective
from genmodels.training import RunConfig, list_checkpoints, train
from genmodels.training.distributed import DistInfo
from genmodels.objectives import build_objective
from genmodels.objectives.gan_watch import GANDiverged
from genmodels.training.trainer import build_train_step

from .conftest import losses, tiny_config

TINY_GAN = {"preset": "dcgan-digits", "z_dim": 8, "g_width": 16, "d_width": 8, "r1_gamma": 0.5, "r1_every": 2,
            "ema_decay": 0.9}


def gan_recipe(run, **train_over) -> dict:
    """A ~10k-parameter conditional DCGAN on digits; D and G with different optimizer settings."""
    return {"model": dict(TINY_GAN), "data": {"source": "digits"}, "run_dir": str(run),
            "train": {"batch_size": 16, "max_steps": 6, "lr": 2e-4, "lr_d": 8e-4, "min_lr": 1e-5, "warmup_steps": 2,
                      "weight_decay": 0.0, "betas": [0.5, 0.999], "betas_d": [0.0, 0.9], "grad_clip": None,
                      "grad_clip_d": 5.0, "eval_every": 3, "ckpt_every": 3, "eval_batches": 1, "eval_samples": 20,
                      "threads": 1, "mfu_peak_tflops": 0.1, **train_over},
            "sample": {"n": 10}}


def _train(cfg: dict, **kw):
    return train(RunConfig.from_dict(cfg), progress=False, log=kw.pop("log", lambda s: None), **kw)


def test_genmodels_train_runs_a_gan_recipe_end_to_end(tmp_path, capsys):
    run = tmp_path / "run"
    recipe = tmp_path / "gan.yaml"
    recipe.write_text(yaml.safe_dump(gan_recipe(run)))
    assert cli_main(["train", str(recipe), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "images/s while training" in out and f"genmodels sample {run}" in out
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "D/loss" in r]
    assert [r["step"] for r in steps] == [1, 2, 3, 4, 5, 6]
    for r in steps:  # both losses, D(real), D(fake), G's view, both players' rates and norms, throughput
        assert {"G/loss", "D/d_real", "D/d_fake", "G/g_fake", "D/grad_norm", "G/grad_norm", "images_s"} <= set(r)
        assert r["D/lr"] == pytest.approx(4 * r["lr"], rel=1e-12) and r["images"] == 16 * r["step"]
    # the schedule (warm-up 2, cosine to min_lr) moves both rates alike: lr_D / lr_G = lr_d / lr throughout
    assert [r["lr"] for r in steps[:2]] == [1e-4, 2e-4] and steps[-1]["lr"] < steps[2]["lr"]
    assert [r["step"] for r in steps if "D/r1" in r] == [1, 3, 5]  # lazy R1 every 2nd step, from the first
    assert all(r["D/r1"] > 0 for r in steps if "D/r1" in r)
    evals = [r for r in records if "val_loss" in r]
    assert [r["step"] for r in evals] == [3, 6] and all(0 <= r["accuracy"] <= 1 and "recall" in r for r in evals)
    for f in ("config.yaml", "loss.png", "samples.png", "final/config.json", "final/model.safetensors"):
        assert (run / f).is_file(), f

    # checkpoints: both players, the EMA of G, both optimizers (keyed by phase), every state tensor
    ckpt = list_checkpoints(run)[-1]
    state = load_file(str(ckpt / "model.safetensors"))
    final = genmodels.load(run / "final")
    assert isinstance(final, DCGAN)
    for k, v in final.generator.state_dict().items():  # final/ holds the EMA generator ...
        assert torch.equal(state["ema." + k], v), k
    torch.manual_seed(0)  # the run's initial weights (train.seed 0)
    initial = genmodels.build_model(final.config).generator.state_dict()
    for other in ("generator.", None):  # ... neither the live generator nor the initial one: the average moved
        assert any(not torch.equal(state["ema." + k], state[other + k] if other else initial[k])
                   for k in initial if k.endswith("weight"))
    for k, v in final.discriminator.state_dict().items():
        assert torch.equal(state["discriminator." + k], v), k
    opt = load_file(str(ckpt / "optimizer.safetensors"))
    meta = json.loads((ckpt / "state.json").read_text())["optimizer"]
    n_d, n_g = (len([p for p in getattr(final, m).parameters()]) for m in ("discriminator", "generator"))
    for phase, n in (("D", n_d), ("G", n_g)):
        assert {k.split("/")[2] for k in opt if k.startswith(f"state/{phase}/")} == {str(i) for i in range(n)}
    groups = {g["phase"]: g for g in meta["param_groups"]}
    assert groups["D"]["betas"] == [0.0, 0.9] and groups["G"]["betas"] == [0.5, 0.999]

    # genmodels sample / evaluate on the run: a GAN takes no sampler options
    grid = tmp_path / "grid.png"
    assert cli_main(["sample", str(run), "--class", "3", "--n", "4", "--out", str(grid)]) == 0 and grid.is_file()
    capsys.readouterr()
    for flag, value in (("--steps", "5"), ("--scheduler", "ddpm"), ("--guidance", "1.5")):
        assert cli_main(["sample", str(run), flag, value, "--out", str(grid)]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error:") and flag in err and len(err.splitlines()) == 1, err
    assert cli_main(["evaluate", str(run), "--n", "20"]) == 0
    assert "accuracy" in capsys.readouterr().out


def test_each_player_gets_its_own_optimizer_settings(tmp_path):
    cfg = RunConfig.from_dict(gan_recipe(tmp_path))
    model = genmodels.build_model(cfg.model_config())
    step = build_train_step(build_objective("gan", model, cfg.train.objective), cfg.train, DistInfo())[0]
    (d, g) = step.phases
    assert (d.name, d.module, d.lr, d.grad_clip) == ("D", model.discriminator, 8e-4, 5.0)
    assert (g.name, g.module, g.lr, g.grad_clip) == ("G", model.generator, 2e-4, None)
    assert {id(p) for p in d.module.parameters()} == {id(p) for gr in d.optimizer.param_groups for p in gr["params"]}
    assert {id(p) for p in g.module.parameters()} == {id(p) for gr in g.optimizer.param_groups for p in gr["params"]}
    assert d.optimizer.param_groups[0]["betas"] == (0.0, 0.9) and g.optimizer.param_groups[0]["betas"] == (0.5, 0.999)
    # unset D fields follow G's
    plain = RunConfig.from_dict(gan_recipe(tmp_path, lr_d=None, betas_d=None, grad_clip_d=None, grad_clip=1.0)).train
    d, g = build_train_step(build_objective("gan", model, plain.objective), plain, DistInfo())[0].phases
    assert (d.lr, d.grad_clip, d.optimizer.param_groups[0]["betas"]) == (2e-4, 1.0, (0.5, 0.999))
    plain.distributed = "ddp"  # one process only, for now: refused by name before anything runs
    with pytest.raises(ConfigError, match=r"train\.distributed='ddp': GAN runs train in one process"):
        build_train_step(build_objective("gan", model, plain.objective), plain, DistInfo(kind="ddp", world_size=2))


def test_the_bar_shows_d_real_d_fake_and_the_last_r1():
    obj = GANObjective.for_model(genmodels.build_model(genmodels.preset("dcgan-digits", z_dim=8, g_width=16,
                                                                        d_width=8)))
    step = {"D/d_real": 0.8, "D/d_fake": 0.3, "G/g_fake": 0.4}
    assert obj.bar_metrics(step) == {"d_real": 0.8, "d_fake": 0.3}  # no R1 computed yet
    assert obj.bar_metrics({**step, "D/r1": 0.05})["r1"] == 0.05
    assert obj.bar_metrics(step) == {"d_real": 0.8, "d_fake": 0.3, "r1": 0.05}  # kept between R1 steps


def test_gan_sample_hook_and_its_refusals():
    model = genmodels.build_model(genmodels.preset("dcgan-digits", z_dim=8, g_width=16, d_width=8))
    a = genmodels.sample(model, n=6, labels=4, seed=1)
    assert a.shape == (6, 1, 8, 8) and torch.equal(a, genmodels.sample(model, n=6, labels=4, seed=1))
    assert not torch.equal(a, genmodels.sample(model, n=6, labels=4, seed=2))
    assert model.training  # sampled in eval mode, left as it was
    with pytest.raises(ValueError, match=r"steps \(--steps\) does not apply"):
        model.sample(2, steps=3)
    ema = GANObjective.for_model(model).ema  # sampling the EMA: a view of the pair, the original untouched
    view = model.with_generator(ema)
    assert view.generator is ema and view.discriminator is model.discriminator and model.generator is not ema
    with pytest.raises(ValueError, match=r"class 10 \(--class\) is out of range"):
        genmodels.sample(model, n=2, labels=10)


def test_a_nan_stops_the_run_with_a_message_and_the_weights_saved(tmp_path, monkeypatch):
    forward = GANObjective.forward

    def poisoned(self, batch, player="D", generator=None):  # G's loss turns NaN at the 5th step
        loss, metrics = forward(self, batch, player, generator)
        return (loss * math.nan if self.training and player == "G" and self.step == 4 else loss), metrics

    monkeypatch.setattr(GANObjective, "forward", poisoned)
    run = tmp_path / "nan"
    with pytest.raises(GANDiverged) as e:
        _train(gan_recipe(run))
    msg = str(e.value)
    assert "step 5 (phase G): loss nan" in msg and "non-finite" in msg and f"{run / 'diverged'}" in msg
    assert f"{run / 'checkpoints' / 'step-000003'}" in msg  # the last good checkpoint
    assert "try: lower train.lr_d, raise model.r1_gamma;" in msg  # (spectral norm is on already)
    saved = genmodels.load(run / "diverged")  # the weights before the bad update: finite, loadable
    assert all(torch.isfinite(p).all() for p in saved.parameters())
    assert max(losses(run, "D/loss")) == 4 and [c.name for c in list_checkpoints(run)] == ["step-000003"]


def test_a_collapsed_discriminator_stops_the_run_with_a_checkpoint(tmp_path, capsys):
    """G frozen (lr 1e-9), D fast and without R1: D's hinge loss falls below 0.05 for 5 steps in a row (~90 steps)."""
    run = tmp_path / "collapse"
    cfg = gan_recipe(run, max_steps=400, lr=1e-9, min_lr=1e-9, lr_d=0.05, betas_d=[0.5, 0.999], grad_clip_d=None,
                     eval_every=1000, ckpt_every=1000, collapse_d_loss=0.05, collapse_steps=5)
    cfg["model"]["r1_gamma"] = 0.0  # (R1 keeps D from winning outright)
    recipe = tmp_path / "collapse.yaml"
    recipe.write_text(yaml.safe_dump(cfg))
    assert cli_main(["train", str(recipe), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: training diverged: step "), err
    assert "the discriminator collapsed" in err[0] and "train.collapse_d_loss=0.05" in err[0]
    assert "set model.r1_gamma (e.g. 0.1: R1)" in err[0]
    d_loss = losses(run, "D/loss")
    last = max(d_loss)
    assert last < 400 and all(d_loss[s] < 0.05 for s in range(last - 4, last + 1)) and d_loss[last - 5] >= 0.05
    assert [c.name for c in list_checkpoints(run)] == [f"step-{last:06d}"] and f"step-{last:06d}" in err[0]
    # the streak is part of the checkpoint: resumed with a patience of 8, the run stops 3 steps later
    # (5 counted before the stop + 3), not 8 (a count restarted at 0 would give last + 8)
    cfg["train"]["collapse_steps"] = 8
    with pytest.raises(GANDiverged, match="the discriminator collapsed"):
        _train(cfg, resume=True)
    d_loss = losses(run, "D/loss")
    assert max(d_loss) == last + 3 and all(d_loss[s] < 0.05 for s in range(last + 1, last + 4))
    # the check can fail: a healthy run (the same, G learning, watch at its default) is not stopped
    ok = gan_recipe(tmp_path / "ok", max_steps=100, eval_every=1000, ckpt_every=1000)
    assert _train(ok).steps == 100


@pytest.mark.parametrize("train_over,match", [
    ({"lr_d": -1.0}, r"train\.lr_d=-1\.0 must be a number > 0"),
    ({"betas_d": [0.5]}, r"train\.betas_d=\[0\.5\] must be two numbers"),
    ({"grad_clip_d": 0}, r"train\.grad_clip_d=0 must be a number > 0"),
    ({"collapse_steps": 0}, r"train\.collapse_steps=0 must be an integer >= 1"),
    ({"collapse_d_loss": "x"}, r"train\.collapse_d_loss='x' must be a number"),
    ({"ema_decay": 0.9}, r"train\.ema_decay means nothing for objective 'gan'"),
    ({"class_dropout": 0.1}, r"train\.class_dropout means nothing for objective 'gan'"),
])
def test_gan_train_fields_are_checked(train_over, match, tmp_path):
    with pytest.raises(ConfigError, match=match):
        RunConfig.from_dict(gan_recipe(tmp_path, **train_over))


def test_gan_fields_are_refused_elsewhere_and_sampler_options_for_a_gan(corpus_dir, tmp_path):
    with pytest.raises(ConfigError, match=r"train\.lr_d means nothing for objective 'causal'"):
        RunConfig.from_dict(tiny_config(corpus_dir, tmp_path, train={"lr_d": 1e-3}))
    cfg = gan_recipe(tmp_path)
    cfg["sample"]["steps"] = 10
    with pytest.raises(ConfigError, match=r"sample\.steps \(--steps\) does not apply to a model of family 'gan'"):
        RunConfig.from_dict(cfg)
