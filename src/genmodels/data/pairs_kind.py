"""The ``pairs`` data kind: a recipe's ``data:`` section for preference pairs (:mod:`.pairs`), and its preparation.

    data:
      kind: pairs
      path: pairs.jsonl          # one pair a line (genmodels.data.pairs)
      seq_len: 256               # the packed rows' length (a pair takes prompt + chosen + rejected slots)
      val_fraction: 0.05         # pairs to validation, by a hash of their index
      tokenizer: null            # a tokenizer.json or a folder holding one; null: model.init_from's
      chat_template: null        # a Jinja file for "messages"; null: the tokenizer folder's, else the plain one

The fields, the tokenizer and chat template they pick, and how a fresh run from ``model.init_from`` or a
resumed run reads them are the ``examples`` kind's (:mod:`.examples_kind`). Pairs are tokenised on every
start (no disk cache: a pair file is small next to a corpus).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, ClassVar

from .corpus import _split_by_keys
from .example_cache import examples_fingerprint
from .examples_kind import ExampleData, ExamplesDataConfig, resumed, run_tokenizer, started
from .kinds import DataKind
from .pairs import PackedPairs, PairError, read_pairs, tokenize_pairs

__all__ = ["PairsDataConfig", "pairs_data_kind", "prepare_pairs_run"]


@dataclass
class PairsDataConfig(ExamplesDataConfig):
    """The ``data:`` section of a run on preference pairs (module docstring)."""

    section: ClassVar[str] = "data"
    kind: str = "pairs"


def prepare_pairs_run(dc: PairsDataConfig, say: Callable[[str], Any] = print) -> ExampleData:
    """The tokenizer, the template and the packed train/validation rows of the pairs in ``dc.path`` (one line)."""
    tok, eos, template = run_tokenizer(dc)
    variables = {"eos_token": tok.id_to_token(eos)} if eos is not None else {}
    records = read_pairs(dc.path)
    if len(records) < 2:
        raise PairError(f"{dc.path}: {len(records)} pair; a run needs at least 2 (train and validation)")
    data = tokenize_pairs(records, tok, eos, template, variables)
    train_idx, val_idx = _split_by_keys(list(range(len(data))), [f"pairs:{i}" for i in range(len(data))],
                                        dc.val_fraction)
    pad = eos if eos is not None else 0
    train, val = (PackedPairs(data, idx, dc.seq_len, pad, dc.path) for idx in (train_idx, val_idx))
    info = {"pairs": len(data), "train_pairs": train.num_pairs(), "val_pairs": val.num_pairs(),
            "train_rows": len(train), "val_rows": len(val)}
    say(f"data: {len(data)} pairs from {dc.path} ({'its own' if template else 'the plain'} chat template); "
        f"train {info['train_pairs']} in {info['train_rows']} rows of {dc.seq_len}, "
        f"val {info['val_pairs']} in {info['val_rows']} rows")
    return ExampleData(train, val, tok, eos, examples_fingerprint(dc.path), template, info, dc.path)


def pairs_data_kind(sample_class: type) -> DataKind:
    """The ``pairs`` kind for the registry (:mod:`.kinds`); registered beside ``examples``."""
    return DataKind(name="pairs", config_class=PairsDataConfig, sample_class=sample_class,
                    prepare=lambda dc, say: prepare_pairs_run(dc, say),
                    fingerprint=lambda dc: examples_fingerprint(dc.path), resumed=resumed, started=started,
                    describe=lambda dc: f"pairs (data.path={dc.path!r})")

