"""Preference pairs built offline from the task set (:mod:`.tasks`): the correct answer against a plausible
wrong one of the same form.

The wrong answer of a record is the answer of another instance of the same task (so of the same form: a
reversed word against another reversed word, a date against a date, a number against a number), taken from
the next instance in the task's order whose answer differs once normalised (:func:`.tasks.normalize`), so
it is never a right answer. Deterministic: no random draw, the same task set gives the same pairs.

    from genmodels.data.tasks import build_taskset
    pairs = task_pairs([r for r in build_taskset() if r.split == "seen-train"], form="messages")

``form``: ``prompt`` (``{"prompt": "<question>\\nAnswer:", "chosen": " <answer>", "rejected": " <wrong>"}``, as
:meth:`TaskRecord.prompt_form`) or ``messages`` (``{"messages": [user question], "chosen": answer,
"rejected": wrong}``), both forms of the ``pairs`` data kind.
"""
from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

from .tasks import TaskRecord, normalize

__all__ = ["task_pairs", "write_pairs", "write_task_pairs"]

FORMS = ("prompt", "messages")


def _wrong_answer(record: TaskRecord, same_task: list[TaskRecord]) -> str | None:
    """The answer of the next instance of the task (cyclically) that is not this record's answer."""
    i = same_task.index(record)
    for k in range(1, len(same_task)):
        other = same_task[(i + k) % len(same_task)].answer
        if normalize(other) != normalize(record.answer):
            return other
    return None


def task_pairs(records: list[TaskRecord], form: str = "messages") -> list[dict]:
    """One pair per record (in order) whose task has another answer to set against it (module docstring)."""
    if form not in FORMS:
        raise ValueError(f"form={form!r} is not allowed; choose one of {', '.join(FORMS)}")
    by_task: dict[str, list[TaskRecord]] = defaultdict(list)
    for r in records:
        by_task[r.task].append(r)
    out = []
    for r in records:
        wrong = _wrong_answer(r, by_task[r.task])
        if wrong is None:
            continue
        if form == "prompt":
            p = r.prompt_form()
            out.append({"prompt": p["prompt"], "chosen": p["response"], "rejected": f" {wrong}"})
        else:
            out.append({"messages": r.messages_form()["messages"][:-1], "chosen": r.answer, "rejected": wrong})
    return out


def write_pairs(pairs: list[dict], path: str | Path) -> int:
    """Write pairs (the ``pairs`` kind's forms) as JSONL to ``path``; their number."""
    Path(path).write_text("".join(json.dumps(p, ensure_ascii=False) + "\n" for p in pairs), encoding="utf-8")
    return len(pairs)


def write_task_pairs(records: list[TaskRecord], path: str | Path, form: str = "messages") -> int:
    """Write :func:`task_pairs` as JSONL to ``path``; the number of pairs."""
    return write_pairs(task_pairs(records, form), path)
