"""LoRA against PEFT 0.21.2 on a transformers LlamaForCausalLM (issue #22 d3/d5).

Every parameter is random (the base's, and the adapters' A and B: a zero B hides every mapping bug).
Our model is converted from the same transformers model (``save_pretrained`` + ``genmodels.load``);
adapter folders move between the two by file only: PEFT's ``save_pretrained`` -> ``genmodels.lora.load``,
``genmodels.lora.save`` -> ``PeftModel.from_pretrained``. Logits agree to float32 tolerance (1e-5).
"""
from __future__ import annotations

import pytest
import torch

peft = pytest.importorskip("peft")

import genmodels.lora as lora  # noqa: E402
from tests.parity.transformers._hf import hf_model, random_ids, to_ours  # noqa: E402

pytestmark = pytest.mark.parity
TOL = dict(atol=1e-5, rtol=1e-5)
ALL = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
CASES = {"q,v": (["q_proj", "v_proj"], {}), "all-linear": ("all-linear", {}),
         "all-linear-rslora": ("all-linear", {"use_rslora": True}), "k,o,down-gqa": (["k_proj", "o_proj", "down_proj"], {}),
         "gate,up-layer1-dropout": (["gate_proj", "up_proj"], {"layers_to_transform": [1], "lora_dropout": 0.1})}


def _randomise_adapters(model, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)


def _peft_and_ours(targets, path, seed=0, r=4, alpha=8, **kw):
    """PEFT's model on a random Llama (GQA), and ours converted from that Llama before PEFT wraps it."""
    hf = hf_model("llama", seed=seed, num_key_value_heads=2)
    ours = to_ours(hf, path)
    cfg = peft.LoraConfig(r=r, lora_alpha=alpha, target_modules=targets, task_type="CAUSAL_LM", **kw)
    return peft.get_peft_model(hf, cfg).eval(), ours


@pytest.fixture(params=list(CASES))
def case(request):
    return CASES[request.param]


def test_a_peft_adapter_applies_to_ours_with_equal_logits(case, tmp_path):
    targets, kw = case
    pm, ours = _peft_and_ours(targets, tmp_path / "base", **kw)
    _randomise_adapters(pm, seed=3)
    pm.save_pretrained(tmp_path / "adapter")
    ids = random_ids(2, 11)
    with torch.no_grad():
        base = ours(ids)
        lora.load(ours, tmp_path / "adapter")
        theirs = pm(input_ids=ids).logits
        assert (theirs - base).abs().max() > 0.1  # the adapter matters: a no-op would pass the rest
        torch.testing.assert_close(ours(ids), theirs, **TOL)
        with lora.disabled(ours), pm.disable_adapter():  # adapters off: both bases
            torch.testing.assert_close(ours(ids), pm(input_ids=ids).logits, **TOL)
        lora.merge(ours)  # merged: the same function, to float32 rounding of W + s·BA
        assert (ours(ids) - theirs).abs().max() <= 1e-5 * theirs.abs().max()


def test_ours_saved_loads_in_peft_with_equal_logits(case, tmp_path):
    targets, kw = case
    hf = hf_model("llama", seed=1, num_key_value_heads=2)
    ours = to_ours(hf, tmp_path / "base")
    roles = ",".join(t.removesuffix("_proj") for t in (ALL if targets == "all-linear" else targets))
    lora.apply(ours, roles, r=4, alpha=8, rslora=kw.get("use_rslora", False), dropout=kw.get("lora_dropout", 0.0))
    _randomise_adapters(ours, seed=4)
    lora.save(ours, tmp_path / "adapter")
    pm = peft.PeftModel.from_pretrained(hf, tmp_path / "adapter").eval()
    ids = random_ids(2, 11)
    with torch.no_grad():
        torch.testing.assert_close(ours(ids), pm(input_ids=ids).logits, **TOL)


def test_the_same_seed_draws_peft_s_init(tmp_path):
    """PEFT's init, draw for draw: after the same seed, every A equals PEFT's and every B is zero."""
    hf = hf_model("llama", seed=2, num_key_value_heads=2)
    ours = to_ours(hf, tmp_path / "base")
    torch.manual_seed(11)
    pm = peft.get_peft_model(hf, peft.LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    torch.manual_seed(11)
    lora.apply(ours, "all-linear", r=4, alpha=8)
    lora.save(ours, tmp_path / "ours")
    pm.save_pretrained(tmp_path / "theirs")
    from safetensors.torch import load_file
    mine, theirs = load_file(tmp_path / "ours/adapter_model.safetensors"), load_file(tmp_path / "theirs/adapter_model.safetensors")
    assert sorted(mine) == sorted(theirs) and len(mine) == 2 * 7 * 2
    for k in theirs:
        assert torch.equal(mine[k], theirs[k]), k
        assert (theirs[k] == 0).all() == k.endswith("lora_B.weight"), k
