"""DPMSolverMultistepScheduler equal to diffusers' per step (its state included) and over a DPM-20 loop."""
import pytest
import torch

from genmodels.schedulers import BETA_SCHEDULES, PREDICTION_TYPES, TIMESTEP_SPACINGS, DPMSolverMultistepScheduler

from .common import (
    LOOP_TOL, STEP_TOL, assert_steps_equal, deterministic_sample, golden_model, make_pair, seeded, tiny_model,
)

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # diffusers' own
STEP_COUNTS = [1, 2, 3, 7, 10, 20]  # < 15 triggers lower_order_final on the last two steps


@pytest.mark.parametrize("schedule", BETA_SCHEDULES)
@pytest.mark.parametrize("prediction", PREDICTION_TYPES)
@pytest.mark.parametrize("spacing", TIMESTEP_SPACINGS)
def test_steps_equal_over_the_grid(schedule, prediction, spacing):
    for n in STEP_COUNTS:
        ours, theirs = make_pair("dpm", beta_schedule=schedule, prediction_type=prediction, timestep_spacing=spacing)
        assert_steps_equal(ours, theirs, n)


OPTIONS = [
    dict(use_karras_sigmas=True),
    dict(use_karras_sigmas=True, final_sigmas_type="sigma_min", prediction_type="v_prediction"),
    dict(final_sigmas_type="sigma_min", lower_order_final=False),
    dict(euler_at_final=True, final_sigmas_type="sigma_min"),
    dict(solver_order=1),
    dict(solver_order=3),
    dict(solver_order=3, lower_order_final=False, final_sigmas_type="sigma_min"),
    dict(solver_type="heun"),
    dict(thresholding=True, sample_max_value=1.5),
    dict(lambda_min_clipped=-2.5),  # drops the noisiest training steps of every schedule
    dict(rescale_betas_zero_snr=True, timestep_spacing="trailing", prediction_type="v_prediction"),
    dict(timestep_spacing="leading", steps_offset=1),
]
# Karras σ on the cosine schedule repeat timesteps: test_repeated_timesteps_are_refused_where_diffusers_fails
GRID = [(s, o) for s in BETA_SCHEDULES for o in OPTIONS
        if not (s == "squaredcos_cap_v2" and o.get("use_karras_sigmas"))]


@pytest.mark.parametrize("schedule, options", GRID)
def test_options_equal(schedule, options):
    for n in (7, 20):
        ours, theirs = make_pair("dpm", beta_schedule=schedule, **options)
        assert_steps_equal(ours, theirs, n)
        torch.testing.assert_close(ours.sigmas, theirs.sigmas, atol=0, rtol=0)


@pytest.mark.parametrize(
    "options", [{}, dict(use_karras_sigmas=True), dict(solver_order=3, prediction_type="v_prediction")]
)
def test_dpm20_loop_on_a_tiny_model_equal(options):
    model = tiny_model()
    ours, theirs = make_pair("dpm", **options)
    results = []
    for s in (ours, theirs):
        s.set_timesteps(20)
        x = seeded(42) * s.init_noise_sigma
        for t in s.timesteps:
            x = s.step(model(s.scale_model_input(x, t), t), t, x).prev_sample
        results.append(x)
    torch.testing.assert_close(results[0], results[1], **LOOP_TOL)
    assert results[0].abs().max() > 0.1


def test_repeated_timesteps_are_refused_where_diffusers_fails():
    # diffusers #12771: cosine σ_T ≈ 2e4 with Karras σ repeats timestep 998; diffusers' first step then starts at
    # the repeat's second index and its loop runs out of noise levels one step early (IndexError)
    ours, theirs = make_pair("dpm", beta_schedule="squaredcos_cap_v2", use_karras_sigmas=True)
    with pytest.raises(ValueError, match=r"set_timesteps\(7\): timestep 998 repeats \(Karras sigmas"):
        ours.set_timesteps(7)
    theirs.set_timesteps(7)
    assert theirs.timesteps.tolist() == [998, 998, 998, 997, 983, 682, 0]
    x = seeded(0)
    for i, t in enumerate(theirs.timesteps[:-1]):
        x = theirs.step(seeded(10 + i), t, x).prev_sample
    with pytest.raises(IndexError):
        theirs.step(seeded(0), theirs.timesteps[-1], x)
    # N = T under linspace repeats t = 499 (report W-3: `--scheduler dpm --steps 1000`); diffusers' loop gives NaN
    ours, theirs = make_pair("dpm", beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction")
    with pytest.raises(ValueError, match=r"set_timesteps\(1000\): timestep \d+ repeats .*fewer steps"):
        ours.set_timesteps(1000)
    theirs.set_timesteps(1000)
    x = seeded(0)
    for t in theirs.timesteps:
        x = theirs.step(seeded(1) * 0.1, t, x).prev_sample
    assert not torch.isfinite(x).all()
    ours.set_timesteps(999)  # every count below T has distinct timesteps


def test_lambda_min_clipped_drops_the_noisiest_timesteps():
    s = DPMSolverMultistepScheduler(lambda_min_clipped=-2.5)
    s.set_timesteps(10)
    assert s.timesteps[0] < 950 and torch.all(s.lambda_t[s.timesteps] >= -2.5)


def test_golden_ten_step_loop():
    # diffusers tests/schedulers/test_scheduler_dpm_multi.py full loop: mean|x| = 0.3301
    scheduler = DPMSolverMultistepScheduler(lower_order_final=False, final_sigmas_type="sigma_min")
    scheduler.set_timesteps(10)
    x = deterministic_sample()
    for t in scheduler.timesteps:
        x = scheduler.step(golden_model(x, t), t, x).prev_sample
    assert x.abs().mean().item() == pytest.approx(0.33015, abs=1e-4)


def test_state_resets_with_set_timesteps_and_begin_index():
    ours, theirs = make_pair("dpm")
    for _ in range(2):  # a second set_timesteps must forget the first run's outputs
        assert_steps_equal(ours, theirs, 5)
    for s in (ours, theirs):
        s.set_timesteps(10)
        s.set_begin_index(4)  # img2img: start midway
    t = theirs.timesteps[4]
    for i in range(3):
        a = ours.step(seeded(i), t, seeded(10 + i)).prev_sample
        b = theirs.step(seeded(i), t, seeded(10 + i)).prev_sample
        torch.testing.assert_close(a, b, **STEP_TOL)
    assert ours.step_index == theirs.step_index == 7


@pytest.mark.parametrize("begin", [None, 3])
def test_add_noise_equal_after_set_timesteps(begin):
    ours, theirs = make_pair("dpm")
    for s in (ours, theirs):
        s.set_timesteps(10)
        if begin is not None:
            s.set_begin_index(begin)
    t = theirs.timesteps[[0, 3, 9]]
    a = ours.add_noise(seeded(0, (3, 3, 4, 4)), seeded(1, (3, 3, 4, 4)), t)
    b = theirs.add_noise(seeded(0, (3, 3, 4, 4)), seeded(1, (3, 3, 4, 4)), t)
    torch.testing.assert_close(a, b, **STEP_TOL)


def test_add_noise_before_set_timesteps_equals_diffusers_and_warns():
    ours, theirs = make_pair("dpm")
    t = torch.tensor([999, 500, 0])
    with pytest.warns(UserWarning, match="DDPMScheduler.add_noise"):
        a = ours.add_noise(seeded(0, (3, 3, 4, 4)), seeded(1, (3, 3, 4, 4)), t)
    torch.testing.assert_close(a, theirs.add_noise(seeded(0, (3, 3, 4, 4)), seeded(1, (3, 3, 4, 4)), t), **STEP_TOL)


def test_return_dict_false_gives_a_one_tuple_as_diffusers():
    ours, theirs = make_pair("dpm")
    for s in (ours, theirs):
        s.set_timesteps(5)
    t = theirs.timesteps[0]
    a = ours.step(seeded(0), t, seeded(1), return_dict=False)
    b = theirs.step(seeded(0), t, seeded(1), return_dict=False)
    assert len(a) == len(b) == 1
    torch.testing.assert_close(a[0], b[0], **STEP_TOL)


@pytest.mark.parametrize(
    "options, field",
    [
        (dict(algorithm_type="sde-dpmsolver++"), "algorithm_type"),
        (dict(solver_type="euler"), "solver_type"),
        (dict(final_sigmas_type="last"), "final_sigmas_type"),
        (dict(solver_order=4), "solver_order"),
        (dict(variance_type="learned_range"), "variance_type"),
        (dict(use_exponential_sigmas=True), "use_exponential_sigmas"),
        (dict(flow_shift=3.0), "flow_shift"),
    ],
)
def test_unimplemented_options_are_refused_by_name(options, field):
    with pytest.raises(ValueError, match=field):
        DPMSolverMultistepScheduler(**options)


def test_diffusers_value_aliases_are_accepted():
    # diffusers maps other solvers' values ("deis", UniPC's "bh2") onto DPM-Solver++ midpoint
    s = DPMSolverMultistepScheduler(algorithm_type="deis", solver_type="bh2")
    assert (s.config["algorithm_type"], s.config["solver_type"]) == ("dpmsolver++", "midpoint")


def test_steps_past_the_end_are_refused():
    s = DPMSolverMultistepScheduler()
    s.set_timesteps(2)
    x = seeded(0)
    for t in s.timesteps:
        x = s.step(seeded(1), t, x).prev_sample
    with pytest.raises(ValueError, match="set_timesteps"):
        s.step(seeded(1), s.timesteps[-1], x)
