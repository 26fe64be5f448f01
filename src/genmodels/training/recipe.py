"""Reading and writing a training recipe: YAML in, ``--set section.key=value`` overrides (parsed with
``yaml.safe_load``), :class:`~genmodels.training.config.RunConfig` out, and the resolved recipe
written back beside a run (``config.yaml``)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from ..config import ConfigError
from ..files import atomic_write_bytes
from ..values import allowed
from .config import RunConfig


# ---- loading with overrides ---------------------------------------------------------------
def parse_override(item: str) -> tuple[list[str], Any]:
    """``"train.lr=1e-3"`` → (["train", "lr"], 0.001); the value is parsed with yaml.safe_load."""
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. train.lr=1e-3")
    key, value = item.split("=", 1)
    parts = key.strip().split(".")
    if not all(parts):
        raise ConfigError(f"--set {item!r}: bad key {key!r}")
    try:
        parsed = yaml.safe_load(value) if value.strip() else None
    except yaml.YAMLError as e:
        raise ConfigError(f"--set {item!r}: value is not valid YAML ({e})") from None
    # YAML 1.1 reads "1e-3" as a string; accept it as the float a person means.
    if isinstance(parsed, str):
        try:
            parsed = float(parsed) if any(c in parsed.lower() for c in "e.") else parsed
        except ValueError:
            pass
    return parts, parsed


def _fix_floats(d: Any) -> Any:
    """YAML 1.1 loads 3e-4 (no dot) as a string: convert number-looking strings back to floats."""
    if isinstance(d, dict):
        return {k: _fix_floats(v) for k, v in d.items()}
    if isinstance(d, list):
        return [_fix_floats(v) for v in d]
    if isinstance(d, str):
        try:
            f = float(d)
            return f if ("e" in d.lower() and d.strip()[0] in "0123456789+-.") else d
        except ValueError:
            return d
    return d


def apply_overrides(d: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    for item in overrides or []:
        parts, value = parse_override(item)
        node = d
        for p in parts[:-1]:
            nxt = node.get(p)
            if nxt is None:
                nxt = node[p] = {}
            if not isinstance(nxt, dict):
                raise ConfigError(f"--set {item!r}: {p} is not a section")
            node = nxt
        node[parts[-1]] = value
    return d


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Read a YAML recipe (or start from the defaults), apply ``--set`` overrides, validate."""
    d: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if p.is_dir():
            raise ConfigError(f"config file {str(p)!r} is a folder; give a YAML recipe such as configs/llama-tiny.yaml")
        if not p.is_file():
            raise ConfigError(f"config file {str(p)!r} not found")
        try:
            d = yaml.safe_load(p.read_text())
        except yaml.YAMLError as e:
            raise ConfigError(f"{p}: not valid YAML ({e})") from None
        if d is None:  # an empty file (or only comments) is not a request for the defaults' whole run
            raise ConfigError(f"{p}: holds no recipe (it is empty or only comments); a training config is a mapping "
                              f"with keys {allowed(RunConfig)} (e.g. configs/llama-tiny.yaml)")
        if not isinstance(d, dict):
            raise ConfigError(f"{p}: a training config must be a mapping")
    d = _fix_floats(d)
    d = apply_overrides(d, overrides or [])
    return RunConfig.from_dict(d)


def dump_config(cfg: RunConfig, path: str | Path) -> None:
    """The resolved recipe, as a run keeps it (``RUN/config.yaml``). Its data paths (``data.path``,
    ``data.tokenizer``) are written absolute, resolved against the working directory of the run, so the
    record reads the same files from anywhere (``genmodels evaluate RUN``, a resume from another folder)."""
    d = cfg.to_dict()
    data = d.get("data")
    for key in ("path", "tokenizer"):
        value = data.get(key) if isinstance(data, dict) else None
        if isinstance(value, str) and value and not Path(value).expanduser().is_absolute():
            data[key] = os.path.abspath(Path(value).expanduser())
    atomic_write_bytes(path, yaml.safe_dump(d, sort_keys=False).encode())  # temp file, fsync, rename
