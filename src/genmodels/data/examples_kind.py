"""The ``examples`` data kind: a recipe's ``data:`` section for JSONL examples, and how a run prepares them.

    data:
      kind: examples
      path: sft.jsonl            # one record a line (genmodels.data.examples)
      seq_len: 256               # the packed rows' length
      val_fraction: 0.05         # records to validation, by a hash of their index
      tokenizer: null            # a tokenizer.json, a folder holding one, or a .gguf; null: model.init_from's
      chat_template: null        # a Jinja file for "messages"; null: the tokenizer folder's, else the plain one

Unlike the ``tokens`` kind, no tokenizer is trained here: examples fine-tune a model, whose tokenizer they
use (``data.tokenizer``, or ``model.init_from``'s folder). A resumed run reads the run folder's
``tokenizer.json`` and, when the fresh run had one, its ``chat_template.jinja``.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar

from ..config import ConfigError, StrictConfig
from ..interop.gguf import is_gguf, read_tokenizer
from .chat_template import read_chat_template
from .example_cache import examples_fingerprint, prepare_examples
from .example_pack import PackedExamples
from .kinds import DataKind
from .tokenizer import TOKENIZER_FILENAME, eos_id, load_tokenizer, source_tokenizer

__all__ = ["ExampleData", "ExamplesDataConfig", "chat_template_for", "examples_data_kind", "prepare_example_run",
           "run_tokenizer"]


@dataclass
class ExamplesDataConfig(StrictConfig):
    """The ``data:`` section of a run on examples (module docstring)."""

    section: ClassVar[str] = "data"
    kind: str = "examples"
    path: str | None = None
    seq_len: int = 256
    val_fraction: float = 0.05
    tokenizer: str | None = None
    chat_template: str | None = None

    def validate(self) -> None:
        if self.kind != type(self).kind:  # (the class default: "examples"; the pairs kind's subclass: "pairs")
            raise ConfigError(f"{self.where('kind')}={self.kind!r}: this section is for kind {type(self).kind!r}")
        if not self.path:
            raise ConfigError(f"{self.where('path')} is required: a JSONL file of examples (one record a line)")
        if not Path(self.path).is_file():
            raise ConfigError(f"{self.where('path')}={self.path!r} is not a file (a JSONL file of examples)")
        if self.seq_len < 1:
            raise ConfigError(f"{self.where('seq_len')}={self.seq_len} must be at least 1")
        if not 0.0 < self.val_fraction < 1.0:
            raise ConfigError(f"{self.where('val_fraction')}={self.val_fraction} must be between 0 and 1 (exclusive)")
        if self.tokenizer is not None and _tokenizer_file(self.tokenizer) is None:
            raise ConfigError(f"{self.where('tokenizer')}={self.tokenizer!r}: no {TOKENIZER_FILENAME} there "
                              "(give a tokenizer.json file or a folder holding one)")
        if self.chat_template is not None and not Path(self.chat_template).is_file():
            raise ConfigError(f"{self.where('chat_template')}={self.chat_template!r} is not a file "
                              "(a Jinja chat template, e.g. chat_template.jinja)")


def _tokenizer_file(path: str | Path) -> Path | None:
    p = Path(path).expanduser()
    file = p / TOKENIZER_FILENAME if p.is_dir() else p
    return file if file.is_file() else None


def chat_template_for(dc: ExamplesDataConfig) -> str | None:
    """The template that renders ``messages``: ``data.chat_template``'s file, else the one kept beside the
    tokenizer (``chat_template.jinja`` / ``tokenizer_config.json``), else None (the plain template)."""
    if dc.chat_template is not None:
        return Path(dc.chat_template).read_text(encoding="utf-8")
    file = _tokenizer_file(dc.tokenizer) if dc.tokenizer is not None else None
    if file is not None and is_gguf(file):  # a GGUF file keeps its template in its metadata
        return read_tokenizer(file)[1]
    return read_chat_template(file.parent) if file is not None else None


@dataclass
class ExampleData:
    """What a run on examples reads (the data-kind registry's RunData)."""

    train: PackedExamples
    val: PackedExamples
    tokenizer: Any
    eos_id: int | None
    fingerprint: str
    chat_template: str | None
    info: dict
    path: str | None = None  # the examples file (refusals name it)


def run_tokenizer(dc: ExamplesDataConfig) -> tuple[Any, int | None, str | None]:
    """``(tokenizer, its EOS id, chat template)`` a run on ``dc`` reads (data.tokenizer is required)."""
    if dc.tokenizer is None:
        raise ConfigError(f"data.tokenizer is required for data.kind={dc.kind}: a tokenizer.json (or a folder "
                          "holding one), or model.init_from (its folder's tokenizer)")
    tok = load_tokenizer(_tokenizer_file(dc.tokenizer) or dc.tokenizer)
    return tok, eos_id(tok), chat_template_for(dc)


def prepare_example_run(dc: ExamplesDataConfig, say: Callable[[str], Any] = print,
                        root: Path | None = None) -> ExampleData:
    """The tokenizer, the template and the packed train/validation rows of ``dc`` (one line said)."""
    tok, eos, template = run_tokenizer(dc)
    splits = prepare_examples(dc.path, tok, dc.seq_len, dc.val_fraction, eos, template, root, say)
    i = splits.info
    say(f"data: {i['examples']} examples from {dc.path} ({'its own' if template else 'the plain'} chat template); "
        f"train {i['train_examples']} in {i['train_rows']} rows of {dc.seq_len} ({i['train_tokens']:,} tokens), "
        f"val {i['val_examples']} in {i['val_rows']} rows")
    return ExampleData(splits.train, splits.val, tok, eos, examples_fingerprint(dc.path), template, i, dc.path)


def started(dc: ExamplesDataConfig, init_from: str | None) -> ExamplesDataConfig:
    """A fresh run from ``model.init_from``: that folder's (or GGUF file's) tokenizer, and so its chat template,
    unless the recipe names one."""
    if init_from is None or dc.tokenizer is not None:
        return dc
    tokenizer = source_tokenizer(init_from)
    if tokenizer is None:
        raise ConfigError(f"model.init_from={init_from!r} has no tokenizer.json; data.kind=examples needs the "
                          "tokenizer the model was trained with (give data.tokenizer, or a folder saved with it)")
    return dc.replace(tokenizer=tokenizer)


def resumed(dc: ExamplesDataConfig, run_dir: Path) -> ExamplesDataConfig:
    """A resumed run reads the run folder's tokenizer, and so (unless the recipe names one) the chat template
    its fresh start wrote beside it."""
    return dc.replace(tokenizer=str(Path(run_dir) / TOKENIZER_FILENAME))


def examples_data_kind(sample_class: type) -> DataKind:
    """The ``examples`` kind for the registry (:mod:`.kinds`); ``sample_class``: the ``sample:`` section of a
    token run (the end-of-run samples are text prompts, as on the corpus). Registered beside the ``tokens``
    kind: ``register_data_kind(examples_data_kind(SampleConfig))``."""
    return DataKind(name="examples", config_class=ExamplesDataConfig, sample_class=sample_class,
                    prepare=lambda dc, say: prepare_example_run(dc, say),
                    fingerprint=lambda dc: examples_fingerprint(dc.path), resumed=resumed, started=started,
                    describe=lambda dc: f"examples (data.path={dc.path!r})")
