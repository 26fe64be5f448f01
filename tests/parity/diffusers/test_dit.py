"""DiT against diffusers 0.42.1's DiTTransformer2DModel (issue #12): the same network once its per-block
copies of the timestep + label embedder hold the same weights (the paper's DiT shares one embedder;
diffusers' conversion script copies it into every block). Every parameter randomised, outputs at 1e-5.

diffusers' DiT embeds the timestep with ``downscale_freq_shift=1`` where the paper's code uses 0, so the
comparison sets ``freq_shift=1`` (our DiT presets keep the paper's 0)."""
from __future__ import annotations

import diffusers
import pytest
import torch

import genmodels
from tests.helpers.tiny import randomise

pytestmark = pytest.mark.parity


def _theirs(depth: int = 2, out_channels: int | None = None) -> diffusers.DiTTransformer2DModel:
    torch.manual_seed(0)
    model = randomise(diffusers.DiTTransformer2DModel(
        num_attention_heads=2, attention_head_dim=16, in_channels=1, out_channels=out_channels, num_layers=depth,
        sample_size=8, patch_size=2, num_embeds_ada_norm=10, norm_eps=1e-6)).eval()
    emb = model.transformer_blocks[0].norm1.emb.state_dict()
    for block in model.transformer_blocks[1:]:  # one shared embedder, as in the paper's DiT
        block.norm1.emb.load_state_dict(emb)
    return model


def _ours_from(theirs: diffusers.DiTTransformer2DModel, **kw):
    """Our DiT with diffusers' weights (the key map lives here: no diffusers DiT folders are read)."""
    c = theirs.config
    cfg = genmodels.preset("dit-digits", hidden_size=c.num_attention_heads * c.attention_head_dim,
                           num_heads=c.num_attention_heads, depth=c.num_layers, freq_shift=1, **kw)
    ours = genmodels.build_model(cfg).eval()
    sd = theirs.state_dict()
    emb = "transformer_blocks.0.norm1.emb."
    new = {"patch.proj.weight": sd["pos_embed.proj.weight"], "patch.proj.bias": sd["pos_embed.proj.bias"],
           "time_embed.fc1.weight": sd[emb + "timestep_embedder.linear_1.weight"],
           "time_embed.fc1.bias": sd[emb + "timestep_embedder.linear_1.bias"],
           "time_embed.fc2.weight": sd[emb + "timestep_embedder.linear_2.weight"],
           "time_embed.fc2.bias": sd[emb + "timestep_embedder.linear_2.bias"],
           "class_embed.weight": sd[emb + "class_embedder.embedding_table.weight"],
           "final.modulation.linear.weight": sd["proj_out_1.weight"],
           "final.modulation.linear.bias": sd["proj_out_1.bias"],
           "final.linear.weight": sd["proj_out_2.weight"], "final.linear.bias": sd["proj_out_2.bias"]}
    for i in range(c.num_layers):
        b = f"transformer_blocks.{i}."
        for part in ("weight", "bias"):
            new[f"blocks.{i}.attn.qkv.{part}"] = torch.cat([sd[f"{b}attn1.to_{p}.{part}"] for p in "qkv"])
            new[f"blocks.{i}.attn.out.{part}"] = sd[f"{b}attn1.to_out.0.{part}"]
            new[f"blocks.{i}.mlp.fc1.{part}"] = sd[f"{b}ff.net.0.proj.{part}"]
            new[f"blocks.{i}.mlp.fc2.{part}"] = sd[f"{b}ff.net.2.{part}"]
            new[f"blocks.{i}.modulation.linear.{part}"] = sd[f"{b}norm1.linear.{part}"]
    ours.load_state_dict(new, strict=True)
    return ours


@pytest.mark.parametrize("out_channels", [None, 2])
def test_dit_matches_diffusers(out_channels):
    theirs = _theirs(out_channels=out_channels)
    ours = _ours_from(theirs, out_channels=out_channels)
    g = torch.Generator().manual_seed(1)
    x, t = torch.randn(3, 1, 8, 8, generator=g), torch.tensor([0, 250, 999])
    y = torch.tensor([0, 7, 10])  # 10: the null class (diffusers' row for dropped labels)
    with torch.no_grad():
        want = theirs(x, timestep=t, class_labels=y).sample
        got = ours(x, t, y)
    assert got.shape == want.shape == (3, out_channels or 1, 8, 8)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
