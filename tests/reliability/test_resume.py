"""Resume is exact and resilient (issue #8, 3 and 10): the RNG restore matters (masked LM, span
corruption, dropout), an unreadable latest checkpoint is skipped for the previous complete one, and a
kill -9 inside a checkpoint write resumes from the previous one with the uninterrupted losses."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from genmodels.training import RunConfig, latest_checkpoint, measure_matmul_peak, train
from genmodels.training.rundir import RunDirError

from .conftest import losses, tiny_config

OVER = dict(train={"max_steps": 12, "ckpt_every": 4, "eval_every": 4, "keep_last": 3},
            sample={"max_new_tokens": 0})


def _cfg(corpus_dir, run, **over) -> dict:
    cfg = tiny_config(corpus_dir, run, **OVER)
    for k, v in over.items():
        cfg[k] = v if k == "model" else {**cfg[k], **v}
    return cfg


def _run(cfg: dict, resume=False, log=None):
    return train(RunConfig.from_dict(cfg), resume=resume, progress=False, log=log or (lambda s: None))


def _interrupted_copy(run, dest, after: int):
    """``run`` as if stopped right after its checkpoint at step ``after``."""
    shutil.copytree(run, dest, ignore=shutil.ignore_patterns("final"))
    for ck in (dest / "checkpoints").glob("step-*"):
        if int(ck.name.split("-")[1]) > after:
            shutil.rmtree(ck)
    return dest


def _assert_same_run(a, b):
    for key in ("loss", "val_loss", "D/loss", "G/loss", "D/r1"):  # (a GAN logs D/loss and G/loss, no loss)
        assert losses(a, key) == losses(b, key), key  # bit for bit, every step


@pytest.fixture(scope="module")
def reference(corpus_dir, tmp_path_factory):
    """One uninterrupted 12-step causal run, checkpoints at 4, 8, 12."""
    run = tmp_path_factory.mktemp("resume") / "ref"
    _run(_cfg(corpus_dir, run))
    return run


# ---- (i) the RNG restore is tested: objectives and dropout that draw random numbers ---------------
BERT = {"preset": "bert-tiny", "d_model": 32, "n_heads": 2, "d_ff": 64}
T5 = {"preset": "t5-tiny", "d_model": 32, "n_heads": 2, "head_dim": 16, "d_ff": 64}
LLAMA_DROPOUT = {**tiny_config("", "")["model"], "dropout": 0.1}
# sparse MoE (#11): router jitter draws random numbers, capacity drops pairs, router losses in the loss
LLAMA_MOE = {**tiny_config("", "")["model"], "n_experts": 4, "d_ff": 32, "router_jitter": 0.1, "capacity_factor": 1.0}


# diffusion (#13): timesteps, noise and label dropout are random; the EMA is part of the checkpoint
DIFFUSION = {"preset": "unet-digits", "block_out_channels": [8, 16], "norm_num_groups": 4}


# GAN (#14): two players with their own optimizers, z and lazy R1 (every 3rd step: 0, 3, 6), the EMA of G
GAN = {"preset": "dcgan-digits", "z_dim": 8, "g_width": 16, "d_width": 8, "r1_gamma": 0.5, "r1_every": 3,
       "ema_decay": 0.9}
# per image objective: its own train fields, its sample section
_IMAGE = {"diffusion": ({"class_dropout": 0.3, "ema_decay": 0.9}, {"n": 4, "steps": 2, "guidance": 2.0}),
          "gan": ({"lr_d": 4e-4, "betas_d": [0.0, 0.9]}, {"n": 4})}


def _image_cfg(run, model, train) -> dict:
    """A tiny image recipe (digits) with the resume test's train settings."""
    own, sample = _IMAGE[train["objective"]]
    return {"model": model, "data": {"source": "digits"}, "run_dir": str(run),
            "train": {"batch_size": 16, "lr": 1e-3, "warmup_steps": 2, "eval_every": 4, "eval_batches": 1,
                      "eval_samples": 10, "threads": 1, "mfu_peak_tflops": 1.0, "log_every": 1, **own,
                      **{k: v for k, v in train.items() if k != "objective"}},
            "sample": sample}


@pytest.mark.parametrize("model,objective", [(BERT, "mlm"), (T5, "span"), (LLAMA_DROPOUT, "causal"),
                                             (LLAMA_MOE, "causal"), (DIFFUSION, "diffusion"), (GAN, "gan")],
                         ids=["mlm", "span", "dropout", "moe", "diffusion", "gan"])
def test_resume_reproduces_random_objectives_and_dropout_exactly(model, objective, corpus_dir, tmp_path):
    over = dict(model=model, train={"objective": objective, "max_steps": 8, "ckpt_every": 4, "keep_last": 2})
    make = (lambda run: _image_cfg(run, **over)) if objective in _IMAGE else (
        lambda run: _cfg(corpus_dir, run, **over))
    ref = tmp_path / "ref"
    _run(make(ref))
    copy = _interrupted_copy(ref, tmp_path / "copy", after=4)
    res = _run(make(copy), resume=True)
    assert sorted(res.train_losses) == list(range(5, 9))
    _assert_same_run(copy, ref)
    a, b = load_file(str(ref / "final" / "model.safetensors")), load_file(str(copy / "final" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # (diffusion: the EMA weights)
    if objective == "gan":  # each player's loss, and R1 on the steps that compute it, logged every step
        assert len(losses(ref, "G/loss")) == 8 and sorted(losses(ref, "D/r1")) == [1, 4, 7]


def test_measuring_the_matmul_peak_draws_nothing_from_the_training_stream(tmp_path):
    """A run without ``train.mfu_peak_tflops`` measures the matmul peak at set-up, after a resume has restored the
    RNG: the measurement must take no random numbers from torch's stream, or the resumed run leaves the unbroken one
    (found re-running row E1 of the 2026-12-07 probe on a GAN recipe, which sets no peak)."""
    state = torch.get_rng_state()
    measure_matmul_peak(size=64, seconds=0.01)
    assert torch.equal(torch.get_rng_state(), state)
    over = dict(model=GAN, train={"objective": "gan", "max_steps": 4, "ckpt_every": 2, "keep_last": 2,
                                  "eval_every": 100, "mfu_peak_tflops": None})
    ref = tmp_path / "ref"
    _run(_image_cfg(ref, **over))
    copy = _interrupted_copy(ref, tmp_path / "copy", after=2)
    _run(_image_cfg(copy, **over), resume=True)
    _assert_same_run(copy, ref)


@pytest.mark.parametrize("model,objective", [(BERT, "mlm"), (T5, "span"), (LLAMA_DROPOUT, "causal"),
                                             (LLAMA_MOE, "causal")], ids=["mlm", "span", "dropout", "moe"])
def test_evaluating_a_text_run_never_changes_what_training_draws(model, objective, corpus_dir, tmp_path):
    """Masks, spans, dropout and router jitter draw random numbers in training; validation must not take any
    from the same stream: evaluating every 2 steps or never gives the same training losses bit for bit."""
    runs = []
    for every in (2, 1000):
        run = tmp_path / f"every-{every}"
        _run(_cfg(corpus_dir, run, model=model, train={"objective": objective, "max_steps": 6, "ckpt_every": 1000,
                                                       "eval_every": every, "log_every": 1}))
        runs.append(losses(run, "loss"))
    assert runs[0] == runs[1] and len(runs[0]) == 6


@pytest.mark.parametrize("objective", ["gan", "diffusion"])
def test_evaluating_never_changes_what_training_draws(objective, tmp_path, monkeypatch):
    """An image run scores samples at each evaluation (sampling, the metrics classifier, cached or trained on the
    spot): evaluating every 2 steps or never, in a fresh metrics cache or a warm one, the training losses are
    the same bit for bit. (The classifier's cache hit drew its module's random init from the global stream:
    a resumed run then left the uninterrupted one whenever only one of them found the classifier cached.)"""
    model = GAN if objective == "gan" else DIFFUSION
    monkeypatch.setenv("GENMODELS_CACHE", str(tmp_path / "fresh-cache"))
    runs = {}
    for name, every in (("often, cold cache", 2), ("often, warm cache", 2), ("never", 1000)):
        cfg = _image_cfg(tmp_path / name, model, {"objective": objective, "max_steps": 6, "ckpt_every": 1000,
                                                   "eval_every": every})
        _run(cfg)
        runs[name] = {k: losses(tmp_path / name, k) for k in ("loss", "D/loss", "G/loss")}
    assert runs["often, cold cache"] == runs["often, warm cache"] == runs["never"]
    assert len(runs["never"]["D/loss" if objective == "gan" else "loss"]) == 6


# ---- an unreadable latest checkpoint is skipped ------------------------------------------------------
def _missing_state(ck):
    (ck / "state.json").unlink()


def _corrupt_state(ck):
    (ck / "state.json").write_text((ck / "state.json").read_text()[:100])


def _truncated_tensors(ck):
    f = ck / "model.safetensors"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])


def _wrong_shape(ck):
    sd = load_file(str(ck / "model.safetensors"))
    key = sorted(sd)[0]
    sd[key] = torch.zeros(3, 5)
    save_file(sd, str(ck / "model.safetensors"))


@pytest.mark.parametrize("damage,why", [(_missing_state, "no state.json"), (_corrupt_state, "state.json is corrupt"),
                                        (_truncated_tensors, "model.safetensors is unreadable"),
                                        (_wrong_shape, "has shape (3, 5)")],
                         ids=["missing-state", "corrupt-state", "truncated-safetensors", "shape-mismatch"])
def test_resume_skips_an_unreadable_latest_checkpoint(damage, why, reference, corpus_dir, tmp_path):
    copy = _interrupted_copy(reference, tmp_path / "copy", after=8)
    damage(copy / "checkpoints" / "step-000008")
    said = []
    res = _run(_cfg(corpus_dir, copy), resume=True, log=said.append)
    skipped = [s for s in said if s.startswith("--resume: skipped")]
    assert len(skipped) == 1 and str(copy / "checkpoints" / "step-000008") in skipped[0] and why in skipped[0]
    assert min(res.train_losses) == 5  # from step 4, the previous complete checkpoint
    _assert_same_run(copy, reference)


def test_resume_with_no_readable_checkpoint_names_them(reference, corpus_dir, tmp_path, monkeypatch):
    copy = _interrupted_copy(reference, tmp_path / "copy", after=8)
    _truncated_tensors(copy / "checkpoints" / "step-000008")
    _missing_state(copy / "checkpoints" / "step-000004")

    def no_work(*a, **kw):
        raise AssertionError("data prepared although no checkpoint is readable")

    monkeypatch.setattr("genmodels.training.data.prepare_data", no_work)
    with pytest.raises(RunDirError) as e:
        _run(_cfg(corpus_dir, copy), resume=True)
    msg = str(e.value)
    assert "step-000008: model.safetensors is unreadable" in msg and "step-000004: no state.json" in msg
    assert "\n" not in msg


# ---- (ii) kill -9 inside a checkpoint write ----------------------------------------------------------
@pytest.mark.parametrize("kind", ["causal", "gan"])
def test_kill_9_inside_a_checkpoint_write_resumes_from_the_previous_one(kind, reference, corpus_dir, tmp_path):
    if kind == "gan":  # two optimizers and the EMA of G in the checkpoint (#14); its own uninterrupted run
        make = lambda run: _image_cfg(run, GAN, {"objective": "gan", **OVER["train"]})  # noqa: E731
        reference = tmp_path / "ref"
        _run(make(reference))
    else:
        make = lambda run: _cfg(corpus_dir, run)  # noqa: E731
    run = tmp_path / "killed"
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text(yaml.safe_dump(make(run)))
    env = {**os.environ, "GENMODELS_TEST_KILL_IN_CHECKPOINT": "optimizer.safetensors@8", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "genmodels.cli_train", str(cfg_file), "--no-progress"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    partial = list((run / "checkpoints").glob(".tmp-step-000008-*"))
    assert len(partial) == 1 and sorted(p.name for p in partial[0].iterdir()) == ["model.safetensors",
                                                                                 "optimizer.safetensors"]
    assert latest_checkpoint(run).name == "step-000004"
    said = []
    res = _run(make(run), resume=True, log=said.append)
    assert min(res.train_losses) == 5 and any("taking over the stale lock" in s for s in said)
    _assert_same_run(run, reference)
    assert not list((run / "checkpoints").glob(".tmp-*"))
    assert json.loads((latest_checkpoint(run) / "state.json").read_text())["step"] == 12


def test_a_checkpoint_from_before_content_hashing_resumes_on_the_same_corpus(reference, corpus_dir, tmp_path):
    """Checkpoints written before the corpus fingerprint hashed contents carry the old (size, mtime)
    fingerprint: the same corpus still resumes exactly; a changed one is still refused."""
    from genmodels.data import corpus_fingerprint
    from genmodels.training.data import corpus_spec

    copy = _interrupted_copy(reference, tmp_path / "old", after=8)
    cfg = _cfg(corpus_dir, copy)
    legacy = corpus_fingerprint(corpus_spec(RunConfig.from_dict(cfg).data), version=1)
    for ck in (copy / "checkpoints").glob("step-*"):
        state = json.loads((ck / "state.json").read_text())
        assert state["corpus_fingerprint"] != legacy
        state["corpus_fingerprint"] = legacy
        (ck / "state.json").write_text(json.dumps(state))
    res = _run(cfg, resume=True)
    assert min(res.train_losses) == 9
    _assert_same_run(copy, reference)
    other = _interrupted_copy(reference, tmp_path / "other", after=8)
    for ck in (other / "checkpoints").glob("step-*"):
        state = json.loads((ck / "state.json").read_text())
        state["corpus_fingerprint"] = "0" * 64
        (ck / "state.json").write_text(json.dumps(state))
    with pytest.raises(RunDirError, match="differs"):
        _run(_cfg(corpus_dir, other), resume=True)
