"""The SPAE objective (objectives/spae.py): its loss against the definition, the semantic targets, its refusals."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from genmodels.config import ConfigError
from genmodels.objectives.spae import SPAEObjective, SPAEOptions
from genmodels.semantics import semantic_targets
from tests.models.spae.test_spae import tiny_model


def test_semantic_targets_are_uniform_over_each_class_top_k_words():
    rel = torch.tensor([[0.1, 0.9, 0.5, 0.2], [0.7, 0.1, 0.2, 0.8]])
    q = semantic_targets(rel, 2)
    assert torch.equal(q, torch.tensor([[0, .5, .5, 0], [.5, 0, 0, .5]]))


def test_the_loss_is_pixel_plus_vq_terms_plus_the_semantic_cross_entropy():
    torch.manual_seed(0)
    model = tiny_model().train()
    k = model.config.codebook_size
    targets = semantic_targets(torch.randn(10, k), 3)
    o = SPAEOptions(beta=0.3, codebook_weight=0.7, semantic_weight=0.2, temperature=2.0)
    obj = SPAEObjective(model, o, targets)
    x, y = torch.rand(4, 1, 8, 8) * 2 - 1, torch.tensor([7, 1, 0, 7])
    loss, metrics = obj({"images": x, "labels": y})
    torch.manual_seed(0)
    out, recons = model(x)
    pixel = sum(F.mse_loss(r, x) for r in recons) / 3
    logits = -((out.top[:, None, :] - model.codebook.table()[None]) ** 2).sum(-1) / 2.0
    ce = -(targets[y] * logits.log_softmax(-1)).sum(-1).mean()
    want = pixel + 0.7 * out.codebook + 0.3 * out.commitment + 0.2 * ce
    assert torch.allclose(loss, want, rtol=1e-5) and torch.allclose(metrics["semantic"], ce, rtol=1e-5)


def test_the_semantic_loss_moves_the_top_word_toward_the_class_targets():
    """A few steps on the semantic loss alone make the top-layer word one of the class's target words."""
    torch.manual_seed(0)
    model = tiny_model().train()
    k = model.config.codebook_size
    targets = torch.zeros(10, k)
    targets[torch.arange(10), torch.arange(10)] = 1.0  # class c's target: codebook word c ("zero", "one", …)
    obj = SPAEObjective(model, SPAEOptions(semantic_weight=1.0, beta=0.0, codebook_weight=0.0), targets)
    x, y = torch.rand(20, 1, 8, 8) * 2 - 1, torch.arange(20) % 10
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(60):
        out, _ = model(x)
        logits = -torch.cdist(out.top, model.codebook.table()).pow(2)
        loss = -(targets[y] * logits.log_softmax(-1)).sum(-1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    _, metrics = obj({"images": x, "labels": y})
    assert float(metrics["top_hit"]) >= 0.9


@pytest.mark.parametrize("field, value, message", [
    ("semantic_top_k", 0, r"train\.objective\.semantic_top_k=0 must be"),
    ("temperature", 0.0, r"train\.objective\.temperature=0\.0 must be"),
    ("class_words", [], r"train\.objective\.class_words=\[\] must be one word per class"),
    ("beta", -1.0, r"train\.objective\.beta=-1\.0 must be"),
])
def test_options_refuse_bad_values_naming_the_option(field, value, message):
    with pytest.raises(ConfigError, match=message):
        SPAEOptions.from_dict({"name": "spae", field: value}, "train.objective")


def test_a_recipe_whose_model_cannot_carry_the_semantic_loss_is_refused():
    from genmodels.training import RunConfig
    base = {"model": {"preset": "spae-tiny", "levels": [2, 4]}, "data": {"source": "digits"},
            "train": {"objective": {"name": "spae"}}}
    with pytest.raises(ConfigError, match=r"semantic_weight=0\.5 needs a one-token top layer"):
        RunConfig.from_dict(base)
    with pytest.raises(ConfigError, match=r"model\.image_size=8 differs from data\.image_size=16"):
        RunConfig.from_dict({**base, "model": {"preset": "spae-tiny"}, "data": {"source": "digits", "image_size": 16}})
    with pytest.raises(ConfigError, match=r"unknown sample key|sample\.steps"):
        RunConfig.from_dict({**base, "model": {"preset": "spae-tiny"}, "sample": {"steps": 3}})
