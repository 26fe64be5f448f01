"""LoRA adapters (nn/lora.py, genmodels.lora; issue #22 d3/d5) on tiny random models, no reference library.

PEFT parity (both ways, file formats) is tests/parity/peft; here: the adapter's algebra (init leaves the
model unchanged, merge = unmerged, unmerge restores, disabled() = the base, α/r and α/√r), the two ways
in (factory and apply) agreeing, the frozen base, adapter files and their refusals, and the native
decode step never reading an unmerged adapted linear as its base weight.
"""
from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

import genmodels
import genmodels.lora as lora
from genmodels.native.step import unsupported
from genmodels.generation.session import DecodeSession
from tests.helpers.tiny import random_ids, randomise, tiny_config, tiny_model
from tests.models.test_projections import CONFIGS as FAMILIES


def _randomise_adapters(model, seed: int = 3, std: float = 0.2):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in lora.trainable_parameters(model):
            p.copy_(torch.randn(p.shape, generator=g) * std)
    return model


def _scaled_close(a, b, tol):
    """|a − b| ≤ tol · max|b|: float32 rounding of a sum scales with the logits."""
    assert (a - b).abs().max() <= tol * b.abs().max(), (a - b).abs().max()


@pytest.mark.parametrize("kind,targets", [("llama", "q,v"), ("llama", "all-linear"), ("gpt2", "all-linear")])
def test_lora_at_init_leaves_outputs_unchanged(kind, targets):
    model = tiny_model(kind)
    ids = random_ids(2, 9)
    with torch.no_grad():
        base = model(ids)
        lora.apply(model, targets, r=4, alpha=16)
        assert torch.equal(model(ids), base)
    assert all((m.lora_B[s] == 0).all() and (m.lora_A[s] != 0).any() for _, m in lora.adapted(model) for s in m.rows)


def test_merge_equals_unmerged_unmerge_restores_and_disabled_is_the_base():
    model = tiny_model("llama")
    ids = random_ids(2, 9)
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        base = model(ids)
        _randomise_adapters(lora.apply(model, "all-linear", r=4, alpha=16))
        adapted = model(ids)
        assert (adapted - base).abs().max() > 0.1
        with lora.disabled(model):
            assert torch.equal(model(ids), base)  # the base, exactly: adapters skipped, weights untouched
            with pytest.raises(ValueError, match="disabled here"):
                lora.merge(model)  # merged-but-disabled would be neither
        assert torch.equal(model(ids), adapted)  # and back on after the block
        lora.merge(model)
        _scaled_close(model(ids), adapted, 1e-5)
        with pytest.raises(ValueError, match="merged into the weights; lora.unmerge"):
            with lora.disabled(model):
                pass
        lora.unmerge(model)
        _scaled_close(model(ids), adapted, 1e-5)
    for k, w in weights.items():  # the base back, to rounding
        torch.testing.assert_close(model.state_dict()[k], w, atol=1e-6, rtol=0)


@pytest.mark.parametrize("name", list(FAMILIES))
def test_every_family_adapts_merges_and_disables(name):
    """All-linear LoRA (BERT: its pooler and MLM transform too) on each family's tiny model: at init the
    model is unchanged; with random adapters merged = unmerged, disabled = the base; the factory
    (where the family takes one) adapts the same linears as apply."""
    cfg = FAMILIES[name]()
    targets = list(lora.ALL_LINEAR) + (["pooler", "mlm_dense"] if name == "bert" else [])
    model = randomise(genmodels.build_model(cfg)).eval()
    ids = random_ids(2, 7)
    run = (lambda: model(ids, ids)) if name == "t5" else (lambda: model(ids))
    with torch.no_grad():
        base = run()
        lora.apply(model, targets, r=2, alpha=4)
        assert torch.equal(run(), base)
        _randomise_adapters(model)
        adapted = run()
        assert (adapted - base).abs().max() > 1e-3
        with lora.disabled(model):
            assert torch.equal(run(), base)
        lora.merge(model)
        _scaled_close(run(), adapted, 1e-5)
    paths = [p for p, _ in lora.adapted(model)]
    assert len(paths) == len({p.path for p in model.projections() if p.role in targets and not p.stacked})
    if name != "retnet":  # RetNet builds its own linears (no factory): apply is its only way in
        assert [p for p, _ in lora.adapted(lora.build(cfg, targets, r=2))] == paths


@pytest.mark.parametrize("rslora", [False, True])
def test_the_update_is_alpha_over_r_or_over_sqrt_r(rslora):
    model = _randomise_adapters(lora.apply(tiny_model("llama"), "q", r=4, alpha=6, rslora=rslora))
    m = model.blocks[0].attn.qkv
    before = m.weight.detach().clone()
    lora.merge(model)
    s = 6 / (2 if rslora else 4)
    q = slice(*m.rows["q"])
    torch.testing.assert_close(m.weight[q] - before[q], s * m.lora_B["q"] @ m.lora_A["q"], atol=1e-6, rtol=1e-6)
    assert torch.equal(m.weight[q.stop:], before[q.stop:])  # k and v rows untouched


def test_the_factory_and_apply_build_the_same_model():
    """build(config) (the adapter passed in through the linear factory) and apply(build_model(config))
    hold the same parameters by name and compute the same function with the same weights."""
    cfg = tiny_config("llama")
    built = lora.build(cfg, "q,v,gate,down", r=4, alpha=8)
    applied = lora.apply(genmodels.build_model(cfg), "q,v,gate,down", r=4, alpha=8)
    assert list(built.state_dict()) == list(applied.state_dict())
    assert [(p, m.rows) for p, m in lora.adapted(built)] == [(p, m.rows) for p, m in lora.adapted(applied)]
    ids = random_ids(2, 7)
    with torch.no_grad():  # build() redraws PEFT's init after init_weights drew every matrix: B = 0 again
        with lora.disabled(built):
            base = built(ids)
        assert torch.equal(built(ids), base)
    randomise(built)
    applied.load_state_dict(built.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(built(ids), applied(ids), atol=0, rtol=0)
    assert [n for n, p in built.named_parameters() if p.requires_grad] == [n for n, _ in lora.trainable_parameters(built)]


def test_the_base_is_frozen_and_only_adapters_get_gradients():
    model = lora.apply(tiny_model("llama"), "q,v", r=4)
    model.train()
    model(random_ids(2, 9)).sum().backward()
    for name, p in model.named_parameters():
        if ".lora_" in name:
            assert p.requires_grad
            assert p.grad is not None and (p.grad != 0).any() == (".lora_B." in name), name  # B = 0: A's grad is 0
        else:
            assert not p.requires_grad and p.grad is None, name
    assert set(lora.adapter_state_dict(model)) == {n for n, _ in lora.trainable_parameters(model)}


def test_dropout_acts_on_the_adapter_input_in_training_only():
    model = _randomise_adapters(lora.apply(tiny_model("llama"), "q,v", r=4, dropout=0.5))
    ids = random_ids(1, 9)
    with torch.no_grad():
        evaluated = model(ids)  # applied to a model in eval mode: the adapters are too (no dropout)
        assert torch.equal(model(ids), evaluated)
        model.train()
        torch.manual_seed(0)
        assert not torch.allclose(model(ids), evaluated)
        with lora.disabled(model):
            assert torch.equal(model(ids), model.eval()(ids))


def test_targets_are_checked_in_one_line():
    for targets, match in [("q,head", "unknown role 'head'"), ("", "unknown role"), ("qproj", "have q, k, v")]:
        with pytest.raises(ValueError, match=match):
            lora.apply(tiny_model("llama"), targets)
    with pytest.raises(ValueError, match="no such projection in DecoderLM"):
        lora.apply(tiny_model("gpt2"), "gate")  # GPT-2's MLP has up/down only
    with pytest.raises(ValueError, match="r=0 must be a positive"):
        lora.apply(tiny_model("llama"), "q", r=0)
    model = lora.apply(tiny_model("llama"), "q")
    with pytest.raises(ValueError, match="already has LoRA adapters"):
        lora.apply(model, "v")
    with pytest.raises(ValueError, match="has no LoRA adapters"):
        lora.merge(tiny_model("llama"))


def test_adapter_files_round_trip_and_are_refused_on_another_base(tmp_path):
    model = _randomise_adapters(lora.apply(tiny_model("llama"), "all-linear", r=4, alpha=8, rslora=True))
    ids = random_ids(2, 9)
    lora.save(model, tmp_path / "a")
    cfg = json.loads((tmp_path / "a/adapter_config.json").read_text())
    assert (cfg["r"], cfg["lora_alpha"], cfg["use_rslora"], cfg["peft_type"]) == (4, 8, True, "LORA")
    again = lora.load(tiny_model("llama"), tmp_path / "a")
    with torch.no_grad():
        torch.testing.assert_close(again(ids), model(ids), atol=0, rtol=0)
    with pytest.raises(ValueError, match="saved for another base model"):
        lora.load(tiny_model("llama", seed=5), tmp_path / "a")
    with pytest.raises(ValueError, match="adapts other projections"):
        lora.load(lora.apply(tiny_model("llama"), "q"), tmp_path / "a")
    lora.merge(model)  # a merged model saves the same adapters and the same fingerprint
    lora.save(model, tmp_path / "b")
    a, b = (safe_open(str(tmp_path / d / "adapter_model.safetensors"), "pt") for d in "ab")
    assert a.metadata() == b.metadata() and "genmodels.base_fingerprint" in a.metadata()
    assert list(a.keys()) == list(b.keys()) and all(torch.equal(a.get_tensor(k), b.get_tensor(k)) for k in a.keys())


def test_adapter_files_never_replace_a_file_that_is_not_one(tmp_path):
    model = lora.apply(tiny_model("llama"), "q")
    (tmp_path / "adapter_config.json").write_text('{"api_key": "x"}')
    with pytest.raises(FileExistsError, match="not a PEFT adapter config"):
        lora.save(model, tmp_path)
    assert (tmp_path / "adapter_config.json").read_text() == '{"api_key": "x"}'
    with pytest.raises(ValueError, match="no PEFT module for blocks.0.attn.qkv\\[q\\]"):
        lora.save(lora.apply(tiny_model("gpt2"), "q"), tmp_path / "gpt2")  # c_attn: one adapter over q|k|v


def test_unload_gives_back_plain_linears_that_save_as_the_base_family(tmp_path):
    model = _randomise_adapters(lora.apply(tiny_model("llama"), "q,v,down", r=4))
    ids = random_ids(2, 9)
    for write in (genmodels.save, genmodels.export_hf):  # adapters in a whole-model file: refused, naming the way
        with pytest.raises(ValueError, match="blocks.0.attn.qkv and 3 more carry LoRA adapters; genmodels.lora.save"):
            write(model, tmp_path / "refused")
    assert not (tmp_path / "refused").exists()
    with torch.no_grad():
        want = model(ids)
        lora.unload(model)
        assert not lora.adapted(model) and type(model.blocks[0].attn.qkv) is torch.nn.Linear
        genmodels.save(model, tmp_path / "m")
        _scaled_close(genmodels.load(tmp_path / "m")(ids), want, 1e-5)


@pytest.mark.parametrize("name", ["llama", "retnet"])
def test_the_native_step_never_reads_an_unmerged_adapter_as_its_base_weight(name):
    """Unmerged: the native step refuses the model (the PyTorch path decodes; its tokens are the
    full-forward greedy ones). Merged: it runs, on the merged weights, and gives the same tokens."""
    from genmodels import native
    if native.library() is None:
        pytest.skip("native kernels unavailable")
    base = tiny_model("llama", eos_token_id=None) if name == "llama" else randomise(genmodels.build_model(FAMILIES[name]())).eval()
    model = _randomise_adapters(lora.apply(base, "all-linear", r=4), std=0.5)
    ids = random_ids(2, 6)
    want = ids
    with torch.no_grad():
        for _ in range(8):  # greedy by full forwards: no cache, no kernel
            want = torch.cat([want, model(want)[:, -1].argmax(-1, keepdim=True)], 1)
        with lora.disabled(model):
            assert not torch.equal(genmodels.generate(model, ids, 8), want)  # the adapters change the tokens
    assert "LoRALinear" in unsupported(model) and not DecodeSession(model).native
    assert torch.equal(genmodels.generate(model, ids, 8), want)
    lora.merge(model)
    assert unsupported(model) is None and DecodeSession(model).native
    assert torch.equal(genmodels.generate(model, ids, 8), want)


def test_adapter_files_that_compute_something_else_are_refused_by_name(tmp_path):
    from safetensors.torch import load_file, save_file
    model = lora.apply(tiny_model("llama"), "q,v", r=4)
    lora.save(model, tmp_path / "a")
    cfg = json.loads((tmp_path / "a/adapter_config.json").read_text())
    for change, match in [({"use_dora": True}, "use_dora=True is not supported"), ({"peft_type": "IA3"}, "peft_type='IA3'"),
                          ({"bias": "all"}, "bias='all' is not supported"), ({"r": 8}, r"lora_A of blocks.0.attn.qkv\[q\] is shape")]:
        (tmp_path / "a/adapter_config.json").write_text(json.dumps({**cfg, **change}))
        with pytest.raises(ValueError, match=match):
            lora.load(tiny_model("llama"), tmp_path / "a")
    (tmp_path / "a/adapter_config.json").write_text(json.dumps(cfg))
    weights = load_file(tmp_path / "a/adapter_model.safetensors")
    key = "base_model.model.model.layers.0.self_attn.v_proj.lora_B.weight"
    for tensors, match in [({**weights, key.replace("layers.0", "layers.9"): weights[key].clone()}, "layers.9.self_attn.v_proj.lora_B.weight names no projection"),
                           ({k: v for k, v in weights.items() if k != key}, r"lora_B of blocks.0.attn.qkv\[v\] is missing")]:
        save_file(tensors, tmp_path / "a/adapter_model.safetensors")
        with pytest.raises(ValueError, match=match):
            lora.load(tiny_model("llama"), tmp_path / "a")
    (tmp_path / "a/adapter_model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="adapter_model.safetensors: no such file"):
        lora.load(tiny_model("llama"), tmp_path / "a")


def test_a_recipe_section_names_the_field_it_refuses():
    from genmodels.config import ConfigError
    sec = lora.LoRAConfig.from_dict({"targets": "all-linear", "r": 4, "alpha": 16, "rslora": True}, "train.lora")
    assert sec.spec() == lora.LoRASpec.make("all-linear", 4, 16, rslora=True)
    assert lora.adapted(sec.apply(tiny_model("llama")))[0][1].scaling == {"q": 8.0, "k": 8.0, "v": 8.0}
    for d, match in [({"r": 0}, "train.lora.r=0 must be a positive integer"), ({"targets": "q,lm_head"}, "train.lora.targets="),
                     ({"dropout": 1.5}, r"train.lora.dropout=1.5 must be in \[0, 1\)"), ({"rank": 4}, "unknown train.lora config key")]:
        with pytest.raises(ConfigError, match=match):
            lora.LoRAConfig.from_dict(d, "train.lora")


def test_an_adapter_folder_naming_its_base_loads_as_a_model(tmp_path):
    """lora.save(..., base=) records the base (absolute); genmodels.load(adapter folder) = base + adapters."""
    genmodels.save(tiny_model("llama"), tmp_path / "base")
    model = _randomise_adapters(lora.apply(genmodels.load(tmp_path / "base"), "q,v", r=4))
    lora.save(model, tmp_path / "adapter", base=tmp_path / "base")
    ids = random_ids(2, 9)
    loaded = genmodels.load(tmp_path / "adapter")
    assert [p for p, _ in lora.adapted(loaded)] == [p for p, _ in lora.adapted(model)]
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids), model(ids), atol=0, rtol=0)
    cfg = json.loads((tmp_path / "adapter/adapter_config.json").read_text())
    for base, match in [(None, "base_model_name_or_path=None names no base model; load the base"),
                        ("missing", "base_model_name_or_path='missing': no such file"),
                        ("../adapter", "is itself an adapter folder")]:
        (tmp_path / "adapter/adapter_config.json").write_text(json.dumps({**cfg, "base_model_name_or_path": base}))
        with pytest.raises((ValueError, FileNotFoundError), match=match):
            genmodels.load(tmp_path / "adapter")
    (tmp_path / "adapter/adapter_config.json").write_text(json.dumps({**cfg, "base_model_name_or_path": "../base"}))
    assert lora.adapted(genmodels.load(tmp_path / "adapter"))  # relative to the adapter folder
