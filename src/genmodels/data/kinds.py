"""Data kinds: what a training recipe's ``data:`` section describes, and how it becomes batches.

An objective names its data kind (``Objective.data_kind``: ``tokens``, ``examples``, ``pairs``, ``images``,
``spae_images``); the trainer asks the kind and never branches on it. A kind is registered by the module that
defines it (``register_data_kind(DataKind(...))``):

    kind = get_data_kind(objective.data_kind)
    dc = kind.config_class.from_dict(section, "data")   # ConfigError naming data.<field>
    fp = kind.fingerprint(dc)          # the data's identity before it is prepared (None: data.fingerprint)
    dc = kind.resumed(dc, run_dir)     # a resumed run (tokens: the run's own RUN/tokenizer.json)
    dc = kind.started(dc, init_from)   # a fresh run from model.init_from (tokens: that folder's tokenizer)
    data = kind.prepare(dc, say)       # a RunData (below); ``say`` prints one line
    kind.describe(dc)                  # how a refusal names the data: "corpus (data.corpus='stdlib', ...)"
    kind.older(dc)                     # the same data's fingerprints as older versions wrote them (resume accepts)

A :class:`RunData` holds ``train`` and ``val`` splits — ``len(split)`` and ``split.batch(indices) ->
dict[str, Tensor]`` on the CPU (the trainer moves it to the device; the objective reads the keys it
needs: ``input_ids``/``labels`` for tokens, ``images``/``labels`` for images) — and ``tokenizer`` (or
None), ``eos_id`` (or None) and ``fingerprint`` (a string naming the data's content: a resume on other
data is refused). A token kind's config also has ``seq_len``, ``tokenizer`` (a path or None) and
``vocab_size`` (the BPE trained when there is no tokenizer): the model config reads them. ``sample_class``
is the recipe's ``sample:`` section for runs on this kind.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol

import torch

from ..config import ConfigError


class Split(Protocol):
    def __len__(self) -> int: ...

    def batch(self, indices: list[int]) -> dict[str, torch.Tensor]: ...


class RunData(Protocol):
    train: Split
    val: Split
    tokenizer: Any
    eos_id: int | None
    fingerprint: str


def _same(dc: Any, *_: Any) -> Any:
    return dc


@dataclass(frozen=True)
class DataKind:
    """One kind of training data: its recipe sections and how it is prepared."""

    name: str
    config_class: type  # the data: section; ``from_dict(d, "data")`` validates (ConfigError naming the field)
    sample_class: type  # the sample: section of a run on this kind
    prepare: Callable[[Any, Callable[[str], None]], RunData]  # (data config, say) -> RunData
    fingerprint: Callable[[Any], str | None] = lambda dc: None  # None: known once prepared (data.fingerprint)
    resumed: Callable[[Any, Path], Any] = _same  # (data config, run_dir) -> what a resumed run reads
    started: Callable[[Any, str | None], Any] = _same  # (data config, model.init_from) -> a fresh run's
    describe: Callable[[Any], str] = lambda dc: "data"  # how a refusal names the data ("corpus (data.corpus=…)")
    older: Callable[[Any], tuple[str, ...]] = lambda dc: ()  # fingerprints older versions wrote of the same data


_KINDS: dict[str, DataKind] = {}


def register_data_kind(kind: DataKind, replace: bool = False) -> DataKind:
    """Add ``kind`` (a second of the same name is refused unless ``replace``)."""
    if kind.name in _KINDS and not replace and _KINDS[kind.name] is not kind:
        raise ValueError(f"data kind {kind.name!r} is already registered")
    _KINDS[kind.name] = kind
    return kind


def data_kinds() -> dict[str, DataKind]:
    """Every registered data kind by name."""
    return dict(_KINDS)


def get_data_kind(name: str, who: str = "") -> DataKind:
    """The kind called ``name``; a one-line ConfigError otherwise (``who``: the objective that asked)."""
    if name not in _KINDS:
        by = f" (train.objective={who!r} reads it)" if who else ""
        raise ConfigError(f"data kind {name!r}{by} is not registered; have {', '.join(_KINDS) or 'none'}")
    return _KINDS[name]
