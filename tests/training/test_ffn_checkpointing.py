"""``train.activation_checkpointing: ffn`` — recompute each block's feed-forward branch: the same loss and
gradients as ``none`` bit for bit (LoRA adapters and full training, dropout in the branch), the gated MLP's
``gate_up`` no longer kept, and a block without a feed-forward branch refused in one line."""
from __future__ import annotations

import pytest
import torch

import genmodels
import genmodels.lora as lora
from genmodels.objectives import CausalLM
from genmodels.training.memory import apply_activation_checkpointing, transformer_blocks
from tests.nn.test_lean import saved_bytes

CFG = dict(vocab_size=97, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=48, max_seq_len=32)


def pair(adapters: bool, dropout: float = 0.0):
    """Two equal tiny Llamas (LoRA q,v adapters with non-zero B, or every parameter trained); the second
    checkpoints its feed-forward branches."""
    torch.manual_seed(0)
    models = [genmodels.build_model(genmodels.preset("llama-tiny", dropout=dropout, **CFG)) for _ in range(2)]
    models[1].load_state_dict(models[0].state_dict())
    if adapters:
        for m in models:
            torch.manual_seed(1)
            lora.apply(m, targets="q,v", r=4, alpha=8)
            for _, p in lora.trainable_parameters(m):
                torch.nn.init.normal_(p, std=0.1)
    apply_activation_checkpointing(transformer_blocks(models[1]), "ffn")
    return models


@pytest.mark.parametrize("adapters,dropout", [(True, 0.0), (False, 0.0), (False, 0.2)], ids=["lora", "full", "dropout"])
def test_ffn_checkpointing_gives_identical_loss_and_gradients(adapters, dropout):
    x = torch.randint(0, 97, (2, 17))
    feed = {"input_ids": x[:, :-1], "labels": x[:, 1:]}
    out = []
    for m in pair(adapters, dropout):
        params = [p for p in m.parameters() if p.requires_grad]
        torch.manual_seed(2)
        loss = CausalLM(m, chunk=8).train()(feed)[0]
        out.append((loss, torch.autograd.grad(loss, params)))
    (a, ga), (b, gb) = out
    assert torch.equal(a, b) and len(ga) == len(gb) and all(torch.equal(p, q) for p, q in zip(ga, gb))


def test_ffn_checkpointing_of_retnet_blocks_gives_identical_gradients():
    torch.manual_seed(0)
    cfg = genmodels.preset("retnet-tiny", vocab_size=97, d_model=32, n_layers=2, n_heads=2, d_ff=48)
    models = [genmodels.build_model(cfg) for _ in range(2)]
    models[1].load_state_dict(models[0].state_dict())
    apply_activation_checkpointing(transformer_blocks(models[1]), "ffn")
    x = torch.randint(0, 97, (2, 17))
    feed = {"input_ids": x[:, :-1], "labels": x[:, 1:]}
    out = []
    for m in models:
        loss = CausalLM(m, chunk=8).train()(feed)[0]
        out.append((loss, torch.autograd.grad(loss, list(m.parameters()))))
    assert torch.equal(out[0][0], out[1][0]) and all(torch.equal(a, b) for a, b in zip(out[0][1], out[1][1]))


def test_ffn_checkpointing_drops_the_gate_up_output():
    """What autograd keeps drops by at least the gated MLP's gate_up output (2·d_ff floats per token and layer).
    (The hook sees tensors saved outside the checkpoints; the branch's input that a checkpoint keeps is the
    residual stream, which ``none``'s norm keeps too.)"""
    plain, ckpt = pair(adapters=True)
    x = torch.randint(0, 97, (2, 16))
    feed = {"input_ids": x, "labels": x}
    kept = [saved_bytes(lambda m=m: CausalLM(m, chunk=8).train()(feed)[0], m) for m in (plain, ckpt)]
    gate_up = 2 * 16 * 2 * CFG["d_ff"] * CFG["n_layers"] * 4  # batch × tokens × 2F floats × layers × 4 bytes
    assert kept[1] <= kept[0] - gate_up


@pytest.mark.parametrize("adapters", [True, False], ids=["lora", "full"])
def test_ffn_recomputation_runs_gate_up_not_the_down_projection(adapters):
    """The backward recomputes each block's ``gate_up`` product once and never its ``down`` product (whose saved
    tensors, its weight, are kept as they are: nothing to recompute for)."""
    _, model = pair(adapters)
    calls = {"gate_up": 0, "down": 0}
    for block in transformer_blocks(model):
        for name in calls:
            getattr(block.mlp, name).register_forward_pre_hook(lambda *_, n=name: calls.__setitem__(n, calls[n] + 1))
    x = torch.randint(0, 97, (2, 17))
    loss = CausalLM(model, chunk=8).train()({"input_ids": x[:, :-1], "labels": x[:, 1:]})[0]
    assert calls == {"gate_up": CFG["n_layers"], "down": CFG["n_layers"]}
    loss.backward()
    assert calls == {"gate_up": 2 * CFG["n_layers"], "down": CFG["n_layers"]}


def test_ffn_checkpointing_refuses_a_block_without_a_feed_forward_branch():
    with pytest.raises(ValueError, match=r"^train\.activation_checkpointing=ffn: a Linear block has no feed-forward"):
        apply_activation_checkpointing([torch.nn.Linear(2, 2)], "ffn")


def test_ffn_is_a_mode_the_config_accepts():
    from genmodels.training import TrainConfig
    from genmodels.training.config import CHECKPOINTING
    assert "ffn" in CHECKPOINTING and TrainConfig(activation_checkpointing="ffn").activation_checkpointing == "ffn"


def test_bench_finetune_offers_every_mode(monkeypatch):
    """benchmarks/bench_finetune.py keeps a light copy of the modes (its sides import nothing before measuring)."""
    import importlib.util
    from pathlib import Path

    from genmodels.training.memory import MODES
    folder = Path(__file__).resolve().parents[2] / "benchmarks"
    monkeypatch.syspath_prepend(str(folder))
    spec = importlib.util.spec_from_file_location("bench_finetune_under_test", folder / "bench_finetune.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.CHECKPOINTING == MODES


def test_fused_head_loss_gradient_at_unit_scale_is_the_saved_one_bit_for_bit():
    """``loss.backward()`` (incoming gradient 1) returns the gradients the forward computed without a multiply pass;
    twice through a retained graph (the tied weight's gradients summed) they add up as before."""
    from genmodels.objectives.losses import fused_linear_cross_entropy
    torch.manual_seed(0)
    h = torch.randn(2, 7, 16, requires_grad=True)
    w = torch.randn(50, 16, requires_grad=True)
    y = torch.randint(0, 50, (2, 7))
    ref = torch.autograd.grad(fused_linear_cross_entropy(h, w, None, y, chunk=5) * torch.tensor(1.0).clone(), [h, w])
    tied = w * 1.0  # a second use of w, as a tied embedding: the engine sums both gradients
    loss = fused_linear_cross_entropy(h, w, None, y, chunk=5) + tied.sum() * 0
    loss.backward(retain_graph=True)
    first = [h.grad.clone(), w.grad.clone()]
    loss.backward()
    assert all(torch.equal(a, b) for a, b in zip(first, ref))
    assert torch.equal(h.grad, 2 * ref[0]) and torch.equal(w.grad, 2 * ref[1])


def test_head_gradient_products_cast_the_softmax_block_once_per_chunk():
    """Under bf16 autocast the head's gradient products take the (c, V) block cast to bf16 once (autocast would
    cast it for p and again for pᵀ)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from genmodels.objectives.losses import fused_linear_cross_entropy

    class Casts(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.blocks = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if func.overloadpacket is torch.ops.aten._to_copy and out.dtype == torch.bfloat16 and out.shape[-1] == 40:
                self.blocks += out.dim() == 2 and out.shape[0] <= 6  # a (c, V) block (the (V, D) head is 40 x 16)
            return out

    torch.manual_seed(0)
    h, w, y = torch.randn(12, 16, requires_grad=True), torch.randn(40, 16, requires_grad=True), torch.randint(0, 40, (12,))
    with torch.autocast("cpu", dtype=torch.bfloat16), Casts() as mode:
        fused_linear_cross_entropy(h, w, None, y, chunk=6)  # 2 chunks
    assert mode.blocks == 2
