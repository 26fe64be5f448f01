"""Preference pairs (and best replies) from a model's own sampled answers, ranked by a judge (issue 23 d1, d5).

    from genmodels.data.tasks import build_taskset
    pairs, info = sampled_pairs(model, [r for r in build_taskset() if r.split == "seen-train"], n=4)
    best, info = sampled_best(model, records, n=4)                       # SFT examples: the best reply per question
    pairs, info = sampled_pairs(model, records, n=4, judge=critic_judge(critic))   # ranked by a critic

Each record's question is asked ``n`` times (the prompt repeated ``n`` times in the batch, rendered as
:func:`genmodels.eval_tasks` renders it: ``form`` messages or prompt), sampled with ``temperature`` / ``top_p``
(reproducible with ``seed``), and every non-empty reply is judged: by default by the task checker
(:func:`genmodels.data.tasks.exact_match`), or by ``judge(records, replies) -> [True | False | None]`` (e.g.
:func:`genmodels.critic.critic_judge`: a critic's verdicts; None, no verdict read, ranks the reply nowhere). The
ranking is two-level — judged right above judged wrong — and within a level the sampling order. A record with a
right and a wrong reply gives the pair (its first right reply, its first wrong one): best against worst. A record
with no right reply gives, with ``gold=True``, (the true answer, its first wrong reply); with none wrong, or empty
replies only, no pair. The pairs are in the ``pairs`` data kind's forms (``{"messages": [user], "chosen",
"rejected"}`` or ``{"prompt": "<question>\\nAnswer:", "chosen": " …", "rejected": " …"}``), so a DPO run reads them
as written (:func:`genmodels.data.task_pairs.write_pairs` writes them). :func:`sampled_best` keeps instead the best
reply of each record as an ``examples`` record (``{"messages": [user, assistant]}`` or ``{"prompt", "response"}``):
its first right reply, or with ``gold=True`` the true answer when none is right (Baize's self-distillation tunes
on these, or DPO on the pairs). ``info`` counts the records of each outcome.
"""
from __future__ import annotations

from collections import Counter
from typing import Callable, Sequence

import torch

from .chat import Conversation
from .data.tasks import TaskRecord, exact_match
from .task_eval import DEFAULT_MAX_NEW_TOKENS, _replies, task_prompts

__all__ = ["checker_judge", "sampled_best", "sampled_pairs"]

Judge = Callable[[Sequence[TaskRecord], Sequence[str]], list]


def checker_judge(records: Sequence[TaskRecord], replies: Sequence[str]) -> list[bool]:
    """The task checker as a judge: ``exact_match(replies[i], records[i].answer)``."""
    return [exact_match(x, r.answer) for r, x in zip(records, replies)]


def _pair(record: TaskRecord, chosen: str, rejected: str, form: str) -> dict:
    if form == "prompt":
        return {"prompt": record.prompt_form()["prompt"], "chosen": f" {chosen.strip()}",
                "rejected": f" {rejected.strip()}"}
    return {"messages": [{"role": "user", "content": record.question}], "chosen": chosen, "rejected": rejected}


def _example(record: TaskRecord, reply: str, form: str) -> dict:
    if form == "prompt":
        return {"prompt": record.prompt_form()["prompt"], "response": f" {reply.strip()}"}
    return {"messages": [{"role": "user", "content": record.question}, {"role": "assistant", "content": reply}]}


@torch.no_grad()
def _ranked(model: torch.nn.Module, records: list[TaskRecord], n: int, judge: Judge | None, temperature: float,
            top_p: float | None, seed: int, form: str, batch: int, max_new_tokens: int,
            say: Callable[[str], None] | None) -> list[tuple[list[str], list[str]]]:
    """Per record (in order): its non-empty sampled replies judged right, and those judged wrong (sampling order)."""
    if n < 1:
        raise ValueError(f"n={n} (--n): sample at least 1 reply per question")
    if temperature <= 0:
        raise ValueError(f"temperature={temperature}: sampling needs a positive temperature (0 is greedy)")
    conversation = Conversation(model, max_new_tokens=max_new_tokens)
    prompts, stop = task_prompts(conversation, records, form, max_new_tokens)
    repeated = [p for p in prompts for _ in range(n)]  # (record i's samples: rows i·n … i·n + n − 1)
    replies = _replies(model, conversation, repeated, stop, batch, max_new_tokens, say,
                       sampling={"temperature": temperature, "top_p": top_p, "seed": seed})
    flat = [(r, x.strip()) for i, r in enumerate(records) for x in replies[i * n:(i + 1) * n] if x.strip()]
    verdicts = (judge or checker_judge)([r for r, _ in flat], [x for _, x in flat])
    ranked = {id(r): ([], []) for r in records}
    for (r, x), v in zip(flat, verdicts):
        if v is not None:
            ranked[id(r)][0 if v else 1].append(x)
    return [ranked[id(r)] for r in records]


def sampled_pairs(model: torch.nn.Module, records: Sequence[TaskRecord], n: int = 4, *, temperature: float = 1.0,
                  top_p: float | None = None, seed: int = 0, form: str = "messages", gold: bool = True,
                  batch: int = 16, max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS, judge: Judge | None = None,
                  say: Callable[[str], None] | None = None) -> tuple[list[dict], dict[str, int]]:
    """``(pairs, info)``: the module docstring's pairs of ``records`` (in order) and the count of each outcome."""
    if n < 2 and not gold:
        raise ValueError(f"n={n}: sample at least 2 replies per question to pair them (or gold=True)")
    records = list(records)
    pairs, info = [], Counter()
    for r, (right, wrong) in zip(records, _ranked(model, records, n, judge, temperature, top_p, seed, form, batch,
                                                  max_new_tokens, say)):
        if right and wrong:
            pairs.append(_pair(r, right[0], wrong[0], form))
            info["sampled right and wrong"] += 1
        elif wrong and gold:
            pairs.append(_pair(r, r.answer, wrong[0], form))
            info["gold against a sampled wrong reply"] += 1
        else:
            info["no pair (all right)" if right else "no pair (no reply)" if not wrong else "no pair"] += 1
    return pairs, dict(info)


def sampled_best(model: torch.nn.Module, records: Sequence[TaskRecord], n: int = 4, *, temperature: float = 1.0,
                 top_p: float | None = None, seed: int = 0, form: str = "messages", gold: bool = True,
                 batch: int = 16, max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS, judge: Judge | None = None,
                 say: Callable[[str], None] | None = None) -> tuple[list[dict], dict[str, int]]:
    """``(examples, info)``: the best reply of each record as an ``examples`` record (module doc), in order."""
    records = list(records)
    examples, info = [], Counter()
    for r, (right, _) in zip(records, _ranked(model, records, n, judge, temperature, top_p, seed, form, batch,
                                              max_new_tokens, say)):
        if right:
            examples.append(_example(r, right[0], form))
            info["sampled right"] += 1
        elif gold:
            examples.append(_example(r, r.answer, form))
            info["gold (none sampled right)"] += 1
        else:
            info["none right"] += 1
    return examples, dict(info)
