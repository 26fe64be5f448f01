"""A sparse MoE model in training (#11): `genmodels train` end to end (router losses in the loss,
per-expert load and dropped share in metrics.jsonl, the spread in the progress bar, expert_load.png),
the objective's train/eval losses, and the train.router_* config errors. Resume: tests/reliability/
test_resume.py (the "moe" case); DDP / FSDP2: tests/training/test_distributed.py."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
import yaml

import genmodels
from genmodels.config import ConfigError
from genmodels.models.config import preset
from genmodels.objectives import build_objective
from genmodels.objectives.router import router_z_loss, switch_balance_loss
from genmodels.objectives.losses import fused_linear_cross_entropy
from genmodels.training import RunConfig
from genmodels.nn import record_routing

from .conftest import tiny_config

MOE = {"n_experts": 4, "experts_per_token": 2, "d_ff": 32, "capacity_factor": 1.0}


def test_cli_trains_a_moe_model_end_to_end(corpus_dir, tmp_path):
    run = tmp_path / "moe-run"
    cfg = tiny_config(corpus_dir, run, model=MOE,
                      train={"max_steps": 6, "eval_every": 3, "ckpt_every": 3, "router_z_coef": 0.01})
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    out = subprocess.run([sys.executable, "-m", "genmodels.cli_train", str(tmp_path / "c.yaml")],
                         capture_output=True, text=True, env=os.environ.copy(), timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "moe_load_cv" in out.stderr and "moe_load_e0" not in out.stderr  # the bar: spread, not every expert
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "loss" in r]
    assert [r["step"] for r in steps] == list(range(1, 7))
    for r in steps:
        loads = [r[f"moe_load_e{i}"] for i in range(4)]
        assert sum(loads) == pytest.approx(1.0, abs=1e-6) and all(0 <= v <= 1 for v in loads)
        assert 0.0 <= r["moe_dropped"] < 0.5 and r["moe_load_cv"] >= 0
        # the trained loss: cross-entropy + 1e-2 · switch (default) + 1e-2 · z (set above)
        assert r["loss"] == pytest.approx(r["lm_loss"] + 1e-2 * r["router_aux"] + 1e-2 * r["router_z"], rel=1e-6)
        assert r["router_aux"] >= 1.0 - 1e-6  # Switch balance loss: 1 at best
    assert steps[-1]["lm_loss"] < steps[0]["lm_loss"]
    assert any(r.get("moe_dropped", 0) > 0 for r in steps)  # capacity 1.0 drops some pairs
    assert (run / "expert_load.png").stat().st_size > 1000 and "expert_load.png" in out.stdout
    model = genmodels.load(run / "final")
    assert model.config.n_experts == 4 and model.config.capacity_factor == 1.0
    ids = genmodels.generate(model, torch.tensor([[1, 2, 3]]), max_new_tokens=4, temperature=0.0)
    assert ids.shape == (1, 7)


def test_objective_adds_router_losses_in_training_only():
    torch.manual_seed(0)
    model = genmodels.build_model(preset("llama-tiny", vocab_size=64, d_model=32, n_layers=2, n_heads=2,
                                         n_kv_heads=1, d_ff=48, max_seq_len=16, n_experts=4, moe_every=2))
    obj = build_objective("causal", model, n_tokens=64, eos_id=0, router_aux_loss="mixtral", router_aux_coef=0.5,
                          router_z_coef=0.25)
    batch = {"input_ids": torch.randint(0, 64, (2, 16)), "labels": torch.randint(0, 64, (2, 16))}
    with record_routing(model) as routing:
        h = model.hidden_states(batch["input_ids"])
    ce = fused_linear_cross_entropy(h, model.head.get_weight(), model.head.bias, batch["labels"].reshape(-1))
    from genmodels.objectives.router import mixtral_balance_loss
    loss, metrics = obj.train()(batch)
    torch.testing.assert_close(loss, ce + 0.5 * mixtral_balance_loss(routing) + 0.25 * router_z_loss(routing))
    assert {"lm_loss", "router_aux", "router_z", "moe_load_cv", "moe_dropped", "moe_load_e3"} <= set(metrics)
    assert set(obj.bar_metrics({k: float(v) for k, v in metrics.items()})) == set(metrics) - {
        f"moe_load_e{i}" for i in range(4)}
    loss_eval, metrics_eval = obj.eval()(batch)
    torch.testing.assert_close(loss_eval, ce)  # validation loss and perplexity: cross-entropy alone
    assert metrics_eval == {}
    loss.backward()
    assert model.blocks[1].mlp.router.weight.grad.abs().sum() > 0
    assert switch_balance_loss(routing).item() >= 1.0 - 1e-6


@pytest.mark.parametrize("train,match", [
    ({"router_aux_loss": "gshard"}, r"train\.router_aux_loss='gshard' is not allowed; choose one of none, switch"),
    ({"router_aux_coef": -1.0}, r"train\.router_aux_coef=-1\.0 must be a number >= 0"),
    ({"router_z_coef": "x"}, r"train\.router_z_coef='x' must be a number"),
    ({"router_aux_loss": "none", "router_aux_coef": 0.1}, r"train\.router_aux_coef=0\.1 means nothing with "
                                                          r"train\.router_aux_loss=none"),
])
def test_router_loss_config_errors(train, match, corpus_dir, tmp_path):
    with pytest.raises(ConfigError, match=match):
        RunConfig.from_dict(tiny_config(corpus_dir, tmp_path / "r", model=MOE, train=train))


def test_router_settings_on_a_dense_model_are_refused(corpus_dir, tmp_path):
    with pytest.raises(ConfigError, match=r"train\.router_z_coef=0\.1 means nothing for a dense model"):
        RunConfig.from_dict(tiny_config(corpus_dir, tmp_path / "r", train={"router_z_coef": 0.1}))
    cfg = RunConfig.from_dict(tiny_config(corpus_dir, tmp_path / "r", model=MOE, train={"router_aux_loss": "mixtral"}))
    assert cfg.train.objective.router_losses() == {"router_aux_loss": "mixtral", "router_aux_coef": 1e-3, "router_z_coef": 1e-3}
