"""Example data: JSONL records, each a training example that says where the loss goes.

One record per line, in one of three forms (blank lines are skipped):

    {"text": "…"}                                   loss on every token
    {"prompt": "…", "response": "…"}                loss on the response only
    {"messages": [{"role": "system"|"user"|"assistant", "content": "…"}, …]}
                                                    loss on the assistant turns only

A record becomes *segments*, ``(text, loss)`` pieces that are tokenised one by one (so a prompt is
tokenised as it will be given to ``generate``) and concatenated:

* ``text``: ``[(text, True)]``; ``prompt``/``response``: ``[(prompt, False), (response, True)]``.
* ``messages`` are rendered by a chat template (:mod:`.chat_template`): the model's own when it has one
  (``chat_template.jinja`` / ``tokenizer_config.json`` beside the tokenizer), else
  :data:`~genmodels.data.chat_template.PLAIN_TEMPLATE` (``"User: …\\n\\nAssistant: …\\n\\n"``). Assistant turn
  ``i`` is the text ``render(messages[:i+1])`` adds to ``render(messages[:i], add_generation_prompt=True)``
  (with the plain template: `` reply\\n\\n``, after ``Assistant:``); everything else carries no loss.
  A template that does not render a conversation's beginning as a prefix of the whole is refused.

Every example ends with the EOS token (trained when the last segment is), except messages rendered by a
model's own template: such a template writes its own end-of-turn marks. A bad record (not JSON, not an
object, a missing, extra or empty field, a wrong type, an unknown role, no assistant turn) is refused
in one line naming the file and line (:class:`ExampleError`).
"""
from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .chat_template import PLAIN_TEMPLATE, ChatTemplateError, render
from .token_cache import token_dtype

__all__ = ["ExampleError", "Record", "TokenizedExamples", "read_records", "record_segments", "tokenize_examples"]

FORMS = ({"text"}, {"prompt", "response"}, {"messages"})
ROLES = ("system", "user", "assistant")
_SHAPES = '{"text": …}, {"prompt": …, "response": …} or {"messages": [{"role": …, "content": …}, …]}'


class ExampleError(ValueError):
    """A record that is not a training example; the message names the file and line."""


@dataclass(frozen=True)
class Record:
    """One parsed record: its 1-based ``line`` in ``path`` and its fields (one of :data:`FORMS`)."""

    path: str
    line: int
    fields: dict[str, Any]

    @property
    def where(self) -> str:
        return f"{self.path}, line {self.line}"


def _check_string(value: Any, name: str, where: str) -> None:
    if not isinstance(value, str):
        raise ExampleError(f"{where}: {name} must be a string, got {type(value).__name__}")
    if not value:
        raise ExampleError(f"{where}: {name} is empty (an example needs text to train on)")


def _check_messages(messages: Any, where: str) -> None:
    if not isinstance(messages, list) or not messages:
        raise ExampleError(f"{where}: \"messages\" must be a non-empty list of "
                           f"{{\"role\": …, \"content\": …}} objects, got {type(messages).__name__}"
                           + (" (empty)" if messages == [] else ""))
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or set(m) != {"role", "content"}:
            found = sorted(m) if isinstance(m, dict) else type(m).__name__
            raise ExampleError(f"{where}: messages[{i}] must be an object with exactly \"role\" and "
                               f"\"content\", got {found}")
        if m["role"] not in ROLES:
            raise ExampleError(f"{where}: messages[{i}].role must be one of {list(ROLES)}, got {m['role']!r}")
        _check_string(m["content"], f"messages[{i}].content", where)
    if not any(m["role"] == "assistant" for m in messages):
        raise ExampleError(f"{where}: \"messages\" has no assistant turn (the loss is on assistant turns only, "
                           "so there is nothing to train on)")


def json_form(line: str, where: str, forms: tuple[set[str], ...], shapes: str,
              error: type[ExampleError] = ExampleError, what: str = "example") -> tuple[dict, set[str]]:
    """``(object, its form)`` of a JSONL line whose keys are exactly one of ``forms``, else ``error`` naming
    ``where`` and what is missing or unknown against the form sharing the most keys (``shapes`` says the forms)."""
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        raise error(f"{where}: invalid JSON ({e.msg}); expected one object per line: {shapes}") from None
    if not isinstance(obj, dict):
        raise error(f"{where}: expected a JSON object ({shapes}), got {type(obj).__name__}")
    keys = set(obj)
    form = next((f for f in forms if f == keys), None)
    if form is None:
        near = max(forms, key=lambda f: len(f & keys))  # (the first of the forms sharing the most keys)
        if not near & keys:
            raise error(f"{where}: keys {sorted(keys)} match no {what} form; expected {shapes}")
        missing, extra = sorted(near - keys), sorted(keys - near)
        why = "; ".join(x for x in (f"missing {missing}" if missing else "",
                                    f"unknown {extra}" if extra else "") if x)
        raise error(f"{where}: keys {sorted(keys)}: {why} (the form {sorted(near)} has exactly those keys)")
    return obj, form


def parse_record(line: str, path: str, lineno: int) -> Record:
    """The :class:`Record` on one line, or :class:`ExampleError` naming ``path`` and ``lineno``."""
    where = f"{path}, line {lineno}"
    obj, form = json_form(line, where, FORMS, _SHAPES)
    if form == {"messages"}:
        _check_messages(obj["messages"], where)
    else:
        for name in sorted(form):
            _check_string(obj[name], f"\"{name}\"", where)
    return Record(path, lineno, obj)


def read_records(path: str | Path) -> list[Record]:
    """Every record of a JSONL file, checked (:func:`parse_record`); blank lines skipped. A file with no
    record, or not UTF-8, is refused naming it."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ExampleError(f"{path}: not UTF-8 text at byte {e.start} (an examples file is JSONL)") from None
    records = [parse_record(line, str(path), i) for i, line in enumerate(text.splitlines(), start=1)
               if line.strip()]
    if not records:
        raise ExampleError(f"{path}: no examples (the file has no non-blank line)")
    return records


def _message_segments(record: Record, template: str, variables: dict[str, Any]) -> list[tuple[str, bool]]:
    """The conversation's rendered text cut at each assistant turn's edges (see the module docstring)."""
    messages = record.fields["messages"]
    segments, done = [], ""

    def text(upto: int, prompt: bool) -> str:
        try:
            return render(template, messages[:upto], add_generation_prompt=prompt, **variables)
        except ChatTemplateError as e:
            raise ExampleError(f"{record.where}: {e}") from None

    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        prefix, full = text(i, True), text(i + 1, False)
        if not (prefix.startswith(done) and full.startswith(prefix)):
            raise ExampleError(f"{record.where}: the chat template does not render messages[:{i}] as the "
                               f"beginning of messages[:{i + 1}], so assistant turn {i} cannot be found in the text")
        segments += [(prefix[len(done):], False), (full[len(prefix):], True)]
        done = full
    rest = text(len(messages), False)
    if not rest.startswith(done):
        raise ExampleError(f"{record.where}: the chat template does not render the last assistant turn as the "
                           "beginning of the whole conversation")
    return [s for s in segments + [(rest[len(done):], False)] if s[0]]


def record_segments(record: Record, template: str | None = None,
                    variables: dict[str, Any] | None = None) -> list[tuple[str, bool]]:
    """``[(text, loss), …]`` for ``record``; ``template`` (Jinja source; None: the plain template) renders
    messages, with ``variables`` (the special tokens: ``eos_token``…)."""
    f = record.fields
    if "text" in f:
        return [(f["text"], True)]
    if "prompt" in f:
        return [(f["prompt"], False), (f["response"], True)]
    return _message_segments(record, template or PLAIN_TEMPLATE, variables or {})


@dataclass
class TokenizedExamples:
    """Examples as flat arrays: example ``i`` is ``tokens[offsets[i]:offsets[i+1]]``; ``loss`` (same length,
    0/1) marks the tokens that are targets of the loss; ``lines`` the record's line in the file."""

    tokens: np.ndarray  # (N,) uint16 | uint32
    loss: np.ndarray  # (N,) uint8
    offsets: np.ndarray  # (E+1,) int64
    lines: np.ndarray  # (E,) int64

    def __len__(self) -> int:
        return len(self.lines)

    def example(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """``(tokens, loss)`` of example ``i``."""
        s, e = int(self.offsets[i]), int(self.offsets[i + 1])
        return self.tokens[s:e], self.loss[s:e]


def tokenize_examples(records: Iterable[Record], tokenizer, eos_id: int | None, template: str | None = None,
                      variables: dict[str, Any] | None = None) -> TokenizedExamples:
    """Segments of every record (:func:`record_segments`) tokenised (one ``encode_batch``, no special tokens
    added) and concatenated; EOS appended as the module docstring says."""
    records = list(records)
    per_record = [record_segments(r, template, variables) for r in records]
    flat = [text for segs in per_record for text, _ in segs]
    encodings = tokenizer.encode_batch(flat, add_special_tokens=False) if flat else []
    own_template = template is not None and template != PLAIN_TEMPLATE
    ids: list[int] = []
    loss: list[int] = []
    offsets, k = [0], 0
    for record, segs in zip(records, per_record):
        for _, trained in segs:
            piece = encodings[k].ids
            ids += piece
            loss += [int(trained)] * len(piece)
            k += 1
        if eos_id is not None and not (own_template and "messages" in record.fields):
            ids.append(int(eos_id))
            loss.append(int(segs[-1][1]))
        offsets.append(len(ids))
    vocab = tokenizer.get_vocab_size(with_added_tokens=True)
    return TokenizedExamples(np.asarray(ids, dtype=token_dtype(vocab)), np.asarray(loss, dtype=np.uint8),
                             np.asarray(offsets, dtype=np.int64), np.asarray([r.line for r in records], np.int64))
