"""UNet2D without a reference library (issue #12, deliverable 2): the call contract of diffusers'
UNet2DModel (timestep as int / 0-d / (B,), class labels with the null class), input errors naming the
argument, and our folder format."""
from __future__ import annotations

import pytest
import torch

import genmodels
from tests.helpers.tiny import randomise


@pytest.fixture(scope="module")
def unet():
    cfg = genmodels.preset("unet-digits", block_out_channels=[16, 32], norm_num_groups=8, attention_levels=[1],
                           mid_attention=True)
    return randomise(genmodels.build_model(cfg), seed=5).eval()


def _x(b=3, seed=0):
    return torch.randn(b, 1, 8, 8, generator=torch.Generator().manual_seed(seed))


def test_output_is_the_prediction_shaped_as_the_sample(unet):
    y = unet(_x(), torch.tensor([1, 2, 3]), torch.tensor([0, 5, 10]))
    assert y.shape == (3, 1, 8, 8) and torch.isfinite(y).all()


@torch.no_grad()
def test_every_timestep_form_gives_the_same_output(unet):
    x, labels = _x(), torch.tensor([1, 2, 10])
    want = unet(x, torch.tensor([42, 42, 42]), labels)
    for t in (42, 42.0, torch.tensor(42), torch.tensor([42]), torch.tensor([42.0, 42.0, 42.0])):
        torch.testing.assert_close(unet(x, t, labels), want, rtol=0, atol=0)
    assert not torch.allclose(unet(x, 43, labels), want)  # the timestep does reach the output
    frac = unet(x, 42.5, labels)  # a Python float stays fractional (diffusers would truncate it to 42)
    torch.testing.assert_close(frac, unet(x, torch.full((3,), 42.5), labels), rtol=0, atol=0)
    assert not torch.allclose(frac, want)


@torch.no_grad()
def test_each_row_gets_its_own_timestep_and_label(unet):
    x = _x()
    t, labels = torch.tensor([5, 500, 999]), torch.tensor([3, 7, 10])
    batched = unet(x, t, labels)
    for i in range(3):
        torch.testing.assert_close(unet(x[i:i + 1], t[i:i + 1], labels[i:i + 1]), batched[i:i + 1],
                                   atol=1e-5, rtol=1e-5)
    assert not torch.allclose(unet(x, t, torch.tensor([4, 7, 10])), batched)  # labels reach the output


@pytest.mark.parametrize("args,match", [
    ((torch.randn(3, 8, 8), 1), r"sample has shape \(3, 8, 8\); it must be a \(B, C, H, W\) tensor"),
    ((torch.randn(2, 3, 8, 8), 1), r"sample has 3 channels; this model takes in_channels=1"),
    ((torch.randn(2, 1, 7, 7), 1), r"sample is 7×7; height and width must be multiples of 2"),
    ((torch.randn(2, 1, 8, 8), torch.tensor([1, 2, 3])), r"timestep has shape \(3,\); .* with B=2"),
    ((torch.randn(2, 1, 8, 8), torch.ones(2, 1)), r"timestep has shape \(2, 1\)"),
    ((torch.randn(2, 1, 8, 8), "5"), r"timestep='5' must be an int, a 0-d tensor or a \(B,\) tensor"),
    ((torch.randn(2, 1, 8, 8), True), r"timestep=True must be a number or a tensor of numbers"),
])
def test_bad_inputs_are_errors_naming_the_argument(unet, args, match):
    with pytest.raises(ValueError, match=match):
        unet(*args, class_labels=torch.tensor([0, 1]))


@pytest.mark.parametrize("labels,match", [
    (None, r"class_labels is required: this model is conditioned on 10 classes \(label 10 is the null class\)"),
    (torch.tensor([0, 11]), r"class_labels must be in \[0, 11\); got \[0, 11\]"),
    (torch.tensor([-1, 2]), r"class_labels must be in \[0, 11\); got \[-1, 2\]"),
    (torch.tensor([0.0, 1.0]), r"class_labels \(shape \(2,\), torch.float32\) must be an integer tensor of shape"),
    (torch.tensor([1]), r"must be an integer tensor of shape \(2,\)"),
])
def test_class_labels_are_checked(unet, labels, match):
    with pytest.raises(ValueError, match=match):
        unet(torch.randn(2, 1, 8, 8), 3, labels)


def test_an_unconditional_model_refuses_labels():
    model = genmodels.build_model(genmodels.preset("unet-digits", num_classes=0))
    assert model.class_embed is None
    with pytest.raises(ValueError, match=r"class_labels were given, but this model is unconditional"):
        model(torch.randn(2, 1, 8, 8), 3, torch.tensor([0, 1]))


@pytest.mark.parametrize("preset", ["unet-digits", "dit-digits"])
def test_save_and_load_keep_config_weights_and_outputs(preset, tmp_path):
    model = randomise(genmodels.build_model(genmodels.preset(preset)), seed=6).eval()
    genmodels.save(model, tmp_path / "m")
    back = genmodels.load(tmp_path / "m")
    assert type(back) is type(model) and back.config == model.config
    x, t, y = _x(), torch.tensor([1, 50, 900]), torch.tensor([0, 4, 10])
    with torch.no_grad():
        torch.testing.assert_close(back(x, t, y), model(x, t, y), rtol=0, atol=0)


def test_the_exported_schedule_is_our_ddpm_schedulers_config(tmp_path):
    """export_diffusers writes scheduler_config.json through schedulers.DDPMScheduler (one source of the
    diffusers form): our scheduler reads it back equal, and load restores the schedule fields."""
    import json

    from genmodels.schedulers import DDPMScheduler
    cfg = genmodels.preset("unet-digits", beta_schedule="linear", beta_start=2e-4, beta_end=0.03,
                           num_train_timesteps=500, prediction_type="v_prediction")
    genmodels.export_diffusers(genmodels.build_model(cfg), tmp_path / "d")
    want = DDPMScheduler(num_train_timesteps=500, beta_schedule="linear", beta_start=2e-4, beta_end=0.03,
                         prediction_type="v_prediction")
    written = json.loads((tmp_path / "d" / "scheduler_config.json").read_text())
    assert written == want.diffusers_config()
    read = DDPMScheduler.from_pretrained(tmp_path / "d").config
    assert {k: v for k, v in read.items() if k != "_use_default_values"} == \
        {k: v for k, v in want.config.items() if k != "_use_default_values"}
    back = genmodels.load(tmp_path / "d").config
    assert (back.num_train_timesteps, back.beta_schedule, back.beta_start, back.beta_end, back.prediction_type) == \
        (500, "linear", 2e-4, 0.03, "v_prediction")
