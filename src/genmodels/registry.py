"""The family registry: what a model family brings, and the one place that dispatches on it.

A family (decoder — MoE is a decoder option —, encoder, seq2seq, RetNet, diffusion, GAN, SPAE) registers one
:class:`Family` record naming its config class, model class, presets, default objective, the
converters it exports through and what its models can do. ``build_model``, ``preset``,
``config_from_dict``, ``genmodels.load`` / ``save``, the training recipe, ``genmodels info`` and
``genmodels.generate`` ask this registry (or a model's capabilities) — never compare family names.

    from genmodels.registry import Family, register
    register(Family(name="retnet", config_class=RetNetConfig, model_class=RetNetLM,
                    presets={"retnet-tiny": retnet_tiny}, objective="causal",
                    capabilities=frozenset({GENERATES})))

The built-in families register themselves when :mod:`genmodels.models` is imported, which
``import genmodels`` does; this module imports no family (it sits below models/).
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Callable, Mapping

from .config import ConfigError

# What a family's models can do (``Family.capabilities``):
GENERATES = "generates"  # token generation: ``genmodels.generate`` / ``genmodels generate``
SEQ2SEQ = "seq2seq"  # generation reads the prompt as a source and returns the target (encoder–decoder)
EMBEDS = "embeds"  # sentence vectors: ``genmodels.embed``
SAMPLES = "samples"  # images: ``genmodels.sample`` / ``genmodels sample`` / ``genmodels evaluate``
CAPABILITIES = (GENERATES, SEQ2SEQ, EMBEDS, SAMPLES)
# what a model of each user-facing capability is, and the command for it (the order a refusal suggests them in)
COMMANDS = {GENERATES: ("generates text", "genmodels generate"), EMBEDS: ("embeds sentences", "genmodels embed"),
            SAMPLES: ("samples images", "genmodels sample")}

DEFAULT_FAMILY = "decoder"  # a config dict without "family" (as ModelConfig's default)


def _no_check(config: Any) -> None:
    """No rule beyond the config class's own."""


@dataclass(frozen=True)
class Family:
    """One model family: everything the code above ``models/`` needs to know about it."""

    name: str
    config_class: type  # a genmodels.config.StrictConfig subclass with a ``family`` field
    model_class: type  # built as ``model_class(config)``
    presets: Mapping[str, Callable[..., Any]] = field(default_factory=dict)  # name -> (**overrides) -> config
    objective: str | None = None  # default training objective (train.objective: auto)
    converters: tuple[str, ...] = ()  # interop model_types it exports through, in order of preference
    capabilities: frozenset[str] = frozenset()  # subset of CAPABILITIES
    reads: tuple[str, ...] | None = None  # the fields of config_class this family reads (None: every one)
    check: Callable[[Any], None] = _no_check  # family-only rules: ConfigError naming the field
    counts: Any = None  # parameter / FLOP counter (genmodels.models.flops): matmul_parameters, ...

    def can(self, capability: str) -> bool:
        return capability in self.capabilities

    @property
    def unused(self) -> frozenset[str]:
        """The fields of a shared config class this family does not read (all but :attr:`reads`): a value set
        there must keep its default, or the config is refused naming it (never silently ignored). A field
        added to the class later is unread by every family until one lists it."""
        if self.reads is None:
            return frozenset()
        return frozenset(f.name for f in fields(self.config_class)) - set(self.reads)


_FAMILIES: dict[str, Family] = {}


def register(family: Family, replace: bool = False) -> Family:
    """Add ``family``; a second family of the same name, or a preset name another family already
    uses, is refused unless ``replace``."""
    bad = [c for c in family.capabilities if c not in CAPABILITIES]
    if bad:
        raise ValueError(f"family {family.name!r}: unknown capability {bad[0]!r}; have {', '.join(CAPABILITIES)}")
    known = {f.name for f in fields(family.config_class)}
    strays = [name for name in family.reads or () if name not in known]
    if strays:
        raise ValueError(f"family {family.name!r} reads {strays[0]!r}, which is not a field of "
                         f"{family.config_class.__name__}")
    if not replace:
        if family.name in _FAMILIES:
            raise ValueError(f"family {family.name!r} is already registered")
        taken = [p for f in _FAMILIES.values() for p in f.presets if p in family.presets]
        if taken:
            raise ValueError(f"family {family.name!r}: preset {taken[0]!r} is already registered")
    _FAMILIES[family.name] = family
    return family


def families() -> dict[str, Family]:
    """Every registered family by name."""
    return dict(_FAMILIES)


def get_family(name: Any) -> Family:
    """The family called ``name``; a ConfigError listing the known ones otherwise."""
    if not isinstance(name, str) or name not in _FAMILIES:
        raise ConfigError(f"model.family={name!r} is not allowed; choose one of {', '.join(_FAMILIES)}")
    return _FAMILIES[name]


def family_of(obj: Any) -> Family | None:
    """The family of a model or config (its ``family`` attribute), or None when it has none known."""
    name = getattr(obj, "family", None)
    return _FAMILIES.get(name) if isinstance(name, str) else None


def capabilities(model: Any) -> frozenset[str]:
    """What ``model`` can do: its family's capabilities (none for an object of no known family)."""
    fam = family_of(model)
    return fam.capabilities if fam is not None else frozenset()


def require(model: Any, capability: str, command: str, where: str | None = None) -> None:
    """A one-line ValueError when ``model`` (or a config) cannot do ``capability``: it names what ``command``
    needs, the model's family and the command that fits that family (every command and API entry asks here)."""
    can = capabilities(model)
    if capability in can:
        return
    fam = getattr(model, "family", None)
    holds = f"{where} holds a model of family {fam!r}" if where else f"this is a model of family {fam!r}"
    fits = [(does, cmd) for cap, (does, cmd) in COMMANDS.items() if cap in can]
    advice = f"; it {fits[0][0]}: use `{fits[0][1]}`" if fits else ""
    raise ValueError(f"{command} needs a model that {COMMANDS[capability][0]}; {holds}{advice}")


def presets() -> dict[str, Callable[..., Any]]:
    """Every preset of every family by name."""
    return {name: make for fam in families().values() for name, make in fam.presets.items()}


def preset(name: str, **overrides: Any) -> Any:
    """The config of preset ``name`` with ``overrides``; unknown names list the known ones."""
    table = presets()
    if not isinstance(name, str) or name not in table:
        raise ConfigError(f"unknown preset {name!r}; choose one of {', '.join(sorted(table))}")
    return table[name](**overrides)


def config_from_dict(d: Any, path: str = "model") -> Any:
    """A config dict (``config.json``'s "model", a recipe's model section) as its family's config
    class; the family comes from ``d["family"]`` (default: decoder)."""
    if not isinstance(d, dict):
        raise ConfigError(f"{path}={d!r} must be a mapping of keys to values")
    fam = get_family(d.get("family", DEFAULT_FAMILY))
    return fam.config_class.from_dict(d, path)


def build_model(config: Any, **parts: Any) -> Any:
    """Instantiate the model class of ``config``'s family. ``parts``: build-time parts the model
    class lists in its ``build_parts`` (the transformers: ``linear=``, the projection factory of
    :mod:`genmodels.nn.linear`); ``None`` values mean the default."""
    fam = get_family(getattr(config, "family", None))
    if not isinstance(config, fam.config_class):
        raise ConfigError(f"model.family={fam.name!r} needs a {fam.config_class.__name__}, "
                          f"got a {type(config).__name__}")
    parts = {k: v for k, v in parts.items() if v is not None}
    takes = getattr(fam.model_class, "build_parts", ())
    for name in parts:
        if name not in takes:
            raise ConfigError(f"build_model({name}=...) is not available for family={fam.name!r}; "
                              f"it takes: {', '.join(takes) or 'no build-time parts'}")
    return fam.model_class(config, **parts)
