"""Checks of single recipe values, each error naming the dotted field (``train.lr=-1 must be …``)."""
from __future__ import annotations

import math
from dataclasses import fields
from typing import Any

from .config import ConfigError


def allowed(cls) -> str:
    return ", ".join(f.name for f in fields(cls))


def reject_unknown(d: dict, cls, prefix: str) -> None:
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise ConfigError(f"unknown key(s) {', '.join(prefix + k for k in unknown)}; "
                          f"allowed under {prefix.rstrip('.') or 'the top level'}: {allowed(cls)}")


def string(name: str, v: Any) -> None:
    if not isinstance(v, str):
        raise ConfigError(f"{name}={v!r} must be a string")


def integer(name: str, v: Any, lo: int) -> None:
    if not isinstance(v, int) or isinstance(v, bool) or v < lo:
        raise ConfigError(f"{name}={v!r} must be an integer >= {lo}")


def seed(name: str, v: Any) -> None:
    """A recipe seed (``train.seed``, ``sample.seed``): an integer that every generator takes, checked by the one
    seed check of :mod:`genmodels.generation.checks` (0 <= seed < 2**64; a recipe seed is never None)."""
    from .generation.checks import check_seed
    try:
        check_seed(v, name=name, optional=False)
    except ValueError as e:
        raise ConfigError(str(e)) from None


def number(name: str, v: Any, lo: float | None = None, hi: float | None = None,
            lo_open: bool = False, hi_open: bool = False) -> None:
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    if ok and lo is not None:
        ok = v > lo if lo_open else v >= lo
    if ok and hi is not None:
        ok = v < hi if hi_open else v <= hi
    if not ok:
        lo_s = "" if lo is None else f"{'>' if lo_open else '>='} {lo}"
        hi_s = "" if hi is None else f"{'<' if hi_open else '<='} {hi}"
        raise ConfigError(f"{name}={v!r} must be a number {' and '.join(x for x in (lo_s, hi_s) if x)}")
