"""Sparse MoE (nn/moe.py): sorted dispatch against a dense "every expert, masked" reference (forward
and gradients, dropless and with capacity), the capacity's drop order, jitter, gradcheck, the router
losses (objectives/router.py), the config fields and the counts."""
from __future__ import annotations

import math

import pytest
import torch

import genmodels
from genmodels.config import ConfigError
from genmodels.models.config import preset
from genmodels.models.flops import count_parameters, matmul_parameters, parameter_count
from genmodels.nn import Routing, SparseMoE, record_routing
from genmodels.nn.moe import expert_capacity
from genmodels.objectives.router import (mixtral_balance_loss, router_losses, router_z_loss, routing_metrics,
                                         switch_balance_loss)

D, FF, E = 12, 10, 5


def moe(k=2, renormalize=True, seed=0, dtype=torch.float32, **kw) -> SparseMoE:
    torch.manual_seed(seed)
    m = SparseMoE(D, FF, E, k, renormalize=renormalize, **kw).to(dtype)
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0, 0.3)  # every parameter randomised
    return m


def priority_kept(picks: torch.Tensor, capacity: int | None) -> torch.Tensor:
    """(N, k) bool, by the definition: each expert serves first choices in token order, then second
    choices in token order, …, and drops what comes past ``capacity``."""
    n, k = picks.shape
    kept = torch.zeros(n, k, dtype=torch.bool)
    used = [0] * E
    for r in range(k):
        for t in range(n):
            e = int(picks[t, r])
            kept[t, r] = capacity is None or used[e] < capacity
            used[e] += 1
    return kept


def dense_reference(m: SparseMoE, x: torch.Tensor) -> torch.Tensor:
    """y_n = Σ_e G_{n,e} E_e(x_n) with every expert run on every token; G holds the (renormalised)
    gate of each kept pick and 0 elsewhere. ``x (N, D)``."""
    logits = x.float() @ m.router.weight.float().t()  # (N, E)
    w, picks = logits.softmax(-1).topk(m.router.k, dim=-1)
    if m.router.renormalize:
        w = w / w.sum(-1, keepdim=True)
    kept = priority_kept(picks, m.router.capacity(x.shape[0]))
    gates = torch.zeros(x.shape[0], E, dtype=w.dtype).scatter_add(1, picks, w * kept)  # (N, E)
    gu = torch.einsum("nd,efd->nef", x, m.experts.gate_up_proj)  # (N, E, 2F)
    act = m.experts.act(gu[..., :FF]) * gu[..., FF:]
    ys = torch.einsum("nef,edf->ned", act, m.experts.down_proj)  # (N, E, D)
    return torch.einsum("ne,ned->nd", gates.to(x.dtype), ys)


def grads(m, x, fn):
    m.zero_grad()
    x = x.clone().requires_grad_(True)
    y = fn(m, x)
    (y * torch.linspace(-1, 1, y.numel()).view_as(y)).sum().backward()
    return [y.detach(), x.grad] + [p.grad.clone() for p in m.parameters()]


@pytest.mark.parametrize("k,renormalize,capacity_factor", [
    (2, True, None), (1, False, None), (3, False, None), (2, True, 0.5), (1, False, 0.75), (3, True, 0.3)])
def test_sorted_dispatch_equals_dense_reference(k, renormalize, capacity_factor):
    m = moe(k, renormalize, capacity_factor=capacity_factor).train()
    x = torch.randn(23, D)
    ours = grads(m, x, lambda m, x: m(x))
    ref = grads(m, x, dense_reference)
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
    if capacity_factor is not None:  # the case drops something (else it tests nothing new)
        with record_routing(m) as routing:
            m(x)
        assert not routing[0].kept.all()


def test_batched_input_and_eval_capacity():
    m = moe(2, capacity_factor=0.5, eval_capacity_factor=None)
    x = torch.randn(3, 7, D)
    with record_routing(m) as routing:
        y_train = m.train()(x)
        y_eval = m.eval()(x)
    assert routing[0].kept.sum() < routing[0].kept.numel() and routing[1].kept.all()  # eval: dropless
    torch.testing.assert_close(y_train, dense_reference(m.train(), x.view(-1, D)).view_as(x))
    torch.testing.assert_close(y_eval, dense_reference(m.eval(), x.view(-1, D)).view_as(x))
    assert not torch.allclose(y_train, y_eval)


def test_capacity_drops_by_priority_order_on_a_constructed_case():
    """Every token prefers expert 0, then expert 1: with C = 3, expert 0 keeps tokens 0–2 (first
    choices, in order) and drops the rest; expert 1 serves its second choices until full."""
    m = moe(2, capacity_factor=1.25)  # C = ⌈1.25 · 6 · 2 / 5⌉ = 3
    with torch.no_grad():
        m.router.weight.zero_()
        m.router.weight[0, 0], m.router.weight[1, 0] = 2.0, 1.0  # logits ∝ x_0: expert 0 > 1 > others
    x = torch.randn(6, D)
    x[:, 0] = torch.arange(1.0, 7.0)  # positive: every token picks (0, 1)
    assert m.router.capacity(6) == expert_capacity(1.25, 6, 2, E) == 3
    with record_routing(m) as routing:
        y = m.train()(x)
    r = routing[0]
    assert r.picks.tolist() == [[0, 1]] * 6
    assert r.kept.tolist() == [[True, True]] * 3 + [[False, False]] * 3  # expert 1 too: 3 second choices
    torch.testing.assert_close(y[3:], torch.zeros(3, D))  # dropped rows add exactly nothing
    assert not y[:3].eq(0).all(dim=1).any()
    # a capacity of N·k or more changes nothing
    m.router.capacity_factor = float(E)  # C = 12 = N·k
    y_full = m(x)
    m.router.capacity_factor = None
    assert torch.equal(y_full, m(x))


def test_capacity_prefers_every_first_choice_to_any_second():
    """Token 0's second choice is expert 0; tokens 1–2 pick expert 0 first: with C = 2 they are
    served before token 0's second choice, which is dropped."""
    torch.manual_seed(0)
    picks = torch.tensor([[1, 0], [0, 2], [0, 3]])
    assert priority_kept(picks, 2).tolist() == [[True, False], [True, True], [True, True]]
    m = moe(2)
    m.router.capacity_factor = 1.0  # C = ⌈6 / 5⌉ = 2
    assert m.router._kept(picks).tolist() == [[True, False], [True, True], [True, True]]


def test_jitter_touches_the_router_input_only_in_training():
    m = moe(2, jitter=0.2)
    x = torch.randn(9, D)
    torch.testing.assert_close(m.eval()(x), dense_reference(m, x))  # no noise at evaluation
    torch.manual_seed(5)
    with record_routing(m) as routing:
        y = m.train()(x)
    torch.manual_seed(5)
    noisy = x * torch.empty_like(x).uniform_(0.8, 1.2)
    torch.testing.assert_close(routing[0].logits, noisy @ m.router.weight.t())
    # the experts see the clean input: combine the recorded routing with the dense experts on x
    gates = torch.zeros(9, E).scatter_add(1, routing[0].picks, routing[0].weights)
    ref = torch.einsum("ne,ned->nd", gates, torch.stack([m.experts.expert(e, x) for e in range(E)], 1))
    torch.testing.assert_close(y, ref)


def test_renormalised_topk_is_softmax_over_the_topk_logits():
    m = moe(2)
    x = torch.randn(30, D)
    r = m.router(x)
    top, idx = r.logits.topk(2, dim=-1)
    assert torch.equal(idx, r.picks)
    torch.testing.assert_close(r.weights, top.softmax(-1), atol=1e-6, rtol=0)
    assert r.logits.dtype == torch.float32 and r.picks.shape == (30, 2)


@pytest.mark.parametrize("capacity_factor", [None, 0.6])
def test_gradcheck_fp64(capacity_factor):
    m = moe(2, dtype=torch.float64, capacity_factor=capacity_factor).train()
    x = torch.randn(7, D, dtype=torch.float64, requires_grad=True)
    names = [n for n, _ in m.named_parameters()]

    def f(x, *ps):  # the routing stays fixed under gradcheck's small steps
        return torch.func.functional_call(m, dict(zip(names, ps)), (x,))

    ps = [p.detach().clone().requires_grad_(True) for p in m.parameters()]
    assert torch.autograd.gradcheck(f, (x, *ps), eps=1e-6, atol=1e-6)


# ---- losses -----------------------------------------------------------------------------------
def routing_of(logits: torch.Tensor, k: int) -> Routing:
    w, picks = logits.softmax(-1).topk(k, dim=-1)
    return Routing(logits, picks, w, torch.ones_like(picks, dtype=torch.bool))


@pytest.mark.parametrize("k", [1, 2])
def test_uniform_router_balance_losses(k):
    zeros = [routing_of(torch.zeros(16, 8), k) for _ in range(3)]
    assert switch_balance_loss(zeros).item() == 1.0  # exactly, whatever the ties picked
    assert mixtral_balance_loss(zeros).item() == pytest.approx(k, abs=1e-6)
    assert router_z_loss(zeros).item() == pytest.approx(math.log(8) ** 2, rel=1e-6)
    skewed = [routing_of(torch.randn(16, 8) * 3, k) for _ in range(3)]
    assert switch_balance_loss(skewed).item() > 1.0


def test_switch_loss_by_hand_and_its_gradient_flows_through_p_only():
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0], [3.0, 0.0, 1.0], [0.0, 0.0, 0.5]], requires_grad=True)
    r = routing_of(logits, 1)
    f = torch.tensor([2, 1, 1]) / 4
    p = logits.softmax(-1).mean(0)
    torch.testing.assert_close(switch_balance_loss([r]), 3 * (f * p).sum())
    torch.testing.assert_close(router_z_loss([r]), torch.logsumexp(logits, -1).square().mean())
    switch_balance_loss([r]).backward()
    assert logits.grad.abs().sum() > 0


@pytest.mark.parametrize("k", [1, 2, 3])
def test_mixtral_loss_equals_transformers(k):
    from transformers.models.mixtral.modeling_mixtral import load_balancing_loss_func
    torch.manual_seed(k)
    logits = [torch.randn(20, 6) * 2 for _ in range(3)]
    ours = mixtral_balance_loss([routing_of(z, k) for z in logits])
    theirs = load_balancing_loss_func(tuple(logits), num_experts=6, top_k=k)
    torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=1e-6)


def test_router_losses_and_metrics():
    torch.manual_seed(0)
    rs = [routing_of(torch.randn(10, 4), 2) for _ in range(2)]
    rs[1] = rs[1]._replace(kept=torch.tensor([[True, False]] * 10))
    total, m = router_losses(rs, "switch", 0.1, 0.01)
    torch.testing.assert_close(total, 0.1 * switch_balance_loss(rs) + 0.01 * router_z_loss(rs))
    assert set(m) == {"router_aux", "router_z"}
    total, m = router_losses(rs, "none", 0.1, 0.01)
    torch.testing.assert_close(total, 0.01 * router_z_loss(rs))
    assert set(m) == {"router_z"}
    with pytest.raises(ValueError, match="router aux loss 'gshard'"):
        router_losses(rs, "gshard", 0.1, 0.0)
    logs = routing_metrics(rs)
    loads = torch.stack([logs[f"moe_load_e{i}"] for i in range(4)])
    torch.testing.assert_close(loads.sum(), torch.tensor(1.0))
    assert logs["moe_dropped"].item() == pytest.approx(10 / 40)
    assert logs["moe_load_cv"].item() > 0
    balanced = [Routing(torch.zeros(4, 4), torch.tensor([[0, 1], [2, 3], [1, 0], [3, 2]]), torch.ones(4, 2),
                        torch.ones(4, 2, dtype=torch.bool))]
    assert routing_metrics(balanced)["moe_load_cv"].item() == 0.0


# ---- config, model, counts ---------------------------------------------------------------------
TINY = dict(vocab_size=64, d_model=32, n_layers=4, n_heads=4, n_kv_heads=2, d_ff=48, max_seq_len=32)


@pytest.mark.parametrize("bad,match", [
    (dict(experts_per_token=1), r"model\.router_renormalize=true with model\.experts_per_token=1.*no gradient"),
    (dict(experts_per_token=5), r"model\.experts_per_token=5 must be <= model\.n_experts=4"),
    (dict(capacity_factor=0.0), r"model\.capacity_factor=0\.0 must be > 0"),
    (dict(eval_capacity_factor=-1.0), r"model\.eval_capacity_factor=-1\.0 must be > 0"),
    (dict(router_jitter=1.0), r"model\.router_jitter=1\.0 must be in \[0, 1\)"),
    (dict(moe_every=0), r"model\.moe_every=0 must be a positive integer"),
    (dict(moe_every=5), r"model\.moe_every=5 exceeds model\.n_layers=4"),
    (dict(expert_d_ff=0), r"model\.expert_d_ff=0 must be a positive integer"),
    (dict(mlp="gelu"), r"model\.mlp='gelu': experts .* are gated MLPs"),
    (dict(mlp_bias=True), r"model\.mlp_bias=true: experts .* have no biases"),
    (dict(n_experts=-1), r"model\.n_experts=-1 must be >= 0"),
    (dict(capacity_factor="x"), r"model\.capacity_factor='x' must be a number or null"),
])
def test_config_errors_name_the_field(bad, match):
    with pytest.raises(ConfigError, match=match):
        preset("llama-tiny", **{**TINY, "n_experts": 4, **bad})


def test_moe_fields_belong_to_decoders():
    with pytest.raises(ConfigError, match=r"model\.n_experts=4 means nothing for family='encoder'"):
        preset("bert-tiny", n_experts=4)
    preset("llama-tiny", **TINY, experts_per_token=1, router_renormalize=True)  # dense: k is not read
    preset("llama-tiny", **TINY, n_experts=4, experts_per_token=1, router_renormalize=False)  # Switch


@pytest.mark.parametrize("moe_every,expert_d_ff", [(1, None), (2, 24)])
def test_model_layers_counts_and_init(moe_every, expert_d_ff):
    cfg = preset("llama-tiny", **TINY, n_experts=4, moe_every=moe_every, expert_d_ff=expert_d_ff)
    torch.manual_seed(0)
    model = genmodels.build_model(cfg)
    kinds = [type(b.mlp).__name__ for b in model.blocks]
    assert kinds == ["SparseMoE" if (i + 1) % moe_every == 0 else "GatedMLP" for i in range(4)]
    assert parameter_count(cfg) == count_parameters(model)
    f = cfg.expert_width
    dense = preset("llama-tiny", **TINY)
    n_moe = 4 // moe_every
    # MFU counts the router and the k ACTIVE experts, not all E
    assert matmul_parameters(cfg) - matmul_parameters(dense) == n_moe * (32 * 4 + 2 * 3 * 32 * f - 3 * 32 * 48)
    sd = model.state_dict()
    assert sd["blocks.%d.mlp.router.weight" % (moe_every - 1)].shape == (4, 32)
    assert sd["blocks.%d.mlp.experts.gate_up_proj" % (moe_every - 1)].shape == (4, 2 * f, 32)
    assert sd["blocks.%d.mlp.experts.down_proj" % (moe_every - 1)].shape == (4, 32, f)
    down = model.blocks[moe_every - 1].mlp.experts.down_proj
    assert any(p is down for p in model.residual_output_weights())  # GPT-2's 1/√(2L) init reaches it
    assert down.std().item() == pytest.approx(0.02 / math.sqrt(8), rel=0.15)


def test_record_routing_per_layer_and_nothing_after():
    cfg = preset("llama-tiny", **TINY, n_experts=4, moe_every=2)
    model = genmodels.build_model(cfg)
    ids = torch.randint(0, 64, (2, 8))
    with record_routing(model) as routing:
        h = model.hidden_states(ids)
    assert len(routing) == 2 and routing[0].logits.shape == (16, 4) and routing[0].picks.shape == (16, 2)
    model.hidden_states(ids)
    assert len(routing) == 2  # the hooks are gone
    with record_routing(genmodels.build_model(preset("llama-tiny", **TINY))) as none:
        pass
    assert none == []
    assert h.shape == (2, 8, 32)


def test_mixtral_8x7b_sized_counts():
    """Mixtral 8x7B's published sizes: 46.7B parameters, 12.9B active per token."""
    from genmodels.models.flops import active_parameter_count
    cfg = preset("mistral-7b", n_experts=8, experts_per_token=2, sliding_window=None, max_seq_len=32768,
                 rope_theta=1e6)
    assert round(parameter_count(cfg) / 1e9, 1) == 46.7
    assert round(active_parameter_count(cfg) / 1e9, 1) == 12.9
    dense = preset("llama-tiny", **TINY)
    assert active_parameter_count(dense) == parameter_count(dense)
