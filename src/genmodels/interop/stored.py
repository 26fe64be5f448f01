"""What a folder's stored weights are, read from the safetensors headers alone, and the build budget they set.

A config can ask for far more than its weights hold: ``"layers_per_block": 20000`` in a diffusers
config.json is one edited line, and building (even counting, on the meta device) a model of 20000 resnets
costs minutes and gigabytes of Python modules before the key check could say "missing keys". So every load
path reads the key names and shapes of its weight files first (the JSON header of a safetensors file: no
tensor is read) and builds under :func:`build_budget`: a model that registers more parameters than the
stored weights could fill (``2·n + 64`` for ``n`` stored tensors — a generous bound: converters fuse or
split tensors, a tied head registers twice) is refused the moment it passes that count, naming the file.
The genmodels format then checks every key and shape against a meta-device build
(:func:`meta_state`) before the real model is built or a tensor read.
"""
from __future__ import annotations

import contextlib
import contextvars
import json
import struct
from pathlib import Path
from typing import Callable, Iterator

import torch
from torch.nn.modules import module as _module

from .base import ConversionError

HEADER_LIMIT = 100_000_000  # bytes: the safetensors library's own limit on a header
_BUDGET: contextvars.ContextVar[dict | None] = contextvars.ContextVar("genmodels_build_budget", default=None)


def safetensors_shapes(file: str | Path) -> dict[str, torch.Tensor]:
    """Every tensor name of a safetensors file with its shape, as meta tensors (nothing is read but the
    header); a file whose header is not safetensors' is a ValueError naming it."""
    file = Path(file)
    try:
        with open(file, "rb") as f:
            raw = f.read(8)
            n = struct.unpack("<Q", raw)[0] if len(raw) == 8 else -1
            size = file.stat().st_size
            if not 0 < n <= min(HEADER_LIMIT, size - 8):
                raise ValueError(f"header length {n} does not fit a file of {size} bytes")
            header = json.loads(f.read(n))
        if not isinstance(header, dict):
            raise ValueError("the header is not a JSON object")
        return {k: torch.empty(tuple(v["shape"]), device="meta") for k, v in header.items() if k != "__metadata__"}
    except (FileNotFoundError, PermissionError, IsADirectoryError):
        raise
    except (ValueError, TypeError, KeyError, struct.error, UnicodeDecodeError, OSError, RuntimeError) as e:
        raise ValueError(f"{file}: not a readable safetensors file (header: {e})") from None


def stored_tensor_count(folder: str | Path) -> int | None:
    """How many tensors the safetensors files of a model folder (and its sub-folders, a pipeline's ``unet/``)
    hold, from their headers; ``None`` when there is none or one is unreadable (its reader then says why)."""
    files = sorted(Path(folder).glob("*.safetensors")) + sorted(Path(folder).glob("*/*.safetensors"))
    try:
        return sum(len(safetensors_shapes(f)) for f in files) if files else None
    except (OSError, ValueError):
        return None


def _count(module: torch.nn.Module, name: str, param) -> None:
    budget = _BUDGET.get()
    if budget is None or param is None:
        return
    budget["seen"] += 1
    if budget["seen"] > budget["limit"]:
        raise ConversionError(f"{budget['where']} holds {budget['stored']} weight tensors, but the config describes a "
                              f"model with more than {budget['limit']} parameters: the config does not match the "
                              "stored weights (an edited layer count or size in config.json?); nothing was built")


@contextlib.contextmanager
def build_budget(stored: int | None, where: str | Path) -> Iterator[None]:
    """Inside, a model (real or meta) that registers more than ``2·stored + 64`` parameters raises a
    ConversionError naming ``where`` (no budget when ``stored`` is None). Counts this context's builds only."""
    if stored is None:
        yield
        return
    token = _BUDGET.set({"stored": stored, "limit": 2 * stored + 64, "seen": 0, "where": str(where)})
    hook = _module.register_module_parameter_registration_hook(_count)
    try:
        yield
    finally:
        hook.remove()
        _BUDGET.reset(token)


def restart_budget() -> None:
    """Count from zero again (a second build under the same budget: the meta check, then the model)."""
    budget = _BUDGET.get()
    if budget is not None:
        budget["seen"] = 0


def meta_state(cfg, build: Callable) -> dict[str, torch.Tensor]:
    """The state dict ``build(cfg)`` would have, built on the meta device (shapes only, nothing allocated)."""
    with torch.device("meta"):
        state = build(cfg).state_dict()
    restart_budget()
    return state
