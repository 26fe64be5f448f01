"""Image training runs lose nothing and are never silently wrong (issue #19): an EMA that a resume adds or
drops, evaluations that fail or cost time, a discriminator that never learns, the printed sample command, the
run's record of its data, recipe seeds, a user's file in final/. Tiny models on digits: seconds each."""
from __future__ import annotations

import json
import shlex
import shutil

import pytest
import torch
import yaml
from safetensors.torch import load_file

import genmodels
from genmodels.cli import main as cli_main
from genmodels.config import ConfigError
from genmodels.objectives.diffusion import ema_decay_at
from genmodels.training import RunConfig, latest_checkpoint, lr_at, train
from genmodels.objectives.gan_watch import GANDiverged
from genmodels.training.rundir import RunDirError

from .conftest import losses, tiny_config

DIFFUSION = {"preset": "unet-digits", "block_out_channels": [8, 16], "norm_num_groups": 4}
GAN = {"preset": "dcgan-digits", "z_dim": 8, "g_width": 16, "d_width": 8}


def image_cfg(run, model=DIFFUSION, sample=None, **train_over) -> dict:
    """A tiny digits recipe (no evaluation in the loop unless asked)."""
    diffusion = model["preset"].startswith("unet")
    return {"model": dict(model), "data": {"source": "digits"}, "run_dir": str(run),
            "train": {"batch_size": 16, "lr": 1e-3, "min_lr": 1e-4, "warmup_steps": 2, "max_steps": 4,
                      "eval_every": 1000, "ckpt_every": 2, "eval_batches": 1, "eval_samples": 4, "threads": 1,
                      "mfu_peak_tflops": 1.0, "log_every": 1, **train_over},
            "sample": sample or ({"n": 6, "steps": 2, "seed": 3} if diffusion else {"n": 6, "seed": 3})}


def _train(cfg: dict, resume=False, log=None, **kw):
    return train(RunConfig.from_dict(cfg), resume=resume, progress=False, log=log or (lambda s: None), **kw)


def _copy(run, dest):
    shutil.copytree(run, dest)
    return dest


@pytest.fixture(scope="module")
def no_ema_run(tmp_path_factory):
    """A 4-step diffusion run without an EMA (train.ema_decay 0), checkpoints at 2 and 4."""
    run = tmp_path_factory.mktemp("images") / "no-ema"
    _train(image_cfg(run, ema_decay=0))
    return run


@pytest.fixture(scope="module")
def ema_run(tmp_path_factory):
    """The same with an EMA (0.9); its printed summary kept."""
    run = tmp_path_factory.mktemp("images") / "ema"
    said = []
    _train(image_cfg(run, ema_decay=0.9), log=said.append)
    return run, said


# ---- W-2 / B-2: the EMA a resume adds or drops ------------------------------------------------------
def test_an_ema_added_on_resume_starts_from_the_loaded_weights(no_ema_run, tmp_path):
    """Resumed with the EMA on from a checkpoint without one, the EMA starts from the checkpoint's weights (said
    once): final/ is their average, with nothing of the fresh initialisation in it. Image runs count images."""
    run = _copy(no_ema_run, tmp_path / "run")
    said = []
    _train(image_cfg(run, ema_decay=0.9, max_steps=6, ckpt_every=1, keep_last=5), resume=True, log=said.append)
    notes = [s for s in said if "holds no EMA" in s]
    assert len(notes) == 1 and "train.ema_decay=0.9" in notes[0] and "step-000004" in notes[0]
    assert any("(step 4, 64 images)" in s for s in said)  # (was: "64 tokens")
    ck = {s: load_file(str(run / "checkpoints" / f"step-{s:06d}" / "model.safetensors")) for s in (4, 5, 6)}
    final = load_file(str(run / "final" / "model.safetensors"))
    for key, value in final.items():  # θ_ema = lerp(lerp(θ_4, θ_5, 1 − d_5), θ_6, 1 − d_6)
        expected = ck[4][key].clone()
        for s in (5, 6):
            expected = (expected.lerp(ck[s][key], 1 - ema_decay_at(0.9, s)) if expected.is_floating_point()
                        else ck[s][key])
        torch.testing.assert_close(value, expected, rtol=1e-5, atol=1e-6, msg=key)
        assert torch.equal(ck[6]["ema." + key], value)


def test_an_ema_dropped_on_resume_is_said_once_and_final_holds_the_trained_weights(ema_run, tmp_path):
    run = _copy(ema_run[0], tmp_path / "run")
    said = []
    _train(image_cfg(run, ema_decay=0, max_steps=6), resume=True, log=said.append)
    notes = [s for s in said if "EMA" in s]
    assert len(notes) == 1 and "train.ema_decay turns the EMA off" in notes[0] and "step-000004" in notes[0]
    final = load_file(str(run / "final" / "model.safetensors"))
    last = load_file(str(latest_checkpoint(run) / "model.safetensors"))
    assert not any(k.startswith("ema.") for k in last)
    assert final.keys() == last.keys() and all(torch.equal(final[k], last[k]) for k in final)


def test_both_image_objectives_restart_their_ema_from_the_live_weights():
    """The hook a resume calls for a checkpoint without an EMA: diffusion copies the model, a GAN its generator."""
    from genmodels.objectives.diffusion import DiffusionObjective
    from genmodels.objectives.gan import GANObjective
    torch.manual_seed(0)
    gan = GANObjective.for_model(genmodels.build_model(genmodels.preset("dcgan-digits", z_dim=8, g_width=16,
                                                                        d_width=8, ema_decay=0.9)))
    diffusion = DiffusionObjective(genmodels.build_model(genmodels.preset("unet-digits", block_out_channels=[8, 16],
                                                                          norm_num_groups=4)), ema_decay=0.9)
    for objective, live in ((gan, gan.model.generator), (diffusion, diffusion.model)):
        with torch.no_grad():
            for p in live.parameters():
                p.add_(1.0)  # the loaded weights differ from the initialisation the EMA was copied from
        objective.restart_ema()
        assert all(torch.equal(a, b) for a, b in zip(objective.ema.state_dict().values(), live.state_dict().values()))


# ---- B-1: eval_samples checked before any work; an evaluation never costs the steps before it ---------
def test_eval_samples_below_what_the_metrics_need_is_refused_naming_the_field(tmp_path):
    for n in (2, 3):
        with pytest.raises(ConfigError, match=rf"^train\.eval_samples={n} must be an integer >= 4 "):
            RunConfig.from_dict(image_cfg(tmp_path / "run", eval_samples=n))
    RunConfig.from_dict(image_cfg(tmp_path / "run", eval_samples=4))  # the least the metrics score
    assert not (tmp_path / "run").exists()


def test_a_failed_evaluation_keeps_its_steps_and_the_resume_equals_an_unbroken_run(corpus_dir, tmp_path,
                                                                                   monkeypatch):
    """An evaluation that fails at step 6 (checkpoints every 4) checkpoints step 6 first; --resume evaluates step 6
    again and then matches an uninterrupted run bit for bit."""
    from genmodels.training import loop
    over = dict(train={"max_steps": 9, "eval_every": 3, "ckpt_every": 4, "keep_last": 5},
                sample={"max_new_tokens": 0})
    ref, run = tmp_path / "ref", tmp_path / "run"
    train(RunConfig.from_dict(tiny_config(corpus_dir, ref, **over)), progress=False, log=lambda s: None)
    real = loop.evaluate_run

    def fail_at_6(r):
        if r.step == 6:
            raise ValueError("the evaluation failed")
        real(r)

    monkeypatch.setattr(loop, "evaluate_run", fail_at_6)
    with pytest.raises(ValueError, match="the evaluation failed"):
        train(RunConfig.from_dict(tiny_config(corpus_dir, run, **over)), progress=False, log=lambda s: None)
    assert latest_checkpoint(run).name == "step-000006"
    monkeypatch.setattr(loop, "evaluate_run", real)
    train(RunConfig.from_dict(tiny_config(corpus_dir, run, **over)), resume=True, progress=False, log=lambda s: None)
    for key in ("loss", "val_loss"):
        assert losses(run, key) == losses(ref, key), key
    assert sorted(losses(run, "val_loss")) == [3, 6, 9]


# ---- B-14: a discriminator that never learns is reported --------------------------------------------------
# configs/dcgan-digits.yaml's optimizer settings (Adam, β1 0.5, no clipping, constant rates), batch 32
DCGAN_DIGITS = dict(batch_size=32, warmup_steps=0, weight_decay=0.0, betas=[0.5, 0.999], betas_d=[0.5, 0.999],
                    grad_clip=None, grad_clip_d=None)


def test_a_stuck_discriminator_stops_the_run_with_a_checkpoint(tmp_path):
    """At lr 1e6 D's loss stays far above the 2 of a D that outputs 0 (hinge): stopped after train.stuck_steps,
    the streak in the checkpoint."""
    run = tmp_path / "stuck"
    cfg = image_cfg(run, {"preset": "dcgan-digits"}, **DCGAN_DIGITS, max_steps=60, lr=1e6, lr_d=1e6, min_lr=1e6,
                    ckpt_every=1000, stuck_steps=5)
    with pytest.raises(GANDiverged, match=r"training diverged: step \d+: the discriminator is stuck: its loss "
                                          r"stayed above 3 \(1.5 × the 2 of a discriminator that outputs 0\) for "
                                          r"train.stuck_steps=5") as e:
        _train(cfg)
    assert "lower train.lr and train.lr_d" in str(e.value)
    d_loss = losses(run, "D/loss")
    last = max(d_loss)
    assert last < 60 and all(d_loss[s] > 3 for s in range(last - 4, last + 1))
    state = json.loads((latest_checkpoint(run) / "state.json").read_text())
    assert state["step"] == last and state["stuck_count"] == 5


def test_a_healthy_gan_is_never_reported_stuck(tmp_path):
    """configs/dcgan-digits.yaml's settings (the preset, Adam 2e-4, β1 0.5), the watch at a patience of 3."""
    run = tmp_path / "ok"
    cfg = image_cfg(run, {"preset": "dcgan-digits"}, **DCGAN_DIGITS, max_steps=40, lr=2e-4, lr_d=2e-4, min_lr=2e-4,
                    ckpt_every=1000, stuck_steps=3)
    assert _train(cfg).steps == 40
    assert max(losses(run, "D/loss").values()) < 3


# ---- B-19: the time budget counts evaluations and the classifier's first training -------------------------
def test_the_budget_counts_evaluations_and_the_first_classifier_training(tmp_path, monkeypatch):
    """A fake clock: 1 s per step, 15 s for the classifier's first training, 3 s per evaluation's sampling.
    The schedule is fitted (and refitted after an evaluation) so the run ends at its fitted step count before the
    deadline, its learning rate decayed to the end; unfitted, the deadline cut it short."""
    from genmodels.generation import images as gen_images
    from genmodels.metrics import classifier, evaluate
    from tests.training.test_train import StepClock
    clock = StepClock(1.0).install(monkeypatch)
    trained = []

    def classifier_with_cost(*a, **kw):
        if not trained:
            trained.append(1)
            clock.t += 15.0
        return real_classifier(*a, **kw)

    def sample_with_cost(*a, **kw):
        clock.t += 3.0
        return real_sample(*a, **kw)

    real_classifier, real_sample = classifier.load_or_train_classifier, gen_images.sample
    monkeypatch.setattr(classifier, "load_or_train_classifier", classifier_with_cost)
    monkeypatch.setattr(evaluate, "load_or_train_classifier", classifier_with_cost)
    monkeypatch.setattr(gen_images, "sample", sample_with_cost)
    run, said = tmp_path / "budget", []
    cfg = image_cfg(run, max_steps=100000, max_minutes=1, eval_every=10, ckpt_every=1000, warmup_steps=2)
    res = _train(cfg, log=said.append, clock=clock)
    assert not any("time budget" in s for s in said), said
    # the classifier's 15 s were spent before the fit (at 15 s + 8 steps: 34 more steps of 1.05 s fit in the 37 s
    # left), so the first evaluation measures its sampling alone: 3 s, (60 − 28) / (1.05 + 3/10) → 23 more steps
    assert [s for s in said if "max_minutes" in s] == [
        "train.max_minutes=1: 100000 steps do not fit at 1000 ms/step; schedule fitted to 42 steps",
        "train.max_minutes=1: after the evaluation of step 10 (3.0 s each) at 1000 ms/step, schedule refitted to "
        "33 steps"]
    state = json.loads((latest_checkpoint(run) / "state.json").read_text())
    assert state["calibrated"] and res.steps == state["max_steps"] < 40
    lrs = {r["step"]: r["lr"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "lr" in r}
    assert lrs[res.steps] == pytest.approx(lr_at(res.steps - 1, 1e-3, 1e-4, 2, res.steps))
    assert lrs[res.steps] < 1.01e-4 + 0.01 * (1e-3 - 1e-4)  # the cosine ran (nearly) to min_lr


# ---- B-7: the printed command samples the run's grid again, into a new file -------------------------------
@pytest.mark.parametrize("kind", ["diffusion", "gan"])
def test_the_printed_sample_command_reproduces_the_grid_into_a_new_file(kind, ema_run, tmp_path):
    if kind == "diffusion":
        run, said = ema_run
    else:
        run, said = tmp_path / "gan", []
        _train(image_cfg(run, GAN, max_steps=2), log=said.append)
    line = next(s for s in "\n".join(said).splitlines() if s.strip().startswith("sample:"))
    argv = shlex.split(line.split("sample:", 1)[1])
    assert argv[0].endswith("genmodels") and argv[1] == "sample" and ["--n", "6"] == argv[3:5]
    before = (run / "samples.png").read_bytes()
    out = argv[argv.index("--out") + 1]
    assert out == str(run / "samples-again.png")
    assert cli_main(argv[1:] + ["--no-progress"]) == 0
    assert (run / "samples.png").read_bytes() == before
    from PIL import Image
    import numpy as np
    assert np.array_equal(np.asarray(Image.open(out)), np.asarray(Image.open(run / "samples.png")))
    if kind == "gan":
        assert "--steps" not in argv


# ---- B-18: the run records where its data is ----------------------------------------------------------------
def test_a_run_records_its_data_path_absolute_and_old_records_name_their_file(tmp_path, monkeypatch):
    from genmodels.cli_images import reference_config
    from genmodels.training.recipe import dump_config
    (tmp_path / "work" / "img" / "a").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "work")
    cfg = image_cfg("runs/x")
    cfg["data"] = {"source": "folder", "path": "img"}
    (tmp_path / "work" / "runs").mkdir()
    dump_config(RunConfig.from_dict(cfg), "runs/config.yaml")
    assert yaml.safe_load((tmp_path / "work" / "runs" / "config.yaml").read_text())["data"]["path"] == str(
        tmp_path / "work" / "img")
    monkeypatch.chdir(tmp_path)  # elsewhere
    assert reference_config(str(tmp_path / "work" / "runs")).path == str(tmp_path / "work" / "img")
    old = tmp_path / "old"
    old.mkdir()
    (old / "config.yaml").write_text(yaml.safe_dump({"data": {"source": "folder", "path": "img"}}))
    with pytest.raises(ValueError, match=rf"data.path='img' from {old / 'config.yaml'}: no such folder here"):
        reference_config(str(old))


# ---- B-15 (recipes): seeds checked by the one seed check ---------------------------------------------------
@pytest.mark.parametrize("field", ["train.seed", "sample.seed"])
def test_recipe_seeds_beyond_what_generators_take_are_refused_before_any_work(field, tmp_path):
    cfg = image_cfg(tmp_path / "run")
    section, key = field.split(".")
    for bad in (2 ** 64, -1, None, 1.5, True):  # a recipe seed is required: the message never offers None
        cfg[section][key] = bad
        with pytest.raises(ConfigError, match=rf"^{field}={bad!r} must be an integer with 0 <= {field} < 2\*\*64$"):
            RunConfig.from_dict(cfg)
    cfg[section][key] = 2 ** 64 - 1
    RunConfig.from_dict(cfg)
    assert not (tmp_path / "run").exists()


# ---- B-23: the messages name what the user wrote -----------------------------------------------------------
def test_a_file_dropped_into_final_is_kept_and_named(corpus_dir, tmp_path):
    run = tmp_path / "run"
    cfg = tiny_config(corpus_dir, run, train={"max_steps": 4, "eval_every": 2, "ckpt_every": 2},
                      sample={"max_new_tokens": 0})

    def drop_a_file(s):  # mid-run, at the first evaluation
        if s.startswith("step 2:"):
            (run / "final").mkdir()
            (run / "final" / "notes.txt").write_text("mine")

    with pytest.raises(RunDirError) as e:
        train(RunConfig.from_dict(cfg), progress=False, log=drop_a_file)
    msg = str(e.value)
    assert msg.startswith(f"{run / 'final'} holds files genmodels did not write (notes.txt)") and "\n" not in msg
    assert "step-000004" in msg and "--resume" in msg
    assert (run / "final" / "notes.txt").read_text() == "mine"
    (run / "final" / "notes.txt").unlink()
    train(RunConfig.from_dict(cfg), resume=True, progress=False, log=lambda s: None)
    assert (run / "final" / "model.safetensors").is_file()


def test_init_from_a_model_of_another_family_names_both(tmp_path):
    torch.manual_seed(0)
    genmodels.save(genmodels.build_model(genmodels.preset("dcgan-digits", **{k: v for k, v in GAN.items()
                                                                             if k != "preset"})), tmp_path / "gan")
    cfg = image_cfg(tmp_path / "run")
    cfg["model"]["init_from"] = str(tmp_path / "gan")
    with pytest.raises(ConfigError, match=r"model.init_from='.*gan' is a gan model; the recipe trains a diffusion "
                                          r"model") as e:
        _train(cfg)
    assert "None there" not in str(e.value)
