"""The strict config base every family's config (and every recipe section) uses.

A config selects components (position, norm, MLP, bias, tying) — it never carries behaviour of
its own. It serialises to ``config.json`` beside the weights and rejects unknown keys and bad
values with a message naming the field by its dotted path (``model.blocks[2].mixer``) and what is
allowed (litgpt's "one config per family"). This module knows no family: the transformer config
is :class:`genmodels.models.config.ModelConfig`; families and presets live in
:mod:`genmodels.registry`.
"""
from __future__ import annotations

import contextvars
import dataclasses
import functools
import json
import types
import typing
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, ClassVar

# Depths beyond these are implausible (the deepest published models have ~100–200 layers; diffusers UNets
# 1–3 resnets per level), and each layer is Python modules to build — even counting parameters on the meta
# device costs O(layers) — so a typo or an edited config.json is refused at once instead of building for minutes.
MAX_LAYERS = 1000
MAX_PER_LEVEL = 100


class ConfigError(ValueError):
    """A config key is unknown or a value is not allowed; the message names the field."""


# ---- the strict base ------------------------------------------------------------------------
_PATH: contextvars.ContextVar[str | None] = contextvars.ContextVar("genmodels_config_path", default=None)


def _describe(kind: Any) -> str:
    """What a value of annotation ``kind`` must be, in the words of the error messages."""
    args = [a for a in typing.get_args(kind) if a is not type(None)]
    optional = _is_optional(kind)
    base = args[0] if optional and len(args) == 1 else kind
    origin = typing.get_origin(base) or base
    other = "a mapping" if _is_config(origin) else f"a {getattr(origin, '__name__', origin)}"
    word = {bool: "true or false", int: "an integer", float: "a number", str: "a string", list: "a list",
            dict: "a mapping"}.get(origin, other)
    if optional:
        return "true, false or null" if origin is bool else f"{word} or null"
    return word


@functools.lru_cache(maxsize=None)
def _hints(cls: type) -> dict[str, Any]:
    """The resolved field annotations of a config class (once per class)."""
    return typing.get_type_hints(cls)


def _is_optional(kind: Any) -> bool:
    return typing.get_origin(kind) in (typing.Union, types.UnionType) and type(None) in typing.get_args(kind)


def _is_config(kind: Any) -> bool:
    return isinstance(kind, type) and issubclass(kind, StrictConfig)


def _check_value(kind: Any, v: Any, path: str) -> Any:
    """``v`` checked against annotation ``kind``; nested configs and lists of them are built from
    their dicts. Raises ConfigError naming ``path``."""
    if kind is Any:
        return v
    declared = kind  # for the message: "true, false or null" when None is allowed
    if _is_optional(kind):
        if v is None:
            return None
        rest = [a for a in typing.get_args(kind) if a is not type(None)]
        kind = rest[0] if len(rest) == 1 else typing.Union[tuple(rest)]
    origin = typing.get_origin(kind) or kind
    if _is_config(origin):
        return v if isinstance(v, origin) else origin.from_dict(v, path)
    if origin is list:
        if not isinstance(v, list):
            raise ConfigError(f"{path}={v!r} must be a list")
        (item,) = typing.get_args(kind) or (Any,)
        return [_check_value(item, x, f"{path}[{i}]") for i, x in enumerate(v)]
    ok = {bool: lambda: isinstance(v, bool),
          int: lambda: isinstance(v, int) and not isinstance(v, bool),
          float: lambda: isinstance(v, (int, float)) and not isinstance(v, bool),
          str: lambda: isinstance(v, str),
          dict: lambda: isinstance(v, dict)}.get(origin)
    if ok is not None and not ok():
        raise ConfigError(f"{path}={v!r} must be {_describe(declared)}")
    return v


def refuse_unknown_keys(cls: type, keys: Any, path: str) -> None:
    """ConfigError naming every key of ``keys`` that is not a field of config class ``cls``, and the
    allowed ones (the one unknown-key check of every family's config, preset and converter)."""
    known = {f.name for f in fields(cls) if f.init}
    unknown = sorted(set(keys) - known, key=str)
    if unknown:
        raise ConfigError(f"unknown {path} config key(s): {', '.join(map(str, unknown))}; "
                          f"allowed keys: {', '.join(sorted(known))}")


@dataclass
class StrictConfig:
    """Base of every family's config: a dataclass whose fields are checked against their
    annotations (bool, int, float, str, ``X | None``, ``list[...]``, ``dict``, nested configs),
    built from dicts by :meth:`from_dict` and written back by :meth:`to_dict`.

    Every error names the field by its dotted path from ``section`` (``model.blocks[2].mixer``);
    :meth:`where` gives that path for a subclass's own :meth:`validate` messages."""

    section: ClassVar[str] = "model"

    def __new__(cls, *args: Any, **kw: Any):
        """Every way in (``Config(**kw)``, a preset's overrides, :meth:`from_dict`) refuses an unknown
        key the same way: a ConfigError naming it and the allowed keys (never Python's TypeError)."""
        refuse_unknown_keys(cls, kw, _PATH.get() or cls.section)
        return super().__new__(cls)

    def __post_init__(self) -> None:
        self.__dict__["_path"] = _PATH.get() or self.section  # not a field: never serialised
        hints = _hints(type(self))
        for f in fields(self):  # types first, so validate's comparisons cannot raise a bare TypeError
            setattr(self, f.name, _check_value(hints[f.name], getattr(self, f.name), self.where(f.name)))
        self.validate()

    def where(self, name: str) -> str:
        """The dotted path of field ``name`` (``model.n_heads``, ``model.blocks[2].mixer``)."""
        return f"{self.__dict__.get('_path', self.section)}.{name}"

    def validate(self) -> None:
        """Checks between fields (subclasses); raise ConfigError naming ``self.where(field)``."""

    def check_at_most(self, name: str, limit: int) -> None:
        """ConfigError naming field ``name`` when its value exceeds ``limit`` (a depth: see MAX_LAYERS)."""
        v = getattr(self, name)
        if v is not None and v > limit:
            raise ConfigError(f"{self.where(name)}={v} is implausibly deep: at most {limit} (every layer is modules to "
                              "build, so this would take minutes and gigabytes)")

    def check_choice(self, name: str, allowed: tuple) -> None:
        """ConfigError naming field ``name`` and what is allowed unless its value is one of ``allowed``."""
        if getattr(self, name) not in allowed:
            raise ConfigError(f"{self.where(name)}={getattr(self, name)!r} is not allowed; "
                              f"choose one of {', '.join(map(str, allowed))}")

    @classmethod
    def from_dict(cls, d: dict[str, Any], path: str | None = None):
        """Build from a dict: unknown keys and bad values are named by their dotted path."""
        path = path or cls.section
        if not isinstance(d, dict):
            raise ConfigError(f"{path}={d!r} must be a mapping of keys to values")
        refuse_unknown_keys(cls, d, path)
        hints = _hints(cls)
        values = {k: _check_value(hints[k], v, f"{path}.{k}") for k, v in d.items()}
        token = _PATH.set(path)
        try:
            return cls(**values)
        finally:
            _PATH.reset(token)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **kw: Any):
        """A copy with ``kw`` changed, validated as :meth:`from_dict` would."""
        return type(self).from_dict({**self.to_dict(), **kw}, self.__dict__.get("_path"))

    def save(self, path: str | Path) -> None:
        from .files import atomic_write_bytes
        atomic_write_bytes(path, (json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n").encode())

    @classmethod
    def load(cls, path: str | Path):
        return cls.from_dict(json.loads(Path(path).read_text()))
