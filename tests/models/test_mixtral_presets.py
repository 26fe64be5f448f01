"""The Mixtral presets (#11): mixtral-tiny is llama-tiny with 8 experts at llama-tiny's active width,
mixtral-8x7b has the paper's sizes; the recipe validates; the native decode step covers a dropless MoE model
(tests/native/test_moe_native.py) and refuses one with an eval capacity.
(mixtral-8x7b against transformers' MixtralConfig: tests/parity/transformers/test_mixtral.py.)"""
from __future__ import annotations

from pathlib import Path

import torch

import genmodels
from genmodels.models.flops import flops_per_token, matmul_parameters
from genmodels.native.decoder import unsupported
from genmodels.registry import get_family
from genmodels.training import load_config

from tests.helpers.tiny import randomise

ROOT = Path(__file__).resolve().parents[2]


def test_mixtral_tiny_is_llama_tiny_with_experts_of_equal_active_width():
    moe, dense = genmodels.preset("mixtral-tiny"), genmodels.preset("llama-tiny")
    assert (moe.n_experts, moe.experts_per_token, moe.n_moe_layers) == (8, 2, moe.n_layers)
    assert moe.experts_per_token * moe.expert_width == dense.d_ff  # 2 × 344 = 688: equal active feed-forward
    differ = {k for k, v in moe.to_dict().items() if dense.to_dict()[k] != v}
    assert differ == {"n_experts", "expert_d_ff"}  # experts_per_token: its default, 2
    # per token the sparse model does the dense one's matmuls plus its router's D·E
    assert matmul_parameters(moe) - matmul_parameters(dense) == moe.n_layers * moe.d_model * moe.n_experts
    assert flops_per_token(moe, 256) > flops_per_token(dense, 256)


def test_mixtral_8x7b_has_the_papers_sizes():
    """Jiang et al., 2024, Table 1 and §2: 46.7B parameters, 12.9B active per token (top-2 of 8)."""
    c = genmodels.preset("mixtral-8x7b")
    total = get_family(c.family).counts.parameter_count(c)
    active = matmul_parameters(c) + c.vocab_size * c.d_model  # + the input embedding (the head is a matmul)
    assert round(total / 1e9, 1) == 46.7 and round(active / 1e9, 1) == 12.9
    assert (c.dim_head, c.max_seq_len, c.sliding_window) == (128, 32768, None)


def test_recipe_validates():
    cfg = load_config(ROOT / "configs" / "mixtral-tiny.yaml")
    llama = load_config(ROOT / "configs" / "llama-tiny.yaml")
    assert cfg.model_config() == llama.model_config().replace(n_experts=8, expert_d_ff=344)
    assert (cfg.data, cfg.train.seed, cfg.train.max_minutes, cfg.train.max_steps) == (
        llama.data, llama.train.seed, llama.train.max_minutes, llama.train.max_steps)


def test_native_decode_step_refuses_an_moe_model_with_a_capacity_with_a_reason():
    kw = dict(vocab_size=64, d_model=32, n_layers=2, n_heads=2, n_kv_heads=1, expert_d_ff=16, n_experts=4)
    assert unsupported(genmodels.build_model(genmodels.preset("mixtral-tiny", **kw)).eval()) is None
    cfg = genmodels.preset("mixtral-tiny", **kw, eval_capacity_factor=2.0)
    model = randomise(genmodels.build_model(cfg)).eval()
    reason = unsupported(model)
    assert isinstance(reason, str) and "capacity" in reason
    ids = torch.randint(0, 64, (1, 5))
    out = genmodels.generate(model, ids, 6)  # the PyTorch loop serves it instead
    assert out.shape == (1, 11)
