"""DiffusionConfig (issue #12, deliverable 2): presets build, every bad value is a ConfigError naming the
field, fields of the other backbone are refused rather than ignored, and configs survive JSON."""
from __future__ import annotations

import pytest

import genmodels
from genmodels import ConfigError
from genmodels.models.diffusion import DiffusionConfig
from genmodels.registry import config_from_dict


@pytest.mark.parametrize("name", ["unet-digits", "dit-digits", "unet-ddpm-cifar10"])
def test_presets_round_trip_through_dicts(name):
    cfg = genmodels.preset(name)
    assert config_from_dict(cfg.to_dict()) == cfg


def test_the_null_class_is_the_label_after_the_classes():
    cfg = genmodels.preset("unet-digits")
    assert (cfg.num_classes, cfg.label_rows, cfg.null_label) == (10, 11, 10)
    cfg = cfg.replace(null_class=False)
    assert (cfg.label_rows, cfg.null_label) == (10, None)
    assert genmodels.preset("unet-ddpm-cifar10").label_rows == 0


@pytest.mark.parametrize("preset,kw,match", [
    ("unet-digits", dict(backbone="vae"), r"^model\.backbone='vae' is not allowed; choose one of unet, dit"),
    ("unet-digits", dict(patch_size=4), r"^model\.patch_size=4 means nothing for backbone='unet'; leave it at 2"),
    ("dit-digits", dict(layers_per_block=3), r"^model\.layers_per_block=3 means nothing for backbone='dit'"),
    ("unet-digits", dict(block_out_channels=[32, 40]), r"^model\.block_out_channels\[1\]=40 must be a positive "
                                                       r"multiple of norm_num_groups=32"),
    ("unet-digits", dict(block_out_channels=[]), r"^model\.block_out_channels=\[\] must name at least one"),
    ("unet-digits", dict(attention_levels=[2]), r"^model\.attention_levels=\[2\] must be distinct level indices"),
    ("unet-digits", dict(attention_levels=[1, 0]), r"^model\.attention_levels=\[1, 0\] must be distinct"),
    ("unet-digits", dict(attention_levels=[1], attention_head_dim=24), r"^model\.attention_head_dim=24 must divide"),
    ("unet-digits", dict(image_size=6, block_out_channels=[32, 32, 32]), r"^model\.image_size=6 must be divisible by"),
    ("unet-digits", dict(downsample_padding=2), r"^model\.downsample_padding=2 is not allowed; choose 0 or 1"),
    ("unet-digits", dict(dropout=1.0), r"^model\.dropout=1\.0 must be in \[0, 1\)"),
    ("unet-digits", dict(layers_per_block=0), r"^model\.layers_per_block=0 must be >= 1"),
    ("unet-digits", dict(num_classes=-1), r"^model\.num_classes=-1 must be >= 0"),
    ("unet-digits", dict(in_channels=0), r"^model\.in_channels=0 must be >= 1"),
    ("unet-digits", dict(beta_schedule="cosine"), r"^model\.beta_schedule='cosine' is not allowed; choose one of "
                                                  r"linear, scaled_linear, squaredcos_cap_v2"),
    ("unet-digits", dict(prediction_type="x0"), r"^model\.prediction_type='x0' is not allowed"),
    ("unet-digits", dict(beta_start=0.1, beta_end=0.01), r"^model\.beta_start=0\.1 and beta_end=0\.01 must satisfy"),
    ("unet-digits", dict(num_train_timesteps=0), r"^model\.num_train_timesteps=0 must be >= 1"),
    ("unet-digits", dict(freq_shift=16), r"^model\.freq_shift=16 must be below half the first width"),
    ("dit-digits", dict(patch_size=3), r"^model\.patch_size=3 must divide image_size=8"),
    ("dit-digits", dict(num_heads=3), r"^model\.hidden_size=128 must be divisible by num_heads=3"),
    ("dit-digits", dict(hidden_size=18, num_heads=2), r"^model\.hidden_size=18 must be divisible by 4"),
    ("dit-digits", dict(mlp_ratio=0.0), r"^model\.mlp_ratio=0\.0 must be > 0"),
    ("dit-digits", dict(depth=0), r"^model\.depth=0 must be >= 1"),
])
def test_a_bad_value_is_refused_naming_the_field(preset, kw, match):
    with pytest.raises(ConfigError, match=match):
        genmodels.preset(preset, **kw)


def test_unknown_keys_and_wrong_types_are_named():
    with pytest.raises(ConfigError, match=r"unknown model config key\(s\): n_layers"):
        config_from_dict({"family": "diffusion", "n_layers": 2})
    with pytest.raises(ConfigError, match=r"^model\.block_out_channels\[0\]='32' must be an integer"):
        config_from_dict({"family": "diffusion", "block_out_channels": ["32"]})
    with pytest.raises(ConfigError, match=r"^model\.family='decoder' must be 'diffusion'"):
        DiffusionConfig(family="decoder")
