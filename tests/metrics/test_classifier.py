"""The scoring classifier: accurate on real validation digits, trained once per data (cached),
and rebuilt — never trusted — when its cache entry is damaged."""
import json
from pathlib import Path

import pytest
import torch

from genmodels.metrics import ClassifierSettings, classifier_accuracy, load_or_train_classifier
from genmodels.metrics import classifier as classifier_module

TINY = ClassifierSettings(width=4, feature_dim=8, epochs=1)


def test_reaches_095_on_real_validation_digits(scorer, digits):
    model, info, _ = scorer
    assert info["cached"] is False and info["val_accuracy"] >= 0.95
    assert classifier_accuracy(model, digits.val.images, digits.val.labels) == pytest.approx(info["val_accuracy"])
    features, logits = model.embed(digits.val.images[:7])
    assert features.shape == (7, 128) and logits.shape == (7, 10)


@pytest.fixture
def counted(monkeypatch):
    """Counts the trainings load_or_train_classifier starts."""
    calls = []
    real = classifier_module.train_classifier

    def train(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(classifier_module, "train_classifier", train)
    return calls


def _small(digits):
    return digits.train.subset(torch.arange(200)), digits.val.subset(torch.arange(50))


def test_second_call_reuses_the_cache(counted, digits, tmp_path):
    train, val = _small(digits)
    first, info1 = load_or_train_classifier(train, val, TINY, cache_dir=tmp_path)
    second, info2 = load_or_train_classifier(train, val, TINY, cache_dir=tmp_path)
    assert len(counted) == 1 and (info1["cached"], info2["cached"]) == (False, True)
    assert info1["val_accuracy"] == info2["val_accuracy"] and Path(info2["path"]).parent == tmp_path / "metrics"
    for a, b in zip(first.state_dict().values(), second.state_dict().values()):
        assert torch.equal(a, b)
    # other data or other settings: another entry, trained
    load_or_train_classifier(digits.train.subset(torch.arange(1, 201)), val, TINY, cache_dir=tmp_path)
    load_or_train_classifier(train, val, ClassifierSettings(width=4, feature_dim=8, epochs=2), cache_dir=tmp_path)
    assert len(counted) == 3


def test_cache_root_is_genmodels_cache(counted, digits, tmp_path, monkeypatch):
    monkeypatch.setenv("GENMODELS_CACHE", str(tmp_path / "c"))
    _, info = load_or_train_classifier(*_small(digits), TINY)
    assert Path(info["path"]).parent == tmp_path / "c" / "metrics"


@pytest.mark.parametrize("damage", ["weights", "meta_json", "meta_key", "weights_gone"])
def test_damaged_cache_is_rebuilt(counted, digits, tmp_path, damage):
    train, val = _small(digits)
    _, info = load_or_train_classifier(train, val, TINY, cache_dir=tmp_path)
    folder = Path(info["path"])
    weights, meta = folder / "model.safetensors", folder / "meta.json"
    if damage == "weights":
        blob = bytearray(weights.read_bytes())
        blob[-5] ^= 0xFF
        weights.write_bytes(bytes(blob))
    elif damage == "meta_json":
        meta.write_text("{not json")
    elif damage == "meta_key":
        meta.write_text(json.dumps({**json.loads(meta.read_text()), "key": "other"}))
    else:
        weights.unlink()
    if damage == "weights_gone":  # an interrupted write: simply missing, rebuilt without a warning
        _, again = load_or_train_classifier(train, val, TINY, cache_dir=tmp_path)
    else:
        with pytest.warns(UserWarning, match="rebuilding the metrics classifier"):
            _, again = load_or_train_classifier(train, val, TINY, cache_dir=tmp_path)
    assert len(counted) == 2 and again["cached"] is False
    _, third = load_or_train_classifier(train, val, TINY, cache_dir=tmp_path)
    assert len(counted) == 2 and third["cached"] is True


def test_training_is_deterministic(digits):
    train, _ = _small(digits)
    a = classifier_module.train_classifier(train, TINY)
    b = classifier_module.train_classifier(train, TINY)
    for x, y in zip(a.state_dict().values(), b.state_dict().values()):
        assert torch.equal(x, y)


def test_larger_images_are_pooled_to_the_input_size(digits):
    model = classifier_module.ImageClassifier(1, 10, width=4, feature_dim=8, input_size=8)
    x = digits.val.images[:3]
    big = x.repeat_interleave(4, -1).repeat_interleave(4, -2)  # (3, 1, 32, 32), each pixel a 4×4 block
    torch.testing.assert_close(model.features(big), model.features(x), rtol=1e-6, atol=1e-6)
