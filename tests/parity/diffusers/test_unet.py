"""UNet2D against diffusers 0.42.1's UNet2DModel (issue #12, deliverables 2-4): diffusers folders load
through ``genmodels.load`` and ``genmodels.export_diffusers`` writes folders diffusers loads, with every
parameter randomised and outputs equal at 1e-5; timesteps as int / 0-d / (B,); round trips; refusals."""
from __future__ import annotations

import json
import re

import diffusers
import pytest
import torch

import genmodels
from genmodels.interop.base import ConversionError
from genmodels.models.diffusion import UNet2D
from tests.helpers.tiny import randomise

pytestmark = pytest.mark.parity
TOL = dict(atol=1e-5, rtol=1e-4)

# diffusers configs: three levels with attention at one and non-power-of-two widths, classes, out ≠ in;
# the original DDPM layout (padding 0, [sin, cos], shift 1, one full-width head) at level 0 only.
ODD = dict(sample_size=8, in_channels=3, out_channels=2, block_out_channels=(16, 48, 32), layers_per_block=2,
           down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
           up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D"), attention_head_dim=8, norm_num_groups=8,
           num_class_embeds=5)
DDPM = dict(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(16, 32), layers_per_block=1,
            down_block_types=("AttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "AttnUpBlock2D"),
            attention_head_dim=None, norm_num_groups=8, norm_eps=1e-6, downsample_padding=0,
            flip_sin_to_cos=False, freq_shift=1, add_attention=False, dropout=0.1)
CONFIGS = {"odd": ODD, "ddpm": DDPM}


def _theirs(cfg: dict, seed: int = 0) -> diffusers.UNet2DModel:
    torch.manual_seed(seed)
    return randomise(diffusers.UNet2DModel(**cfg), seed=seed).eval()


def _inputs(model_cfg, batch: int = 3, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, model_cfg.in_channels, model_cfg.sample_size, model_cfg.sample_size, generator=g)
    t = torch.randint(0, 1000, (batch,), generator=g)
    n = model_cfg.num_class_embeds
    y = torch.randint(0, n, (batch,), generator=g) if n else None
    return x, t, y


# diffusers' UNet2DModel.save_pretrained writes no scheduler config: loading such a folder says, once, which
# noise schedule it assumes (W-4 of the 2026-12-07 probe; docs/reliability.md).
ASSUMED = "no scheduler_config.json beside it and no _genmodels.schedule in it, so the noise schedule is assumed"


def _load_unet_alone(path):
    """``genmodels.load`` of a folder holding a diffusers UNet and no schedule: one warning naming the assumption."""
    with pytest.warns(UserWarning, match=re.escape(ASSUMED)) as caught:
        model = genmodels.load(path)
    assert sum(ASSUMED in str(w.message) for w in caught) == 1
    return model


@pytest.mark.parametrize("name", list(CONFIGS))
def test_a_diffusers_folder_loads_and_matches(name, tmp_path):
    theirs = _theirs(CONFIGS[name])
    theirs.save_pretrained(tmp_path / "d")
    ours = _load_unet_alone(tmp_path / "d")
    assert isinstance(ours, UNet2D)
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in theirs.parameters())
    x, t, y = _inputs(theirs.config)
    with torch.no_grad():
        want = theirs(x, t, class_labels=y).sample
        got = ours(x, t, class_labels=y)
    assert got.shape == want.shape == (3, theirs.config.out_channels, 8, 8)
    torch.testing.assert_close(got, want, **TOL)


@pytest.mark.parametrize("pipeline,scheduler", [("DDPMPipeline", "DDPMScheduler"), ("DDIMPipeline", "DDIMScheduler")])
def test_a_diffusers_pipeline_folder_loads_with_its_schedule(pipeline, scheduler, tmp_path):
    """``DDPMPipeline(unet, scheduler).save_pretrained``: model_index.json, unet/, scheduler/ — the unet's outputs
    and the scheduler's schedule (not the config defaults) are what genmodels.load gives."""
    theirs = _theirs(ODD)
    sched = getattr(diffusers, scheduler)(num_train_timesteps=500, beta_schedule="squaredcos_cap_v2",
                                          prediction_type="v_prediction")
    getattr(diffusers, pipeline)(unet=theirs, scheduler=sched).save_pretrained(tmp_path / "p")
    ours = genmodels.load(tmp_path / "p")
    assert isinstance(ours, UNet2D) and not ours.training
    c = ours.config
    assert (c.num_train_timesteps, c.beta_schedule, c.prediction_type) == (500, "squaredcos_cap_v2", "v_prediction")
    x, t, y = _inputs(theirs.config)
    with torch.no_grad():
        torch.testing.assert_close(ours(x, t, class_labels=y), theirs(x, t, class_labels=y).sample, **TOL)


def test_a_pipeline_that_is_not_a_pixel_unet_is_refused_naming_the_part(tmp_path):
    diffusers.DDPMPipeline(unet=_theirs(DDPM), scheduler=diffusers.DDPMScheduler()).save_pretrained(tmp_path / "p")
    index_file = tmp_path / "p" / "model_index.json"
    index = json.loads(index_file.read_text())
    index_file.write_text(json.dumps({**index, "vqvae": ["diffusers", "VQModel"]}))
    with pytest.raises(ValueError, match=r"model_index\.json: parts \['vqvae'\] of the DDPMPipeline"):
        genmodels.load(tmp_path / "p")
    index_file.write_text(json.dumps({**index, "unet": ["diffusers", "UNet2DConditionModel"]}))
    with pytest.raises(ValueError, match="\"unet\" is \\['diffusers', 'UNet2DConditionModel'\\]"):
        genmodels.load(tmp_path / "p")
    index_file.write_text(json.dumps(index))
    (tmp_path / "p" / "unet" / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"unet/config\.json: missing"):
        genmodels.load(tmp_path / "p")


@pytest.mark.parametrize("scheduler,match", [
    (lambda: diffusers.DDIMScheduler(rescale_betas_zero_snr=True), r"rescale_betas_zero_snr=True has no equivalent"),
    (lambda: diffusers.DDPMScheduler(variance_type="learned_range"), r"variance_type='learned_range' has no"),
    (lambda: diffusers.ScoreSdeVeScheduler(), r"_class_name='ScoreSdeVeScheduler' has no beta_schedule"),
    (lambda: diffusers.FlowMatchEulerDiscreteScheduler(),
     r"_class_name='FlowMatchEulerDiscreteScheduler' has no beta_schedule"),
], ids=["zero-snr", "learned-variance", "score-sde", "flow-matching"])
def test_a_pipeline_whose_schedule_we_cannot_hold_is_refused_naming_the_key(scheduler, match, tmp_path):
    """Silently loading these would sample with the wrong noise levels (found by review, 2026-11-30)."""
    diffusers.DDPMPipeline(unet=_theirs(DDPM), scheduler=scheduler()).save_pretrained(tmp_path / "p")
    with pytest.raises(ConversionError, match=r"scheduler/scheduler_config\.json: " + match):
        genmodels.load(tmp_path / "p")


def test_a_pipeline_without_its_scheduler_is_refused(tmp_path):
    sched = diffusers.DDPMScheduler(num_train_timesteps=250, beta_schedule="squaredcos_cap_v2")
    diffusers.DDPMPipeline(unet=_theirs(DDPM), scheduler=sched).save_pretrained(tmp_path / "p")
    index_file = tmp_path / "p" / "model_index.json"
    index = json.loads(index_file.read_text())
    index_file.write_text(json.dumps({k: v for k, v in index.items() if k != "scheduler"}))
    with pytest.raises(ValueError, match=r"model_index\.json: \"scheduler\" is None"):
        genmodels.load(tmp_path / "p")
    index_file.write_text(json.dumps(index))
    (tmp_path / "p" / "scheduler" / "scheduler_config.json").unlink()  # was: the default schedule, silently
    with pytest.raises(FileNotFoundError, match=r"scheduler/scheduler_config\.json: missing"):
        genmodels.load(tmp_path / "p")


@pytest.mark.parametrize("key,value,match", [
    ("block_out_channels", None, "block_out_channels=None must be a non-empty list"),
    ("down_block_types", 5, "down_block_types=5 must be a non-empty list"),
    ("add_attention", "no", "add_attention='no' must be true or false"),
    ("_genmodels", [1], "_genmodels=\\[1\\] must be an object"),
])
def test_malformed_unet_config_values_are_named_not_a_traceback(key, value, match, tmp_path):
    theirs = _theirs(DDPM)
    theirs.save_pretrained(tmp_path / "d")
    cfg_file = tmp_path / "d" / "config.json"
    cfg_file.write_text(json.dumps({**json.loads(cfg_file.read_text()), key: value}))
    with pytest.raises(ConversionError, match=r"config\.json: " + match):
        genmodels.load(tmp_path / "d")


def test_a_bad_schedule_value_names_the_scheduler_file(tmp_path):
    diffusers.DDPMPipeline(unet=_theirs(DDPM), scheduler=diffusers.DDPMScheduler()).save_pretrained(tmp_path / "p")
    f = tmp_path / "p" / "scheduler" / "scheduler_config.json"
    f.write_text(json.dumps({**json.loads(f.read_text()), "beta_start": "0.001"}))
    with pytest.raises(genmodels.ConfigError, match=r"unet/config\.json \+ .*scheduler_config\.json: "
                                                    r"model\.beta_start='0\.001' must be a number"):
        genmodels.load(tmp_path / "p")


@pytest.mark.parametrize("timestep", [7, 999, torch.tensor(5), torch.tensor([3]), torch.tensor([0, 500, 999]),
                                      torch.tensor([1.5, 20.25, 700.0])])
def test_every_timestep_form_matches_diffusers(timestep, tmp_path):
    theirs = _theirs(ODD, seed=2)
    theirs.save_pretrained(tmp_path / "d")
    ours = _load_unet_alone(tmp_path / "d")
    x, _, y = _inputs(theirs.config)
    with torch.no_grad():
        torch.testing.assert_close(ours(x, timestep, y), theirs(x, timestep, class_labels=y).sample, **TOL)


def test_export_diffusers_is_loaded_by_diffusers_with_equal_outputs(tmp_path):
    """Ours (a preset with a null class, every parameter random) -> diffusers -> equal outputs, schedule kept."""
    ours = randomise(genmodels.build_model(genmodels.preset(
        "unet-digits", attention_levels=[1], mid_attention=True, attention_head_dim=16)), seed=3).eval()
    genmodels.export_diffusers(ours, tmp_path / "d")
    theirs = diffusers.UNet2DModel.from_pretrained(tmp_path / "d").eval()
    assert theirs.config.num_class_embeds == 11  # 10 digits + the null label 10
    x, t, _ = _inputs(theirs.config)
    y = torch.tensor([0, 9, 10])  # 10: the null class
    with torch.no_grad():
        torch.testing.assert_close(ours(x, t, y), theirs(x, t, class_labels=y).sample, **TOL)
    sched = diffusers.DDPMScheduler.from_pretrained(tmp_path / "d")
    assert (sched.config.beta_schedule, sched.config.num_train_timesteps) == ("squaredcos_cap_v2", 1000)


def test_the_ddpm_layout_exports_to_diffusers_with_equal_outputs(tmp_path):
    """Padding-0 downsampling, [sin, cos] with shift 1, one full-width head, dropout set (eval: off)."""
    ours = randomise(genmodels.build_model(genmodels.preset(
        "unet-ddpm-cifar10", image_size=16, block_out_channels=[32, 64, 32], dropout=0.1)), seed=8).eval()
    genmodels.export_diffusers(ours, tmp_path / "d")
    theirs = diffusers.UNet2DModel.from_pretrained(tmp_path / "d").eval()
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(ours(x, torch.tensor([10, 990])), theirs(x, torch.tensor([10, 990])).sample, **TOL)


@pytest.mark.parametrize("preset,kw", [("unet-digits", {}), ("unet-digits", dict(num_classes=0)),
                                       ("unet-ddpm-cifar10", dict(block_out_channels=[32, 64, 64, 64]))])
def test_round_trip_ours_diffusers_ours_is_exact(preset, kw, tmp_path):
    ours = randomise(genmodels.build_model(genmodels.preset(preset, **kw)), seed=4)
    genmodels.export_diffusers(ours, tmp_path / "d")
    back = genmodels.load(tmp_path / "d")
    assert back.config == ours.config
    want, got = ours.state_dict(), back.state_dict()
    assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)


def test_ddpm_cifar10_preset_has_the_checkpoints_parameter_count():
    theirs = diffusers.UNet2DModel(
        sample_size=32, block_out_channels=(128, 256, 256, 256), attention_head_dim=None, downsample_padding=0,
        down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"), flip_sin_to_cos=False,
        freq_shift=1, norm_eps=1e-6)
    cfg = genmodels.preset("unet-ddpm-cifar10")
    from genmodels.registry import get_family
    assert get_family("diffusion").counts.parameter_count(cfg) == sum(p.numel() for p in theirs.parameters())


# ---- refusals -------------------------------------------------------------------------------------
def _folder(tmp_path, **changes):
    theirs = _theirs(DDPM)
    theirs.save_pretrained(tmp_path / "d")
    cfg_file = tmp_path / "d" / "config.json"
    cfg = json.loads(cfg_file.read_text())
    cfg.update(changes)
    cfg_file.write_text(json.dumps(cfg))
    return tmp_path / "d"


@pytest.mark.parametrize("changes,match", [
    (dict(resnet_time_scale_shift="scale_shift"), r"resnet_time_scale_shift='scale_shift' has no equivalent"),
    (dict(time_embedding_type="fourier"), r"time_embedding_type='fourier'"),
    (dict(down_block_types=["CrossAttnDownBlock2D", "DownBlock2D"]), r"down_block_types\[0\]='CrossAttnDownBlock2D'"),
    (dict(up_block_types=["UpBlock2D", "UpBlock2D"]), r"up_block_types=.* must mirror down_block_types"),
    (dict(some_new_option=3), r"some_new_option=3 is not a UNet2DModel setting"),
    (dict(_class_name="UNet2DConditionModel"), r"_class_name='UNet2DConditionModel' is not supported"),
    (dict(sample_size=[8, 16]), r"sample_size=\[8, 16\] must be one integer"),
])
def test_a_diffusers_config_we_cannot_build_is_refused_naming_the_field(changes, match, tmp_path):
    with pytest.raises(ConversionError, match=match):
        genmodels.load(_folder(tmp_path, **changes))


def test_a_checkpoint_with_missing_or_misshapen_keys_is_refused_naming_them(tmp_path):
    from safetensors.torch import load_file, save_file
    path = _folder(tmp_path)
    weights = path / "diffusion_pytorch_model.safetensors"
    sd = load_file(weights)
    sd.pop("mid_block.resnets.1.conv2.bias")
    sd["conv_in.weight"] = sd["conv_in.weight"][:, :, :2].contiguous()
    save_file(sd, weights)
    with pytest.raises(ConversionError, match=r"missing keys: mid_block\.resnets\.1\.conv2\.bias.*"
                                              r"wrong shape for conv_in\.weight"):
        _load_unet_alone(path)


def test_export_refuses_a_dit_naming_the_field(tmp_path):
    model = genmodels.build_model(genmodels.preset("dit-digits"))
    with pytest.raises(ConversionError, match=r"cannot export as diffusers UNet2DModel: model\.backbone='dit'"):
        genmodels.export_diffusers(model, tmp_path / "d")
    assert not (tmp_path / "d").exists()
    with pytest.raises(ConversionError, match=r"model\.family='decoder' is not a diffusion model"):
        genmodels.export_diffusers(genmodels.build_model(genmodels.preset("llama-tiny", n_layers=1)), tmp_path / "d")


def test_cli_converts_diffusers_folders_both_ways(tmp_path, capsys):
    from genmodels.cli import main
    theirs = _theirs(ODD, seed=7)
    theirs.save_pretrained(tmp_path / "d")
    with pytest.warns(UserWarning, match=re.escape(ASSUMED)) as caught:
        assert main(["convert", str(tmp_path / "d"), str(tmp_path / "ours"), "--to", "genmodels"]) == 0
    assert sum(ASSUMED in str(w.message) for w in caught) == 1
    assert main(["convert", str(tmp_path / "ours"), str(tmp_path / "back"), "--to", "diffusers"]) == 0
    back = diffusers.UNet2DModel.from_pretrained(tmp_path / "back").eval()
    x, t, y = _inputs(theirs.config)
    with torch.no_grad():
        torch.testing.assert_close(back(x, t, class_labels=y).sample, theirs(x, t, class_labels=y).sample,
                                   rtol=0, atol=0)
    with pytest.warns(UserWarning, match=re.escape(ASSUMED)):
        assert main(["info", str(tmp_path / "d")]) == 0
    assert "FLOPs/image" in capsys.readouterr().out


def test_export_hf_refuses_a_family_without_a_transformers_architecture(tmp_path):
    model = genmodels.build_model(genmodels.preset("unet-digits"))
    with pytest.raises(ConversionError, match=r"model\.family='diffusion' has no such architecture"):
        genmodels.export_hf(model, tmp_path / "hf")
    assert not (tmp_path / "hf").exists()
