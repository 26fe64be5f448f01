"""Argument checks shared by every entry point (``generate``, ``generate_seq2seq``, ``embed``, image sampling,
the image metrics and grids).

They run before any work and before the native/PyTorch split, so both paths refuse the same
inputs with the same message: one line that names the argument and what is allowed.
"""
from __future__ import annotations

import math
import numbers
from typing import Iterable

import torch

SEED_LIMIT = 2 ** 64  # torch.Generator.manual_seed takes 0 ≤ seed < 2**64


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_count(name: str, value, minimum: int = 0) -> int:
    """An integer (not a bool, not a float such as 3.0) ``≥ minimum``."""
    if not _is_int(value):
        raise ValueError(f"{name}={value!r} must be an integer >= {minimum}")
    if value < minimum:
        raise ValueError(f"{name}={value} must be an integer >= {minimum}")
    return int(value)


def check_real(name: str, value, *, low: float, low_ok: bool, high: float = math.inf, high_ok: bool = False,
               what: str) -> float:
    """A finite real number (not a bool) in the interval; ``what`` words the interval for the message."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"{name}={value!r} must be a finite number {what}")
    if value < low or (value == low and not low_ok) or value > high or (value == high and not high_ok):
        raise ValueError(f"{name}={value!r} must be a finite number {what}")
    return float(value)


def check_seed(seed, name: str = "seed", flag: str | None = None, *, optional: bool = True) -> None:
    """THE seed check (generation, image sampling, recipes): an integer in [0, 2**64), the range
    ``torch.Generator.manual_seed`` takes, or None where ``optional`` (a recipe seed is required);
    ``name`` (a recipe field) and ``flag`` (a CLI flag) word the message."""
    if (seed is None and optional) or (_is_int(seed) and 0 <= seed < SEED_LIMIT):
        return
    also = f" ({flag})" if flag else ""
    none = "None or " if optional else ""
    raise ValueError(f"{name}={seed!r}{also} must be {none}an integer with 0 <= {name} < 2**64")


def check_finite_images(images, what: str = "images") -> None:
    """THE check that images about to be scored or written are real numbers (rule 2 of docs/reliability.md):
    a floating-point tensor with no NaN or ±inf, else a ValueError saying how many values are not."""
    if not isinstance(images, torch.Tensor) or not images.is_floating_point():
        raise ValueError(f"{what} must be finite floating-point images in [-1, 1]; got "
                         f"{getattr(images, 'dtype', type(images).__name__)}")
    bad = int((~torch.isfinite(images)).sum())
    if bad:
        raise ValueError(f"{what} must be finite floating-point images in [-1, 1]; {bad} of {images.numel()} "
                         "values are NaN or infinite")


def check_generation_args(temperature, top_k, top_p, repetition_penalty, max_new_tokens, *, seed=None,
                          num_beams: int = 1, length_penalty: float = 1.0, early_stopping=False) -> None:
    """The sampling and beam settings: counts are integers, reals are finite and in range; beam
    search (``num_beams > 1``) does not sample."""
    check_count("max_new_tokens", max_new_tokens, 0)
    check_real("temperature", temperature, low=0.0, low_ok=True, what=">= 0 (0 = greedy)")
    if top_k is not None:
        check_count("top_k", top_k, 0)
    if top_p is not None:
        check_real("top_p", top_p, low=0.0, low_ok=False, high=1.0, high_ok=True, what="in (0, 1]")
    if repetition_penalty is not None:
        check_real("repetition_penalty", repetition_penalty, low=0.0, low_ok=False, what="> 0 (1 = none)")
    check_count("num_beams", num_beams, 1)
    check_real("length_penalty", length_penalty, low=-math.inf, low_ok=True, what="(any finite value)")
    if not (isinstance(early_stopping, bool) or early_stopping == "never"):
        raise ValueError(f"early_stopping={early_stopping!r} must be True, False or 'never'")
    if num_beams > 1 and temperature > 0:
        raise ValueError(f"num_beams={num_beams} with temperature={temperature}: beam search does not sample; "
                         "pass temperature=0, or num_beams=1 to sample")
    check_seed(seed)


def check_ids(name: str, ids, vocab: int, *, allow_1d: bool = True) -> torch.Tensor:
    """Token ids: an integer tensor ``(B, T)`` (or ``(T,)``), B, T > 0, each in [0, vocab) -> ``(B, T)`` int64."""
    if not isinstance(ids, torch.Tensor):
        raise ValueError(f"{name} must be a torch integer tensor (batch, length), got {type(ids).__name__}")
    if ids.dtype.is_floating_point or ids.dtype.is_complex or ids.dtype == torch.bool:
        raise ValueError(f"{name} must hold integer token ids, got dtype {ids.dtype}")
    if ids.dim() == 1 and allow_1d:
        ids = ids[None]
    if ids.dim() != 2 or ids.shape[0] == 0 or ids.shape[1] == 0:
        raise ValueError(f"{name} must be (batch>0, length>0) token ids, got shape {tuple(ids.shape)}")
    lo, hi = int(ids.min()), int(ids.max())
    if lo < 0 or hi >= vocab:
        bad = lo if lo < 0 else hi
        raise ValueError(f"{name} holds token id {bad}; allowed are 0 <= id < vocab_size={vocab}")
    return ids.long()


def check_mask(name: str, mask, shape: tuple[int, ...]) -> torch.Tensor | None:
    """An attention mask: None, or a bool/integer tensor of ``shape`` holding only 0 and 1 (1 = token)."""
    if mask is None:
        return None
    if not isinstance(mask, torch.Tensor):
        raise ValueError(f"{name} must be a torch tensor of 0/1 {shape}, got {type(mask).__name__}")
    if mask.dim() == 1 and len(shape) == 2 and shape[0] == 1:
        mask = mask[None]
    if tuple(mask.shape) != tuple(shape):
        raise ValueError(f"{name} shape {tuple(mask.shape)} must equal input_ids shape {tuple(shape)}")
    if mask.dtype.is_floating_point or mask.dtype.is_complex:
        raise ValueError(f"{name} must be bool or integer 0/1, got dtype {mask.dtype}")
    if mask.numel() and mask.dtype != torch.bool and not bool(((mask == 0) | (mask == 1)).all()):
        raise ValueError(f"{name} must hold only 0 (pad) and 1 (token)")
    return mask


def check_token_id(name: str, value, vocab: int, *, allow_none: bool = True) -> None:
    """One special token id: an integer in [0, vocab) (or None where allowed)."""
    if value is None and allow_none:
        return
    if not _is_int(value) or not 0 <= value < vocab:
        raise ValueError(f"{name}={value!r} must be a token id: an integer with 0 <= id < vocab_size={vocab}")


def check_token_ids(name: str, values, vocab: int) -> list[int]:
    """None, one id or an iterable of ids; returns the list."""
    if values is None:
        return []
    if _is_int(values):
        values = [values]
    elif isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
        raise ValueError(f"{name}={values!r} must be a token id or a list of token ids (0 <= id < {vocab})")
    out = list(values)
    for v in out:
        check_token_id(name, v, vocab, allow_none=False)
    return [int(v) for v in out]


def vocab_size(model) -> int:
    """The number of token ids the model's embedding takes."""
    return int(model.embed.weight.shape[0])
