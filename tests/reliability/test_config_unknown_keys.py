"""Every family's config and every preset refuses an unknown key with a ConfigError naming it and the allowed
keys — one check (config.refuse_unknown_keys) for ``Config(**kw)``, presets, ``from_dict``, converters'
overrides and the recipe's ``--set model.KEY=…`` (issue 19, B-16)."""
from __future__ import annotations

import pytest

import genmodels
from genmodels.config import ConfigError
from genmodels.models.config import ModelConfig
from genmodels.models.diffusion import DiffusionConfig
from genmodels.models.gan import GANConfig
from genmodels.models.retnet import RetNetConfig
from genmodels.registry import presets


@pytest.mark.parametrize("name", sorted(presets()))
def test_every_preset_refuses_an_unknown_key_naming_the_allowed_ones(name):
    with pytest.raises(ConfigError, match=r"unknown model config key\(s\): foo; allowed keys: .*family"):
        genmodels.preset(name, foo=1)


@pytest.mark.parametrize("cls", [ModelConfig, RetNetConfig, DiffusionConfig, GANConfig])
def test_every_family_config_refuses_an_unknown_key_built_directly(cls):
    with pytest.raises(ConfigError, match=r"unknown model config key\(s\): bar, foo; allowed keys: "):
        cls(foo=1, bar=2)
    with pytest.raises(ConfigError, match=r"unknown model config key\(s\): foo"):
        cls.from_dict({"foo": 1})
    assert cls().replace() == cls()  # the known keys still build, copy and replace


def test_from_torchscale_override_with_an_unknown_key_is_a_config_error():
    from tests.reliability.test_converters_errors import _torchscale_decoder
    with pytest.raises(ConfigError, match=r"unknown model config key\(s\): foo; allowed keys: .*bos_token_id"):
        genmodels.from_torchscale(_torchscale_decoder(), foo=1)


@pytest.mark.parametrize("preset", ["retnet-tiny", "unet-digits", "dcgan-digits"])
def test_recipe_set_unknown_model_key_names_it_and_the_allowed_ones(preset):
    from genmodels.training.config import _family_config
    with pytest.raises(ConfigError) as info:
        _family_config(preset, {"foo": 1})
    msg = str(info.value)
    assert msg.startswith("unknown key(s) under model: foo; allowed keys: "), msg
