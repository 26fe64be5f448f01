"""Preference pairs from a model's own sampled answers, scored by the task checker (issue 23 d1).

    from genmodels.data.tasks import build_taskset
    pairs, info = sampled_pairs(model, [r for r in build_taskset() if r.split == "seen-train"], n=4)

Each record's question is asked ``n`` times (the prompt repeated ``n`` times in the batch, rendered as
:func:`genmodels.eval_tasks` renders it: ``form`` messages or prompt), sampled with ``temperature`` / ``top_p``
(reproducible with ``seed``), and every reply is scored by :func:`genmodels.data.tasks.exact_match`. A record
with a right and a wrong reply gives the pair (its first right reply, its first wrong one). A record with no right
reply gives, with ``gold=True``, (the true answer, its first wrong reply); with none wrong, or empty replies only,
no pair. The pairs are in the ``pairs`` data kind's forms (``{"messages": [user], "chosen", "rejected"}`` or
``{"prompt": "<question>\\nAnswer:", "chosen": " …", "rejected": " …"}``), so a DPO run reads them as written
(:func:`genmodels.data.task_pairs.write_pairs` writes them). ``info`` counts the records of each outcome.
"""
from __future__ import annotations

from collections import Counter
from typing import Callable, Sequence

import torch

from .chat import Conversation
from .data.tasks import TaskRecord, exact_match
from .task_eval import DEFAULT_MAX_NEW_TOKENS, _replies, task_prompts

__all__ = ["sampled_pairs"]


def _pair(record: TaskRecord, chosen: str, rejected: str, form: str) -> dict:
    if form == "prompt":
        return {"prompt": record.prompt_form()["prompt"], "chosen": f" {chosen.strip()}",
                "rejected": f" {rejected.strip()}"}
    return {"messages": [{"role": "user", "content": record.question}], "chosen": chosen, "rejected": rejected}


@torch.no_grad()
def sampled_pairs(model: torch.nn.Module, records: Sequence[TaskRecord], n: int = 4, *, temperature: float = 1.0,
                  top_p: float | None = None, seed: int = 0, form: str = "messages", gold: bool = True,
                  batch: int = 16, max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
                  say: Callable[[str], None] | None = None) -> tuple[list[dict], dict[str, int]]:
    """``(pairs, info)``: the module docstring's pairs of ``records`` (in order) and the count of each outcome."""
    if n < 2 and not gold:
        raise ValueError(f"n={n}: sample at least 2 replies per question to pair them (or gold=True)")
    if temperature <= 0:
        raise ValueError(f"temperature={temperature}: sampling needs a positive temperature (0 is greedy)")
    records = list(records)
    conversation = Conversation(model, max_new_tokens=max_new_tokens)
    prompts, stop = task_prompts(conversation, records, form, max_new_tokens)
    repeated = [p for p in prompts for _ in range(n)]  # (record i's samples: rows i·n … i·n + n − 1)
    replies = _replies(model, conversation, repeated, stop, batch, max_new_tokens, say,
                       sampling={"temperature": temperature, "top_p": top_p, "seed": seed})
    pairs, info = [], Counter()
    for i, r in enumerate(records):
        mine = [x.strip() for x in replies[i * n:(i + 1) * n] if x.strip()]
        right = [x for x in mine if exact_match(x, r.answer)]
        wrong = [x for x in mine if not exact_match(x, r.answer)]
        if right and wrong:
            pairs.append(_pair(r, right[0], wrong[0], form))
            info["sampled right and wrong"] += 1
        elif wrong and gold:
            pairs.append(_pair(r, r.answer, wrong[0], form))
            info["gold against a sampled wrong reply"] += 1
        else:
            info["no pair (all right)" if right else "no pair (no reply)" if not wrong else "no pair"] += 1
    return pairs, dict(info)
