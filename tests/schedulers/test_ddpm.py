"""DDPMScheduler equal to diffusers' per step (same outputs, same generator noise), and its golden loop."""
import pytest
import torch

from genmodels.schedulers import BETA_SCHEDULES, PREDICTION_TYPES, TIMESTEP_SPACINGS, DDPMScheduler

from .common import STEP_TOL, assert_steps_equal, deterministic_sample, golden_model, make_pair, seeded

STEP_COUNTS = [1, 3, 7, 10, 50]  # 3 and 7 do not divide T = 1000


@pytest.mark.parametrize("schedule", BETA_SCHEDULES)
@pytest.mark.parametrize("prediction", PREDICTION_TYPES)
@pytest.mark.parametrize("spacing", TIMESTEP_SPACINGS)
def test_steps_equal_over_the_grid(schedule, prediction, spacing):
    for n in STEP_COUNTS:
        ours, theirs = make_pair("ddpm", beta_schedule=schedule, prediction_type=prediction, timestep_spacing=spacing)
        assert_steps_equal(ours, theirs, n)


@pytest.mark.parametrize("prediction", PREDICTION_TYPES)
@pytest.mark.parametrize(
    "options",
    [dict(clip_sample=False), dict(clip_sample_range=0.5), dict(thresholding=True, sample_max_value=1.7),
     dict(thresholding=True, dynamic_thresholding_ratio=0.9, sample_max_value=3.0), dict(steps_offset=1),
     dict(rescale_betas_zero_snr=True, timestep_spacing="trailing")],
)
def test_clipping_and_thresholding_equal(prediction, options):
    ours, theirs = make_pair("ddpm", prediction_type=prediction, **options)
    assert_steps_equal(ours, theirs, 10)


@pytest.mark.parametrize("variance_type", ["fixed_small", "fixed_small_log", "fixed_large", "learned_range"])
def test_variance_types_equal(variance_type):
    ours, theirs = make_pair("ddpm", variance_type=variance_type)
    channels = 6 if variance_type == "learned_range" else None  # (B, 2C, H, W): mean and variance halves
    assert_steps_equal(ours, theirs, 10, channels_out=channels)


def test_learned_variance_uses_the_second_half():
    ours, theirs = make_pair("ddpm", variance_type="learned")
    out = torch.cat([seeded(0), seeded(1).abs()], dim=1)  # σ² must be positive
    for s in (ours, theirs):
        s.set_timesteps(5)
    t = theirs.timesteps[1]
    a = ours.step(out, t, seeded(2), generator=torch.Generator().manual_seed(3)).prev_sample
    b = theirs.step(out, t, seeded(2), generator=torch.Generator().manual_seed(3)).prev_sample
    torch.testing.assert_close(a, b, **STEP_TOL)


def test_without_set_timesteps_steps_by_one():
    ours, theirs = make_pair("ddpm", num_train_timesteps=20)
    assert ours.timesteps.tolist() == theirs.timesteps.tolist() == list(range(19, -1, -1))
    x_a = x_b = seeded(0)
    g_a, g_b = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    for t in range(19, -1, -1):
        out = seeded(100 + t)
        x_a = ours.step(out, t, x_a, generator=g_a).prev_sample
        x_b = theirs.step(out, t, x_b, generator=g_b).prev_sample
    torch.testing.assert_close(x_a, x_b, **STEP_TOL)


def test_golden_thousand_step_loop():
    # diffusers tests/schedulers/test_scheduler_ddpm.py full loop: Σ|x| = 258.9606…, measured 258.9611
    scheduler, x, generator = DDPMScheduler(), deterministic_sample(), torch.manual_seed(0)
    for t in reversed(range(1000)):
        x = scheduler.step(golden_model(x, t), t, x, generator=generator).prev_sample
    assert x.abs().sum().item() == pytest.approx(258.9611, abs=1e-2)
    assert x.abs().mean().item() == pytest.approx(0.3372, abs=1e-3)


def test_list_of_generators_draws_per_sample():
    ours, theirs = make_pair("ddpm")
    for s in (ours, theirs):
        s.set_timesteps(10)
    t = theirs.timesteps[0]
    gens = lambda: [torch.Generator().manual_seed(i) for i in range(2)]  # noqa: E731
    a = ours.step(seeded(0), t, seeded(1), generator=gens()).prev_sample
    b = theirs.step(seeded(0), t, seeded(1), generator=gens()).prev_sample
    torch.testing.assert_close(a, b, **STEP_TOL)


def test_bad_step_inputs_name_the_argument():
    s = DDPMScheduler()
    s.set_timesteps(10)
    with pytest.raises(ValueError, match="timestep=5 is not one of"):
        s.step(seeded(0), 5, seeded(1))
    with pytest.raises(ValueError, match="timestep"):
        s.step(seeded(0), 1000, seeded(1))
    with pytest.raises(ValueError, match="model_output shape"):
        s.step(seeded(0, (2, 4, 4, 4)), 900, seeded(1))
    with pytest.raises(ValueError, match="variance_type"):
        DDPMScheduler(variance_type="small")
