"""DDP and FSDP2 on 2 gloo processes (torchrun) give the 1-process loss curve at the same global
batch, and a checkpoint written by one layout resumes in another."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
import yaml

from genmodels.training import RunConfig, train

from .conftest import losses, tiny_config

OVER = dict(train={"max_steps": 8, "ckpt_every": 4, "eval_every": 4, "keep_last": 3, "grad_accum": 2},
            sample={"max_new_tokens": 0})


def torchrun(cfg: dict, tmp_path, resume: bool = False) -> subprocess.CompletedProcess:
    f = tmp_path / f"cfg-{os.path.basename(cfg['run_dir'])}.yaml"
    f.write_text(yaml.safe_dump(cfg))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "genmodels.cli_train", str(f), "--no-progress"] + (["--resume"] if resume else [])
    out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
                         timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def single_run(corpus_dir, tmp_path_factory):
    run = tmp_path_factory.mktemp("dist") / "single"
    train(RunConfig.from_dict(tiny_config(corpus_dir, run, **OVER)), progress=False, log=lambda s: None)
    return run


def _close(a: dict, b: dict, tol: float = 1e-5) -> None:
    assert sorted(a) == sorted(b)
    worst = max(abs(a[k] - b[k]) for k in a)
    assert worst < tol, worst


@pytest.mark.slow
@pytest.mark.parametrize("kind, other", [("ddp", "fsdp"), ("fsdp", "ddp")])
def test_two_processes_match_one_and_checkpoints_cross_layouts(kind, other, single_run, corpus_dir, tmp_path):
    run = tmp_path / kind
    out = torchrun(tiny_config(corpus_dir, run, **{**OVER, "train": {**OVER["train"], "distributed": kind}}),
                   tmp_path)
    assert f"2 process(es) [{kind}]" in out.stdout
    _close(losses(run), losses(single_run))
    _close(losses(run, "val_loss"), losses(single_run, "val_loss"))
    # The step-4 checkpoint written by `kind` resumes under the other layout on 2 processes ...
    cross = tmp_path / f"{kind}-to-{other}"
    shutil.copytree(run, cross)
    shutil.rmtree(cross / "checkpoints" / "step-000008")
    out = torchrun(tiny_config(corpus_dir, cross, **{**OVER, "train": {**OVER["train"], "distributed": other}}),
                   tmp_path, resume=True)
    assert "resumed from" in out.stdout and f"[{other}]" in out.stdout
    _close(losses(cross), losses(single_run))
    # ... and in one process.
    alone = tmp_path / f"{kind}-to-single"
    shutil.copytree(run, alone)
    shutil.rmtree(alone / "checkpoints" / "step-000008")
    res = train(RunConfig.from_dict(tiny_config(corpus_dir, alone, **OVER)), resume=True, progress=False,
                log=lambda s: None)
    assert min(res.train_losses) == 5
    _close(losses(alone), losses(single_run))


# ---- sparse MoE (#11): the router losses and the capacity are per micro-batch, so the one-process run
# takes twice the accumulation (the same micro-batches as 2 processes × grad_accum 2) and twice the
# evaluation batches (the same validation windows); no jitter (each rank draws its own noise)
MOE_OVER = dict(model={**tiny_config("", "")["model"], "n_experts": 4, "d_ff": 32, "capacity_factor": 1.0},
                train={"max_steps": 4, "ckpt_every": 4, "eval_every": 4, "grad_accum": 2},
                sample={"max_new_tokens": 0})


@pytest.fixture(scope="module")
def single_moe_run(corpus_dir, tmp_path_factory):
    run = tmp_path_factory.mktemp("dist") / "single-moe"
    over = {**MOE_OVER, "train": {**MOE_OVER["train"], "grad_accum": 4, "eval_batches": 4}}
    train(RunConfig.from_dict(tiny_config(corpus_dir, run, **over)), progress=False, log=lambda s: None)
    return run


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["ddp", "fsdp"])
def test_two_processes_train_a_moe_model_as_one(kind, single_moe_run, corpus_dir, tmp_path):
    run = tmp_path / f"moe-{kind}"
    out = torchrun(tiny_config(corpus_dir, run, **{**MOE_OVER, "train": {**MOE_OVER["train"], "distributed": kind}}),
                   tmp_path)
    assert f"2 process(es) [{kind}]" in out.stdout
    for key in ("loss", "lm_loss", "router_aux", "moe_load_e0", "moe_dropped", "val_loss"):
        _close(losses(run, key), losses(single_moe_run, key))
    assert max(losses(run, "moe_dropped").values()) > 0  # the capacity dropped pairs: its per-batch count matters
