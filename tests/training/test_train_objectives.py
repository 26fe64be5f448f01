"""The trainer trains an encoder with masked LM and a T5 with span corruption (recipes' shapes)."""
from __future__ import annotations

import random
from pathlib import Path

import pytest
import yaml

import genmodels
from genmodels.config import ConfigError
from genmodels.training import RunConfig, train

WORDS = "the cat sat on a mat and dog ran to big red ball while sun shines over green hill".split()
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    rng = random.Random(0)
    for i in range(20):
        text = "\n".join(" ".join(rng.choice(WORDS) for _ in range(12)) + "." for _ in range(40))
        (root / f"doc{i:02d}.txt").write_text(text + "\n")
    return root


def recipe(name: str, corpus: Path, run_dir: Path, model: dict) -> RunConfig:
    d = yaml.safe_load((ROOT / "configs" / name).read_text())
    d["model"].update(model)
    d["data"].update(corpus="folder", path=str(corpus), vocab_size=300, seq_len=32, val_fraction=0.2)
    d["train"].update(batch_size=8, max_steps=30, warmup_steps=3, lr=3e-3, min_lr=3e-4, eval_every=10,
                      ckpt_every=30, eval_batches=2, threads=1, mfu_peak_tflops=0.1, max_minutes=None)
    d["run_dir"] = str(run_dir)
    return RunConfig.from_dict(d)


@pytest.mark.parametrize("name,model", [
    ("bert-tiny-mlm.yaml", {"d_model": 32, "n_heads": 2, "d_ff": 64}),
    ("t5-tiny-span.yaml", {"d_model": 32, "n_heads": 2, "head_dim": 16, "d_ff": 64}),
])
def test_recipe_loss_falls_and_saves_a_loadable_model(name, model, corpus, tmp_path, monkeypatch):
    monkeypatch.setenv("GENMODELS_CACHE", str(tmp_path / "cache"))
    cfg = recipe(name, corpus, tmp_path / "run", model)
    res = train(cfg, progress=False, log=lambda s: None)
    losses = [res.train_losses[s] for s in sorted(res.train_losses)]
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.5, losses
    m = genmodels.load(res.final_dir)
    extra = 1 if "mlm" in name else 100  # [MASK] / sentinels after the tokenizer's ids
    assert m.config.vocab_size == m.tokenizer.get_vocab_size() + extra


def test_objective_must_fit_the_family(corpus, tmp_path):
    with pytest.raises(ConfigError, match="objective"):
        cfg = yaml.safe_load((ROOT / "configs" / "bert-tiny-mlm.yaml").read_text())
        cfg["train"]["objective"] = "span"
        RunConfig.from_dict(cfg)
