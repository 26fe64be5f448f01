"""Exact match on the task set (:mod:`genmodels.data.tasks`): greedy, batched replies scored per task.

    records = [r for r in build_taskset() if r.split == "unseen"]
    report = genmodels.eval_tasks(model, records, batch=16)    # report["exact_match"], report["tasks"]

``form="messages"`` (the default): each record's question is one user message rendered through the
model's chat template exactly as :class:`genmodels.chat.Conversation` renders a first turn
(``model.chat_template``, or the plain template for our own runs; one encoding rule:
:meth:`Conversation.encode`). ``form="prompt"``: the record's ``prompt`` form (``"<question>\nAnswer:"``)
encoded as the ``examples`` data kind encodes it (no special tokens added), the reply ending at a
newline too (for a model tuned on the prompt form). Prompts are sorted by length, cut into batches of
``batch``, left-padded, and decoded greedily together by :func:`genmodels.generate`; a row ends at the
model's end token (``<|im_end|>`` for SmolLM2), at a stop string (the plain template's next turn; a
newline for the prompt form), or after ``max_new_tokens``. The reply is the text before its end and
is scored by :func:`genmodels.data.tasks.exact_match` (normalised text equal to the answer).

The report: ``records``, ``correct``, ``exact_match`` (over records), ``macro_exact_match`` (the
mean of the tasks'), ``contains`` (the share of replies whose normalised text contains the normalised
answer: a diagnostic for verbose untuned models, never the score), ``tasks`` (per task: ``n``,
``correct``, ``exact_match``) and ``replies`` (per record, in the order given: ``id``, ``task``,
``answer``, ``reply``, ``correct``).
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import torch

from .chat import Conversation
from .data.tasks import TaskRecord, exact_match, normalize
from .generation import generate
from .generation.stop import StopStrings

__all__ = ["eval_tasks", "score_replies"]

DEFAULT_MAX_NEW_TOKENS = 48  # the longest answers (sorted lists, dates) take about 30 tokens
FORMS = ("messages", "prompt")
PROMPT_STOP = ("\n",)  # every answer is one line


def _left_pad(rows: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(ids (B, T), attention_mask (B, T))``, each row right-aligned after ``pad`` tokens (mask 0)."""
    t = max(len(r) for r in rows)
    ids = torch.full((len(rows), t), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), t), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, t - len(r):] = torch.tensor(r, dtype=torch.long)
        mask[i, t - len(r):] = 1
    return ids, mask


def _replies(model, conversation: Conversation, prompts: list[list[int]], stop: tuple[str, ...], batch: int,
             max_new_tokens: int, say: Callable[[str], None] | None, sampling: dict | None = None) -> list[str]:
    """The greedy reply to each encoded prompt (module doc), in the order given; ``sampling``: generate's
    sampling arguments instead (``temperature``, ``top_p``, ``seed``: each batch draws with ``seed + batch``)."""
    ends = sorted(conversation.ends)
    pad = model.config.pad_token_id if model.config.pad_token_id is not None else ends[0]
    cut = StopStrings(stop)
    order = sorted(range(len(prompts)), key=lambda i: (len(prompts[i]), i))  # similar lengths share a batch
    replies: list[str] = [""] * len(prompts)
    for start in range(0, len(order), batch):
        rows = order[start:start + batch]
        ids, mask = _left_pad([prompts[i] for i in rows], pad)
        draw = {} if sampling is None else {**sampling, "seed": sampling.get("seed", 0) + start}
        out = generate(model, ids, max_new_tokens, attention_mask=mask, eos_token_id=ends, pad_token_id=pad,
                       stop=stop or None, **draw)  # (B, T + n), greedy unless sampling
        for row, i in enumerate(rows):
            new = out[row, ids.shape[1]:].tolist()
            end = next((k for k, tok in enumerate(new) if tok in conversation.ends), len(new))
            replies[i] = cut.before(conversation.tokenizer.decode(new[:end], skip_special_tokens=True))
        if say is not None:
            say(f"{min(start + batch, len(order))}/{len(order)} replies")
    return replies


def score_replies(records: Sequence[TaskRecord], replies: Sequence[str]) -> dict[str, Any]:
    """The report (module doc) for ``replies[i]`` answering ``records[i]``."""
    if len(records) != len(replies):
        raise ValueError(f"{len(replies)} replies for {len(records)} records")
    rows = [{"id": r.id, "task": r.task, "answer": r.answer, "reply": reply, "correct": exact_match(reply, r.answer)}
            for r, reply in zip(records, replies)]
    tasks: dict[str, dict[str, Any]] = {}
    for row in rows:
        t = tasks.setdefault(row["task"], {"n": 0, "correct": 0})
        t["n"] += 1
        t["correct"] += row["correct"]
    for t in tasks.values():
        t["exact_match"] = t["correct"] / t["n"]
    correct = sum(row["correct"] for row in rows)
    contains = sum(normalize(row["answer"]) in normalize(row["reply"]) for row in rows)
    return {"records": len(rows), "correct": correct, "exact_match": correct / len(rows) if rows else 0.0,
            "macro_exact_match": sum(t["exact_match"] for t in tasks.values()) / len(tasks) if tasks else 0.0,
            "contains": contains / len(rows) if rows else 0.0, "tasks": dict(sorted(tasks.items())), "replies": rows}


def eval_tasks(model: torch.nn.Module, records: Sequence[TaskRecord], batch: int = 16, *,
               max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS, form: str = "messages", template: str | None = None,
               say: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Exact match of ``model``'s greedy replies on ``records`` (module doc); ``template`` overrides the
    model's chat template, ``say`` receives a progress line per batch."""
    if form not in FORMS:
        raise ValueError(f"form={form!r} (--form): choose one of {', '.join(FORMS)}")
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ValueError(f"batch={batch!r} (--batch): give a positive integer")
    records = list(records)
    if not records:
        raise ValueError("no task records to evaluate (an empty split, or --limit 0)")
    conversation = Conversation(model, template=template, max_new_tokens=max_new_tokens)
    prompts, stop = task_prompts(conversation, records, form, max_new_tokens)
    return score_replies(records, _replies(model, conversation, prompts, stop, batch, max_new_tokens, say))


def task_prompts(conversation: Conversation, records: Sequence[TaskRecord], form: str,
                 max_new_tokens: int) -> tuple[list[list[int]], tuple[str, ...]]:
    """``(encoded prompts, stop strings)`` of ``records`` in ``form`` (module doc); a prompt leaving no room for
    ``max_new_tokens`` in the model's context is refused naming its record."""
    if form == "messages":
        prompts = [conversation.encode([{"role": "user", "content": r.question}]) for r in records]
        stop = conversation.stop
    else:
        encoded = conversation.tokenizer.encode_batch([r.prompt_form()["prompt"] for r in records],
                                                      add_special_tokens=False)
        prompts, stop = [e.ids for e in encoded], PROMPT_STOP
    room = conversation.context - max_new_tokens
    for r, p in zip(records, prompts):
        if len(p) > room:
            raise ValueError(f"record {r.id}: its prompt takes {len(p)} tokens and the model's context "
                             f"({conversation.context}) leaves {room} after max_new_tokens={max_new_tokens}")
    return prompts, stop
