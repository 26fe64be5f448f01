"""The task set: short tasks with one checkable answer each, generated offline from a seed (issue 22).

    from genmodels.data.tasks import build_taskset, exact_match
    records = build_taskset(seed=0, per_task=100)        # list[TaskRecord], in a fixed order
    [r for r in records if r.split == "unseen"]          # the held-out tasks

**Tasks.** :data:`SEEN_TASKS` and :data:`UNSEEN_TASKS` name kinds of :mod:`.task_kinds` (reverse, sort,
count, arithmetic, Caesar shift, unit conversion, date arithmetic, code tracing, …), each phrased by
one of at least three templates. Unseen tasks never appear in any training split.

**Splits.** Each seen task draws ``per_task`` distinct instances (distinct by their values, so one
question never reaches two splits in two phrasings): the first 80% are ``seen-train``, the next 10%
``seen-val``, the last 10% ``seen-test``. Each unseen task draws ``per_task // 5`` instances, all in
``unseen``. Instance ``i`` of a task is drawn by ``Rng(TASKSET_VERSION, seed, task, attempt)``
(:mod:`.task_rng`), ``attempt`` counting draws (a repeat of an earlier instance is drawn again).

**Scoring** (:func:`normalize`, :func:`exact_match`): a reply is right when its normalised text equals
the normalised answer: surrounding whitespace stripped, lower-cased, every run of whitespace one
space, one trailing period dropped. Numbers are compared as written (``12`` is not ``12.0``).

**Frozen.** The generator is versioned (:data:`TASKSET_VERSION`) and seeded; :func:`checksum` of the
default set (seed 0, ``per_task`` 100) is written in docs/tasks.md and a test holds it, so any change
to a word, template, draw or split is seen (and then needs a new version).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from .task_kinds import KINDS
from .task_rng import Rng

__all__ = ["SEEN_TASKS", "SPLITS", "TASKSET_VERSION", "UNSEEN_TASKS", "TaskRecord", "build_taskset", "checksum",
           "exact_match", "normalize"]

TASKSET_VERSION = 1
DEFAULT_SEED, DEFAULT_PER_TASK = 0, 100
SEEN_TASKS = ("reverse_word", "reverse_list", "uppercase", "first_letter", "caesar", "count_letter", "count_items",
              "sort_numbers", "sort_words", "max_list", "add", "subtract", "multiply", "km_to_m", "kg_to_g",
              "hours_to_minutes", "date_add_days", "weekday", "code_trace")
UNSEEN_TASKS = ("last_letter", "word_length", "sort_descending", "min_list", "m_to_cm", "date_subtract_days")
SPLITS = ("seen-train", "seen-val", "seen-test", "unseen")
MAX_ATTEMPTS = 50  # draws per wanted instance before a task is said to have too few distinct instances


@dataclass(frozen=True)
class TaskRecord:
    """One instance: ``question`` (the user's message) and its exact ``answer``; ``id`` is
    ``<task>-<index>``, ``template`` the phrasing's index in its kind, ``values`` what filled it (the
    instance's identity: no two records of a task share them)."""

    id: str
    task: str
    split: str
    template: int
    question: str
    answer: str
    values: dict

    def prompt_form(self) -> dict:
        """The ``{"prompt", "response"}`` example (data/examples.py): the question, a line ``Answer:``,
        then the answer after one space (so the answer is tokenised as it follows a word)."""
        return {"prompt": f"{self.question}\nAnswer:", "response": f" {self.answer}"}

    def messages_form(self) -> dict:
        """The ``{"messages": [user, assistant]}`` example (rendered by the model's chat template)."""
        return {"messages": [{"role": "user", "content": self.question},
                             {"role": "assistant", "content": self.answer}]}

    def meta(self) -> dict:
        """What the example forms cannot hold (data/examples.py refuses extra keys): line ``i`` of a
        split's ``.meta.jsonl`` describes line ``i`` of its example files."""
        return {"id": self.id, "task": self.task, "split": self.split, "template": self.template,
                "answer": self.answer, "values": self.values}


def _instances(task: str, seed: int, n: int) -> list[tuple[int, str, str, dict]]:
    """``n`` distinct ``(template, question, answer, values)`` of ``task``; ValueError when the task has too few."""
    kind = KINDS[task]
    seen: set[str] = set()
    out = []
    for attempt in range(n * MAX_ATTEMPTS):
        if len(out) == n:
            break
        rng = Rng(TASKSET_VERSION, seed, task, attempt)
        values, answer = kind.draw(rng)
        key = json.dumps(values, sort_keys=True)
        if key in seen:
            continue
        seen.add(key)
        t = rng.below(len(kind.templates))
        out.append((t, kind.templates[t].format(**values), answer, values))
    if len(out) < n:
        raise ValueError(f"--per-task {n}: task {task} has only about {len(out)} distinct instances; "
                         "ask for fewer per task")
    return out


def _seen_split(i: int, n: int) -> str:
    train, val = n * 8 // 10, n // 10
    return "seen-train" if i < train else "seen-val" if i < train + val else "seen-test"


def build_taskset(seed: int = DEFAULT_SEED, per_task: int = DEFAULT_PER_TASK) -> list[TaskRecord]:
    """Every record of the task set, seen tasks first (in :data:`SEEN_TASKS` order), then unseen."""
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"--seed {seed!r}: give a non-negative integer")
    if isinstance(per_task, bool) or not isinstance(per_task, int) or per_task < 10:
        raise ValueError(f"--per-task {per_task!r}: give an integer of at least 10 (10% of it is the test split)")
    records = []
    for names, count, split in ((SEEN_TASKS, per_task, None), (UNSEEN_TASKS, per_task // 5, "unseen")):
        for task in names:
            for i, (t, question, answer, values) in enumerate(_instances(task, seed, count)):
                records.append(TaskRecord(f"{task}-{i:04d}", task, split or _seen_split(i, count), t, question,
                                          answer, values))
    return records


def checksum(records: list[TaskRecord]) -> str:
    """SHA-256 of the records in order (each its meta plus question, as sorted-key JSON lines)."""
    h = hashlib.sha256()
    for r in records:
        h.update((json.dumps({**r.meta(), "question": r.question}, sort_keys=True) + "\n").encode())
    return h.hexdigest()


def normalize(text: str) -> str:
    """The text scoring compares (module doc): stripped, lower-cased, whitespace collapsed, one trailing
    period dropped."""
    text = " ".join(text.split()).lower()
    return text[:-1].rstrip() if text.endswith(".") else text


def exact_match(reply: str, answer: str) -> bool:
    """Whether ``reply`` is ``answer`` after :func:`normalize`."""
    return normalize(reply) == normalize(answer)
