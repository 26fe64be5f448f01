"""``model.init_from: PATH`` starts a run from a loadable model: its weights and its tokenizer; a model
that differs from the recipe's model section is refused in one line naming the differing keys."""
from __future__ import annotations

import pytest
import torch

from genmodels.config import ConfigError
from genmodels.training import RunConfig, train, trainer

from .conftest import tiny_config

QUICK = dict(train={"max_steps": 3, "eval_every": 3, "ckpt_every": 3}, sample={"max_new_tokens": 0})


@pytest.fixture(scope="module")
def source(corpus_dir, tmp_path_factory):
    """A tiny trained model folder (final/ of a 3-step run)."""
    run = tmp_path_factory.mktemp("init") / "source"
    train(RunConfig.from_dict(tiny_config(corpus_dir, run, **QUICK)), progress=False, log=lambda s: None)
    return run / "final"


def _start_weights(monkeypatch) -> dict:
    """The trained module's weights when its optimizer is built (before any update)."""
    seen = {}
    real = trainer.build_optimizer

    def build(module, *a, **kw):
        seen.update({k.removeprefix("model."): v.detach().clone() for k, v in module.state_dict().items()})
        return real(module, *a, **kw)

    monkeypatch.setattr(trainer, "build_optimizer", build)
    return seen


def test_init_from_starts_from_the_models_weights_and_tokenizer(source, corpus_dir, tmp_path, monkeypatch):
    import genmodels
    seen = _start_weights(monkeypatch)
    run = tmp_path / "run"
    cfg = tiny_config(corpus_dir, run, **QUICK)
    cfg["model"]["init_from"] = str(source)
    cfg["data"]["vocab_size"] = 280  # a tokenizer of its own would differ: the folder's is used
    said = []
    train(RunConfig.from_dict(cfg), progress=False, log=said.append)
    want = genmodels.load(source).state_dict()
    assert set(seen) == set(want) and all(torch.equal(seen[k], want[k]) for k in want)
    assert (run / "tokenizer.json").read_text() == (source / "tokenizer.json").read_text()
    assert any(s.startswith("model: weights from model.init_from=") for s in said)


def test_init_from_a_different_model_names_the_differing_keys(source, corpus_dir, tmp_path):
    cfg = tiny_config(corpus_dir, tmp_path / "run", **QUICK)
    cfg["model"].update(init_from=str(source), d_model=64, d_ff=128)
    with pytest.raises(ConfigError) as e:
        train(RunConfig.from_dict(cfg), progress=False, log=lambda s: None)
    msg = str(e.value)
    assert msg.startswith(f"model.init_from={str(source)!r}: ") and "\n" not in msg
    assert "model.d_model (32 there, 64 in the recipe)" in msg and "model.d_ff (64 there, 128 in the recipe)" in msg
    assert "model.n_layers" not in msg  # only the keys that differ


def test_init_from_a_folder_without_a_tokenizer_is_refused(source, corpus_dir, tmp_path):
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("config.json", "model.safetensors"):
        (bare / name).write_bytes((source / name).read_bytes())
    cfg = tiny_config(corpus_dir, tmp_path / "run", **QUICK)
    cfg["model"]["init_from"] = str(bare)
    with pytest.raises(ConfigError, match=r"^model\.init_from='.*bare' has no tokenizer\.json"):
        train(RunConfig.from_dict(cfg), progress=False, log=lambda s: None)
