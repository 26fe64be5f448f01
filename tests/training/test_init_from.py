"""``model.init_from: PATH`` starts a run from a loadable model: its weights and its tokenizer; a model
that differs from the recipe's model section is refused in one line naming the differing keys."""
from __future__ import annotations

import json
import shutil

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


# ---- #20 d5: the source's config when model: names only init_from; new token ids grow the vocabulary -------
def _copy_with_special_tokens(source, dest, names: list[str]):
    """``source`` (a model folder) copied to ``dest`` with ``names`` added to its tokenizer as special tokens."""
    from tokenizers import Tokenizer
    shutil.copytree(source, dest)
    tok = Tokenizer.from_file(str(dest / "tokenizer.json"))
    tok.add_special_tokens(names)
    tok.save(str(dest / "tokenizer.json"))
    return dest


def test_a_recipe_whose_model_names_only_init_from_takes_the_sources_config(source, corpus_dir, tmp_path,
                                                                             monkeypatch):
    import genmodels
    seen = _start_weights(monkeypatch)
    cfg = tiny_config(corpus_dir, tmp_path / "run", **QUICK)
    cfg["model"] = {"init_from": str(source)}
    rc = RunConfig.from_dict(cfg)
    want = genmodels.load(source)
    assert {k: v for k, v in rc.model.items() if k != "init_from"} == json.loads(json.dumps(want.config.to_dict()))
    said = []
    train(rc, progress=False, log=said.append)
    assert all(torch.equal(seen[k], v) for k, v in want.state_dict().items()) and set(seen) == set(want.state_dict())
    assert not any("new embedding rows" in s for s in said)  # the same vocabulary: nothing grows
    assert genmodels.load(tmp_path / "run" / "final").config == want.config
    assert "d_model: 32" in (tmp_path / "run" / "config.yaml").read_text()  # the record describes the model


def test_new_special_tokens_grow_the_vocabulary_with_the_mean_row(source, corpus_dir, tmp_path, monkeypatch):
    import genmodels
    seen = _start_weights(monkeypatch)
    folder = _copy_with_special_tokens(source, tmp_path / "src", ["<gist0>", "<gist1>", "<gist2>"])
    cfg = tiny_config(corpus_dir, tmp_path / "run", **QUICK)
    cfg["model"] = {"init_from": str(folder)}
    said = []
    train(RunConfig.from_dict(cfg), progress=False, log=said.append)
    old = genmodels.load(source).state_dict()
    v = old["embed.weight"].shape[0]
    grew = [s for s in said if "new embedding rows" in s]
    assert len(grew) == 1 and f"has {v} token ids, this run needs {v + 3}: the 3 new" in grew[0], said
    assert "the head's new rows are the mean of its rows too" in grew[0]  # llama's head is untied
    for key in ("embed.weight", "head.weight"):
        assert torch.equal(seen[key][:v], old[key])
        assert torch.equal(seen[key][v:], old[key].mean(0, keepdim=True).expand(3, -1))
    assert all(torch.equal(seen[k], t) for k, t in old.items() if k not in ("embed.weight", "head.weight"))
    assert genmodels.load(tmp_path / "run" / "final").config.vocab_size == v + 3
    from genmodels.training import load_config  # its config.yaml's model and RUN/tokenizer.json resume it
    said.clear()
    res = train(load_config(tmp_path / "run" / "config.yaml", ["train.max_steps=5"]), resume=True, progress=False,
                log=said.append)
    assert sorted(res.train_losses) == [4, 5] and not any("new embedding rows" in s for s in said)


def test_an_objective_that_needs_an_id_the_source_lacks_grows_it(source, corpus_dir, tmp_path):
    """A BERT saved without room for [MASK]: an MLM run from it adds the one id (tied head, MLM bias)."""
    import genmodels
    from genmodels.io import load_tokenizer
    tok = load_tokenizer(source)
    bert = genmodels.build_model(genmodels.preset("bert-tiny", d_model=32, n_layers=1, n_heads=2, d_ff=64,
                                                  vocab_size=tok.get_vocab_size()))
    genmodels.save(bert, tmp_path / "bert", tokenizer=tok)
    cfg = tiny_config(corpus_dir, tmp_path / "run", **QUICK)
    cfg["model"] = {"init_from": str(tmp_path / "bert")}
    said = []
    train(RunConfig.from_dict(cfg), progress=False, log=said.append)
    assert [s for s in said if "the 1 new embedding rows" in s and "the tied head follows" in s], said
    assert genmodels.load(tmp_path / "run" / "final").config.vocab_size == tok.get_vocab_size() + 1


@pytest.mark.parametrize("name, kw", [("llama-tiny", {}), ("gpt2-tiny", {}), ("bert-tiny", {}),
                                      ("t5-tiny", {"head_dim": 16}), ("retnet-tiny", {}), ("mixtral-tiny", {})])
def test_grow_vocab_keeps_the_old_rows_and_appends_the_mean_row(name, kw):
    import genmodels
    from genmodels.models.vocab import grow_vocab
    model = genmodels.build_model(genmodels.preset(name, vocab_size=40, d_model=32, n_layers=1, **kw)).eval()
    rng = torch.random.get_rng_state()
    grown = grow_vocab(model, 5)
    assert torch.equal(torch.random.get_rng_state(), rng)  # built under a forked RNG
    assert grown.config.vocab_size == 45 and not grown.training
    old, new = model.state_dict(), grown.state_dict()
    changed = sorted(k for k in new if new[k].shape != old[k].shape)
    assert "embed.weight" in changed
    for k in new:
        if k in changed:
            assert torch.equal(new[k][:40], old[k])
            assert torch.equal(new[k][40:], old[k].mean(0, keepdim=True).expand(5, *old[k].shape[1:]))
        else:
            assert torch.equal(new[k], old[k])
    if model.config.tie_embeddings:
        assert "head.weight" not in changed or new["head.weight"].data_ptr() == new["embed.weight"].data_ptr()


def test_grow_vocab_refuses_a_model_without_token_ids():
    import genmodels
    from genmodels.models.vocab import grow_vocab
    with pytest.raises(ConfigError, match=r"^a gan model has no token vocabulary \(no vocab_size\), so it cannot"):
        grow_vocab(genmodels.build_model(genmodels.preset("dcgan-digits")), 2)


def test_init_from_refusals_name_the_field(source, corpus_dir, tmp_path):
    cfg = tiny_config(corpus_dir, tmp_path / "run", **QUICK)
    for path, why in ((tmp_path / "nowhere", "is not an existing folder"), (tmp_path, "cannot be loaded")):
        cfg["model"] = {"init_from": str(path)}
        with pytest.raises(ConfigError) as e:
            RunConfig.from_dict(cfg)
        assert str(e.value).startswith(f"model.init_from={str(path)!r}") and why in str(e.value), str(e.value)
        assert "\n" not in str(e.value)
    cfg["model"] = {"preset": "bert-tiny", "d_model": 32, "n_layers": 2, "n_heads": 2, "d_ff": 64,
                    "init_from": str(source)}
    with pytest.raises(ConfigError) as e:
        train(RunConfig.from_dict(cfg), progress=False, log=lambda s: None)
    assert str(e.value).startswith(f"model.init_from={str(source)!r} is a decoder model; the recipe trains a"), e.value
    assert "\n" not in str(e.value)
