"""One digits split and one scoring classifier (default settings) for the whole session, cached in a
private folder (never the user's ~/.cache)."""
import pytest

from genmodels.data.images import load_images
from genmodels.metrics import load_or_train_classifier


@pytest.fixture(scope="session")
def digits():
    return load_images()


@pytest.fixture(scope="session")
def scorer(digits, tmp_path_factory):
    """``(classifier, info, cache_dir)`` trained once on the digits training split."""
    cache = tmp_path_factory.mktemp("metrics-cache")
    model, info = load_or_train_classifier(digits.train, digits.val, cache_dir=cache)
    return model, info, cache
