"""DDIMScheduler equal to diffusers' per step and over a DDIM-50 loop, including diffusers' previous-step
stride under ``linspace`` / non-dividing ``trailing``; the exact-lookup option differs exactly there."""
import pytest
import torch

from genmodels.schedulers import BETA_SCHEDULES, PREDICTION_TYPES, TIMESTEP_SPACINGS, DDIMScheduler

from .common import (
    LOOP_TOL, STEP_TOL, assert_steps_equal, deterministic_sample, golden_model, make_pair, seeded, tiny_model,
)

STEP_COUNTS = [1, 3, 7, 10, 50]  # 3 and 7 do not divide T = 1000: trailing's stride is then off


@pytest.mark.parametrize("schedule", BETA_SCHEDULES)
@pytest.mark.parametrize("prediction", PREDICTION_TYPES)
@pytest.mark.parametrize("spacing", TIMESTEP_SPACINGS)
@pytest.mark.parametrize("eta", [0.0, 0.7])
def test_steps_equal_over_the_grid(schedule, prediction, spacing, eta):
    for n in STEP_COUNTS:
        ours, theirs = make_pair("ddim", beta_schedule=schedule, prediction_type=prediction, timestep_spacing=spacing)
        assert_steps_equal(ours, theirs, n, eta=eta)


@pytest.mark.parametrize("prediction", PREDICTION_TYPES)
@pytest.mark.parametrize(
    "options, step_options",
    [
        (dict(clip_sample=False), {}),
        (dict(thresholding=True, sample_max_value=1.7), dict(eta=1.0)),
        (dict(set_alpha_to_one=False, steps_offset=1), {}),
        (dict(clip_sample_range=0.5), dict(eta=0.5, use_clipped_model_output=True)),
        (dict(rescale_betas_zero_snr=True, timestep_spacing="trailing", clip_sample=False), {}),
        (dict(num_train_timesteps=100), dict(eta=0.3)),
    ],
)
def test_options_equal(prediction, options, step_options):
    ours, theirs = make_pair("ddim", prediction_type=prediction, **options)
    assert_steps_equal(ours, theirs, 7, **step_options)


def test_variance_noise_is_used_as_given():
    ours, theirs = make_pair("ddim")
    for s in (ours, theirs):
        s.set_timesteps(10)
    noise = seeded(9)
    a = ours.step(seeded(0), 500, seeded(1), eta=1.0, variance_noise=noise).prev_sample
    b = theirs.step(seeded(0), 500, seeded(1), eta=1.0, variance_noise=noise).prev_sample
    torch.testing.assert_close(a, b, **STEP_TOL)
    with pytest.raises(ValueError, match="generator or variance_noise"):
        ours.step(seeded(0), 500, seeded(1), eta=1.0, variance_noise=noise, generator=torch.Generator())


@pytest.mark.parametrize("spacing", TIMESTEP_SPACINGS)
@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_ddim50_loop_on_a_tiny_model_equal(spacing, eta):
    model = tiny_model()
    ours, theirs = make_pair("ddim", timestep_spacing=spacing, clip_sample=False)
    results = []
    for s in (ours, theirs):
        s.set_timesteps(50)
        x, generator = seeded(42) * s.init_noise_sigma, torch.Generator().manual_seed(0)
        for t in s.timesteps:
            x = s.step(model(s.scale_model_input(x, t), t), t, x, eta=eta, generator=generator).prev_sample
        results.append(x)
    torch.testing.assert_close(results[0], results[1], **LOOP_TOL)
    assert results[0].abs().max() > 0.1  # the loop did something


@pytest.mark.parametrize("spacing, total", [("leading", 172.0067), ("trailing", 170.035), ("linspace", 191.254)])
def test_golden_ten_step_loops(spacing, total):
    # diffusers tests/schedulers/test_scheduler_ddim.py full loops, reproduced in reference/diffusion.md §1.5
    scheduler, x = DDIMScheduler(timestep_spacing=spacing), deterministic_sample()
    scheduler.set_timesteps(10)
    for t in scheduler.timesteps:
        x = scheduler.step(golden_model(x, t), t, x, 0.0).prev_sample
    assert x.abs().sum().item() == pytest.approx(total, abs=2e-3)


def _off_steps(scheduler: DDIMScheduler) -> list[int]:
    """Indices i where diffusers' t − T//N is not the next visited timestep (−1 after the last),
    ignoring the last step when both fall below 0 (both then use the final ᾱ)."""
    ts = scheduler.timesteps.tolist()
    stride = len(scheduler) // len(ts)
    nxt = [*ts[1:], -1]
    return [i for i, t in enumerate(ts) if t - stride != nxt[i] and not (t - stride < 0 and nxt[i] < 0)]


@pytest.mark.parametrize(
    "spacing, n, off",
    [("leading", 10, []), ("leading", 7, []), ("trailing", 10, []), ("trailing", 3, [1]),
     ("linspace", 10, list(range(9))), ("linspace", 1000, [])],
)
def test_exact_previous_timestep_differs_exactly_where_documented(spacing, n, off):
    exact = DDIMScheduler(timestep_spacing=spacing, exact_previous_timestep=True, clip_sample=False)
    ours, theirs = make_pair("ddim", timestep_spacing=spacing, clip_sample=False)
    for s in (exact, ours, theirs):
        s.set_timesteps(n)
    assert _off_steps(ours) == off
    ts = exact.timesteps.tolist()
    for i, t in enumerate(ts):
        assert exact.previous_timestep(t) == (ts[i + 1] if i + 1 < len(ts) else -1)
        out, x = seeded(2 * i), seeded(2 * i + 1)
        a = exact.step(out, t, x).prev_sample
        b = theirs.step(out, t, x).prev_sample
        torch.testing.assert_close(ours.step(out, t, x).prev_sample, b, **STEP_TOL)
        if i in off:
            assert (a - b).abs().max() > 1e-3, f"step {i} (t={t}) should use the exact previous timestep"
        else:
            torch.testing.assert_close(a, b, **STEP_TOL)


def test_exact_lookup_makes_linspace_land_on_the_visited_noise_levels():
    # the documented difference: DDIM-10 linspace with diffusers' stride steps 999 -> ᾱ_899 but the next
    # step starts at 888; with the exact lookup x_{t'} is the η=0 posterior at 888 (a pure x0 model stays exact)
    x0 = seeded(1).clamp(-1, 1)
    for exact, ends_exact in ((True, True), (False, False)):
        s = DDIMScheduler(timestep_spacing="linspace", exact_previous_timestep=exact, prediction_type="sample")
        s.set_timesteps(10)
        noise = seeded(2)
        x = s.add_noise(x0, noise, torch.tensor([999]))
        for t in s.timesteps[:-1]:
            x = s.step(x0, t, x).prev_sample
        # x must now be the forward process at the last visited timestep, with the same ε
        t_last = int(s.timesteps[-1])
        expected = s.add_noise(x0, noise, torch.tensor([t_last]))
        assert torch.allclose(x, expected, atol=1e-4) is ends_exact


def test_bad_step_inputs_name_the_argument():
    with pytest.raises(ValueError, match="set_timesteps"):
        DDIMScheduler().step(seeded(0), 10, seeded(1))
    s = DDIMScheduler()
    s.set_timesteps(10)
    with pytest.raises(ValueError, match="eta"):
        s.step(seeded(0), 900, seeded(1), eta=-0.5)
    with pytest.raises(ValueError, match="clip_sample_range"):
        DDIMScheduler(clip_sample_range=-1.0)
