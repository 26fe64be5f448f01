"""Preference pairs: JSONL records of a prompt with a chosen and a rejected reply (DPO, reward models).

One record per line, in one of two forms (blank lines are skipped):

    {"prompt": "…", "chosen": "…", "rejected": "…"}
    {"messages": [{"role": "system"|"user"|"assistant", "content": "…"}, …, {"role": "user", …}],
     "chosen": "…", "rejected": "…"}          the conversation so far, then two candidate assistant replies

Each side is rendered exactly as the ``examples`` kind renders ``{"prompt", "response"}`` or a conversation
ending in that assistant reply (:func:`genmodels.data.examples.record_segments`: the model's chat template
or the plain one, the prompt tokenised as ``generate`` will see it, EOS after the reply unless a model's own
template writes its end of turn). The prompt of both sides is the same text, tokenised once.

A bad record (not JSON, a missing, extra or empty field, a wrong type, an unknown role, a conversation
not ending in a user turn, chosen equal to rejected) is refused in one line naming the file and line
(:class:`PairError`).

**One forward per pair.** A pair of ``p`` prompt, ``c`` chosen and ``r`` rejected tokens takes ``p + c + r``
slots of a row: ``[prompt | chosen | rejected]``, the rejected reply at positions ``p …`` again (as if it
followed the prompt) and kept from seeing the chosen one (``branch``: 0 prompt, 1 chosen, 2 rejected; the
objective turns it into allowed pairs). So the prompt is computed once for both replies. Several pairs share
a row, first-fit, kept apart by ``segment_ids``. A batch is a dict of ``(B, T)`` tensors:

    input_ids        the tokens (padding: ``pad_id``)
    position_ids     prompt 0…p−1, chosen p…p+c−1, rejected p…p+r−1 (0 on padding)
    segment_ids      0 padding, 1, 2, … the pair's index within its row
    branch           0 prompt or padding, 1 chosen, 2 rejected
    chosen_labels    at the slot that predicts chosen token j (the prompt's last slot for j = 0, else chosen
                     slot j−1): that token; −100 elsewhere
    rejected_labels  the same for the rejected reply

A reward model reads each reply's score at its last slot (``branch`` 1 / 2 followed by another value).
A pair over ``seq_len`` slots is refused naming its file and line (a cut reply would be learnt as the
whole of it).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .example_pack import IGNORE_INDEX, pack_rows
from .chat_template import PLAIN_TEMPLATE
from .examples import ExampleError, Record, _check_messages, _check_string, json_form, record_segments

__all__ = ["PairError", "PackedPairs", "TokenizedPairs", "encode_reply", "parse_pair", "read_pairs",
           "tokenize_pairs"]

FORMS = ({"prompt", "chosen", "rejected"}, {"messages", "chosen", "rejected"})
_SHAPES = '{"prompt": …, "chosen": …, "rejected": …} or {"messages": [… a user turn last], "chosen": …, "rejected": …}'


class PairError(ExampleError):
    """A record that is not a preference pair; the message names the file and line."""


def parse_pair(line: str, path: str, lineno: int) -> Record:
    """The pair on one line (a :class:`~genmodels.data.examples.Record`), or :class:`PairError` naming it."""
    where = f"{path}, line {lineno}"
    obj, keys = json_form(line, where, FORMS, _SHAPES, PairError, "pair")
    for name in ("chosen", "rejected") + (("prompt",) if "prompt" in keys else ()):
        try:
            _check_string(obj[name], f"\"{name}\"", where)
        except ExampleError as e:
            raise PairError(str(e)) from None
    if "messages" in keys:
        try:
            conversation = obj["messages"]
            _check_messages(conversation + [{"role": "assistant", "content": obj["chosen"]}]
                            if isinstance(conversation, list) and conversation else conversation, where)
        except ExampleError as e:
            raise PairError(str(e)) from None
        if obj["messages"][-1]["role"] != "user":
            raise PairError(f"{where}: \"messages\" must end with a user turn (the replies are the assistant's), "
                            f"got {obj['messages'][-1]['role']!r} last")
    if obj["chosen"] == obj["rejected"]:
        raise PairError(f"{where}: \"chosen\" and \"rejected\" are the same reply (a pair must prefer one)")
    return Record(path, lineno, obj)


def read_pairs(path: str | Path) -> list[Record]:
    """Every pair of a JSONL file, checked (:func:`parse_pair`); blank lines skipped; an empty or non-UTF-8 file
    is refused naming it."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise PairError(f"{path}: not UTF-8 text at byte {e.start} (a pairs file is JSONL)") from None
    records = [parse_pair(line, str(path), i) for i, line in enumerate(text.splitlines(), start=1) if line.strip()]
    if not records:
        raise PairError(f"{path}: no pairs (the file has no non-blank line)")
    return records


def _side(record: Record, reply: str, template: str | None, variables: dict) -> tuple[list[str], str]:
    """``(prompt pieces, reply text)`` of one side: the examples kind's segments of the record with ``reply``,
    cut before the last trained segment (the reply); what a template writes after it carries no loss."""
    f = record.fields
    fields = ({"prompt": f["prompt"], "response": reply} if "prompt" in f else
              {"messages": f["messages"] + [{"role": "assistant", "content": reply}]})
    segments = record_segments(Record(record.path, record.line, fields), template, variables)
    last = max(i for i, (_, trained) in enumerate(segments) if trained)
    return [text for text, _ in segments[:last]], segments[last][0]


def encode_reply(fields: dict, tokenizer, eos_id: int | None, template: str | None = None,
                 variables: dict | None = None) -> tuple[list[int], list[int]]:
    """``(prompt ids, reply ids)`` of ``{"prompt"|"messages", "response"}`` as a pair's side is tokenised (what
    ``genmodels score`` scores)."""
    record = Record("<reply>", 0, {**fields, "chosen": fields["response"], "rejected": ""})
    data = tokenize_pairs([record], tokenizer, eos_id, template, variables, sides=("chosen",))
    return data.prompt(0).tolist(), data.reply(0, "chosen").tolist()


@dataclass
class TokenizedPairs:
    """Pairs as flat arrays: ``tokens[offsets[i, s]:offsets[i, s + 1]]`` is pair ``i``'s prompt (s = 0),
    chosen (1) and rejected (2) reply; ``lines`` the record's line in its file."""

    tokens: np.ndarray  # (N,) int64
    offsets: np.ndarray  # (P, 4) int64
    lines: np.ndarray  # (P,) int64

    def __len__(self) -> int:
        return len(self.lines)

    def prompt(self, i: int) -> np.ndarray:
        return self.tokens[self.offsets[i, 0]:self.offsets[i, 1]]

    def reply(self, i: int, side: str) -> np.ndarray:
        s = 1 if side == "chosen" else 2
        return self.tokens[self.offsets[i, s]:self.offsets[i, s + 1]]


def tokenize_pairs(records: Sequence[Record], tokenizer, eos_id: int | None, template: str | None = None,
                   variables: dict[str, Any] | None = None,
                   sides: tuple[str, ...] = ("chosen", "rejected")) -> TokenizedPairs:
    """Every pair's prompt and replies tokenised (one ``encode_batch``, no special tokens added) as the module
    docstring says; a template that renders the prompt differently for the two replies is refused."""
    variables = variables or {}
    own_template = template is not None and template != PLAIN_TEMPLATE
    plan, flat = [], []
    for r in records:
        pieces, replies = None, []
        for side in sides:
            p, reply = _side(r, r.fields[side], template, variables)
            if pieces is not None and p != pieces:
                raise PairError(f"{r.where}: the chat template renders the prompt differently before the chosen and "
                                "the rejected reply, so they cannot share it")
            pieces = p
            replies.append(reply)
        plan.append((len(pieces), len(replies)))
        flat += pieces + replies
    enc = tokenizer.encode_batch(flat, add_special_tokens=False) if flat else []
    tokens: list[int] = []
    offsets, k = [], 0
    for r, (n_pieces, n_replies) in zip(records, plan):
        row = [len(tokens)]
        for _ in range(n_pieces):
            tokens += enc[k].ids
            k += 1
        for _ in range(n_replies):
            row.append(len(tokens))
            tokens += enc[k].ids
            if eos_id is not None and not (own_template and "messages" in r.fields):
                tokens.append(int(eos_id))
            k += 1
        row.append(len(tokens))
        if row[1] == row[0]:
            raise PairError(f"{r.where}: the prompt has no tokens")
        offsets.append(row + [row[-1]] * (4 - len(row)))
    return TokenizedPairs(np.asarray(tokens, dtype=np.int64), np.asarray(offsets, dtype=np.int64).reshape(-1, 4),
                          np.asarray([r.line for r in records], dtype=np.int64))


class PackedPairs(torch.utils.data.Dataset):
    """Rows of packed pairs (module docstring) over a split's ``indices`` into ``data``; ``len()`` is the number
    of rows, :meth:`batch` builds rows on demand. ``path`` names the file in refusals."""

    def __init__(self, data: TokenizedPairs, indices: Sequence[int], seq_len: int, pad_id: int = 0,
                 path: str = "the pairs file"):
        self.data, self.seq_len, self.pad_id = data, seq_len, int(pad_id)
        self.pairs = np.asarray(indices, dtype=np.int64)  # (P,)
        if not len(self.pairs):
            raise PairError(f"{path}: a split has no pair")
        slots = (data.offsets[self.pairs, 3] - data.offsets[self.pairs, 0]).astype(np.int64)  # (P,) p + c + r
        over = np.flatnonzero(slots > seq_len)
        if over.size:
            i = int(over[np.argmax(slots[over])])
            raise PairError(f"{path}, line {int(data.lines[self.pairs[i]])}: the pair takes {int(slots[i])} slots "
                            f"(prompt + chosen + rejected), over data.seq_len = {seq_len} ({over.size} pair(s) are); "
                            "raise data.seq_len, or shorten or drop it")
        self.rows = pack_rows((slots + 1).tolist(), seq_len)  # (pack_rows counts n − 1 slots for n)

    def __len__(self) -> int:
        return len(self.rows)

    def num_pairs(self) -> int:
        return len(self.pairs)

    def batch(self, indices: Sequence[int] | np.ndarray) -> dict[str, torch.Tensor]:
        """The rows ``indices`` as a dict of ``(len(indices), seq_len)`` LongTensors (module docstring)."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if idx.size and (idx.min() < 0 or idx.max() >= len(self)):
            raise IndexError(f"row indices must be in [0, {len(self)}); got {idx.min()}..{idx.max()}")
        shape = (len(idx), self.seq_len)
        out = {"input_ids": np.full(shape, self.pad_id, np.int64), "position_ids": np.zeros(shape, np.int64),
               "segment_ids": np.zeros(shape, np.int64), "branch": np.zeros(shape, np.int64),
               "chosen_labels": np.full(shape, IGNORE_INDEX, np.int64),
               "rejected_labels": np.full(shape, IGNORE_INDEX, np.int64)}
        for b, r in enumerate(idx):
            c = 0
            for k, j in enumerate(self.rows[r], start=1):
                c = self._place(out, b, c, k, int(self.pairs[j]))
        return {k: torch.from_numpy(v) for k, v in out.items()}

    get_batch = batch

    def _place(self, out: dict[str, np.ndarray], b: int, c: int, k: int, i: int) -> int:
        """Write pair ``i`` as segment ``k`` of row ``b`` from slot ``c``; the slot after it."""
        prompt = self.data.prompt(i)
        p = len(prompt)
        out["input_ids"][b, c:c + p] = prompt
        out["position_ids"][b, c:c + p] = np.arange(p)
        start = c + p
        for branch, side in ((1, "chosen"), (2, "rejected")):
            reply = self.data.reply(i, side)
            n = len(reply)
            out["input_ids"][b, start:start + n] = reply
            out["position_ids"][b, start:start + n] = np.arange(p, p + n)
            out["branch"][b, start:start + n] = branch
            labels = out[f"{side}_labels"]
            labels[b, c + p - 1] = reply[0]  # the prompt's last slot predicts the reply's first token
            labels[b, start:start + n - 1] = reply[1:]
            start += n
        out["segment_ids"][b, c:start] = k
        return start

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {k: v[0] for k, v in self.batch([index]).items()}
