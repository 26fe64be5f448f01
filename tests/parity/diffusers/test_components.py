"""The diffusion parts against diffusers 0.42.1's (issue #12): timestep sinusoid, resnet block, attention over
pixels, resamplers, DiT's 2-D sin-cos positions — every parameter randomised, float32, 1e-6 — and the FLOP
count of ``genmodels info`` against the same counter run on diffusers' UNet2DModel."""
from __future__ import annotations

import diffusers
import pytest
import torch
from diffusers.models.attention_processor import Attention
from diffusers.models.downsampling import Downsample2D as TheirDown
from diffusers.models.embeddings import get_2d_sincos_pos_embed, get_timestep_embedding
from diffusers.models.resnet import ResnetBlock2D as TheirResnet
from diffusers.models.upsampling import Upsample2D as TheirUp
from torch.utils.flop_counter import FlopCounterMode

import genmodels
from genmodels.interop.diffusers_unet import DiffusersUNetConverter
from genmodels.nn.conv import Downsample2D, ResnetBlock2D, Upsample2D
from genmodels.nn.patch import sincos_2d
from genmodels.nn.spatial_attention import SpatialSelfAttention
from genmodels.nn.timestep import timestep_embedding
from genmodels.registry import get_family
from tests.helpers.tiny import randomise

pytestmark = pytest.mark.parity
TOL = dict(atol=1e-6, rtol=1e-5)


def _x(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("dim", [32, 33, 256])
@pytest.mark.parametrize("flip,shift", [(True, 0), (False, 1)])
def test_timestep_embedding_is_diffusers(dim, flip, shift):
    t = torch.tensor([0, 1, 17, 999, 500])
    want = get_timestep_embedding(t, dim, flip_sin_to_cos=flip, downscale_freq_shift=shift)
    torch.testing.assert_close(timestep_embedding(t, dim, flip, shift), want, rtol=0, atol=0)
    tf = torch.tensor([0.5, 12.25])  # fractional timesteps
    torch.testing.assert_close(timestep_embedding(tf, dim, flip, shift),
                               get_timestep_embedding(tf, dim, flip_sin_to_cos=flip, downscale_freq_shift=shift),
                               rtol=0, atol=0)


@pytest.mark.parametrize("c_in,c_out", [(16, 16), (16, 24)])
def test_resnet_block_is_diffusers(c_in, c_out):
    theirs = randomise(TheirResnet(in_channels=c_in, out_channels=c_out, temb_channels=12, groups=4, eps=1e-5)).eval()
    ours = ResnetBlock2D(c_in, c_out, 12, 4, 1e-5).eval()
    sd = {k.replace("time_emb_proj", "time_proj").replace("conv_shortcut", "shortcut"): v
          for k, v in theirs.state_dict().items()}
    ours.load_state_dict(sd, strict=True)
    x, temb = _x(2, c_in, 6, 6), _x(2, 12, seed=1)
    torch.testing.assert_close(ours(x, torch.nn.functional.silu(temb)), theirs(x, temb), **TOL)


@pytest.mark.parametrize("channels,head_dim", [(16, 4), (24, 24)])
def test_spatial_attention_is_diffusers(channels, head_dim):
    theirs = randomise(Attention(channels, heads=channels // head_dim, dim_head=head_dim, eps=1e-5,
                                 norm_num_groups=4, residual_connection=True, bias=True, upcast_softmax=True,
                                 _from_deprecated_attn_block=True)).eval()
    ours = SpatialSelfAttention(channels, head_dim, 4, 1e-5).eval()
    sd = theirs.state_dict()
    ours.load_state_dict({"norm.weight": sd["group_norm.weight"], "norm.bias": sd["group_norm.bias"],
                          "attn.qkv.weight": torch.cat([sd[f"to_{p}.weight"] for p in "qkv"]),
                          "attn.qkv.bias": torch.cat([sd[f"to_{p}.bias"] for p in "qkv"]),
                          "attn.out.weight": sd["to_out.0.weight"], "attn.out.bias": sd["to_out.0.bias"]})
    x = _x(2, channels, 4, 5)  # H ≠ W: the token order is row-major either way
    torch.testing.assert_close(ours(x), theirs(x), **TOL)


@pytest.mark.parametrize("padding", [0, 1])
def test_resamplers_are_diffusers(padding):
    down_t = randomise(TheirDown(8, use_conv=True, out_channels=8, padding=padding, name="op"))
    down = Downsample2D(8, padding)
    down.load_state_dict(down_t.state_dict())
    up_t = randomise(TheirUp(8, use_conv=True, out_channels=8))
    up = Upsample2D(8)
    up.load_state_dict(up_t.state_dict())
    x = _x(2, 8, 6, 6)
    torch.testing.assert_close(down(x), down_t(x), **TOL)
    torch.testing.assert_close(up(x), up_t(x), **TOL)


@pytest.mark.parametrize("dim,grid", [(16, 4), (128, 4), (384, 16)])
def test_dit_positions_are_the_reference_sincos(dim, grid):
    """DiT's table (MAE's get_2d_sincos_pos_embed), as diffusers computes it with base_size = grid."""
    want = get_2d_sincos_pos_embed(dim, grid, base_size=grid)
    torch.testing.assert_close(sincos_2d(dim, grid), want.float(), **TOL)


@pytest.mark.parametrize("preset", ["unet-digits", "unet-ddpm-cifar10"])
def test_flops_per_image_equal_the_counter_on_diffusers(preset):
    cfg = genmodels.preset(preset)
    hf = {k: v for k, v in DiffusersUNetConverter().config_to_hf(cfg).items() if not k.startswith("_")}
    with torch.device("meta"):  # shapes only (on CPU the counter does not see the fused SDPA kernel)
        theirs = diffusers.UNet2DModel(**{**hf, "num_class_embeds": None})
        x = torch.zeros(1, cfg.in_channels, cfg.image_size, cfg.image_size)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        theirs(x, torch.tensor([3], device="meta"))
    assert get_family("diffusion").counts.forward_flops_per_image(cfg) == counter.get_total_flops()
