"""A Shepherd-style critic (Wang et al. 2023; issue 23 d4): a model tuned to judge an answer to a question.

    from genmodels.data.tasks import build_taskset
    rows = triples([r for r in build_taskset() if r.split == "seen-train"], seed=0)   # question, answer, critique
    critique(model, "What is 2 + 3?", "6")            # -> "The right answer is 5, not 6. Verdict: wrong."
    parse_verdict("The right answer is 5. Verdict: correct.")   # -> True (False: wrong; None: no verdict read)
    stated_answer("The right answer is 5, not 6. Verdict: wrong.")   # -> "5" (None: no right answer stated)
    agreement(model, held_out_records, batch=16)      # how often its verdict is the checker's

**Triples** (:func:`triples`): per record of the task set one right answer (its own) and one wrong answer of
the same form (:mod:`genmodels.data.task_pairs`: another instance's answer), each with a fixed-form critique
that states the right answer BEFORE the verdict: ``"The right answer is <true answer>. Verdict: correct."`` or
``"The right answer is <true answer>, not <answer>. Verdict: wrong."``. The critic never sees the true answer:
it must compute it, and its verdict is then a comparison of two strings it has just read and written (a critique
with the verdict first, the format of the first three measurements in docs/alignment.md, gave a verdict that
follows the question, not the answer: teacher-forced AUC right vs wrong 0.51). Its failure mode is the *copy*:
the given answer restated as the right one, then "correct" (:func:`agreement` counts it).
A record whose task has no other answer is skipped. ``seed`` shuffles their order (right and wrong answers of
one question are not next to each other). :func:`critic_messages` is the SFT example: the user's message
(:func:`critic_prompt`: the question and the answer to judge), the critique as the assistant's reply.
``genmodels critique-data`` writes them as messages JSONL (the ``examples`` data kind reads it), with an
ownership record beside it (:func:`genmodels.selfchat_files.write_owned`: a file it did not write is never
replaced).

**Verdicts** (:func:`parse_verdict`): the first ``Verdict: correct|right|wrong|incorrect`` in the text (any
case; anywhere in the text, so a verdict-first critic of the earlier format reads the same); without one, the
first ``answer|it|this is correct|right|wrong|incorrect|not correct|not right`` (an untuned chat model's way of
saying it, so its agreement is read fairly); None when there is neither. The checker's verdict is
:func:`genmodels.data.tasks.exact_match`. :func:`stated_answer` reads the critic's own right answer (the text
after the first ``the right answer is`` up to ``, not`` or the first ``.`` or line end; task answers hold neither).

**Agreement** (:func:`agreement`): the critic's greedy critique of every held-out (question, answer) pair
(half right answers, half wrong: the triples of the records given), decoded in batches through the model's chat
template as ``genmodels eval-tasks`` decodes; the share whose parsed verdict equals the checker's, with the
count of critiques whose verdict could not be read (counted as disagreeing); per question whether the critic
*separates* its right answer (judged correct) from its wrong one (judged wrong) or gives both the *same* verdict;
how often the stated right answer is the checker's (``solved``) and how often a wrong answer is restated as the
right one (``copied``: the copy failure mode).
"""
from __future__ import annotations

import random
import re
from typing import Any, Callable, Sequence

import torch

from .chat import Conversation, chat
from .data.task_pairs import task_pairs
from .data.tasks import TaskRecord, exact_match
from .task_eval import _replies

__all__ = ["FORMAT", "agreement", "critic_judge", "critic_messages", "critic_prompt", "critique", "critique_text",
           "critiques", "parse_verdict", "stated_answer", "triples", "write_critique_data"]

FORMAT = "genmodels-critique-data"  # the record beside a critique-data file
DEFAULT_MAX_NEW_TOKENS = 80  # "The right answer is <longest>, not <longest>. Verdict: wrong." (answers: ~30 tokens)
_VERDICT = re.compile(r"verdict\s*:\s*\**\s*(correct|right|wrong|incorrect)\b", re.IGNORECASE)
# an untuned chat model's free form ("The answer is incorrect."), read only when no "Verdict:" is there
_FREE = re.compile(r"\b(?:answer|it|this) is (correct|right|wrong|incorrect|not correct|not right)\b", re.IGNORECASE)
_TRUE = ("correct", "right")
_STATED = re.compile(r"the right answer is\s*(.*?)\s*(?:, not\b|\.|$)", re.IGNORECASE | re.MULTILINE)


def critic_prompt(question: str, answer: str) -> str:
    """The user's message to the critic: the question and the answer to judge."""
    return (f"Question: {question}\nAnswer to judge: {answer}\n"
            "Is this answer correct? Work out the right answer, then give a verdict.")


def critique_text(answer: str, right_answer: str) -> str:
    """The fixed-form critique of ``answer`` given the checker's ``right_answer`` (module doc)."""
    if exact_match(answer, right_answer):
        return f"The right answer is {right_answer}. Verdict: correct."
    return f"The right answer is {right_answer}, not {answer}. Verdict: wrong."


def parse_verdict(text: str) -> bool | None:
    """True (correct), False (wrong) or None (no verdict read) from a critique (module doc)."""
    m = _VERDICT.search(text) or _FREE.search(text)
    return None if m is None else m.group(1).lower() in _TRUE


def stated_answer(text: str) -> str | None:
    """The right answer a critique states before its verdict, or None when it states none (module doc)."""
    m = _STATED.search(text)
    return None if m is None or not m.group(1) else m.group(1)


def triples(records: Sequence[TaskRecord], seed: int = 0) -> list[dict[str, Any]]:
    """``{"question", "answer", "critique", "correct", "right_answer", "id"}`` per right and wrong answer of each
    record, in an order shuffled by ``seed`` (module doc); ``correct`` is the checker's verdict."""
    wrong = {p["messages"][0]["content"]: p["rejected"] for p in task_pairs(list(records), form="messages")}
    rows = []
    for r in records:
        if r.question not in wrong:
            continue
        for answer in (r.answer, wrong[r.question]):
            rows.append({"id": r.id, "question": r.question, "answer": answer,
                         "critique": critique_text(answer, r.answer), "correct": exact_match(answer, r.answer),
                         "right_answer": r.answer})
    random.Random(seed).shuffle(rows)
    return rows


def critic_messages(row: dict[str, Any]) -> dict[str, list[dict[str, str]]]:
    """The SFT example of a triple: the critic's prompt as the user's turn, the critique as the reply."""
    return {"messages": [{"role": "user", "content": critic_prompt(row["question"], row["answer"])},
                         {"role": "assistant", "content": row["critique"]}]}


def write_critique_data(records: Sequence[TaskRecord], out: str, seed: int = 0,
                        source: str | None = None) -> dict[str, Any]:
    """Write the triples of ``records`` as messages JSONL to ``out`` (never replacing a file genmodels
    critique-data did not write); returns the record written beside it."""
    from .selfchat_files import check_out, write_owned
    check_out(out, FORMAT)
    rows = triples(records, seed)
    if not rows:
        raise ValueError(f"--out {out}: no triples (no record's task has a second answer); nothing written")
    info = {"seed": seed, "records": len(records), "triples": len(rows),
            "right": sum(r["correct"] for r in rows), "source": source}
    return write_owned(out, [critic_messages(r) for r in rows], info, FORMAT)


def critique(model: torch.nn.Module, question: str, answer: str,
             max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS) -> str:
    """The critic's greedy critique of ``answer`` to ``question`` (through the model's chat template)."""
    return chat(model, [{"role": "user", "content": critic_prompt(question, answer)}], max_new_tokens=max_new_tokens)


def critiques(model: torch.nn.Module, rows: Sequence[dict[str, Any]], batch: int = 16, *,
              max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS, say: Callable[[str], None] | None = None) -> list[str]:
    """The critic's greedy critique of each row's ``answer`` to its ``question`` (``id`` names it in a refusal),
    decoded in left-padded batches through the model's chat template as ``genmodels eval-tasks`` decodes."""
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ValueError(f"batch={batch!r} (--batch): give a positive integer")
    conversation = Conversation(model, max_new_tokens=max_new_tokens)
    prompts = [conversation.encode([{"role": "user", "content": critic_prompt(r["question"], r["answer"])}])
               for r in rows]
    room = conversation.context - max_new_tokens
    for r, p in zip(rows, prompts):
        if len(p) > room:
            raise ValueError(f"record {r['id']}: its critic prompt takes {len(p)} tokens and the model's context "
                             f"({conversation.context}) leaves {room} after max_new_tokens={max_new_tokens}")
    return _replies(model, conversation, prompts, conversation.stop, batch, max_new_tokens, say)


def critic_judge(model: torch.nn.Module, batch: int = 16, *, max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
                 say: Callable[[str], None] | None = None) -> Callable[[Sequence[TaskRecord], Sequence[str]], list]:
    """A judge for :func:`genmodels.sampled_pairs.sampled_pairs`: ``judge(records, replies)`` -> the critic's
    parsed verdict (True, False or None) on ``replies[i]`` answering ``records[i]`` (it never sees the answer)."""
    def judge(records: Sequence[TaskRecord], replies: Sequence[str]) -> list[bool | None]:
        rows = [{"id": r.id, "question": r.question, "answer": a} for r, a in zip(records, replies)]
        return [parse_verdict(t) for t in critiques(model, rows, batch, max_new_tokens=max_new_tokens, say=say)]
    return judge


def agreement(model: torch.nn.Module, records: Sequence[TaskRecord], batch: int = 16, *, seed: int = 0,
              max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
              say: Callable[[str], None] | None = None) -> dict[str, Any]:
    """How often the critic's verdict agrees with the checker on the triples of ``records`` (module doc):
    ``pairs``, ``right_answers``, ``agree``, ``agreement``, ``unparsable``, the counts of :func:`_judged` and
    ``rows`` (per pair: ``id``, ``answer``, ``correct``, ``critique``, ``verdict``, ``stated``)."""
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ValueError(f"batch={batch!r} (--batch): give a positive integer")
    rows = triples(records, seed)
    if not rows:
        raise ValueError("no (question, answer) pairs to judge: no record's task has a second answer")
    texts = critiques(model, rows, batch, max_new_tokens=max_new_tokens, say=say)
    out = [{"id": r["id"], "answer": r["answer"], "correct": r["correct"], "critique": t,
            "verdict": parse_verdict(t), "stated": stated_answer(t)} for r, t in zip(rows, texts)]
    agree = sum(o["verdict"] == o["correct"] for o in out)
    return {"pairs": len(out), "right_answers": sum(o["correct"] for o in out), "agree": agree,
            "agreement": agree / len(out), "unparsable": sum(o["verdict"] is None for o in out),
            **_judged(out, {r["id"]: r["right_answer"] for r in rows}), "rows": out}


def _judged(out: Sequence[dict[str, Any]], truth: dict[str, str]) -> dict[str, int]:
    """Per question (both answers judged): ``questions``, ``separated`` (right answer judged correct and wrong
    one judged wrong), ``same`` (one verdict for both); per critique: ``solved`` (its stated right answer is the
    checker's) and ``copied`` (a wrong answer restated as the right one, of ``pairs - right_answers``)."""
    by: dict[str, dict[bool, bool | None]] = {}
    for o in out:
        by.setdefault(o["id"], {})[o["correct"]] = o["verdict"]
    both = [v for v in by.values() if len(v) == 2]
    stated = [(o, o["stated"]) for o in out if o["stated"] is not None]
    return {"questions": len(both), "separated": sum(v[True] is True and v[False] is False for v in both),
            "same": sum(v[True] == v[False] for v in both),
            "solved": sum(exact_match(s, truth[o["id"]]) for o, s in stated),
            "copied": sum(not o["correct"] and exact_match(s, o["answer"]) for o, s in stated)}
