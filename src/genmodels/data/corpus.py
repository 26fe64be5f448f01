"""Text corpora for causal-LM pre-training.

The default corpus is the Python standard library source, which is present on
every machine with a Python install and therefore needs no download.  User
corpora can be a single text file, a folder of files or a JSONL file.

Every split is deterministic: which document goes to validation depends only on
a SHA-1 hash of a stable key (a relative path or an index), never on Python's
randomised ``hash()``, on listing order or on the machine.
"""

from __future__ import annotations

import hashlib
import json
import os
import sysconfig
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

__all__ = [
    "CORPUS_KINDS",
    "CorpusSpec",
    "folder_documents",
    "folder_files",
    "jsonl_documents",
    "load_documents",
    "split_train_val",
    "stdlib_files",
    "stdlib_root",
    "text_file_documents",
]

T = TypeVar("T")

CORPUS_KINDS: tuple[str, ...] = ("stdlib", "text", "folder", "jsonl")
"""Allowed values of :attr:`CorpusSpec.kind`."""

TEXT_BLOCK_LINES = 100
"""A single text file is split into blocks of this many lines for train/val."""

_PACKAGE_DIRS = frozenset({"site-packages", "dist-packages"})
_TEST_DIRS = frozenset({"test", "tests", "idle_test"})

# --------------------------------------------------------------------------- #
# Reading helpers
# --------------------------------------------------------------------------- #
def _read_text(path: Path) -> str:
    """Read a file as UTF-8, replacing undecodable bytes."""
    return Path(path).read_text(encoding="utf-8", errors="replace")


def _stable_unit(key: str) -> float:
    """Map ``key`` to a float in [0, 1) using SHA-1 (stable across runs)."""
    digest = hashlib.sha1(key.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def _split_by_keys(
    items: Sequence[T], keys: Sequence[str], val_fraction: float
) -> tuple[list[T], list[T]]:
    """Split ``items`` by the hash of their ``keys``; order is preserved.

    When there are at least two items, both splits are guaranteed non-empty:
    if hashing leaves one side empty, the item whose hash lies closest to the
    threshold is moved across.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction!r}")
    if len(items) != len(keys):
        raise ValueError("items and keys must have the same length")
    scores = [_stable_unit(k) for k in keys]
    is_val = [s < val_fraction for s in scores]
    if len(items) >= 2:
        if not any(is_val):
            is_val[min(range(len(items)), key=scores.__getitem__)] = True
        elif all(is_val):
            is_val[max(range(len(items)), key=scores.__getitem__)] = False
    train = [it for it, v in zip(items, is_val) if not v]
    val = [it for it, v in zip(items, is_val) if v]
    return train, val


# --------------------------------------------------------------------------- #
# Standard-library corpus
# --------------------------------------------------------------------------- #
def stdlib_root() -> Path:
    """Directory holding the running interpreter's pure-Python stdlib."""
    return Path(sysconfig.get_paths()["stdlib"])


def stdlib_files(exclude_tests: bool = True) -> list[Path]:
    """List the ``*.py`` files of the Python standard library.

    Anything below a ``site-packages`` or ``dist-packages`` directory (third
    party code) is always excluded.  With ``exclude_tests`` every directory
    named ``test``, ``tests`` or ``idle_test`` is excluded too: that is the
    top-level ``test`` package (CPython's regression suite, ~80% of the
    stdlib's size) plus package-local suites such as ``unittest/test``,
    ``ctypes/test``, ``tkinter/test``, ``lib2to3/tests`` and
    ``idlelib/idle_test``.

    Returns absolute paths sorted by their path relative to the stdlib root.
    """
    root = stdlib_root()
    skip = _PACKAGE_DIRS | (_TEST_DIRS if exclude_tests else frozenset())
    found: list[tuple[str, Path]] = []
    for dirpath, dirnames, filenames in os.walk(root):
        # Prune in place so excluded trees are never walked (site-packages can
        # be far larger than the stdlib itself).
        dirnames[:] = [d for d in dirnames if d not in skip and d != "__pycache__"]
        for name in filenames:
            if name.endswith(".py"):
                path = Path(dirpath) / name
                found.append((path.relative_to(root).as_posix(), path))
    found.sort(key=lambda item: item[0])
    return [path for _, path in found]


def split_train_val(
    paths: Sequence[Path | str],
    val_fraction: float = 0.05,
    root: Path | str | None = None,
) -> tuple[list[Path], list[Path]]:
    """Deterministically split files into (train, val) by hashed relative path.

    The key of each file is its POSIX path relative to ``root``.  When ``root``
    is ``None``, relative paths are used as given and absolute paths are made
    relative to the common parent directory of all paths.  The outcome for a
    file does not depend on the order of ``paths``; with two or more files the
    validation split is never empty.
    """
    path_list = [Path(p) for p in paths]
    if root is None and path_list and all(p.is_absolute() for p in path_list):
        root = Path(os.path.commonpath([str(p.parent) for p in path_list]))
    if root is not None:
        keys = [_relative_key(p, Path(root)) for p in path_list]
    else:
        keys = [p.as_posix() for p in path_list]
    return _split_by_keys(path_list, keys, val_fraction)


def _relative_key(path: Path, root: Path) -> str:
    """POSIX path of ``path`` relative to ``root`` (absolute if outside)."""
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.as_posix()


# --------------------------------------------------------------------------- #
# User corpora
# --------------------------------------------------------------------------- #
def text_file_documents(path: Path | str) -> list[str]:
    """A single text file as one document."""
    return [_read_text(Path(path))]


def folder_files(
    path: Path | str, extensions: Iterable[str] = (".txt", ".md", ".py")
) -> list[Path]:
    """Files below ``path`` (recursively) whose name ends with an extension.

    Matching is case-insensitive; hidden files and directories (name starting
    with ``.``) are skipped.  Sorted by path relative to ``path``.
    """
    root = Path(path)
    exts = tuple(e.lower() for e in extensions)
    found: list[tuple[str, Path]] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in filenames:
            if not name.startswith(".") and name.lower().endswith(exts):
                file = Path(dirpath) / name
                found.append((file.relative_to(root).as_posix(), file))
    found.sort(key=lambda item: item[0])
    return [file for _, file in found]


def folder_documents(
    path: Path | str, extensions: Iterable[str] = (".txt", ".md", ".py")
) -> list[str]:
    """One document per matching file below ``path``; see :func:`folder_files`."""
    return [_read_text(f) for f in folder_files(path, extensions)]


def jsonl_documents(path: Path | str, text_field: str = "text") -> list[str]:
    """One document per line of a JSONL file, taken from ``text_field``.

    Blank lines are skipped.  A line that is not valid JSON, is not an object,
    or lacks a string ``text_field`` raises ``ValueError`` naming the file, the
    1-based line number and the field.
    """
    path = Path(path)
    docs: list[str] = []
    with path.open(encoding="utf-8", errors="replace") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            where = f"{path}, line {lineno}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(
                    f"{where}: invalid JSON ({exc.msg}); expected an object "
                    f"with a string field {text_field!r}"
                ) from None
            text = _record_text(record, text_field)
            if text is None:
                raise ValueError(f"{where}: missing string field {text_field!r}")
            docs.append(text)
    return docs


def _record_text(record: Any, text_field: str) -> str | None:
    """The string under ``text_field`` of a JSON object, else ``None``."""
    text = record.get(text_field) if isinstance(record, dict) else None
    return text if isinstance(text, str) else None


def _line_blocks(text: str, block_lines: int = TEXT_BLOCK_LINES) -> list[str]:
    """Split ``text`` into consecutive blocks of ``block_lines`` lines."""
    lines = text.splitlines(keepends=True)
    return [
        "".join(lines[i : i + block_lines]) for i in range(0, len(lines), block_lines)
    ]


# --------------------------------------------------------------------------- #
# Corpus specification
# --------------------------------------------------------------------------- #
@dataclass
class CorpusSpec:
    """Which corpus to train on and how to split it.

    Attributes:
        kind: one of :data:`CORPUS_KINDS` (``stdlib``, ``text``, ``folder``,
            ``jsonl``).
        path: file (``text``, ``jsonl``) or directory (``folder``); unused for
            ``stdlib``.
        extensions: file-name endings included by ``folder``.
        text_field: JSON key holding the document text for ``jsonl``.
        exclude_tests: for ``stdlib``, skip test directories.
        val_fraction: approximate share of documents for validation, in (0, 1).
    """

    kind: str = "stdlib"
    path: str | None = None
    extensions: list[str] = field(default_factory=lambda: [".txt", ".md", ".py"])
    text_field: str = "text"
    exclude_tests: bool = True
    val_fraction: float = 0.05

    def validate(self) -> CorpusSpec:
        """Check the fields; raise ``ValueError`` naming the bad one. Returns self."""
        if self.kind not in CORPUS_KINDS:
            allowed = ", ".join(CORPUS_KINDS)
            raise ValueError(f"corpus.kind must be one of {allowed}; got {self.kind!r}")
        if self.kind != "stdlib":
            self._validate_path()
        exts = self.extensions
        if self.kind == "folder" and not (
            exts and all(isinstance(e, str) and e for e in exts)
        ):
            raise ValueError(
                "corpus.extensions must be a non-empty list of non-empty strings "
                f"such as ['.txt', '.md']; got {exts!r}"
            )
        if self.kind == "jsonl" and not (
            isinstance(self.text_field, str) and self.text_field
        ):
            raise ValueError(
                f"corpus.text_field must be a non-empty string; got {self.text_field!r}"
            )
        frac = self.val_fraction
        if (
            isinstance(frac, bool)
            or not isinstance(frac, (int, float))
            or not 0.0 < float(frac) < 1.0
        ):
            raise ValueError(
                f"corpus.val_fraction must be a number in (0, 1); got {frac!r}"
            )
        return self

    def _validate_path(self) -> None:
        """Check ``path`` for the file- and folder-based kinds."""
        if not self.path:
            raise ValueError(
                f"corpus.path is required when corpus.kind is {self.kind!r}"
            )
        p = Path(self.path)
        if not p.exists():
            raise ValueError(f"corpus.path {self.path!r} does not exist")
        want_dir = self.kind == "folder"
        if want_dir and not p.is_dir():
            raise ValueError(
                f"corpus.path {self.path!r} must be a directory for kind 'folder'"
            )
        if not want_dir and not p.is_file():
            raise ValueError(
                f"corpus.path {self.path!r} must be a file for kind {self.kind!r}"
            )

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form (JSON/YAML friendly)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CorpusSpec:
        """Build from a dict, rejecting unknown keys; does not validate."""
        allowed = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - allowed)
        if unknown:
            raise ValueError(
                f"unknown corpus field(s) {', '.join(unknown)}; "
                f"allowed: {', '.join(sorted(allowed))}"
            )
        values = dict(data)
        if "extensions" in values and values["extensions"] is not None:
            values["extensions"] = list(values["extensions"])
        return cls(**values)


def load_documents(spec: CorpusSpec) -> tuple[list[str], list[str]]:
    """Load a corpus and return ``(train_docs, val_docs)``.

    * ``stdlib`` / ``folder``: one document per file, split by hashed relative
      path.
    * ``text``: the file is cut into blocks of :data:`TEXT_BLOCK_LINES` lines,
      each block a document, split by hashed block index.
    * ``jsonl``: one document per record, split by hashed record index.
    """
    spec.validate()
    frac = float(spec.val_fraction)
    if spec.kind in ("stdlib", "folder"):
        if spec.kind == "stdlib":
            root, files = stdlib_root(), stdlib_files(spec.exclude_tests)
        else:
            root = Path(spec.path)  # type: ignore[arg-type]
            files = folder_files(root, spec.extensions)
        train_files, val_files = split_train_val(files, frac, root=root)
        return [_read_text(f) for f in train_files], [_read_text(f) for f in val_files]
    if spec.kind == "text":
        docs = _line_blocks(_read_text(Path(spec.path)))  # type: ignore[arg-type]
        prefix = "block"
    else:
        docs = jsonl_documents(spec.path, spec.text_field)  # type: ignore[arg-type]
        prefix = "record"
    return _split_by_keys(docs, [f"{prefix}:{i}" for i in range(len(docs))], frac)
