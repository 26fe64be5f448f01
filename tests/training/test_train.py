"""End to end: a short run learns, leaves a loadable run dir, and resumes exactly (also after kill -9)."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml

import genmodels
from genmodels.training import RunConfig, latest_checkpoint, list_checkpoints, prepare_data, train
from genmodels.training.rundir import RunDirError

from .conftest import losses, tiny_config


@pytest.fixture(scope="module")
def finished_run(corpus_dir, tmp_path_factory):
    """One uninterrupted 30-step run, shared by the tests that inspect or resume it."""
    run = tmp_path_factory.mktemp("runs") / "ref"
    res = train(RunConfig.from_dict(tiny_config(corpus_dir, run)), progress=False, log=lambda s: None)
    return run, res


def test_short_run_learns_and_leaves_a_loadable_run_dir(finished_run):
    run, res = finished_run
    train_l, val_l = losses(run), losses(run, "val_loss")
    assert sorted(train_l) == list(range(1, 31)) and sorted(val_l) == [10, 20, 30]
    assert sum(list(train_l.values())[-5:]) / 5 < sum(list(train_l.values())[:5]) / 5 - 1.0
    assert val_l[30] < val_l[10] and res.val_ppl == pytest.approx(torch.tensor(val_l[30]).exp().item(), rel=1e-5)
    for f in ("config.yaml", "tokenizer.json", "metrics.jsonl", "loss.png", "final/model.safetensors",
              "final/config.json", "final/tokenizer.json"):
        assert (run / f).is_file(), f
    assert [p.name for p in list_checkpoints(run)] == ["step-000020", "step-000030"]  # keep_last 2
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["max_steps"] == 30
    model = genmodels.load(run / "final")
    assert model.tokenizer is not None and model.config.vocab_size == 300
    assert res.samples and res.samples[0].startswith("the ")
    # the final model is the trained one: its validation loss is the one reported
    from genmodels.objectives import CausalLM
    from genmodels.training.steps import evaluate
    from genmodels.training.distributed import DistInfo
    resolved = RunConfig.from_dict(yaml.safe_load((run / "config.yaml").read_text()))
    data = prepare_data(resolved.data, log=lambda s: None)
    assert "cached" in data.info["tokenizer"]  # the trained tokenizer is reused, not retrained
    vl = evaluate(lambda b: CausalLM(model)(b)[0], data.val, 8, 2, DistInfo(), None)
    assert vl == pytest.approx(val_l[30], abs=1e-5)


def test_existing_run_dir_needs_resume(finished_run, corpus_dir):
    run, _ = finished_run
    with pytest.raises(RunDirError, match="--resume"):
        train(RunConfig.from_dict(tiny_config(corpus_dir, run)), progress=False, log=lambda s: None)


def test_resume_reproduces_the_uninterrupted_losses(finished_run, corpus_dir, tmp_path, monkeypatch):
    run, _ = finished_run
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    shutil.rmtree(copy / "checkpoints" / "step-000030")
    shutil.rmtree(copy / "final")
    # the run's own tokenizer.json is used: nothing is retrained (an empty cache, no BPE training)
    monkeypatch.setenv("GENMODELS_CACHE", str(tmp_path / "empty-cache"))

    def no_training(*a, **kw):
        raise AssertionError("--resume retrained the tokenizer instead of loading run_dir/tokenizer.json")

    monkeypatch.setattr("genmodels.training.data.train_bpe_tokenizer", no_training)
    res = train(RunConfig.from_dict(tiny_config(corpus_dir, copy)), resume=True, progress=False, log=lambda s: None)
    assert sorted(res.train_losses) == list(range(21, 31))
    assert losses(copy) == losses(run)  # bit-for-bit, steps 1..30 (21..30 recomputed)
    assert losses(copy, "val_loss") == losses(run, "val_loss")
    a = genmodels.load(copy / "final").state_dict()
    b = genmodels.load(run / "final").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_refuses_another_model_or_corpus(finished_run, corpus_dir, tmp_path, monkeypatch):
    run, _ = finished_run
    state = json.loads((run / "checkpoints" / "step-000030" / "state.json").read_text())
    assert state["model_config"]["d_model"] == 32 and state["corpus_fingerprint"]
    copy = tmp_path / "copy"
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("final", "step-000020"))
    config_before = (copy / "config.yaml").read_text()

    def no_work(*a, **kw):
        raise AssertionError("data prepared before the resume checks")

    monkeypatch.setattr("genmodels.training.data.prepare_data", no_work)  # (the tokens kind prepares through it)
    with pytest.raises(RunDirError) as e:
        train(RunConfig.from_dict(tiny_config(corpus_dir, copy, model={"d_model": 48, "d_ff": 96})),
              resume=True, progress=False, log=lambda s: None)
    assert "model.d_model (32 there, 48 now)" in str(e.value) and "model.d_ff (64 there, 96 now)" in str(e.value)
    other = tmp_path / "other-corpus"
    other.mkdir()
    (other / "a.txt").write_text("something else entirely. " * 200)
    with pytest.raises(RunDirError, match="corpus"):
        train(RunConfig.from_dict(tiny_config(other, copy)), resume=True, progress=False, log=lambda s: None)
    assert (copy / "config.yaml").read_text() == config_before


def test_resume_after_kill_9(corpus_dir, tmp_path):
    """A subprocess run killed (SIGKILL) mid-run, then resumed, has the losses of a run never killed."""
    over = dict(model={"d_model": 64, "n_layers": 3, "d_ff": 128}, train={"max_steps": 120, "ckpt_every": 10,
                                                                            "eval_every": 40})
    ref_dir, kill_dir = tmp_path / "ref", tmp_path / "killed"
    train(RunConfig.from_dict(tiny_config(corpus_dir, ref_dir, **over)), progress=False, log=lambda s: None)
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text(yaml.safe_dump(tiny_config(corpus_dir, kill_dir, **over)))
    proc = subprocess.Popen([sys.executable, "-m", "genmodels.cli_train", str(cfg_file), "--no-progress"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=os.environ.copy())
    try:
        deadline = time.time() + 120
        while latest_checkpoint(kill_dir) is None and proc.poll() is None and time.time() < deadline:
            time.sleep(0.01)
        time.sleep(0.05)  # land somewhere after the first checkpoint, maybe inside the next one
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    killed_at = int(latest_checkpoint(kill_dir).name.split("-")[1])
    assert 10 <= killed_at < 120, "the run was not interrupted mid-way"
    assert not (kill_dir / "final").exists()
    res = train(RunConfig.from_dict(tiny_config(corpus_dir, kill_dir, **over)), resume=True, progress=False,
                log=lambda s: None)
    assert min(res.train_losses) == killed_at + 1
    assert losses(kill_dir) == losses(ref_dir)
    assert losses(kill_dir, "val_loss") == losses(ref_dir, "val_loss")


def test_cli_end_to_end(corpus_dir, tmp_path):
    run = tmp_path / "cli-run"
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text(yaml.safe_dump(tiny_config(corpus_dir, tmp_path / "elsewhere")))
    out = subprocess.run([sys.executable, "-m", "genmodels.cli_train", str(cfg_file), "--set", f"run_dir={run}",
                          "--set", "train.max_steps=12", "--set", "train.mfu_peak_tflops=null"],
                         capture_output=True, text=True, env=os.environ.copy(), timeout=300)
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert "GFLOP/s fp32 matmul (measured" in text  # peak printed once
    assert text.count("GFLOP/s fp32 matmul") == 1
    assert "perplexity" in text and "samples:" in text and f"genmodels generate {run}" in text
    assert "MFU" in out.stderr and "tok/s" in out.stderr  # the progress bar
    assert sorted(losses(run)) == list(range(1, 13))
    assert (run / "final" / "model.safetensors").is_file()
    assert yaml.safe_load((run / "config.yaml").read_text())["run_dir"] == str(run)


class StepClock:
    """A fake clock that moves only when the optimizer steps: ``dt`` seconds per step, whatever the machine."""

    def __init__(self, dt: float):
        self.t, self.dt = 0.0, dt

    def __call__(self) -> float:
        return self.t

    def install(self, monkeypatch):
        """Advance on every optimizer step of the runs that follow."""
        from genmodels.training import trainer
        real = trainer.build_optimizer

        def build(*a, **kw):
            opt = real(*a, **kw)
            opt.register_step_post_hook(lambda *_: setattr(self, "t", self.t + self.dt))
            return opt

        monkeypatch.setattr(trainer, "build_optimizer", build)
        return self


def test_time_budget_fits_the_schedule(corpus_dir, tmp_path, monkeypatch):
    """With max_minutes, the cosine schedule is fitted to the steps that fit (and checkpointed), exactly."""
    from genmodels.training import lr_at
    run = tmp_path / "budget"
    over = dict(train={"max_steps": 100000, "max_minutes": 0.1, "eval_every": 1000, "ckpt_every": 1000})
    clock = StepClock(0.125).install(monkeypatch)
    res = train(RunConfig.from_dict(tiny_config(corpus_dir, run, **over)), progress=False, log=lambda s: None,
                clock=clock)
    # fitted after 8 steps (clock 1.0 s): 0.125 s × 1.05 per step + an evaluation (2 batches at ⅓ of a
    # step) every 1000 steps = 0.1313375 s; int((6 - 1.0) / 0.1313375) = 38 more steps → 46
    assert res.steps == 46
    state = json.loads((latest_checkpoint(run) / "state.json").read_text())
    assert state["calibrated"] and state["max_steps"] == 46 and state["step"] == 46
    lrs = [json.loads(line)["lr"] for line in (run / "metrics.jsonl").read_text().splitlines() if "lr" in line]
    # warm-up steps 1-8 on the 100000-step schedule, then the cosine of 46 steps to its end
    assert lrs == [lr_at(s, 3e-3, 3e-4, 3, 100000) for s in range(8)] + [lr_at(s, 3e-3, 3e-4, 3, 46)
                                                                         for s in range(8, 46)]
