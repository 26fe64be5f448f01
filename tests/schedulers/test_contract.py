"""The contract every scheduler keeps with diffusers: configs both ways, files both ways, the forward
process, the step API; and the package stands without our models."""
import ast
import json
from pathlib import Path

import diffusers
import pytest
import torch

import genmodels.schedulers as schedulers
from genmodels.schedulers import DDIMScheduler, DPMSolverMultistepScheduler

from .common import PAIRS, STEP_TOL, assert_steps_equal, make_pair, seeded

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # diffusers' own
NAMES = sorted(PAIRS)
CHOSEN = {  # non-default values a user might have chosen, per scheduler
    "ddpm": dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, prediction_type="v_prediction",
                 timestep_spacing="trailing", clip_sample=False, variance_type="fixed_large"),
    "ddim": dict(beta_schedule="squaredcos_cap_v2", prediction_type="sample", timestep_spacing="linspace",
                 set_alpha_to_one=False, thresholding=True, sample_max_value=2.0),
    "dpm": dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, use_karras_sigmas=True,
                prediction_type="v_prediction", final_sigmas_type="sigma_min", solver_order=3),
}


@pytest.mark.parametrize("name", NAMES)
def test_config_has_diffusers_keys_and_values(name):
    ours, theirs = make_pair(name, **CHOSEN[name])
    extensions = set(type(ours).extension_options)
    assert set(ours.config) - extensions == set(theirs.config) | {"_class_name", "_diffusers_version"}
    for key, value in theirs.config.items():
        if key == "_use_default_values":
            assert sorted(value) == [k for k in ours.config[key] if k not in extensions]
        else:
            assert ours.config[key] == value, key


@pytest.mark.parametrize("name", NAMES)
def test_from_config_of_a_real_diffusers_config(name):
    _, theirs = make_pair(name, **CHOSEN[name])
    loaded = diffusers_loaded = type(theirs).from_config(theirs.config)  # carries _use_default_values
    assert "_use_default_values" in loaded.config
    ours = PAIRS[name][0].from_config(diffusers_loaded.config)
    assert_steps_equal(ours, type(theirs).from_config(theirs.config), 10)


@pytest.mark.parametrize("source", NAMES)
@pytest.mark.parametrize("target", NAMES)
def test_cross_class_from_config_takes_what_diffusers_takes(source, target):
    # e.g. DDIMScheduler.from_config(dpm.config): only the DPM user's choices travel, not DPM's defaults
    _, theirs_source = make_pair(source, **CHOSEN[source])
    ours_target = PAIRS[target][0].from_config(theirs_source.config)
    theirs_target = PAIRS[target][1].from_config(theirs_source.config)
    options = set(ours_target.config) - set(type(ours_target).extension_options)
    for key in options - {"_class_name", "_diffusers_version", "_use_default_values"}:
        assert ours_target.config[key] == theirs_target.config[key], key  # (diffusers also keeps the source's keys)
    assert_steps_equal(ours_target, theirs_target, 8)


def test_stable_diffusion_pndm_config_into_ddim():
    sd = {  # runwayml/stable-diffusion-v1-5 scheduler/scheduler_config.json
        "_class_name": "PNDMScheduler", "_diffusers_version": "0.6.0", "beta_end": 0.012,
        "beta_schedule": "scaled_linear", "beta_start": 0.00085, "num_train_timesteps": 1000,
        "set_alpha_to_one": False, "skip_prk_steps": True, "steps_offset": 1, "trained_betas": None,
        "clip_sample": False,
    }
    with pytest.warns(UserWarning, match="skip_prk_steps"):
        ours = DDIMScheduler.from_config(sd)
    assert_steps_equal(ours, diffusers.DDIMScheduler.from_config(sd), 50)


@pytest.mark.parametrize("name", NAMES)
def test_our_config_into_diffusers_in_memory(name):
    ours = PAIRS[name][0](**CHOSEN[name])
    theirs = PAIRS[name][1].from_config(ours.config)
    assert_steps_equal(PAIRS[name][0].from_config(ours.config), theirs, 6)


@pytest.mark.parametrize("name", NAMES)
def test_save_config_loads_in_diffusers_and_back(name, tmp_path):
    ours = PAIRS[name][0](**CHOSEN[name])
    path = ours.save_config(tmp_path / "scheduler")
    assert path.name == "scheduler_config.json"
    on_disk = json.loads(path.read_text())
    assert on_disk["_class_name"] == PAIRS[name][1].__name__ and "_use_default_values" not in on_disk
    theirs = PAIRS[name][1].from_pretrained(tmp_path / "scheduler")
    for n in (7, 25):
        ours.set_timesteps(n)
        theirs.set_timesteps(n)
        assert ours.timesteps.tolist() == theirs.timesteps.tolist()
    theirs.save_config(tmp_path / "theirs")
    back = PAIRS[name][0].from_pretrained(tmp_path, subfolder="theirs")
    assert_steps_equal(back, theirs, 9)


def test_our_own_option_is_refused_by_save_config(tmp_path):
    with pytest.raises(ValueError, match="exact_previous_timestep"):
        DDIMScheduler(exact_previous_timestep=True).save_config(tmp_path)
    DDIMScheduler(exact_previous_timestep=False).save_config(tmp_path)  # at its default it is left out
    assert "exact_previous_timestep" not in json.loads((tmp_path / "scheduler_config.json").read_text())
    # our own from_config round trip keeps it
    exact = DDIMScheduler(exact_previous_timestep=True)
    assert DDIMScheduler.from_config(exact.config).config["exact_previous_timestep"] is True


def test_unimplemented_diffusers_options_at_default_accepted_else_refused_by_name():
    full = dict(diffusers.DPMSolverMultistepScheduler().config)
    full.pop("_use_default_values")  # as in a saved file: every option present, at its default
    DPMSolverMultistepScheduler.from_config(full)
    with pytest.raises(ValueError, match="use_lu_lambdas"):
        DPMSolverMultistepScheduler.from_config({**full, "use_lu_lambdas": True})
    with pytest.raises(ValueError, match="time_shift_type"):
        DPMSolverMultistepScheduler.from_config(full, time_shift_type="linear")
    with pytest.raises(TypeError, match="bogus"):
        DPMSolverMultistepScheduler(bogus=1)
    with pytest.warns(UserWarning, match="bogus"):
        DDIMScheduler.from_config({"bogus": 1})
    with pytest.raises(TypeError, match="config must be a dict"):
        DDIMScheduler.from_config([("beta_schedule", "linear")])


@pytest.mark.parametrize("name", ["ddpm", "ddim"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_add_noise_and_velocity_equal_on_batched_timesteps(name, dtype):
    ours, theirs = make_pair(name, beta_schedule="squaredcos_cap_v2")
    x0, noise = seeded(0, (4, 3, 4, 4)).to(dtype), seeded(1, (4, 3, 4, 4)).to(dtype)
    t = torch.tensor([0, 1, 500, 999], dtype=torch.int64)
    torch.testing.assert_close(ours.add_noise(x0, noise, t), theirs.add_noise(x0, noise, t), atol=0, rtol=0)
    torch.testing.assert_close(ours.get_velocity(x0, noise, t), theirs.get_velocity(x0, noise, t), atol=0, rtol=0)
    with pytest.raises(ValueError, match="timesteps"):
        ours.add_noise(x0, noise, torch.tensor([0, 1, 2, 1000]))
    with pytest.raises(ValueError, match="timesteps"):
        ours.add_noise(x0, noise, torch.tensor([0.5, 1.0, 2.0, 3.0]))


def test_dpm_velocity_is_the_training_target():
    # diffusers' DPM has no get_velocity; ours is DDPM's v = √ᾱ·ε − √(1−ᾱ)·x0 on the same table
    t = torch.tensor([3, 700])
    x0, noise = seeded(0, (2, 3, 4, 4)), seeded(1, (2, 3, 4, 4))
    expected = diffusers.DDPMScheduler().get_velocity(x0, noise, t)
    torch.testing.assert_close(DPMSolverMultistepScheduler().get_velocity(x0, noise, t), expected, atol=0, rtol=0)


@pytest.mark.parametrize("name", NAMES)
def test_step_api(name):
    ours, theirs = make_pair(name)
    assert len(ours) == len(theirs) == 1000
    assert ours.init_noise_sigma == theirs.init_noise_sigma == 1.0
    assert ours.order == theirs.order == 1
    x = seeded(0)
    assert ours.scale_model_input(x, 5) is x
    ours.set_timesteps(4)
    theirs.set_timesteps(4)
    t = ours.timesteps[0]
    out = ours.step(seeded(1), t, x, generator=torch.Generator().manual_seed(0), return_dict=False)
    ref = theirs.step(seeded(1), t, x, generator=torch.Generator().manual_seed(0), return_dict=False)
    assert isinstance(out, tuple) and len(out) == len(ref)
    torch.testing.assert_close(out[0], ref[0], **STEP_TOL)
    ours.set_timesteps(4)  # DPM's state moved on
    again = ours.step(seeded(1), t, x, generator=torch.Generator().manual_seed(0))
    assert again[0] is again.prev_sample and again.to_tuple()[0] is again.prev_sample
    with pytest.raises(ValueError, match="model_output shape"):
        ours.step(seeded(1, (2, 3, 4, 5)), t, x)
    with pytest.raises(ValueError, match="timestep"):
        ours.step(seeded(1), torch.tensor(1.5), x)


def test_package_stands_without_our_models():
    root = Path(schedulers.__file__).parent
    for path in root.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                module = "." * node.level + (node.module or "")
                assert "models" not in module and "interop" not in module, (path.name, module)
                assert node.level <= 2, (path.name, module)
            elif isinstance(node, ast.Import):
                assert all(not a.name.startswith("genmodels") for a in node.names), path.name


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float64])
def test_other_dtypes_step_as_diffusers(name, dtype):
    # DPM computes in float32 and casts back; DDPM/DDIM follow torch promotion with the float32 tables
    ours, theirs = make_pair(name, thresholding=True, sample_max_value=2.0)
    x_a = x_b = seeded(0).to(dtype)
    for s in (ours, theirs):
        s.set_timesteps(6)
    for i, t in enumerate(theirs.timesteps):
        out = seeded(10 + i).to(dtype)
        x_a = ours.step(out, t, x_a, generator=torch.Generator().manual_seed(i)).prev_sample
        x_b = theirs.step(out, t, x_b, generator=torch.Generator().manual_seed(i)).prev_sample
        assert x_a.dtype == x_b.dtype
        torch.testing.assert_close(x_a, x_b, atol=0, rtol=0)
