"""A config that asks for more than its stored weights hold is refused before the model is built (issue 19,
B-10): the weights' headers (names and shapes, no tensor) bound every build of a load — a meta-device count
included — and the genmodels format checks every key and shape against them before reading a tensor;
implausible depths are refused by the configs themselves. Work is bounded by counting parameter
registrations, never by timing."""
from __future__ import annotations

import json
import shutil

import pytest
import torch
from torch.nn.modules import module as torch_module

import genmodels
from genmodels import io
from genmodels.config import ConfigError
from genmodels.interop.base import ConversionError
from genmodels.interop.stored import safetensors_shapes
from tests.reliability.test_converters_errors import _mixtral_v4

SMALL_UNET = dict(block_out_channels=[8, 16], norm_num_groups=4, num_classes=0)


@pytest.fixture
def registrations():
    """How many parameters every module built during the test registered (meta builds included)."""
    seen = [0]
    hook = torch_module.register_module_parameter_registration_hook(lambda m, n, p: seen.__setitem__(0, seen[0] + 1))
    yield seen
    hook.remove()


@pytest.fixture(scope="module")
def unet_folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("unets")
    torch.manual_seed(0)
    model = genmodels.build_model(genmodels.preset("unet-digits", **SMALL_UNET))
    genmodels.save(model, root / "gm")
    genmodels.export_diffusers(model, root / "df")
    return root


def _edited(src, dst, edit):
    shutil.copytree(src, dst)
    cfg = json.loads((dst / "config.json").read_text())
    edit(cfg)
    (dst / "config.json").write_text(json.dumps(cfg))
    return dst


def test_diffusers_folder_with_an_edited_depth_is_refused_before_building(unet_folders, tmp_path, registrations):
    folder = _edited(unet_folders / "df", tmp_path / "deep", lambda c: c.update(layers_per_block=100))
    stored = len(safetensors_shapes(folder / "diffusion_pytorch_model.safetensors"))
    with pytest.raises(ConversionError) as info:
        genmodels.load(folder)
    msg = str(info.value)
    assert str(folder) in msg and f"holds {stored} weight tensors" in msg and "\n" not in msg, msg
    assert registrations[0] <= 2 * stored + 65  # the old load built ~100 resnets per level (meta, then real)


def test_genmodels_folder_with_an_edited_depth_is_refused_before_building(unet_folders, tmp_path, registrations):
    folder = _edited(unet_folders / "gm", tmp_path / "deep", lambda c: c["model"].update(layers_per_block=100))
    with pytest.raises(ConversionError, match=r"model\.safetensors holds \d+ weight tensors"):
        genmodels.load(folder)
    assert registrations[0] <= 2 * len(safetensors_shapes(folder / "model.safetensors")) + 65


def test_genmodels_keys_and_shapes_are_checked_from_the_header_before_any_tensor_is_read(
        unet_folders, tmp_path, monkeypatch):
    folder = _edited(unet_folders / "gm", tmp_path / "wide", lambda c: c["model"].update(block_out_channels=[8, 64]))
    monkeypatch.setattr(io, "read_safetensors", lambda f: pytest.fail("tensors read before the key check"))
    real_build = io.build_model

    def build(cfg):  # a meta-device build (shapes only) is allowed; a real one is not
        if torch.empty(()).device.type != "meta":
            pytest.fail("model built before the key check")
        return real_build(cfg)
    monkeypatch.setattr(io, "build_model", build)
    with pytest.raises(ConversionError, match=r"wrong shape for down\.1\.resnets\.0\.conv1\.weight: checkpoint "
                                              r"\(16, 8, 3, 3\), model \(64, 8, 3, 3\)"):
        genmodels.load(folder)


def test_hf_folder_with_an_edited_layer_count_is_refused_before_building(tmp_path, registrations):
    folder = _mixtral_v4(tmp_path / "mx")
    cfg = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**cfg, "num_hidden_layers": 900}))
    with pytest.raises(ConversionError, match=r"holds \d+ weight tensors, but the config describes a model"):
        genmodels.load(folder)
    assert registrations[0] < 200  # the old load built 900 layers


def test_sound_folders_still_load(unet_folders):
    for name in ("gm", "df"):
        assert genmodels.load(unet_folders / name).config.layers_per_block == 1


@pytest.mark.parametrize("preset,kw", [("unet-digits", dict(layers_per_block=101)), ("dit-digits", dict(depth=1001)),
                                       ("retnet-tiny", dict(n_layers=5000)), ("llama-tiny", dict(n_layers=100_000)),
                                       ("t5-tiny", dict(n_decoder_layers=2000))])
def test_implausible_depths_are_refused_by_the_config(preset, kw, registrations):
    (name, value), = kw.items()
    with pytest.raises(ConfigError, match=rf"model\.{name}={value} is implausibly deep: at most \d+"):
        genmodels.preset(preset, **kw)
    assert registrations[0] == 0
