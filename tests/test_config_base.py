"""The strict config base every family's config uses (issue #9, deliverable 2): nested and list
fields built from dicts, unknown keys and bad values named by their dotted path, JSON round trip."""
from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from genmodels import ConfigError, ModelConfig
from genmodels.config import StrictConfig

MIXERS = ("attention", "retention")


@dataclass
class Block(StrictConfig):
    mixer: str = "attention"
    width: int = 8
    gate: bool | None = None

    def validate(self) -> None:
        if self.mixer not in MIXERS:
            raise ConfigError(f"{self.where('mixer')}={self.mixer!r} is not allowed; choose one of {', '.join(MIXERS)}")


@dataclass
class Net(StrictConfig):
    blocks: list[Block] = field(default_factory=lambda: [Block()])
    head: Block | None = None
    scale: float = 1.0
    tags: list[str] = field(default_factory=list)


def test_a_bad_value_in_a_list_of_configs_is_named_by_its_dotted_path():
    with pytest.raises(ConfigError, match=r"^model\.blocks\[2\]\.mixer='mamba' is not allowed; choose one of "
                                          r"attention, retention$"):
        Net.from_dict({"blocks": [{}, {"mixer": "retention"}, {"mixer": "mamba"}]})


def test_an_unknown_nested_key_is_named_with_the_allowed_ones():
    with pytest.raises(ConfigError, match=r"unknown model\.blocks\[1\] config key\(s\): mixr; "
                                          r"allowed keys: gate, mixer, width"):
        Net.from_dict({"blocks": [{}, {"mixr": "attention"}]})


@pytest.mark.parametrize("d,message", [
    ({"blocks": [{"width": "8"}]}, r"model\.blocks\[0\]\.width='8' must be an integer"),
    ({"blocks": [{"width": True}]}, r"model\.blocks\[0\]\.width=True must be an integer"),
    ({"blocks": [{"gate": 1}]}, r"model\.blocks\[0\]\.gate=1 must be true, false or null"),
    ({"blocks": {"mixer": "attention"}}, r"model\.blocks=\{'mixer': 'attention'\} must be a list"),
    ({"head": 3}, r"model\.head=3 must be a mapping"),
    ({"head": {"mixer": "x"}}, r"model\.head\.mixer='x' is not allowed"),
    ({"scale": "big"}, r"model\.scale='big' must be a number"),
    ({"tags": ["a", 2]}, r"model\.tags\[1\]=2 must be a string"),
])
def test_a_bad_type_anywhere_is_named_by_its_dotted_path(d, message):
    with pytest.raises(ConfigError, match=message):
        Net.from_dict(d)


def test_nested_configs_are_built_and_round_trip_through_dicts(tmp_path):
    net = Net.from_dict({"blocks": [{"mixer": "retention", "width": 4}, {}], "head": {"gate": True},
                         "scale": 2, "tags": ["x"]})
    assert isinstance(net.blocks[0], Block) and net.blocks[0].mixer == "retention" and net.head.gate is True
    assert Net.from_dict(net.to_dict()) == net
    net.save(tmp_path / "net.json")
    assert Net.load(tmp_path / "net.json") == net
    assert net.replace(scale=3.0).blocks == net.blocks


def test_direct_construction_is_checked_like_from_dict():
    with pytest.raises(ConfigError, match=r"^model\.scale='x' must be a number$"):
        Net(scale="x")
    with pytest.raises(ConfigError, match=r"^model\.mixer='mamba' is not allowed"):
        Block(mixer="mamba")


def test_model_config_is_a_strict_config_and_keeps_its_json():
    """Today's transformer config sits on the base with its name, fields and config.json layout."""
    cfg = ModelConfig(d_model=64, n_heads=4, d_ff=128, vocab_size=100)
    assert isinstance(cfg, StrictConfig)
    assert list(cfg.to_dict())[:3] == ["family", "vocab_size", "d_model"] and "_path" not in cfg.to_dict()
    with pytest.raises(ConfigError, match=r"^model\.n_heads='4' must be an integer$"):
        ModelConfig.from_dict({"n_heads": "4"})
    with pytest.raises(ConfigError, match=r"unknown model config key\(s\): n_expert; allowed keys: .*n_heads"):
        ModelConfig.from_dict({"n_expert": 8})
