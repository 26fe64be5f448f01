"""Recipes fail before any work, naming the key and what is allowed; --set overrides parse as YAML."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from genmodels.cli_train import main as train_main
from genmodels.config import ConfigError
from genmodels.training import load_config
from genmodels.training.config import RunConfig

from .conftest import tiny_config

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name", ["llama-tiny", "gpt2-tiny"])
def test_shipped_recipes_validate(name):
    cfg = load_config(ROOT / "configs" / f"{name}.yaml")
    m = cfg.model_config()
    assert m.vocab_size == cfg.data.vocab_size == 8192 and m.d_model == 256 and cfg.data.seq_len == 256
    assert cfg.train.max_minutes and cfg.data.corpus == "stdlib"


@pytest.mark.parametrize("patch, words", [
    ({"trian": {}}, ["trian", "train"]),
    ({"train": {"learning_rate": 1}}, ["train.learning_rate", "lr"]),
    ({"data": {"vocab": 5}}, ["data.vocab", "vocab_size"]),
    ({"model": {"hidden": 5}}, ["hidden", "d_model"]),
    ({"train": {"distributed": "horovod"}}, ["train.distributed", "ddp", "fsdp"]),
    ({"train": {"lr": -1.0}}, ["train.lr", "> 0"]),
    ({"train": {"batch_size": 6, "grad_accum": 4}}, ["train.batch_size", "grad_accum"]),
    ({"train": {"betas": [0.9]}}, ["train.betas"]),
    ({"data": {"corpus": "web"}}, ["data.corpus", "stdlib", "folder", "jsonl"]),
    ({"data": {"seq_len": 0}}, ["data.seq_len"]),
    ({"model": {"preset": "gpt5"}}, ["model.preset", "llama-tiny"]),
    ({"model": {"mlp": "swish"}}, ["model.mlp", "swiglu"]),
    ({"model": {"max_seq_len": 16}}, ["model.max_seq_len", "data.seq_len"]),
    ({"train": {"precision": "fp8"}}, ["train.precision", "bf16"]),
])
def test_bad_keys_and_values_are_named(corpus_dir, tmp_path, patch, words):
    with pytest.raises(ConfigError) as e:
        RunConfig.from_dict(tiny_config(corpus_dir, tmp_path / "run", **patch))
    for w in words:
        assert w in str(e.value), (w, str(e.value))


def test_missing_corpus_path_is_named(tmp_path):
    with pytest.raises(ConfigError, match="data.path"):
        RunConfig.from_dict({"data": {"corpus": "folder", "path": str(tmp_path / "nope")}})


def test_set_overrides_parse_yaml_values(corpus_dir, tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text(yaml.safe_dump(tiny_config(corpus_dir, tmp_path / "run")))
    cfg = load_config(f, ["train.lr=1e-3", "train.compile=false", "train.betas=[0.8, 0.9]",
                          "model.n_layers=3", "run_dir=/tmp/elsewhere", "train.max_minutes=0.5"])
    assert cfg.train.lr == 1e-3 and cfg.train.compile is False and cfg.train.betas == [0.8, 0.9]
    assert cfg.model_config().n_layers == 3 and cfg.run_dir == "/tmp/elsewhere" and cfg.train.max_minutes == 0.5
    with pytest.raises(ConfigError, match="train.warmup"):
        load_config(f, ["train.warmup=3"])
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        load_config(f, ["train.lr"])


def test_cli_config_error_exits_before_any_work(corpus_dir, tmp_path, capsys):
    f = tmp_path / "c.yaml"
    f.write_text(yaml.safe_dump(tiny_config(corpus_dir, tmp_path / "run")))
    assert train_main([str(f), "--set", "train.optimizer=sgd"]) == 2
    err = capsys.readouterr().err
    assert "train.optimizer" in err and "allowed" in err
    assert not (tmp_path / "run").exists()


def test_cli_refuses_fp16_on_cpu(corpus_dir, tmp_path, capsys):
    """(bf16 on a CPU without bf16 hardware: tests/training/test_precision.py)"""
    f = tmp_path / "c.yaml"
    f.write_text(yaml.safe_dump(tiny_config(corpus_dir, tmp_path / "run", train={"precision": "fp16"})))
    assert train_main([str(f), "--set", "train.device=cpu"]) == 2
    assert "train.precision=fp16" in capsys.readouterr().err


def test_span_corruption_needs_no_more_spans_than_sentinels():
    with pytest.raises(ConfigError) as e:
        RunConfig.from_dict({"model": {"preset": "t5-tiny"}, "data": {"seq_len": 256},
                             "train": {"span_noise_density": 0.5, "span_mean_length": 1.0}})
    for w in ("data.seq_len=256", "train.span_noise_density", "train.span_mean_length", "128 spans", "100 sentinel"):
        assert w in str(e.value), (w, str(e.value))
    with pytest.raises(ConfigError, match="102 spans"):  # the defaults (15%, mean 3) at 2048 tokens
        RunConfig.from_dict({"model": {"preset": "t5-tiny"}, "data": {"seq_len": 2048}})
    RunConfig.from_dict({"model": {"preset": "t5-tiny"}, "data": {"seq_len": 1024}})  # 51 spans: fine


@pytest.mark.parametrize("model, data, objective, words", [
    ({"preset": "bert-tiny", "vocab_size": 300}, {"vocab_size": 300}, "mlm", ["model.vocab_size=300", "301"]),
    ({"preset": "t5-tiny", "vocab_size": 350}, {"vocab_size": 300}, "span", ["model.vocab_size=350", "400"]),
    ({"preset": "llama-tiny", "vocab_size": 299}, {"vocab_size": 300}, "auto", ["model.vocab_size=299", "300"]),
])
def test_model_vocab_must_hold_the_objective_ids(model, data, objective, words):
    with pytest.raises(ConfigError) as e:
        RunConfig.from_dict({"model": model, "data": data, "train": {"objective": objective}})
    for w in words:
        assert w in str(e.value), (w, str(e.value))
    RunConfig.from_dict({"model": {**model, "vocab_size": 400}, "data": data, "train": {"objective": objective}})


@pytest.mark.parametrize("objective", ["mlm", "auto"])
def test_mlm_needs_an_mlm_head(objective):
    with pytest.raises(ConfigError, match="model.mlm_head"):
        RunConfig.from_dict({"model": {"preset": "minilm-l6"}, "train": {"objective": objective}})
    RunConfig.from_dict({"model": {"preset": "minilm-l6", "mlm_head": True}, "train": {"objective": objective}})


@pytest.mark.parametrize("item, words", [
    ("train.mlm_prob=abc", ["train.mlm_prob"]),  # (a causal recipe: read by mlm only)
    ("train.objective={name: causal, router_z_coef: [3]}", ["train.objective.router_z_coef"]),
    ("model.preset=[1]", ["model.preset", "string"]),
    ("train.device=[cpu]", ["train.device", "string"]),
    ("train.objective={a: 1}", ["train.objective"]),
    ("data.path=5", ["data.path", "string"]),
])
def test_override_types_are_checked(corpus_dir, tmp_path, item, words):
    f = tmp_path / "c.yaml"
    f.write_text(yaml.safe_dump(tiny_config(corpus_dir, tmp_path / "run")))
    with pytest.raises(ConfigError) as e:
        load_config(f, [item])
    for w in words:
        assert w in str(e.value), (w, str(e.value))


def test_cuda_without_a_gpu_and_torchrun_without_distributed_are_config_errors(corpus_dir, tmp_path, monkeypatch,
                                                                                capsys):
    import torch
    f = tmp_path / "c.yaml"
    f.write_text(yaml.safe_dump(tiny_config(corpus_dir, tmp_path / "run")))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert train_main([str(f), "--set", "train.device=cuda"]) == 2
    assert "error: train.device=cuda but no CUDA device is available" in capsys.readouterr().err
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert train_main([str(f)]) == 2
    assert "train.distributed=none" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_cli_bad_value_type_prints_error_and_exits_2(corpus_dir, tmp_path, capsys):
    f = tmp_path / "c.yaml"
    f.write_text(yaml.safe_dump(tiny_config(corpus_dir, tmp_path / "run")))
    assert train_main([str(f), "--set", "train.objective={name: causal, router_z_coef: abc}"]) == 2
    assert "error: train.objective.router_z_coef='abc' must be" in capsys.readouterr().err
    assert train_main([str(tmp_path / "missing.yaml")]) == 2
    assert "error:" in capsys.readouterr().err


def test_objective_options_live_under_train_objective_and_old_train_level_ones_move_in(corpus_dir, tmp_path):
    """train.objective: {name, <options>}; an option at train: level (every config.yaml before issue 20, or
    --set train.<option>) moves in and wins; another objective's option at its default is what old run folders
    list (dropped), at another value it is refused by name."""
    base = tiny_config(corpus_dir, tmp_path / "run", model={"preset": "bert-tiny", "d_model": 32, "n_heads": 2,
                                                                "d_ff": 64, "n_kv_heads": None})
    base["model"].pop("n_kv_heads")
    new = RunConfig.from_dict({**base, "train": {**base["train"], "objective": {"name": "mlm", "mlm_prob": 0.3}}})
    old = RunConfig.from_dict({**base, "train": {**base["train"], "objective": "mlm", "mlm_prob": 0.3,
                                                 "span_noise_density": 0.15, "class_dropout": None}})
    assert new.train.objective == old.train.objective and new.train.objective.mlm_prob == 0.3
    assert new.to_dict()["train"]["objective"] == {"name": "mlm", "mlm_prob": 0.3}
    both = RunConfig.from_dict({**base, "train": {**base["train"], "objective": {"name": "mlm", "mlm_prob": 0.3},
                                                  "mlm_prob": 0.2}})
    assert both.train.objective.mlm_prob == 0.2
    with pytest.raises(ConfigError, match=r"^train\.span_noise_density means nothing for objective 'mlm' "
                                          r"\(read by span only\); remove it$"):
        RunConfig.from_dict({**base, "train": {**base["train"], "span_noise_density": 0.3}})
