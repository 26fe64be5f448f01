"""DiT (issue #12, deliverables 2 and 4): shapes, patchify / unpatchify, adaLN-Zero's identity at
initialisation (each block the identity, the model's output 0), and gradient flow: every parameter
receives a gradient within three optimiser steps (adaLN-Zero opens the path stage by stage)."""
from __future__ import annotations

import pytest
import torch

import genmodels
from genmodels.models.diffusion.dit import DiT
from genmodels.nn.patch import PatchEmbed, unpatchify
from tests.helpers.tiny import randomise


def _dit(**kw) -> DiT:
    torch.manual_seed(0)
    return genmodels.build_model(genmodels.preset("dit-digits", hidden_size=32, depth=2, num_heads=2, **kw))


def _x(b=3, c=1, size=8, seed=0):
    return torch.randn(b, c, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("kw,shape", [({}, (3, 1, 8, 8)), (dict(out_channels=2), (3, 2, 8, 8)),
                                      (dict(patch_size=4, in_channels=3, image_size=16), (3, 3, 16, 16)),
                                      (dict(num_classes=0), (3, 1, 8, 8))])
def test_output_shape(kw, shape):
    model = randomise(_dit(**kw)).eval()
    labels = torch.tensor([0, 3, 10]) if model.config.num_classes else None
    y = model(_x(c=model.config.in_channels, size=shape[2]), torch.tensor([1, 2, 3]), labels)
    assert y.shape == shape and torch.isfinite(y).all()
    assert model.pos.shape == (1, (shape[2] // model.config.patch_size) ** 2, 32)


def test_unpatchify_inverts_the_patch_layout():
    """A patch embedding that copies pixel (p, q, c) of each patch to channel (p·P + q)·C + c is undone by
    unpatchify: the token layout and the (p, q, c) order agree."""
    p, c = 2, 3
    embed = PatchEmbed(c, p * p * c, p)
    with torch.no_grad():
        embed.proj.bias.zero_()
        embed.proj.weight.zero_()
        for i in range(p):
            for j in range(p):
                for k in range(c):
                    embed.proj.weight[(i * p + j) * c + k, k, i, j] = 1.0
    x = torch.randn(2, c, 6, 4)  # a 3 × 2 patch grid
    torch.testing.assert_close(unpatchify(embed(x), p, c, (3, 2)), x, rtol=0, atol=0)


def test_adaln_zero_makes_each_block_the_identity_and_the_output_zero():
    model = _dit()
    x, t, labels = _x(), torch.tensor([3, 300, 999]), torch.tensor([1, 2, 10])
    with torch.no_grad():
        assert torch.equal(model(x, t, labels), torch.zeros(3, 1, 8, 8))
        tokens = model.patch(x) + model.pos
        c = model.time_embed(t) + model.class_embed(labels, 3)
        for block in model.blocks:
            assert torch.equal(block(tokens, c), tokens)
    # ... while the rest is not zero: the paper's initialisation
    assert model.patch.proj.weight.abs().sum() > 0 and model.blocks[0].attn.qkv.weight.abs().sum() > 0
    assert 0.01 < model.class_embed.weight.std() < 0.03 and 0.01 < model.time_embed.fc1.weight.std() < 0.03


def test_every_parameter_gets_a_gradient_within_three_steps():
    """Step 1: only the output linear gets a non-zero gradient (its weight is zero); once it moves, the
    modulations and patch embedding do (step 2), and once the gates move, attention and MLP (step 3)."""
    model = _dit()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, t, labels = _x(), torch.tensor([3, 300, 999]), torch.tensor([1, 2, 10])
    target = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    touched: set[str] = set()
    for step in range(3):
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x, t, labels), target).backward()
        got = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
        if step == 0:
            assert got == {"final.linear.weight", "final.linear.bias"}
        touched |= got
        opt.step()
    assert touched == {n for n, _ in model.named_parameters()}


@torch.no_grad()
def test_timestep_forms_and_inputs_are_checked():
    model = randomise(_dit()).eval()
    x, labels = _x(), torch.tensor([1, 2, 10])
    want = model(x, torch.tensor([7, 7, 7]), labels)
    for t in (7, torch.tensor(7), torch.tensor([7])):
        torch.testing.assert_close(model(x, t, labels), want, rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"sample is 16×16; this model takes image_size=8"):
        model(_x(size=16), 7, labels)
    with pytest.raises(ValueError, match=r"class_labels is required"):
        model(x, 7)
