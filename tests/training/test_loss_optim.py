"""The fused, chunked head + cross-entropy equals the plain one (value and gradients); AdamW groups
and the schedule."""
from __future__ import annotations

import math

import pytest
import torch

from genmodels import build_model, preset
from genmodels.objectives import CausalLM
from genmodels.objectives.losses import fused_linear_cross_entropy, reference_cross_entropy
from genmodels.training import build_optimizer, lr_at, param_groups


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("chunk", [5, 7, 64])
def test_fused_cross_entropy_matches_reference(bias, chunk):
    torch.manual_seed(0)
    h = torch.randn(3, 7, 16, requires_grad=True)
    w = torch.randn(50, 16, requires_grad=True)
    b = torch.randn(50, requires_grad=True) if bias else None
    y = torch.randint(0, 50, (3, 7))
    ref = reference_cross_entropy(torch.nn.functional.linear(h, w, b), y)
    ref_grads = torch.autograd.grad(ref * 2.5, [h, w] + ([b] if bias else []))
    got = fused_linear_cross_entropy(h, w, b, y, chunk=chunk)
    grads = torch.autograd.grad(got * 2.5, [h, w] + ([b] if bias else []))
    torch.testing.assert_close(got, ref, atol=1e-6, rtol=1e-6)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, atol=1e-6, rtol=1e-5)
    with torch.no_grad():
        torch.testing.assert_close(fused_linear_cross_entropy(h, w, b, y, chunk=chunk), ref, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("amp", [False, True])
def test_fused_cross_entropy_with_ignored_targets(amp, monkeypatch):
    """Targets of −100 (a loss on replies only): value and gradients equal F.cross_entropy's (bf16 autocast:
    the same within bf16's rounding), and only the rows with a target reach the head."""
    import genmodels.objectives.losses as losses
    torch.manual_seed(0)
    h = torch.randn(3, 9, 16, requires_grad=True)
    w = torch.randn(50, 16, requires_grad=True)
    y = torch.randint(0, 50, (3, 9))
    y[0, :6] = y[1, 2:] = y[2, :] = -100  # 3 + 2 rows kept of 27
    logits = torch.nn.functional.linear(h, w)
    ref = torch.nn.functional.cross_entropy(logits.reshape(-1, 50), y.reshape(-1), ignore_index=-100)
    ref_grads = torch.autograd.grad(ref * 2.5, [h, w])
    rows = []
    apply = losses.FusedLinearCrossEntropy.apply
    monkeypatch.setattr(losses.FusedLinearCrossEntropy, "apply",
                        staticmethod(lambda h2, *a: rows.append(h2.shape[0]) or apply(h2, *a)))
    with torch.autocast("cpu", torch.bfloat16, enabled=amp):
        got = fused_linear_cross_entropy(h, w, None, y, chunk=4)
    grads = torch.autograd.grad(got * 2.5, [h, w])
    assert rows == [5]
    tol = dict(atol=3e-2, rtol=3e-2) if amp else dict(atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(got, ref, **tol)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, **tol)
    assert bool((grads[0][2] == 0).all()) and bool((grads[0][1, 2:] == 0).all())  # no target: no gradient


@pytest.mark.parametrize("amp", [False, True])
def test_no_target_at_all_gives_nan_and_zero_gradients(amp):
    """Every target −100: the loss is nan (as F.cross_entropy's mean), the gradients zero — never uninitialised
    memory (the bf16 head's weight gradient is filled by its first chunk, and no rows means no chunk)."""
    h = torch.randn(2, 3, 8, requires_grad=True)
    w = torch.randn(20, 8, requires_grad=True)
    with torch.autocast("cpu", torch.bfloat16, enabled=amp):
        loss = fused_linear_cross_entropy(h, w, None, torch.full((2, 3), -100), chunk=4)
    loss.backward()
    assert math.isnan(loss.item())
    assert bool((h.grad == 0).all()) and bool((w.grad == 0).all())


@pytest.mark.parametrize("name", ["llama-tiny", "gpt2-tiny"])
def test_causal_lm_loss_matches_logits_path(name):
    """Tied (GPT-2) and untied (Llama) heads: same loss and parameter gradients as model(x) + CE."""
    torch.manual_seed(0)
    model = build_model(preset(name, vocab_size=97, d_model=32, n_layers=2, n_heads=2, d_ff=64,
                               **({"n_kv_heads": 1} if name == "llama-tiny" else {})))
    x = torch.randint(0, 97, (2, 12))
    y = torch.randint(0, 97, (2, 12))
    ref = reference_cross_entropy(model(x), y)
    ref_g = torch.autograd.grad(ref, list(model.parameters()))
    got = CausalLM(model, chunk=5)({"input_ids": x, "labels": y})[0]
    got_g = torch.autograd.grad(got, list(model.parameters()))
    torch.testing.assert_close(got, ref, atol=1e-6, rtol=1e-6)
    for g, r in zip(got_g, ref_g):
        torch.testing.assert_close(g, r, atol=1e-6, rtol=1e-5)


def test_weight_decay_only_on_matrices():
    model = build_model(preset("gpt2-tiny", vocab_size=97, d_model=32, n_layers=1, n_heads=2, d_ff=64))
    decay, no_decay = param_groups(model, 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() >= 2 for p in decay["params"]) and all(p.dim() < 2 for p in no_decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))
    opt = build_optimizer(model, 1e-3, 0.1)
    assert isinstance(opt, torch.optim.AdamW)


def test_warmup_then_cosine():
    lrs = [lr_at(s, 1.0, 0.1, 10, 110) for s in range(120)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a < b for a, b in zip(lrs[:9], lrs[1:10]))  # rising
    assert all(a >= b for a, b in zip(lrs[10:110], lrs[11:111]))  # falling
    assert lrs[60] == pytest.approx(0.1 + 0.45 * (1 + math.cos(math.pi * 0.5)))
    assert lrs[110] == pytest.approx(0.1) and lrs[119] == pytest.approx(0.1)


@pytest.mark.parametrize("moe", [{}, {"n_experts": 4, "router_jitter": 0.1, "capacity_factor": 1.0}],
                         ids=["dense", "moe"])  # MoE: the routing, jitter and router losses recomputed alike
@pytest.mark.parametrize("mode", ["selective", "ffn", "full"])
def test_activation_checkpointing_gives_identical_gradients(mode, moe):
    from genmodels.objectives import build_objective
    from genmodels.training.memory import apply_activation_checkpointing
    cfg = preset("llama-tiny", vocab_size=97, d_model=32, n_layers=2, n_heads=2, n_kv_heads=1, d_ff=64, **moe)
    torch.manual_seed(0)
    ref = build_model(cfg)
    ckpt = build_model(cfg)
    ckpt.load_state_dict(ref.state_dict())
    apply_activation_checkpointing(ckpt.blocks, mode)
    x, y = torch.randint(0, 97, (2, 12)), torch.randint(0, 97, (2, 12))
    if moe:
        losses = [build_objective("causal", m, n_tokens=97, eos_id=0).train() for m in (ref, ckpt)]
        torch.manual_seed(1)
        a = losses[0]({"input_ids": x, "labels": y})[0]
        torch.manual_seed(1)
        b = losses[1]({"input_ids": x, "labels": y})[0]
    else:
        a, b = (CausalLM(m)({"input_ids": x, "labels": y})[0] for m in (ref, ckpt))
    ga = torch.autograd.grad(a, list(ref.parameters()))
    gb = torch.autograd.grad(b, list(ckpt.parameters()))
    assert torch.equal(a, b) and all(torch.equal(p, q) for p, q in zip(ga, gb))
    assert list(ckpt.state_dict()) == list(ref.state_dict())


def test_one_list_of_checkpointing_modes_and_no_sampling_fallback():
    from genmodels.training import config, memory, trainer
    assert memory.MODES is config.CHECKPOINTING
    assert not hasattr(trainer, "_simple_sample")  # genmodels.generate does the sampling
