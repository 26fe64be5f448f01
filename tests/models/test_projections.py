"""The linear factory (nn/linear.py) and model.projections() (models/projections.py), issue #20 d3:
every linear is built through the factory passed to build_model, named by its HF role, and the
slices of fused q|k|v, k|v and gate|up cover their weight exactly."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import genmodels
from genmodels.config import ConfigError
from genmodels.native import decoder as native_decoder
from genmodels.nn.linear import plain_linear
from tests.helpers.tiny import random_ids, randomise

SMALL = dict(vocab_size=128, d_model=32, n_layers=2, n_heads=4, max_seq_len=64)
CONFIGS = {
    "gpt2": lambda: genmodels.preset("gpt2-tiny", **SMALL, d_ff=64),
    "llama": lambda: genmodels.preset("llama-tiny", **SMALL, n_kv_heads=2, d_ff=48),
    "mistral": lambda: genmodels.preset("mistral-7b", **SMALL, n_kv_heads=2, d_ff=48, sliding_window=8),
    "mixtral": lambda: genmodels.preset("mixtral-tiny", **SMALL, n_kv_heads=2, d_ff=48, n_experts=4,
                                        expert_d_ff=16),
    "bert": lambda: genmodels.preset("bert-tiny", **SMALL, d_ff=64, pooler=True),
    "t5": lambda: genmodels.preset("t5-tiny", **SMALL, d_ff=64, head_dim=8),
    "retnet": lambda: genmodels.preset("retnet-tiny", vocab_size=128, d_model=32, n_layers=2, n_heads=2, d_ff=32),
}
ROLES = {
    "gpt2": {"q", "k", "v", "o", "up", "down", "head"},
    "llama": {"q", "k", "v", "o", "gate", "up", "down", "head"},
    "mistral": {"q", "k", "v", "o", "gate", "up", "down", "head"},
    "mixtral": {"q", "k", "v", "o", "router", "gate", "up", "down", "head"},
    "bert": {"q", "k", "v", "o", "up", "down", "pooler", "mlm_dense", "head"},
    "t5": {"q", "k", "v", "o", "up", "down", "head"},
    "retnet": {"q", "k", "v", "g", "o", "gate", "up", "down", "head"},
}


def _out_rows(p) -> int:
    w = getattr(p.module, p.param) if not hasattr(p.module, "get_weight") else p.module.get_weight()
    return (w[p.expert] if p.expert is not None else w).shape[0]


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_projections_name_every_role_and_every_linear(name):
    model = genmodels.build_model(CONFIGS[name]())
    projs = model.projections()
    assert {p.role for p in projs} == ROLES[name]
    n_blocks = len(model.transformer_blocks())
    per_layer = {}
    for p in projs:
        if p.kind in ("self", "cross", "mlp", "moe"):
            per_layer.setdefault((p.path.split(".")[0], p.layer), set()).add(p.role)
    assert len(per_layer) == n_blocks  # every block (encoder and decoder stacks) named
    for roles in per_layer.values():
        assert {"q", "k", "v", "o", "up", "down"} <= roles
    # no linear is missed: every nn.Linear of the model is some projection's module
    named = {id(p.module) for p in projs}
    missed = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and id(m) not in named]
    assert missed == []
    assert len({p.name for p in projs}) == len(projs)  # names are unique


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_slices_cover_each_fused_weight_exactly(name):
    model = randomise(genmodels.build_model(CONFIGS[name]()))
    groups = {}
    for p in model.projections():
        groups.setdefault((id(p.module), p.param, p.expert), []).append(p)
    fused = 0
    for parts in groups.values():
        rows = [p.rows for p in parts]
        assert rows[0][0] == 0 and rows[-1][1] == _out_rows(parts[0])  # starts at 0, ends at the last row
        assert all(a[1] == b[0] for a, b in zip(rows, rows[1:]))  # contiguous, in order, no overlap
        whole = parts[0].weight() if len(parts) == 1 else torch.cat([p.weight() for p in parts])
        full = getattr(parts[0].module, parts[0].param) if not hasattr(parts[0].module, "get_weight") else \
            parts[0].module.get_weight()
        torch.testing.assert_close(whole, full[parts[0].expert] if parts[0].expert is not None else full,
                                   rtol=0, atol=0)
        fused += len(parts) > 1
    assert fused >= (0 if name == "retnet" else 2)  # q|k|v in every transformer, gate|up where gated


def test_a_linear_no_part_names_is_refused_not_left_out():
    model = genmodels.build_model(CONFIGS["llama"]())
    model.blocks[1].extra = nn.Linear(4, 4)
    with pytest.raises(ValueError, match="no role for the linear\\(s\\) blocks.1.extra"):
        model.projections()


def test_llama_slices_are_hf_widths():
    c = CONFIGS["llama"]()
    projs = {p.role: p for p in genmodels.build_model(c).projections() if p.layer == 1 and p.kind == "self"}
    hd = c.dim_head
    assert projs["q"].rows == (0, c.n_heads * hd)
    assert projs["k"].rows == (c.n_heads * hd, (c.n_heads + c.kv_heads) * hd)
    assert projs["v"].rows == ((c.n_heads + c.kv_heads) * hd, (c.n_heads + 2 * c.kv_heads) * hd)
    assert projs["q"].path == "blocks.1.attn.qkv" and projs["q"].fused


# ---- the factory -------------------------------------------------------------------------------
class SliceDelta(nn.Linear):
    """A toy adapter on chosen slices of a fused linear (as LoRA on q and v): base + a learned delta on
    those output rows only. Subclassing nn.Linear keeps the base keys ``weight`` / ``bias``."""

    def __init__(self, n_in, n_out, bias, rows):
        super().__init__(n_in, n_out, bias=bias)
        self.rows = rows
        self.delta = nn.ParameterList(nn.Parameter(torch.zeros(b - a, n_in)) for a, b in rows)

    def forward(self, x):
        y = super().forward(x)
        extra = torch.zeros_like(y)
        for (a, b), d in zip(self.rows, self.delta):
            extra[..., a:b] = x @ d.T
        return y + extra


def lora_qv(calls):
    def factory(n_in, n_out, bias=True, *, role="", layer=None, slices=None):
        calls.append((role, layer, slices))
        if role == "qkv":
            return SliceDelta(n_in, n_out, bias, [slices["q"], slices["v"]])
        return nn.Linear(n_in, n_out, bias=bias)
    return factory


def test_factory_builds_every_projection_and_adapts_q_and_v_only():
    c = CONFIGS["llama"]()
    calls = []
    torch.manual_seed(0)
    base = randomise(genmodels.build_model(c)).eval()
    adapted = genmodels.build_model(c, linear=lora_qv(calls)).eval()
    assert [r for r, _, _ in calls] == ["qkv", "o", "gate_up", "down"] * c.n_layers + ["head"]
    assert [lay for _, lay, _ in calls] == [0] * 4 + [1] * 4 + [None]
    assert calls[0][2] == {"q": (0, 32), "k": (32, 48), "v": (48, 64)} and calls[2][2] == {"gate": (0, 48),
                                                                                              "up": (48, 96)}
    missing, unexpected = adapted.load_state_dict(base.state_dict(), strict=False)
    assert unexpected == [] and all(".delta." in k for k in missing)  # base keys unchanged
    ids = random_ids(2, 9)
    with torch.no_grad():
        for block in adapted.blocks:  # the model's init drew every matrix, the adapter's too: zero them
            for d in block.attn.qkv.delta:
                d.zero_()
        torch.testing.assert_close(adapted(ids), base(ids), rtol=0, atol=0)  # zero deltas: the base model
        qkv = adapted.blocks[0].attn.qkv
        qkv.delta[0].normal_()  # the q slice's adapter moves q rows only
        x = torch.randn(3, c.d_model)
        moved = (qkv(x) - base.blocks[0].attn.qkv(x)).abs().amax(0)
        assert moved[:32].min() > 0 and moved[32:].max() == 0
    reason = native_decoder.unsupported(adapted)
    assert reason is None or "SliceDelta" in reason or "native kernels unavailable" in reason


def test_plain_factory_consumes_the_rng_as_the_default_build():
    c = CONFIGS["gpt2"]()  # tied head: every linear goes through the factory
    torch.manual_seed(3)
    default = genmodels.build_model(c).state_dict()
    torch.manual_seed(3)
    calls = []
    built = genmodels.build_model(c, linear=lambda *a, **k: calls.append(k["role"]) or plain_linear(*a, **k))
    assert calls and all(torch.equal(default[k], v) for k, v in built.state_dict().items())
    assert list(default) == list(built.state_dict())


def test_an_untied_head_built_by_an_adapter_refuses_its_plain_weight():
    c = CONFIGS["llama"]()

    def factory(n_in, n_out, bias=True, *, role="", layer=None, slices=None):
        return SliceDelta(n_in, n_out, bias, [(0, 4)]) if role == "head" else nn.Linear(n_in, n_out, bias=bias)

    model = genmodels.build_model(c, linear=factory)
    assert isinstance(model.head.proj, SliceDelta)
    with pytest.raises(ValueError, match="not a plain weight"):
        model.head.get_weight()
    assert model(random_ids(1, 4)).shape == (1, 4, c.vocab_size)
    reason = native_decoder.unsupported(model)
    assert reason is not None and ("head" in reason or "unavailable" in reason)


def test_build_model_refuses_a_part_the_family_does_not_take():
    with pytest.raises(ConfigError, match="linear=...\\) is not available for family='retnet'"):
        genmodels.build_model(genmodels.preset("retnet-tiny"), linear=plain_linear)
