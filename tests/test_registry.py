"""The family registry (issue #9, deliverables 1 and 6): a family registered once is built, preset,
read from dicts, saved and loaded, and generated from by its capabilities, never by its name; unknown
families and presets list the known ones; exporters refuse, naming it, any field they do not handle."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass

import pytest
import torch

import genmodels
from genmodels import ConfigError, ModelConfig, registry
from genmodels.cli import main
from genmodels.config import StrictConfig
from genmodels.generation import decode
from genmodels.generation.seq2seq import generate_seq2seq
from genmodels.interop.base import ANY, ConversionError, require_exportable
from genmodels.interop.diffusers_unet import DiffusersUNetConverter
from genmodels.interop.hf import CONVERTERS, converter_for_config
from genmodels.training.config import RunConfig
from tests.helpers.tiny import randomise

TINY = dict(vocab_size=64, d_model=32, n_layers=1, n_heads=2, d_ff=64, max_seq_len=32)
PRESET_OF = {"gpt2": "gpt2-tiny", "llama": "llama-tiny", "mistral": "mistral-7b", "bert": "bert-tiny",
             "t5": "t5-tiny"}


def tiny(model_type: str, **kw) -> ModelConfig:
    extra = dict(n_kv_heads=2, sliding_window=8) if model_type == "mistral" else {}
    extra.update(head_dim=16) if model_type == "t5" else None
    return genmodels.preset(PRESET_OF[model_type], **{**TINY, **extra, **kw})


# ---- a family that is not a transformer --------------------------------------------------------
@dataclass
class ToyConfig(StrictConfig):
    family: str = "toy"
    width: int = 4


class ToyModel(torch.nn.Module):
    family = "toy"

    def __init__(self, config: ToyConfig):
        super().__init__()
        self.config = config
        self.proj = torch.nn.Linear(config.width, config.width)


class ToyCounts:
    @staticmethod
    def parameter_count(cfg: ToyConfig) -> int:
        return cfg.width * cfg.width + cfg.width


@pytest.fixture
def toy(monkeypatch):
    fam = registry.Family(name="toy", config_class=ToyConfig, model_class=ToyModel,
                          presets={"toy-small": lambda **kw: ToyConfig.from_dict({"width": 3, **kw})},
                          counts=ToyCounts)
    monkeypatch.setitem(registry._FAMILIES, "toy", fam)  # removed again after the test
    return fam


def test_a_registered_family_is_built_preset_read_saved_and_loaded(toy, tmp_path):
    cfg = genmodels.preset("toy-small", width=5)
    assert isinstance(cfg, ToyConfig) and cfg.width == 5
    assert registry.config_from_dict({"family": "toy", "width": 2}) == ToyConfig(width=2)
    model = genmodels.build_model(cfg)
    assert isinstance(model, ToyModel)
    genmodels.save(model, tmp_path / "toy")
    back = genmodels.load(tmp_path / "toy")
    assert isinstance(back, ToyModel) and back.config == cfg
    torch.testing.assert_close(back.proj.weight, model.proj.weight, rtol=0, atol=0)


def test_info_describes_a_family_without_transformer_fields(toy, tmp_path, capsys):
    """`genmodels info` asks the family (counts, config) instead of assuming a transformer config."""
    genmodels.save(genmodels.build_model(genmodels.preset("toy-small")), tmp_path / "toy")
    assert main(["info", str(tmp_path / "toy"), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert (info["family"], info["parameters"], info["config"]) == ("toy", 12, {"family": "toy", "width": 3})
    assert main(["info", str(tmp_path / "toy")]) == 0
    assert "family      toy" in capsys.readouterr().out


def test_an_unknown_family_lists_the_known_ones():
    with pytest.raises(ConfigError, match=r"^model\.family='rnn' is not allowed; choose one of "
                                          r"decoder, encoder, seq2seq"):
        registry.config_from_dict({"family": "rnn"})
    with pytest.raises(ConfigError, match=r"model\.family='rnn'.*decoder, encoder, seq2seq"):
        ModelConfig(family="rnn")


def test_an_unknown_preset_lists_the_known_ones():
    known = r"unknown preset 'llama-huge'; choose one of .*bert-tiny.*llama-tiny.*t5-tiny"
    with pytest.raises(ConfigError, match=known):
        registry.preset("llama-huge")


def test_family_rules_live_in_the_family_entry():
    """The position rules that only one family has come from its registry entry, naming the field."""
    with pytest.raises(ConfigError, match=r"^model\.position='rope' is not available for family='encoder'"):
        genmodels.preset("bert-tiny", position="rope")
    with pytest.raises(ConfigError, match=r"^model\.position='relative' is not available for family='decoder'"):
        genmodels.preset("llama-tiny", position="relative")
    with pytest.raises(ConfigError, match=r"^model\.embed_scale=2\.0 is not available for family='decoder'"):
        genmodels.preset("llama-tiny", embed_scale=2.0)


# ---- generate chooses the loop from capabilities -----------------------------------------------
def test_generate_reads_the_capability_not_the_family_name(monkeypatch):
    """An encoder–decoder registered under another name still generates through the seq2seq loop."""
    monkeypatch.setitem(registry._FAMILIES, "my-seq2seq", registry.Family(
        name="my-seq2seq", config_class=ModelConfig, model_class=type(None),
        capabilities=frozenset({registry.GENERATES, registry.SEQ2SEQ})))
    model = randomise(genmodels.build_model(tiny("t5")), seed=3).eval()
    src = torch.tensor([[5, 9, 11, 3, 1]])
    want = generate_seq2seq(model, src, 6)
    model.family = "my-seq2seq"
    torch.testing.assert_close(genmodels.generate(model, src, 6), want, rtol=0, atol=0)


def test_decode_is_decoder_only_and_generate_refuses_what_cannot_generate():
    seq2seq = genmodels.build_model(tiny("t5")).eval()
    with pytest.raises(ValueError, match="decode.generate needs a decoder-only model.*family='seq2seq'"):
        decode.generate(seq2seq, torch.tensor([[1, 2]]), 2)
    encoder = genmodels.build_model(tiny("bert")).eval()
    with pytest.raises(ValueError, match="generate needs a model that generates text; this is a model of family 'encoder'; it embeds sentences: use `genmodels embed`"):
        genmodels.generate(encoder, torch.tensor([[1, 2]]), 2)


# ---- the training recipe's model section ------------------------------------------------------
def test_model_init_from_must_be_an_existing_folder(tmp_path):
    ok = RunConfig.from_dict({"model": {"preset": "llama-tiny", "init_from": str(tmp_path)}})
    assert ok.init_from == str(tmp_path) and ok.model_config().family == "decoder"
    assert RunConfig.from_dict({"model": {"preset": "llama-tiny", "init_from": None}}).init_from is None
    with pytest.raises(ConfigError, match=r"^model\.init_from='.*nope' is not an existing folder"):
        RunConfig.from_dict({"model": {"preset": "llama-tiny", "init_from": str(tmp_path / "nope")}})
    with pytest.raises(ConfigError, match=r"^model\.init_from=3 must be a path"):
        RunConfig.from_dict({"model": {"init_from": 3}})


# ---- export guards know every field -------------------------------------------------------------
@dataclass
class MoEConfig(ModelConfig):
    """A field added later that no exporter knows yet (as n_experts was before issue #11)."""
    added_later: int | None = None


@pytest.mark.parametrize("model_type", list(PRESET_OF))
def test_a_field_added_later_is_refused_by_every_exporter(model_type, tmp_path):
    base = tiny(model_type).to_dict()
    dense = MoEConfig.from_dict(base)
    conv = converter_for_config(dense)
    assert conv.model_type == model_type
    conv.config_to_hf(dense)  # at its default the new field changes nothing: exported
    moe = MoEConfig.from_dict({**base, "added_later": 8})
    model = genmodels.build_model(moe)
    with pytest.raises(ConversionError, match=r"^cannot export as \w+: model\.added_later=8 has no equivalent there"):
        genmodels.export_hf(model, tmp_path / "hf")
    assert not (tmp_path / "hf").exists()


# exporters of other families, outside interop/hf.CONVERTERS: model_type -> (converter, a config it exports)
OTHER_EXPORTERS = {"diffusers-unet2d": (DiffusersUNetConverter, lambda: genmodels.preset("unet-digits"))}


def _exporter(model_type: str):
    """(a config, the converter that exports it) for ``model_type``."""
    if model_type in OTHER_EXPORTERS:
        conv_class, make = OTHER_EXPORTERS[model_type]
        return make(), conv_class()
    return tiny(model_type), next(c for c in CONVERTERS if c.model_type == model_type)


@pytest.mark.parametrize("model_type", list(PRESET_OF) + list(OTHER_EXPORTERS))
def test_every_field_is_handled_or_refused(model_type):
    """Each field of the config, set to a value no exporter could know, is refused naming it —
    unless the exporter declares it expressed (ANY) or the family does not read it."""
    cfg, conv = _exporter(model_type)
    declared = conv.export_fields(cfg)
    unused = set(registry.get_family(cfg.family).unused) - set(declared)
    free = {k for k, v in declared.items() if v is ANY} | unused
    for f in dataclasses.fields(cfg):
        odd = dataclasses.replace(cfg)
        object.__setattr__(odd, f.name, object())  # past validation: no real config holds this
        if f.name in free:
            require_exportable(odd, "X", declared)
        else:
            with pytest.raises(ConversionError, match=rf"model\.{f.name}="):
                require_exportable(odd, "X", declared)


@pytest.mark.parametrize("model_type,field,value", [
    ("gpt2", "head_dim", 8),  # GPT-2's heads are d_model / n_heads wide
    ("t5", "sliding_window", 4),  # T5 has no sliding window
    ("bert", "sliding_window", 4),
])
def test_an_exporter_refuses_what_its_target_cannot_express(model_type, field, value):
    cfg = tiny(model_type, **{field: value})
    with pytest.raises(ConversionError, match=rf"model\.{field}={value}"):
        converter_for_config(cfg).config_to_hf(cfg)


@pytest.mark.parametrize("preset_name,field,value", [("llama-tiny", "pooler", True),
                                                      ("llama-tiny", "rel_buckets", 16),
                                                      ("bert-tiny", "n_decoder_layers", 3),
                                                      ("t5-tiny", "type_vocab_size", 2)])
def test_a_field_of_another_family_is_refused_not_ignored(preset_name, field, value):
    """ModelConfig is shared by the transformer families; a field only another family reads (its
    Family.unused) must keep its default, or the config is refused naming it — never silently ignored."""
    with pytest.raises(ConfigError, match=rf"model\.{field}=.*means nothing for family"):
        registry.preset(preset_name, **{field: value})


def test_a_field_no_family_reads_is_refused_until_one_lists_it(monkeypatch):
    """Family.reads is a positive list: a field added to a shared config class later is read by no family
    until one lists it, so a value set there is refused (a list of unread fields would let it pass, ignored)."""
    @dataclass
    class Wider(ModelConfig):
        new_knob: int = 0

    decoder = registry.get_family("decoder")
    monkeypatch.setitem(registry._FAMILIES, "decoder", dataclasses.replace(decoder, config_class=Wider))
    assert Wider(family="decoder").new_knob == 0
    with pytest.raises(ConfigError, match=r"model\.new_knob=1 means nothing for family='decoder' \(no family reads it\); leave it at 0$"):
        Wider(family="decoder", new_knob=1)
    monkeypatch.setitem(registry._FAMILIES, "decoder", dataclasses.replace(
        decoder, config_class=Wider, reads=decoder.reads + ("new_knob",)))
    assert Wider(family="decoder", new_knob=1).new_knob == 1


def test_a_family_reading_a_field_its_config_lacks_is_refused():
    with pytest.raises(ValueError, match=r"family 'typo' reads 'd_modle', which is not a field of ModelConfig"):
        registry.register(registry.Family(name="typo", config_class=ModelConfig, model_class=object,
                                          reads=("d_model", "d_modle")))
    assert "typo" not in registry.families()


# ---- every registered family keeps the contract (families added later included) ---------------------
def _smallest_preset(fam: registry.Family) -> str:
    """The family's smallest preset, found from its counts (nothing is built: some presets are 47B)."""
    return min(fam.presets, key=lambda name: fam.counts.parameter_count(fam.presets[name]()))


@pytest.mark.parametrize("family", sorted(registry.families()))
def test_every_registered_family_counts_builds_saves_loads_and_is_described(family, tmp_path, capsys):
    fam = registry.families()[family]
    name = _smallest_preset(fam)
    cfg = genmodels.preset(name)
    model = genmodels.build_model(cfg)
    randomise(model)
    assert fam.counts.parameter_count(cfg) == sum(p.numel() for p in model.parameters()), name
    genmodels.save(model, tmp_path / "m")
    back = genmodels.load(tmp_path / "m")
    assert type(back) is type(model) and back.config == model.config
    want, got = model.state_dict(), back.state_dict()
    assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)
    assert main(["info", str(tmp_path / "m"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["family"] == family
