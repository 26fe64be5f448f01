"""The native kernels read a model's weights in place, so they must refuse — with a reason, never an
exception — any part they do not know: a projection that is not a plain nn.Linear (an adapter, a
quantised linear) computes something its weight alone does not, and reading that weight would give
silently wrong results. (Issue #9, deliverable 5.)"""
from __future__ import annotations

import pytest
import torch
from torch import nn

import genmodels
from genmodels.native import decoder as native_decoder
from genmodels.native import encoder as native_encoder
from tests.helpers.native import native_built, skip_if_disabled  # noqa: F401  (autouse fixture)
from tests.helpers.tiny import random_ids, randomise, tiny_model

skip_if_disabled()


class ScaledLinear(nn.Linear):
    """A linear whose output differs from ``x @ weight.T + bias`` (as an adapter's or a dequantising
    linear's does), while still carrying a ``weight`` of the right shape."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 1.5 * super().forward(x)


def _wrap(linear: nn.Linear) -> ScaledLinear:
    w = ScaledLinear(linear.in_features, linear.out_features, bias=linear.bias is not None)
    w.load_state_dict(linear.state_dict())
    return w


def _greedy_by_forward(model, ids, n):
    for _ in range(n):
        ids = torch.cat([ids, model(ids)[:, -1].argmax(-1, keepdim=True)], dim=1)
    return ids


@pytest.mark.parametrize("part", ["attn.qkv", "attn.out", "mlp.gate_up", "mlp.down"])
def test_a_wrapped_decoder_projection_falls_back_with_the_reason(part):
    model = tiny_model("llama").eval()
    owner, name = part.split(".")
    block = model.blocks[1]
    setattr(getattr(block, owner), name, _wrap(getattr(getattr(block, owner), name)))
    reason = native_decoder.unsupported(model)
    assert reason is not None and part in reason and "ScaledLinear" in reason
    ids = random_ids(1, 5)
    out = genmodels.generate(model, ids, max_new_tokens=8)
    assert torch.equal(out, _greedy_by_forward(model, ids, 8))


def test_a_wrapped_t5_cross_attention_falls_back_with_the_reason():
    t5 = genmodels.build_model(genmodels.preset("t5-tiny", vocab_size=64, d_model=32, n_heads=2, head_dim=16,
                                                d_ff=64)).eval()
    t5.dec_blocks[0].cross.kv = _wrap(t5.dec_blocks[0].cross.kv)
    reason = native_decoder.unsupported(t5)
    assert reason is not None and "cross.kv" in reason


def test_a_wrapped_encoder_projection_falls_back_with_the_reason():
    bert = randomise(genmodels.build_model(genmodels.preset("bert-tiny", vocab_size=120))).eval()
    bert.blocks[0].attn.qkv = _wrap(bert.blocks[0].attn.qkv)
    reason = native_encoder.unsupported(bert)
    assert reason is not None and "attn.qkv" in reason
    assert native_encoder.native_encoder(bert) is None  # embed then runs model.encode


class Unknown(nn.Module):
    """A model of a class the kernels have never seen, claiming a family they serve."""
    family = "decoder"

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(3))


@pytest.mark.parametrize("check", [native_decoder.unsupported, native_encoder.unsupported], ids=["decoder", "encoder"])
def test_an_unknown_model_gets_a_reason_not_an_exception(check):
    model = Unknown()
    if check is native_encoder.unsupported:
        model.family = "encoder"
    reason = check(model)
    assert isinstance(reason, str) and reason
