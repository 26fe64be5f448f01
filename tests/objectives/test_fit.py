"""Many objectives per family (issue #20 d2): an objective states what a model must offer; any objective that
fits trains any family, the family keeps a default for ``auto``, and a mismatch is one line naming
train.objective and what the model lacks."""
from __future__ import annotations

import pytest

from genmodels.config import ConfigError
from genmodels.objectives import OBJECTIVES, CausalLM, objective_for
from genmodels.training import RunConfig


class Twin(CausalLM):
    """Another objective for generating models (as SFT, DPO or gist training will be)."""

    name = "twin"


@pytest.fixture
def twin(monkeypatch):
    monkeypatch.setitem(OBJECTIVES, "twin", Twin)


def test_any_fitting_objective_trains_any_family(twin):
    for family in ("decoder", "retnet"):
        assert objective_for(family, "auto") == "causal"  # the family's default
        assert objective_for(family, "twin") == "twin"
    cfg = RunConfig.from_dict({"model": {"preset": "retnet-tiny"}, "train": {"objective": "twin"}})
    assert cfg.objective() == "twin" and cfg.train.objective.name == "twin"
    cfg = RunConfig.from_dict({"model": {"preset": "gpt2-tiny"}, "train": {"objective": {"name": "twin"}}})
    assert cfg.to_dict()["train"]["objective"]["name"] == "twin"


@pytest.mark.parametrize("preset, objective, lacks", [
    ("bert-tiny", "causal", "the 'generates' capability"),
    ("t5-tiny", "causal", "hidden_states() (Seq2SeqLM has none)"),
    ("llama-tiny", "mlm", "the 'embeds' capability"),
    ("unet-digits", "gan", "the model field 'z_dim'"),
])
def test_a_mismatch_is_one_line_naming_the_objective_and_what_the_model_lacks(preset, objective, lacks):
    with pytest.raises(ConfigError) as e:
        RunConfig.from_dict({"model": {"preset": preset}, "train": {"objective": objective}})
    msg = str(e.value)
    assert f"train.objective={objective!r}" in msg and lacks in msg and "\n" not in msg, msg
