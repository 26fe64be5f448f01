"""DPO runs (issue 23 d3, d6): from a model.init_from policy, full fine-tune (frozen reference) and LoRA
(adapters-off reference), each resumed bit for bit — the frozen reference is the starting policy again after
a resume (training/ loads model.init_from on a resume for an objective keeping its initial weights) —
with TRL's metrics in metrics.jsonl, and a bad pair refused naming its file and line."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import genmodels
from genmodels.cli import main
from genmodels.data import train_bpe_tokenizer
from genmodels.training import RunConfig, train
from genmodels.training.metrics import objective_metric_names

PAIRS = Path(__file__).parent.parent / "fixtures" / "pairs" / "pairs.jsonl"
SAME = ("loss", "rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies", "logps/chosen",
        "logps/rejected", "grad_norm", "lr")
TINY = {"d_model": 32, "n_layers": 1, "n_heads": 2, "n_kv_heads": 1, "d_ff": 64, "head_dim": 16}


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """A tiny Llama saved with a BPE trained on the pairs (the runs' model.init_from), not the run's own init."""
    tok = train_bpe_tokenizer([PAIRS.read_text()] * 4, 300)
    torch.manual_seed(123)
    model = genmodels.build_model(genmodels.preset("llama-tiny", **TINY, vocab_size=tok.get_vocab_size(),
                                                   max_seq_len=256))
    return genmodels.save(model, tmp_path_factory.mktemp("dpo") / "base", tok)


def recipe(base: Path, run: Path, path: Path = PAIRS, lora: bool = False, **train_over) -> dict:
    objective = {"name": "dpo", "beta": 0.1, **({"reference": "adapters_off"} if lora else {})}
    return {"model": {"init_from": str(base)},
            "data": {"kind": "pairs", "path": str(path), "seq_len": 160, "val_fraction": 0.25},
            "train": {"objective": objective, "batch_size": 2, "max_steps": 4, "warmup_steps": 1, "lr": 1e-2,
                      "eval_every": 2, "ckpt_every": 2, "eval_batches": 1, "threads": 1, "mfu_peak_tflops": 0.1,
                      **({"lora": {"targets": "q,v", "r": 4, "alpha": 8}} if lora else {}), **train_over},
            "sample": {"prompts": []}, "run_dir": str(run)}


def rows(run: Path) -> dict[int, dict]:
    return {r["step"]: r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
            if "loss" in r}


@pytest.mark.parametrize("lora", [False, True], ids=["frozen", "adapters_off"])
def test_a_dpo_run_from_init_from_resumes_bit_for_bit(base, tmp_path, lora):
    whole, part = tmp_path / "whole", tmp_path / "part"
    train(RunConfig.from_dict(recipe(base, whole, lora=lora)), progress=False, log=lambda s: None)
    train(RunConfig.from_dict(recipe(base, part, lora=lora, max_steps=2)), progress=False, log=lambda s: None)
    train(RunConfig.from_dict(recipe(base, part, lora=lora)), resume=True, progress=False, log=lambda s: None)
    got, want = rows(part), rows(whole)
    assert sorted(want) == [1, 2, 3, 4] and sorted(got) == [1, 2, 3, 4]
    for step in want:  # the loss and every metric, bit for bit (times aside)
        assert {k: v for k, v in got[step].items() if k in SAME} == {k: v for k, v in want[step].items() if k in SAME}
    first = want[1]
    assert first["loss"] == pytest.approx(0.6931, abs=1e-3)  # the policy starts as its reference: ln 2
    records = [json.loads(x) for x in (whole / "metrics.jsonl").read_text().splitlines()]
    assert objective_metric_names(records) == list(SAME[1:7])  # TRL's names (the pairs count is not one)
    assert (whole / "loss.png").is_file()  # plotted against pairs


def test_a_bad_pair_is_refused_naming_file_and_line(base, tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    lines = PAIRS.read_text().splitlines()
    lines[4] = json.dumps({"prompt": "q", "chosen": "same", "rejected": "same"})
    bad.write_text("\n".join(lines) + "\n")
    cfg = tmp_path / "r.yaml"
    import yaml
    cfg.write_text(yaml.safe_dump(recipe(base, tmp_path / "run", path=bad)))
    assert main(["train", str(cfg)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == f"error: {bad}, line 5: \"chosen\" and \"rejected\" are the same reply (a pair must prefer one)"


# ---- data parallelism: 2 gloo processes compute what one does ------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("kind, lora", [("ddp", False), ("fsdp", True)])  # (FSDP2 with LoRA: the adapters-off reference)
def test_two_processes_equal_one_for_a_dpo_run(kind, lora, base, tmp_path):
    from safetensors.torch import load_file

    from tests.training.test_distributed import torchrun
    over = {"batch_size": 4, "max_steps": 3, "eval_every": 3, "ckpt_every": 3}
    alone = tmp_path / "alone"
    train(RunConfig.from_dict(recipe(base, alone, lora=lora, **over)), progress=False, log=lambda s: None)
    two = tmp_path / kind
    out = torchrun(recipe(base, two, lora=lora, **over, distributed=kind), tmp_path)
    assert f"2 process(es) [{kind}]" in out.stdout
    a, b = rows(alone), rows(two)
    assert sorted(a) == sorted(b) == [1, 2, 3]
    for step in a:
        for k in SAME[:-2]:  # the loss and TRL's metrics (means over the global batch's pairs)
            assert abs(a[step][k] - b[step][k]) < 1e-5, (step, k, a[step][k], b[step][k])
    name = "adapter_model.safetensors" if lora else "model.safetensors"
    x, y = (load_file(r / "final" / name) for r in (alone, two))
    assert max(float((x[k] - y[k]).abs().max()) for k in x) < 1e-5


def test_the_adapters_off_reference_without_train_lora_is_refused_before_any_work(base, tmp_path):
    cfg = recipe(base, tmp_path / "run", lora=True)
    del cfg["train"]["lora"]
    with pytest.raises(genmodels.config.ConfigError, match=r"^train\.objective\.reference=adapters_off needs train\.lora"):
        train(RunConfig.from_dict(cfg), progress=False, log=lambda s: None)
    assert not (tmp_path / "run").exists()
