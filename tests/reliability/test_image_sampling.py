"""Image sampling never returns or writes a wrong image, and its memory is bounded by the chunk (report
2026-12-07 W-3, B-5, B-13, B-15, B-23).

- Non-finite samples are refused with the cause: NaN weights (before any work), ``--guidance`` too large
  (at the step that overflows), a DPM schedule that repeats timesteps (before the first step); nothing is
  written by ``genmodels sample``, ``save_grid`` or the end-of-run grid.
- The network sees at most ``batch_size`` images per call, and the result equals the one-batch result
  (x_T and the scheduler's noise are drawn for all n at once).
- Seeds, labels, the default step count and ``evaluate --n`` are checked naming the flag."""
from __future__ import annotations

import types
from pathlib import Path

import numpy as np
import pytest
import torch

import genmodels
from genmodels.cli import main
from genmodels.generation import images
from genmodels.generation.images import sample, save_grid
from genmodels.models import sampling


def _unet(**kw):
    torch.manual_seed(0)
    m = genmodels.build_model(genmodels.preset("unet-digits", block_out_channels=[8, 16], norm_num_groups=4, **kw))
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0, 0.2)
    return m.eval()


@pytest.fixture(scope="module")
def model():
    return _unet()


@pytest.fixture(scope="module")
def nan_folder(tmp_path_factory) -> Path:
    m = _unet()
    with torch.no_grad():
        m.time_embed.fc1.weight[0, 0] = float("nan")
    return genmodels.export_diffusers(m, tmp_path_factory.mktemp("nan") / "df")


def _no_file_and_one_error(capsys, out: Path) -> str:
    _, err = capsys.readouterr()
    assert not out.exists() and not list(out.parent.glob(".*tmp*")), "a file was written"
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: "), err
    return err


# ---- W-3: non-finite samples are never returned or written ------------------------------------------
def test_nan_weights_are_refused_before_sampling_naming_the_parameter(nan_folder, tmp_path, capsys):
    m = genmodels.load(nan_folder)
    with pytest.raises(ValueError, match=r"weights are not finite \(time_embed.fc1.weight holds NaN"):
        sample(m, n=2, steps=2)
    out = tmp_path / "nan.png"
    assert main(["sample", str(nan_folder), "--n", "2", "--steps", "2", "--out", str(out), "--no-progress"]) == 2
    assert "time_embed.fc1.weight" in _no_file_and_one_error(capsys, out)


def test_guidance_too_large_stops_at_the_step_that_overflows_naming_guidance(model, tmp_path, capsys):
    with pytest.raises(ValueError, match=r"at step \d of 3 .*guidance=1e\+30 \(--guidance\) amplifies"):
        sample(model, n=2, labels=3, steps=3, guidance=1e30, seed=0)
    folder = genmodels.save(model, tmp_path / "m")
    out = tmp_path / "g.png"
    assert main(["sample", str(folder), "--n", "2", "--steps", "3", "--guidance", "1e30", "--out", str(out),
                 "--no-progress"]) == 2
    assert "--guidance" in _no_file_and_one_error(capsys, out)


def test_dpm_with_repeated_timesteps_is_refused_before_the_first_step(tmp_path, capsys):
    m = _unet(num_train_timesteps=50)
    with pytest.raises(ValueError, match=r"steps=50 \(--steps\) with scheduler=dpm \(--scheduler\): "
                                         r"set_timesteps\(50\): timestep \d+ repeats"):
        sample(m, n=2, steps=50, scheduler="dpm")
    assert sample(m, n=2, steps=49, scheduler="dpm", seed=0).isfinite().all()


def test_save_grid_refuses_non_finite_images(tmp_path):
    x = torch.zeros(4, 1, 8, 8)
    x[1, 0, 2, 2] = float("nan")
    with pytest.raises(ValueError, match="finite floating-point images in \\[-1, 1\\]; 1 of 256 values are NaN"):
        save_grid(x, tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


def test_the_end_of_run_grid_is_not_written_from_nan_weights_and_says_why(nan_folder, tmp_path):
    from genmodels.objectives import build_objective
    said: list[str] = []
    model = genmodels.load(nan_folder)
    ctx = types.SimpleNamespace(sample=types.SimpleNamespace(n=4, seed=0, steps=2, scheduler="ddim", guidance=None),
                                say=said.append, run_dir=tmp_path)
    assert build_objective("diffusion", model, ema_decay=0).samples(model, ctx) == []  # (the image objectives' grid)
    assert not (tmp_path / "samples.png").exists()
    assert len(said) == 1 and "samples.png not written" in said[0] and "time_embed.fc1.weight" in said[0]


# ---- B-5: memory bounded by the chunk, results as one batch ------------------------------------------
@pytest.mark.parametrize("scheduler, guidance", [("ddpm", 2.0), ("dpm", None)])
def test_sampling_runs_in_chunks_and_equals_the_one_batch_result(model, monkeypatch, scheduler, guidance):
    whole = sample(model, n=10, steps=4, scheduler=scheduler, guidance=guidance, seed=7, batch_size=10)
    seen: list[int] = []
    real = images._denoiser

    def recording(*a):
        net = real(*a)
        return lambda x, t, class_labels=None: seen.append(len(x)) or net(x, t, class_labels=class_labels)

    monkeypatch.setattr(images, "_denoiser", recording)
    chunked = sample(model, n=10, steps=4, scheduler=scheduler, guidance=guidance, seed=7, batch_size=3)
    per_call = 6 if guidance else 3  # guided: one forward over [x; x]
    assert max(seen) == per_call and len(seen) == 4 * 4  # 4 chunks (3+3+3+1) × 4 steps
    torch.testing.assert_close(chunked, whole, rtol=0, atol=1e-6)


def test_the_default_chunk_is_bounded_by_pixels_and_a_gan_samples_in_chunks(monkeypatch):
    assert images.default_batch_size(genmodels.preset("unet-digits")) == 1024
    assert images.default_batch_size(genmodels.preset("unet-ddpm-cifar10")) == 64
    torch.manual_seed(0)
    gan = genmodels.build_model(genmodels.preset("dcgan-digits")).eval()
    whole = sample(gan, n=10, seed=3)
    seen: list[int] = []
    gan.generator.register_forward_pre_hook(lambda mod, args: seen.append(len(args[0])))
    monkeypatch.setattr(sampling, "SAMPLE_PIXELS", 4 * 8 * 8)  # 4 images of 8×8 per call
    torch.testing.assert_close(sample(gan, n=10, seed=3), whole, rtol=0, atol=1e-6)
    assert seen == [4, 4, 2]


def test_a_gan_takes_an_explicit_batch_size():
    """sample(batch_size=) bounds the GAN's generator calls too (it was ignored: one call of the default)."""
    torch.manual_seed(0)
    gan = genmodels.build_model(genmodels.preset("dcgan-digits")).eval()
    whole = sample(gan, n=7, seed=3)
    seen: list[int] = []
    gan.generator.register_forward_pre_hook(lambda mod, args: seen.append(len(args[0])))
    torch.testing.assert_close(sample(gan, n=7, seed=3, batch_size=3), whole, rtol=0, atol=1e-6)
    assert seen == [3, 3, 1]


# ---- B-15, B-23: arguments named as the user wrote them -----------------------------------------------
@pytest.mark.parametrize("seed", [2 ** 64, 2 ** 70, -1])
def test_seeds_outside_the_generator_range_are_refused_by_the_one_seed_check(model, seed):
    with pytest.raises(ValueError, match=rf"seed={seed} \(--seed\) must be None or an integer with 0 <= seed < 2\*\*64"):
        sample(model, n=2, steps=1, seed=seed)


def test_cli_seed_2_to_the_64_is_one_line(model, tmp_path, capsys):
    folder = genmodels.save(model, tmp_path / "m")
    out = tmp_path / "s.png"
    assert main(["sample", str(folder), "--n", "2", "--steps", "1", "--seed", str(2 ** 64), "--out", str(out)]) == 2
    assert "(--seed)" in _no_file_and_one_error(capsys, out)


def test_one_class_index_of_any_integer_type_is_one_class(model):
    want = sample(model, n=3, labels=3, steps=2, seed=1)
    for label in (np.int64(3), np.int32(3), torch.tensor(3)):
        assert torch.equal(sample(model, n=3, labels=label, steps=2, seed=1), want)
    for bad in (np.True_, torch.tensor(True), np.int64(10), 10 ** 30):
        with pytest.raises(ValueError, match="--class"):
            sample(model, n=3, labels=bad, steps=2)


def test_a_default_step_count_the_model_cannot_take_names_steps_and_the_default():
    m = _unet(num_train_timesteps=1)
    with pytest.raises(ValueError, match=r"steps \(--steps\) is not set and its default, 25, is more than the "
                                         r"model's num_train_timesteps=1; set it to at most 1"):
        sample(m, n=2)
    assert sample(m, n=2, steps=1, seed=0).shape == (2, 1, 8, 8)


@pytest.mark.parametrize("n", ["1", "3"])
def test_evaluate_too_few_samples_names_n_and_its_minimum(model, tmp_path, capsys, n):
    folder = genmodels.save(model, tmp_path / "m")
    assert main(["evaluate", str(folder), "--n", n]) == 2
    _, err = capsys.readouterr()
    assert err.startswith(f"error: --n {n} is too few: the metrics need at least 4 samples")


# ---- B-13: evaluate names what it scores against ----------------------------------------------------------
def test_evaluate_outside_a_run_names_the_digits_and_warns_when_the_model_is_not_8x8_grey(tmp_path):
    from genmodels.cli_images import _reference
    ref, where = _reference(str(tmp_path), genmodels.preset("unet-digits"))
    assert "digits at 8x8, 1 channel(s)" in where and "not a run" in where
    with pytest.warns(UserWarning, match=r"not a training run, so it is scored against the digits resized to 32x32 "
                                         r"with 3 channel\(s\)"):
        ref, where = _reference(str(tmp_path), genmodels.preset("unet-ddpm-cifar10"))
    assert (ref.image_size, ref.channels) == (32, 3) and "digits at 32x32, 3 channel(s)" in where
    with pytest.raises(ValueError, match="not a training run .* this model makes 12x12 images"):
        _reference(str(tmp_path), genmodels.preset("unet-digits", image_size=12))
