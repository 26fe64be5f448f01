"""A scheduler's configuration in diffusers' form: ``config``, ``from_config``, ``save_config``.

The constructor arguments carry diffusers' names. A scheduler records which arguments its caller
passed; ``config`` lists every argument with its value plus ``_class_name``, ``_diffusers_version``
and ``_use_default_values`` (the arguments left at their defaults), exactly the keys diffusers'
own ``.config`` carries, so either library's ``from_config`` reads the other's.

``from_config(config, **overrides)`` follows diffusers' ``ConfigMixin.extract_init_dict``:

1. keys listed in ``_use_default_values`` and private keys (``_class_name`` …) are dropped, so
   ``DDIMScheduler.from_config(dpm.config)`` takes only what the DPM user chose, not DPM's defaults;
2. options of the other schedulers here are dropped silently (diffusers drops its compatible
   schedulers' keys); any other unknown key is dropped with a warning naming it (diffusers warns too);
3. a diffusers option this class does not implement is accepted at its default and refused with a
   ValueError naming the key otherwise.
"""
from __future__ import annotations

import functools
import inspect
import json
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ..files import atomic_write_bytes

DIFFUSERS_VERSION = "0.42.1"
CONFIG_NAME = "scheduler_config.json"
_ALL_OPTIONS: set[str] = set()  # every option of every scheduler here (step 2 of from_config)


def _same(a: object, b: object) -> bool:
    """Config values equal (1 == 1.0, -inf == -inf), but a bool only equals the same bool."""
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    return bool(a == b)


def _json_value(value: Any) -> Any:
    return value.tolist() if isinstance(value, np.ndarray) else value


def records_config(init: Callable) -> Callable:
    """Decorate a scheduler ``__init__``: record its arguments (and which were passed) before it runs."""
    signature = inspect.signature(init)

    @functools.wraps(init)
    def wrapper(self, *args, **kwargs):
        bound = signature.bind(self, *args, **kwargs)
        fixed = dict(bound.arguments.get("fixed_options", {}))
        passed = {name for name in bound.arguments if name not in ("self", "fixed_options")} | set(fixed)
        bound.apply_defaults()
        values = {k: v for k, v in bound.arguments.items() if k not in ("self", "fixed_options")}
        for key, value in values.items():  # switches must be switches: "False" would read as true
            if isinstance(signature.parameters[key].default, bool):
                if not isinstance(value, (bool, np.bool_)):
                    raise ValueError(f"{key} must be true or false, got {value!r}")
                values[key] = bool(value)
        self._record_config(values, fixed, passed)
        init(self, *args, **kwargs)

    return wrapper


class SchedulerConfigMixin:
    """``config`` / ``from_config`` / ``save_config`` / ``from_pretrained`` in diffusers' form."""

    diffusers_class: ClassVar[str]
    # diffusers arguments this class takes only at their default value (name -> default)
    fixed_options: ClassVar[dict[str, Any]] = {}
    # our own arguments diffusers does not have (name -> default); never written by save_config
    extension_options: ClassVar[dict[str, Any]] = {}
    # diffusers' silent renames of values other schedulers write (argument -> {value: replacement})
    value_aliases: ClassVar[dict[str, dict[str, Any]]] = {}
    _config: dict[str, Any]
    _passed: frozenset[str]

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "diffusers_class" in cls.__dict__:
            _ALL_OPTIONS.update(cls._option_names())

    @classmethod
    def _option_names(cls) -> set[str]:
        names = set(inspect.signature(cls.__init__).parameters) - {"self", "fixed_options"}
        return names | set(cls.fixed_options)

    def _record_config(self, values: dict[str, Any], fixed: dict[str, Any], passed: set[str]) -> None:
        name = type(self).__name__
        for key, value in fixed.items():
            if key not in self.fixed_options:
                raise TypeError(f"{name}() got an unexpected argument {key!r}")
            if not _same(value, self.fixed_options[key]):
                raise ValueError(
                    f"{key}={value!r} is not implemented by genmodels' {name}; "
                    f"only diffusers' default {self.fixed_options[key]!r} is accepted"
                )
        for key, aliases in self.value_aliases.items():
            if isinstance(values.get(key), str) and values[key] in aliases:
                values[key] = aliases[values[key]]
        self._config = {**values, **self.fixed_options}
        self._passed = frozenset(passed)

    @property
    def config(self) -> dict[str, Any]:
        """Every argument with its value, plus diffusers' private keys (a fresh dict)."""
        out = {k: _json_value(v) for k, v in self._config.items()}
        out["_class_name"] = self.diffusers_class
        out["_diffusers_version"] = DIFFUSERS_VERSION
        out["_use_default_values"] = sorted(set(self._config) - self._passed)
        return out

    @classmethod
    def from_config(cls, config: Mapping[str, Any], **overrides: Any):
        """A scheduler from a diffusers (or our) scheduler config dict; ``overrides`` win (module docstring)."""
        if not isinstance(config, Mapping):
            raise TypeError(f"config must be a dict (a scheduler config), got {type(config).__name__}")
        defaults_used = set(config.get("_use_default_values", ()))
        own = cls._option_names()
        kwargs, unknown = {}, []
        for key, value in config.items():
            if key.startswith("_") or key in defaults_used:
                continue
            if key in own:
                kwargs[key] = value
            elif key not in _ALL_OPTIONS:
                unknown.append(key)
        if unknown:
            warnings.warn(f"{cls.__name__}.from_config ignores the keys {sorted(unknown)}", stacklevel=2)
        return cls(**{**kwargs, **overrides})

    @classmethod
    def from_pretrained(cls, folder: str | Path, subfolder: str | None = None, **overrides: Any):
        """Read ``scheduler_config.json`` from ``folder`` (or ``folder/subfolder``), as diffusers does."""
        path = Path(folder) / (subfolder or "") / CONFIG_NAME
        try:
            config = json.loads(path.read_text())
        except FileNotFoundError:
            raise FileNotFoundError(f"no {CONFIG_NAME} in {path.parent}") from None
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON ({e})") from None
        return cls.from_config(config, **overrides)

    def diffusers_config(self) -> dict[str, Any]:
        """The config diffusers writes: every diffusers argument, ``_class_name``, ``_diffusers_version``.

        Our own options (``extension_options``) have no diffusers meaning: at their default they are
        left out, otherwise this raises a ValueError naming the option.
        """
        out = {}
        for key, value in self.config.items():
            if key in self.extension_options:
                if not _same(value, self.extension_options[key]):
                    raise ValueError(
                        f"{key}={value!r} cannot be expressed in a diffusers {self.diffusers_class} config "
                        f"(diffusers always behaves as {key}={self.extension_options[key]!r})"
                    )
            elif key != "_use_default_values":
                out[key] = value
        return out

    def save_config(self, save_directory: str | Path) -> Path:
        """Write ``save_directory/scheduler_config.json`` that diffusers' ``from_pretrained`` loads."""
        folder = Path(save_directory)
        if folder.exists() and not folder.is_dir():
            raise ValueError(f"save_directory {folder} is a file, not a folder")
        text = json.dumps(self.diffusers_config(), indent=2, sort_keys=True) + "\n"
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(folder / CONFIG_NAME, text.encode())
        return folder / CONFIG_NAME
