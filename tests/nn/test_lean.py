"""Memory-lean autograd (nn/lean.py, attention's own v): the plain autograd's values and gradients bit for
bit, with fewer bytes kept for the backward."""
from __future__ import annotations

import pytest
import torch

from genmodels.nn import AttentionInputs, GatedMLP, SelfAttention
from genmodels.nn.lean import GatedProduct, gated_product
from genmodels.nn.mlp import ACTIVATIONS
from genmodels.nn.position import RotaryEmbedding


def saved_bytes(fn, module: torch.nn.Module | None = None) -> int:
    """Bytes of the distinct storages autograd keeps for the backward of ``fn()``, ``module``'s parameters
    (kept anyway) left out."""
    seen: dict[int, int] = {}
    params = {p.untyped_storage().data_ptr() for p in module.parameters()} if module is not None else set()

    def pack(t):
        if t.untyped_storage().data_ptr() not in params:
            seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    del out
    return sum(seen.values())


def plain(gate_up: torch.Tensor, d_ff: int, act) -> torch.Tensor:
    gate, up = gate_up.split(d_ff, dim=-1)
    return act(gate) * up


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("act", ["silu", "gelu", "gelu_tanh"])
def test_gated_product_equals_the_plain_autograd_bit_for_bit(act, dtype):
    torch.manual_seed(0)
    u = torch.randn(2, 5, 2 * 24, dtype=dtype, requires_grad=True)
    g = torch.randn(2, 5, 24, dtype=dtype)
    f = ACTIVATIONS[act]
    y0 = plain(u, 24, f)
    (d0,) = torch.autograd.grad(y0, u, g)
    y1 = GatedProduct.apply(u, 24, f)
    (d1,) = torch.autograd.grad(y1, u, g)
    assert torch.equal(y0, y1) and torch.equal(d0, d1)
    with torch.no_grad():  # no autograd: the plain product
        assert torch.equal(gated_product(u, 24, f), y0)


def test_gated_product_keeps_only_gate_up():
    u = torch.randn(4, 64, 2 * 128, requires_grad=True)
    f = ACTIVATIONS["silu"]
    lean, old = saved_bytes(lambda: gated_product(u * 1, 128, f)), saved_bytes(lambda: plain(u * 1, 128, f))
    assert lean == u.numel() * 4  # gate_up alone
    assert old == lean + u.numel() * 4 // 2  # the plain autograd also keeps act(gate)


def test_gated_mlp_step_unchanged_and_leaner():
    torch.manual_seed(0)
    mlp = GatedMLP(32, 48)
    x = torch.randn(2, 7, 32, requires_grad=True)
    y = mlp(x)
    grads = torch.autograd.grad(y.square().sum(), [x, *mlp.parameters()])
    gate, up = mlp.gate_up(x).split(48, dim=-1)
    y0 = mlp.down(mlp.act(gate) * up)
    grads0 = torch.autograd.grad(y0.square().sum(), [x, *mlp.parameters()])
    assert torch.equal(y, y0) and all(torch.equal(a, b) for a, b in zip(grads, grads0))
    mlp.requires_grad_(False)  # a frozen base (LoRA): the backward needs gate_up's output only
    assert saved_bytes(lambda: mlp(x), mlp) == 2 * 7 * 2 * 48 * 4


def test_rotary_attention_keeps_v_alone_not_the_whole_qkv():
    """With RoPE, q and k are new tensors; v, a view, kept the whole qkv output alive for the backward."""
    torch.manual_seed(0)
    attn = SelfAttention(64, 4, 2, 16).requires_grad_(False)  # a frozen base (LoRA): no weight gradients
    rope = RotaryEmbedding(16)
    x = torch.randn(2, 32, 64, requires_grad=True)
    ctx = AttentionInputs(is_causal=True, rope=rope(torch.arange(32)[None].expand(2, 32), x.dtype))
    kept = saved_bytes(lambda: attn(x, ctx), attn) // 4  # floats
    cos_sin, q_k, v, lse, out = 2 * 2 * 32 * 16, 2 * 32 * (4 + 2) * 16, 2 * 32 * 2 * 16, 2 * 4 * 32, 2 * 32 * 4 * 16
    assert kept == cos_sin + q_k + v + lse + out  # (the view of v kept all of qkv: 2·32·(4+2·2)·16)
    y = attn(x, ctx)
    (g,) = torch.autograd.grad(y.square().sum(), x)
    with torch.no_grad():
        assert torch.equal(attn(x, ctx), y)  # the copy changes no value
    assert torch.isfinite(g).all()


def test_lora_adapter_gradients_equal_the_reference_path(monkeypatch):
    """A LoRA step on a tiny Llama: adapter gradients through the lean paths equal those through the plain
    autograd (the reference path: GatedMLP's plain product, attention's v a view) — bit for bit (≤ 1e-6 asked)."""
    import genmodels
    import genmodels.lora as lora
    from genmodels.nn import attention, mlp
    from genmodels.objectives import CausalLM

    torch.manual_seed(0)
    model = genmodels.build_model(genmodels.preset("llama-tiny", vocab_size=128, d_model=64, n_layers=2, n_heads=4,
                                                   n_kv_heads=2, d_ff=96, max_seq_len=64))
    lora.apply(model, targets="all-linear", r=4, alpha=8)
    for _, p in lora.trainable_parameters(model):
        torch.nn.init.normal_(p, std=0.1)  # B too: every adapter carries gradient
    x = torch.randint(0, 128, (2, 33))
    feed = {"input_ids": x[:, :-1], "labels": x[:, 1:]}
    params = [p for _, p in lora.trainable_parameters(model)]

    def grads():
        return torch.autograd.grad(CausalLM(model, chunk=16).train()(feed)[0], params)
    fast = grads()
    monkeypatch.setattr(mlp, "gated_product", plain)
    monkeypatch.setattr(attention, "_own", lambda v: v)
    reference = grads()
    for f, r in zip(fast, reference):
        assert torch.equal(f, r)
