"""The sampling fast path (models/diffusion/fast.py) computes the function of the module forward (the
definition): FastUNet equal to ``UNet2D.forward`` with every parameter randomised, over the layouts (three
levels, attention at one, the DDPM padding-0 / full-width-head layout, classes), batch 1 and 3, one or
per-sample timesteps and labels (folded and unfolded time projections), with and without oneDNN; it
repacks after the weights change, refuses training mode, and its attention equals PyTorch's."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import genmodels
from genmodels.models.diffusion.fast import FastUNet, attention_by_sample, onednn_available
from tests.helpers.tiny import randomise

TOL = dict(atol=2e-5, rtol=1e-5)
LAYOUTS = {
    # three levels, attention at the middle one and in the mid block, 4 heads of 8, 5 classes + null
    "odd": dict(image_size=8, in_channels=3, out_channels=2, block_out_channels=[16, 32, 24], layers_per_block=2,
                attention_levels=[1], mid_attention=True, attention_head_dim=8, norm_num_groups=8, num_classes=5,
                null_class=True),
    # the original DDPM layout: padding-0 downsampling, [sin, cos] with shift 1, one full-width head
    "ddpm": dict(image_size=8, in_channels=1, block_out_channels=[16, 32], layers_per_block=1, attention_levels=[0],
                 mid_attention=False, attention_head_dim=None, norm_num_groups=8, norm_eps=1e-6,
                 downsample_padding=0, flip_sin_to_cos=False, freq_shift=1, num_classes=0, null_class=False),
}
ONEDNN = [True, False] if onednn_available() else [False]


def _model(layout: str, seed: int = 0, **overrides):
    cfg = genmodels.preset("unet-digits", **{**LAYOUTS[layout], **overrides})
    return randomise(genmodels.build_model(cfg), seed=seed).eval()


def _inputs(model, batch: int, seed: int = 1):
    c = model.config
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, c.in_channels, c.image_size, c.image_size, generator=g)
    y = torch.randint(0, c.label_rows, (batch,), generator=g) if c.num_classes else None
    return x, y


@pytest.mark.parametrize("onednn", ONEDNN)
@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("batch", [1, 3])
def test_fast_path_equals_the_module_forward(layout, batch, onednn):
    model = _model(layout)
    fast = FastUNet(model, onednn=onednn)
    x, y = _inputs(model, batch)
    same_y = None if y is None else torch.full_like(y, 2)
    cases = [(500, same_y),                              # one conditioning: W_t·τ folded into conv1's bias
             (torch.arange(batch) * 300 + 7, y),         # per-sample timesteps and labels
             (torch.tensor(999), y)]
    with torch.no_grad():
        for t, labels in cases:
            got = fast(x, t, labels)
            assert got.shape == (batch, model.config.output_channels, 8, 8) and got.is_contiguous()
            torch.testing.assert_close(got, model(x, t, labels), **TOL)


def test_a_sampling_loop_with_the_fast_path_equals_the_module_loop():
    """DDIM-10 through FastUNet ends where the module loop ends (the fast path is what samplers run)."""
    from genmodels.schedulers import DDIMScheduler
    model = _model("odd", seed=3, out_channels=None)  # ε has the sample's channels
    fast = FastUNet(model)
    x0, y = _inputs(model, 2, seed=4)
    ends = []
    for denoise in (fast, model):
        s = DDIMScheduler(clip_sample=False)
        s.set_timesteps(10)
        x = x0
        with torch.no_grad():
            for t in s.timesteps:
                x = s.step(denoise(x, t, y), t, x).prev_sample
        ends.append(x)
    torch.testing.assert_close(ends[0], ends[1], atol=1e-4, rtol=1e-4)


def test_weights_changed_after_packing_are_used():
    """An in-place update (optimizer step, copy_), load_state_dict or a new tensor: the next call repacks."""
    model = _model("odd")
    fast = FastUNet(model)
    x, y = _inputs(model, 2)
    fast(x, 10, y)  # packs
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(0.9).add_(0.01)  # every conv weight and time projection changes in place
        torch.testing.assert_close(fast(x, 10, y), model(x, 10, y), **TOL)
        other = _model("odd", seed=7)
        model.load_state_dict(other.state_dict())
        torch.testing.assert_close(fast(x, 10, y), other(x, 10, y), **TOL)
        model.conv_out.weight = torch.nn.Parameter(torch.randn_like(model.conv_out.weight))
        out = model(x, 10, y)  # a unit-variance conv_out makes outputs of ~5: rounding scales with them
        torch.testing.assert_close(fast(x, 10, y), out, atol=TOL["atol"] * out.abs().max().item(), rtol=TOL["rtol"])


def test_refusals_name_the_problem():
    model = _model("odd")
    fast = FastUNet(model)
    x, y = _inputs(model, 2)
    model.train()
    with pytest.raises(ValueError, match=r"model.eval\(\)"):
        fast(x, 10, y)
    model.eval()
    with pytest.raises(ValueError, match="class_labels is required"):
        fast(x, 10)
    with pytest.raises(ValueError, match="channels"):
        fast(x[:, :1], 10, y)
    dit = genmodels.build_model(genmodels.preset("dit-digits"))
    with pytest.raises(TypeError, match="UNet2D"):
        FastUNet(dit)


@pytest.mark.parametrize("heads, t, d", [(4, 16, 8), (1, 64, 32), (2, 7, 4)])
def test_attention_by_sample_equals_sdpa(heads, t, d):
    g = torch.Generator().manual_seed(heads + t)
    q, k, v = (torch.randn(3, heads, t, d, generator=g) for _ in range(3))
    work: dict = {}
    for scale in (d ** -0.5, 0.3):
        got = attention_by_sample(q, k, v, scale, work)  # (B, T, heads·d); buffers reused on the 2nd call
        want = F.scaled_dot_product_attention(q, k, v, scale=scale).transpose(1, 2).reshape(3, t, heads * d)
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)
