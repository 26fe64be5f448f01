"""evaluate_images on digits: real images score as real, noise and collapse do not; bad inputs are named."""
import pytest
import torch

from genmodels.metrics import evaluate_images, kid
from genmodels.metrics.evaluate import feature_scale


def _eval(scorer, digits, samples, labels=None, **kw):
    model, _, cache = scorer
    return evaluate_images(samples, labels, digits, cache_dir=cache, **kw)


def test_kid_near_zero_for_two_real_halves_and_large_for_noise(scorer, digits):
    model = scorer[0]
    feats, _ = model.embed(digits.train.images)
    feats = feats * feature_scale(feats)
    g = torch.Generator().manual_seed(0)
    perm = torch.randperm(len(feats), generator=g)
    halves, _ = kid(feats[perm[:700]], feats[perm[700:1400]], subsets=20, subset_size=500)
    noise, _ = model.embed(torch.rand(700, 1, 8, 8, generator=g) * 2 - 1)
    noisy, _ = kid(feats[perm[:700]], noise * feature_scale(feats), subsets=20, subset_size=500)
    assert abs(halves) < 0.01 and noisy > 0.3


def test_real_validation_images_score_as_real(scorer, digits):
    out = _eval(scorer, digits, digits.val.images, digits.val.labels)
    assert out["n_samples"] == 360 and out["n_reference"] == 1437
    assert out["accuracy"] >= 0.95 and out["classifier_val_accuracy"] >= 0.95
    assert abs(out["kid"]) < 0.03 and out["precision"] > 0.8 and out["recall"] > 0.8 and out["fid"] < 1.0
    noise = _eval(scorer, digits, torch.rand(360, 1, 8, 8) * 2 - 1, digits.val.labels)
    assert noise["accuracy"] < 0.3 and noise["kid"] > 0.3 and noise["precision"] < 0.3 and noise["fid"] > 10


def test_identical_set_is_one_one_and_collapse_has_low_recall(scorer, digits):
    same = _eval(scorer, digits, digits.train.images, fid=False)
    assert (same["precision"], same["recall"]) == (1.0, 1.0) and "fid" not in same and "accuracy" not in same
    collapsed = _eval(scorer, digits, digits.train.images[:1].expand(500, -1, -1, -1).contiguous())
    assert collapsed["precision"] == 1.0 and collapsed["recall"] < 0.05 and collapsed["kid"] > 0.3


def test_bad_inputs_are_named(scorer, digits):
    x = digits.val.images[:10]
    with pytest.raises(ValueError, match=r"samples must be a \(N, 1, 8, 8\)"):
        _eval(scorer, digits, x[:, :, :4])
    with pytest.raises(ValueError, match="samples must be finite"):
        _eval(scorer, digits, torch.full_like(x, float("nan")))
    with pytest.raises(ValueError, match=r"labels must be class indices in \[0, 10\)"):
        _eval(scorer, digits, x, torch.full((10,), 10))
    with pytest.raises(ValueError, match=r"labels must be an integer tensor of shape \(10,\)"):
        _eval(scorer, digits, x, torch.zeros(9, dtype=torch.long))
    with pytest.raises(ValueError, match=r"subset_size=11 must be in \[2, 10\]"):
        _eval(scorer, digits, x, kid_subset_size=11)
    with pytest.raises(TypeError, match="reference must be"):
        evaluate_images(x, reference="digits")


def test_reference_from_a_data_section(scorer, tmp_path):
    model = scorer[0]
    x = torch.rand(20, 1, 8, 8) * 2 - 1
    out = evaluate_images(x, reference={"source": "digits", "seed": 0}, classifier=model)
    assert out["classifier_val_accuracy"] is None and out["n_reference"] == 1437
