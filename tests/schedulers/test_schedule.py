"""β/ᾱ tables and timestep spacings equal to diffusers' exactly (atol 0), and their argument checks."""
import pytest
import torch

from genmodels.schedulers import BETA_SCHEDULES, TIMESTEP_SPACINGS
from genmodels.schedulers.schedule import make_betas, spaced_timesteps

from .common import PAIRS, make_pair

SCALED = dict(beta_start=0.00085, beta_end=0.012)  # Stable Diffusion's


@pytest.mark.parametrize("name", sorted(PAIRS))
@pytest.mark.parametrize("schedule", BETA_SCHEDULES)
@pytest.mark.parametrize("zero_snr", [False, True])
def test_tables_equal_exactly(name, schedule, zero_snr):
    extra = SCALED if schedule == "scaled_linear" else {}
    ours, theirs = make_pair(name, beta_schedule=schedule, rescale_betas_zero_snr=zero_snr, **extra)
    assert torch.equal(ours.betas, theirs.betas)
    assert torch.equal(ours.alphas_cumprod, theirs.alphas_cumprod)
    assert ours.alphas_cumprod.dtype == torch.float32


def test_terminal_alpha_bar_matches_the_reference_table():
    # reference/diffusion.md §1.1: ᾱ_T 4e-5 (linear), 4.7e-3 (scaled_linear at SD's betas), 2.4e-9 (cosine)
    ranges = {s: tuple(SCALED.values()) if s == "scaled_linear" else (1e-4, 0.02) for s in BETA_SCHEDULES}
    bar = {s: torch.cumprod(1 - make_betas(1000, *ranges[s], s), 0)[-1].item() for s in BETA_SCHEDULES}
    assert bar["linear"] == pytest.approx(4.04e-5, rel=0.01)
    assert bar["scaled_linear"] == pytest.approx(4.68e-3, rel=0.01)
    assert bar["squaredcos_cap_v2"] == pytest.approx(2.4e-9, rel=0.05)
    zero = torch.cumprod(1 - make_betas(1000, 1e-4, 0.02, "linear", rescale_betas_zero_snr=True), 0)
    assert zero[-1].item() == 0.0


def test_trained_betas_used_as_given():
    betas = torch.linspace(1e-3, 0.05, 50).tolist()
    ours, theirs = make_pair("ddim", num_train_timesteps=50, trained_betas=betas)
    assert torch.equal(ours.alphas_cumprod, theirs.alphas_cumprod)
    with pytest.raises(ValueError, match="trained_betas"):
        make_pair("ddim", num_train_timesteps=40, trained_betas=betas)


@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # diffusers' own
@pytest.mark.parametrize("name", sorted(PAIRS))
@pytest.mark.parametrize("spacing", TIMESTEP_SPACINGS)
@pytest.mark.parametrize("train", [1000, 100])
def test_timesteps_equal_for_every_step_count(name, spacing, train):
    for offset in (0, 1):
        ours, theirs = make_pair(name, num_train_timesteps=train, timestep_spacing=spacing, steps_offset=offset)
        for n in [*range(1, 60), 99, 100, 333, 999, 1000]:
            if n > train:
                continue
            theirs.set_timesteps(n)
            if name == "dpm" and len(set(theirs.timesteps.tolist())) < n:  # a repeat: refused (test_dpm_solver)
                with pytest.raises(ValueError, match=r"set_timesteps\(\d+\): timestep \d+ repeats"):
                    ours.set_timesteps(n)
                continue
            ours.set_timesteps(n)
            assert ours.timesteps.tolist() == theirs.timesteps.tolist(), (n, offset)


def test_spacings_as_documented():
    # reference/diffusion.md §1.1, T=1000, N=10
    assert spaced_timesteps("leading", 1000, 10, 0).tolist() == list(range(900, -1, -100))
    assert spaced_timesteps("trailing", 1000, 10, 0).tolist() == list(range(999, 0, -100))
    assert spaced_timesteps("linspace", 1000, 10, 0).tolist() == [999, 888, 777, 666, 555, 444, 333, 222, 111, 0]


@pytest.mark.parametrize("name", sorted(PAIRS))
@pytest.mark.parametrize(
    "config, field",
    [
        (dict(beta_schedule="cosine"), "beta_schedule"),
        (dict(prediction_type="noise"), "prediction_type"),
        (dict(timestep_spacing="uniform"), "timestep_spacing"),
        (dict(num_train_timesteps=0), "num_train_timesteps"),
        (dict(beta_end=2.0), "beta_end"),
        (dict(steps_offset=-1), "steps_offset"),
        (dict(dynamic_thresholding_ratio=1.5), "dynamic_thresholding_ratio"),
        (dict(thresholding="False"), "thresholding"),
        (dict(rescale_betas_zero_snr=1), "rescale_betas_zero_snr"),
    ],
)
def test_bad_arguments_name_the_field(name, config, field):
    with pytest.raises(ValueError, match=field):
        PAIRS[name][0](**config)


@pytest.mark.parametrize("name", sorted(PAIRS))
@pytest.mark.parametrize("steps", [0, 1001, 2.5, "10", True])
def test_bad_step_counts_name_the_argument(name, steps):
    with pytest.raises(ValueError, match="num_inference_steps"):
        PAIRS[name][0]().set_timesteps(steps)
