"""Diffusion training end to end (#13): a short unet-digits run whose guided samples the cached
classifier reads as the asked-for digit far above chance (0.1), and the objective's loss per
prediction type and min-SNR weighting against hand computations. Bounded by steps, one thread.
(Resume exactness of a diffusion run: tests/reliability/test_resume.py, the ``diffusion`` case.)"""
from __future__ import annotations

import json

import pytest
import torch

import genmodels
import genmodels.schedulers
from genmodels.objectives.diffusion import DiffusionObjective, ema_decay_at, min_snr_weight
from genmodels.training import RunConfig, train

TINY = {"preset": "unet-digits", "block_out_channels": [8, 16], "norm_num_groups": 4}


def test_short_run_samples_the_asked_for_digits(tmp_path):
    """150 steps of the digits recipe (batch 64): guided DDIM-10 samples are read as their class far above
    chance. Measured: accuracy 0.94 after 250 steps; a noise/target mismatch stays near 0.1."""
    cfg = RunConfig.from_dict({
        "model": {"preset": "unet-digits"}, "data": {"source": "digits"}, "run_dir": str(tmp_path / "run"),
        "train": {"batch_size": 64, "lr": 2e-3, "min_lr": 1e-4, "warmup_steps": 10, "max_steps": 150,
                  "eval_every": 1000, "ckpt_every": 1000, "eval_batches": 1, "eval_samples": 100, "threads": 1,
                  "weight_decay": 0.0, "betas": [0.9, 0.999], "mfu_peak_tflops": 1.0, "seed": 0},
        "sample": {"n": 10, "steps": 10, "guidance": 1.5}})
    res = train(cfg, progress=False, log=lambda s: None)
    assert res.image_metrics["accuracy"] >= 0.5, res.image_metrics
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["accuracy"] == res.image_metrics["accuracy"] and "images_s" in records[0]
    assert (tmp_path / "run" / "samples.png").is_file() and (tmp_path / "run" / "loss.png").is_file()


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
@pytest.mark.parametrize("gamma", [None, 5.0])
def test_loss_is_the_weighted_mse_to_the_target(prediction_type, gamma):
    torch.manual_seed(0)
    model = genmodels.build_model(genmodels.preset("unet-digits", **{k: v for k, v in TINY.items() if k != "preset"},
                                                   prediction_type=prediction_type))
    obj = DiffusionObjective(model, class_dropout=0.0, ema_decay=0, min_snr_gamma=gamma)
    x0, y = torch.rand(6, 1, 8, 8) * 2 - 1, torch.arange(6)
    g = torch.Generator().manual_seed(3)
    loss, _ = obj({"images": x0, "labels": y}, generator=g)
    g = torch.Generator().manual_seed(3)  # the same draws, by hand
    t = torch.randint(0, 1000, (6,), generator=g)
    eps = torch.randn(x0.shape, generator=g)
    sched = genmodels.schedulers.DDPMScheduler(beta_schedule="squaredcos_cap_v2", prediction_type=prediction_type)
    x_t = sched.add_noise(x0, eps, t)
    target = {"epsilon": eps, "v_prediction": sched.get_velocity(x0, eps, t), "sample": x0}[prediction_type]
    mse = (model(x_t, t, class_labels=y) - target).square().mean((1, 2, 3))
    if gamma:
        abar = sched.alphas_cumprod[t]
        snr = abar / (1 - abar)
        kept = torch.clamp(snr, max=gamma)
        mse = mse * {"epsilon": kept / snr, "v_prediction": kept / (snr + 1), "sample": kept}[prediction_type]
    torch.testing.assert_close(loss, mse.mean(), rtol=1e-5, atol=1e-6)


def test_min_snr_weight_values():
    snr = torch.tensor([0.5, 5.0, 50.0])
    torch.testing.assert_close(min_snr_weight(snr, 5.0, "epsilon"), torch.tensor([1.0, 1.0, 0.1]))
    torch.testing.assert_close(min_snr_weight(snr, 5.0, "v_prediction"), torch.tensor([0.5 / 1.5, 5 / 6, 5 / 51]))
    torch.testing.assert_close(min_snr_weight(snr, 5.0, "sample"), torch.tensor([0.5, 5.0, 5.0]))


def test_label_dropout_uses_the_null_label_and_ema_follows_the_warm_up():
    torch.manual_seed(0)
    model = genmodels.build_model(genmodels.preset("unet-digits", block_out_channels=[8, 16], norm_num_groups=4))
    obj = DiffusionObjective(model, class_dropout=0.5, ema_decay=0.999)
    y = torch.zeros(1000, dtype=torch.int64)
    dropped = obj._labels(y, 1000, "cpu", torch.Generator().manual_seed(0))
    assert set(dropped.tolist()) == {0, 10} and 400 < int((dropped == 10).sum()) < 600
    obj.eval()
    assert torch.equal(obj._labels(y, 1000, "cpu", None), y)  # no dropout in evaluation
    before = [p.clone() for p in obj.ema.parameters()]
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    obj.after_step(1)
    d = ema_decay_at(0.999, 1)
    assert d == pytest.approx(2 / 11)
    for b, e, p in zip(before, obj.ema.parameters(), model.parameters()):
        torch.testing.assert_close(e, d * b + (1 - d) * p)
    assert ema_decay_at(0.999, 10**6) == 0.999
    final = obj.final_state({**{f"ema.{k}": v for k, v in obj.ema.state_dict().items()}, **model.state_dict()})
    assert all(torch.equal(final[k], v) for k, v in obj.ema.state_dict().items())


def test_bad_train_fields_are_named():
    base = {"model": {"preset": "unet-digits"}, "data": {"source": "digits"}}
    for section, field in (({"class_dropout": 1.5}, "train.class_dropout"), ({"ema_decay": 1.0}, "train.ema_decay"),
                         ({"min_snr_gamma": 0}, "train.min_snr_gamma"), ({"mlm_prob": 0.2}, "train.mlm_prob"),
                         ({"loss_chunk": 64}, "train.loss_chunk")):
        with pytest.raises(genmodels.ConfigError, match=field.replace(".", r"\.")):
            RunConfig.from_dict({**base, "train": section})
    with pytest.raises(genmodels.ConfigError, match=r"train\.class_dropout"):
        RunConfig.from_dict({"model": {"preset": "unet-digits", "num_classes": 0}, "data": {"source": "digits"},
                             "train": {"class_dropout": 0.1}})
    with pytest.raises(genmodels.ConfigError, match=r"data config key\(s\): seq_len"):
        RunConfig.from_dict({**base, "data": {"seq_len": 8}})
    with pytest.raises(genmodels.ConfigError, match=r"train\.eval_samples"):
        RunConfig.from_dict({"train": {"eval_samples": 10}})  # (llama-tiny: a token family)
