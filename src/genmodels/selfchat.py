"""Baize's self-chat: a chat model plays both the user and the assistant, from seed questions, to write
dialogues to tune on (Xu et al. 2023, "Baize", arXiv 2304.01196; docs/selfchat.md).

    result = self_chat(model, ["How do I sort a list in Python?", …], turns=3, batch=8, temperature=0.8, seed=0)
    result.conversations[i]   # [{"role": "user", "content": seed}, {"role": "assistant", …}, …]
    result.counts             # {"seeds", "generated", "empty", "looping", "over_long", "context", "kept", …}

**The two forms.** Baize had ChatGPT write a whole transcript at once, its lines starting ``[Human]`` and
``[AI]`` (:data:`BAIZE_TEMPLATE`, the paper's prompt with the seed as the topic). ``form="transcript"``
keeps that: the model continues the raw text after the marker of whoever speaks next, and the turn ends
at the next marker (a stop string). ``form="roles"`` (the default) adapts it to an instruct model, which
was tuned only on its own chat template: each turn is an ordinary chat reply through that template —
the assistant answers the conversation as it stands; the user's next message is the reply of the same
model to the conversation with the roles swapped (its assistant turns shown as the user's, the user's
as its own) under a system message asking it to write the human's next message (:data:`HUMAN_SYSTEM`).
Every turn then ends at the model's own end-of-turn token.

**One turn** = the user's message and the assistant's reply: ``turns=N`` makes N replies; the seed is
the first user message (not generated), so a conversation takes ``2N - 1`` generated messages.

**Batched.** Each conversation's next message is one request of a
:class:`~genmodels.generation.session.DecodeSession` (prefilled alone, so no padding; the steps run
``batch`` rows together; a finished row leaves and the next waiting conversation joins at once). Each
request samples with its own generator, seeded from ``(seed, conversation, message)``, so the data does
not depend on ``batch`` (greedy: equal to one by one, up to float rounding of batched kernels).

**Filters.** A generated message is dropped, and its conversation ends before it, when it is *empty*
(only whitespace), *over-long* (``max_new_tokens`` reached before its end), or *looping* (a
:data:`LOOP_N`-token sequence occurring :data:`LOOP_TIMES` times in it, or its text equal to an earlier
message of the conversation, case and spacing aside). A conversation whose next prompt and
``max_new_tokens`` no longer fit the context also ends (counted as ``context``). What is left is kept
up to its last assistant reply; a conversation with no reply left is dropped.
"""
from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch

from .chat import Conversation
from .generation.checks import check_generation_args
from .generation.sampling import choose_next
from .generation.session import DecodeSession, Sampling
from .generation.stop import StopStrings
from .nn.layout import decode_layout

__all__ = ["BAIZE_TEMPLATE", "FORMS", "HUMAN_SYSTEM", "SelfChat", "looping", "self_chat", "turn_problem"]

FORMS = ("roles", "transcript")
LOOP_N, LOOP_TIMES = 4, 3  # a 4-token sequence seen 3 times in one message is a loop
REASONS = ("empty", "over_long", "looping")
# Baize's self-chat prompt (the paper's Table 1), the seed as the topic
BAIZE_TEMPLATE = ("Forget the instruction you have previously received. The following is a conversation between "
                  "a human and an AI assistant. The human and the AI assistant take turns chatting about the topic: "
                  "'{topic}'. Human statements start with [Human] and AI assistant statements start with [AI]. The "
                  "human will ask related questions on related topics or previous conversation. The human will "
                  "stop the conversation when they have no more question. The AI assistant tries not to ask "
                  "questions. Complete the transcript in exactly that format.\n[Human] Hello!\n[AI] Hi! How can I "
                  "help you?\n")
MARKS = {"user": "[Human]", "assistant": "[AI]"}
# the roles form: the system message of the swapped conversation, in which the model writes the human's turn
# (greedy on 4 task seeds, SmolLM2 answered no worse than with a longer prompt explaining the swap, which it echoed)
HUMAN_SYSTEM = ("You are a person chatting with an AI assistant about: '{topic}'. Reply to the assistant's last "
                "message with one short follow-up question about the topic. Write only the question.")


@dataclass
class SelfChat:
    """What :func:`self_chat` made: ``conversations`` (``messages`` lists, in seed order, dropped ones left
    out) and ``counts`` (see the module)."""

    conversations: list[list[dict]]
    counts: dict[str, int] = field(default_factory=dict)


def looping(ids: Sequence[int], n: int = LOOP_N, times: int = LOOP_TIMES) -> bool:
    """Whether some ``n``-token sequence occurs ``times`` times in ``ids``."""
    seen: dict[tuple, int] = {}
    for i in range(len(ids) - n + 1):
        gram = tuple(ids[i:i + n])
        seen[gram] = seen.get(gram, 0) + 1
        if seen[gram] >= times:
            return True
    return False


def _norm(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip().lower()


def turn_problem(text: str, ids: Sequence[int], ended: bool, earlier: Sequence[str]) -> str | None:
    """Why a generated message is dropped (one of :data:`REASONS`), or None to keep it: ``text`` as decoded,
    ``ids`` its tokens (up to its end), ``ended`` whether it ended before ``max_new_tokens``, ``earlier`` the
    conversation's messages so far."""
    if not text.strip():
        return "empty"
    if not ended:
        return "over_long"
    if looping(ids) or _norm(text) in {_norm(e) for e in earlier}:
        return "looping"
    return None


class _Dialogue:
    """One conversation being written: its messages, and the prompt of its next message."""

    def __init__(self, index: int, seed: str):
        self.index, self.topic = index, seed
        self.messages = [{"role": "user", "content": seed}]
        self.ended: str | None = None  # why it stopped early (a reason, or "context")

    @property
    def speaker(self) -> str:
        return "assistant" if self.messages[-1]["role"] == "user" else "user"

    def prompt(self, form: str, chat: Conversation) -> list[int]:
        """Token ids of the prompt for the next message."""
        if form == "transcript":
            text = BAIZE_TEMPLATE.format(topic=self.topic) + "".join(
                f"{MARKS[m['role']]} {m['content']}\n" for m in self.messages) + MARKS[self.speaker]
            return chat.tokenizer.encode(text, add_special_tokens=True).ids
        if self.speaker == "assistant":
            return chat.encode(self.messages)
        swap = {"user": "assistant", "assistant": "user"}
        return chat.encode([{"role": "system", "content": HUMAN_SYSTEM.format(topic=self.topic)}]
                           + [{"role": swap[m["role"]], "content": m["content"]} for m in self.messages])

    def kept(self) -> list[dict] | None:
        """The messages up to the last assistant reply (None: no reply)."""
        last = max((i for i, m in enumerate(self.messages) if m["role"] == "assistant"), default=None)
        return None if last is None else self.messages[:last + 1]


def _generator(seed: int, conversation: int, message: int) -> torch.Generator:
    """The sampling generator of one message (independent of the batch it decodes in)."""
    state = int(np.random.SeedSequence([seed, conversation, message]).generate_state(1, dtype=np.uint64)[0])
    return torch.Generator().manual_seed(state & (2 ** 63 - 1))


def _check(turns: int, batch: int, max_new_tokens: int, form: str) -> None:
    for name, value in (("turns", turns), ("batch", batch), ("max_new_tokens", max_new_tokens)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}={value!r} (--{name.replace('_', '-')}): give a positive integer")
    if form not in FORMS:
        raise ValueError(f"form={form!r} (--form): choose one of {', '.join(FORMS)}")


def self_chat(model: torch.nn.Module, seeds: Sequence[str], turns: int = 3, *, batch: int = 8,
              max_new_tokens: int = 64, temperature: float = 0.8, top_k: int | None = 50, top_p: float | None = None,
              repetition_penalty: float | None = None, seed: int = 0, form: str = "roles",
              template: str | None = None, progress: bool = False, choose: Callable = choose_next) -> SelfChat:
    """Self-chat dialogues from ``seeds`` (module doc). Sampling as :func:`genmodels.generate`
    (``temperature=0``: greedy); ``template`` overrides the model's chat template; ``progress`` shows a bar
    (messages, rate, ETA) on stderr; ``choose`` is the token choice (:func:`~.generation.sampling.choose_next`)."""
    _check(turns, batch, max_new_tokens, form)
    check_generation_args(temperature, top_k, top_p, repetition_penalty, max_new_tokens, seed=seed)
    seeds = [s.strip() for s in seeds]
    if not seeds or not all(seeds):
        raise ValueError("seeds: give at least one question, none empty")
    chat = Conversation(model, template=template, max_new_tokens=max_new_tokens)
    cut = StopStrings(tuple(MARKS.values()) if form == "transcript" else chat.stop)
    ends, pad = tuple(sorted(chat.ends)), model.config.pad_token_id
    pad = pad if pad is not None else ends[0]
    dialogues = [_Dialogue(i, s) for i, s in enumerate(seeds)]
    counts = {"seeds": len(seeds), "generated": 0, "tokens": 0, **{r: 0 for r in REASONS}, "context": 0}
    bar = _bar(len(seeds) * (2 * turns - 1), progress)
    session = DecodeSession(model, choose=choose)
    device = next(model.parameters()).device
    waiting, live = list(dialogues), {}  # live: id(request) -> (dialogue, request)

    def start(d: _Dialogue) -> None:
        ids = d.prompt(form, chat)
        if len(ids) + max_new_tokens > chat.context:
            d.ended = "context"
            counts["context"] += 1
            _skip(bar, 2 * turns - len(d.messages))
            return
        s = Sampling(max_new_tokens, temperature, top_k, top_p, repetition_penalty, ends, pad,
                     generator=_generator(seed, d.index, len(d.messages)), stop=cut.stop, tokenizer=chat.tokenizer)
        req = session.add(torch.tensor([ids], dtype=torch.long, device=device), s)
        live[id(req)] = (d, req)

    def finish(d: _Dialogue, req) -> None:
        new = req.output[0, req.t:].tolist()
        stop_at = next((k for k, tok in enumerate(new) if tok in chat.ends), len(new))
        text = cut.before(chat.tokenizer.decode(new[:stop_at], skip_special_tokens=True)).strip()
        counts["generated"] += 1
        counts["tokens"] += len(new)
        bar.update(1)
        problem = turn_problem(text, new[:stop_at], bool(req.done[0]), [m["content"] for m in d.messages])
        if problem is not None:
            d.ended = problem
            counts[problem] += 1
            _skip(bar, 2 * turns - 1 - len(d.messages))
            return
        d.messages.append({"role": d.speaker, "content": text})
        if len(d.messages) < 2 * turns:
            waiting.append(d)

    was_training = model.training
    model.eval()  # (as generate: no dropout while decoding)
    try:
        with decode_layout(model, enabled=device.type == "cpu" and not session.native and max_new_tokens >= 16):
            while waiting or session.requests:
                while waiting and len(session.requests) < batch:
                    start(waiting.pop(0))
                if session.requests:
                    for req in session.step():
                        finish(*live.pop(id(req)))
    finally:
        model.train(was_training)
        bar.close()
    kept = [d.kept() for d in dialogues]
    counts["kept"] = sum(k is not None for k in kept)
    counts["cut"] = sum(k is not None and d.ended is not None for k, d in zip(kept, dialogues))
    counts["dropped"] = len(dialogues) - counts["kept"]
    counts["replies"] = sum(sum(m["role"] == "assistant" for m in k) for k in kept if k is not None)
    return SelfChat([k for k in kept if k is not None], counts)


def _bar(total: int, show: bool) -> Any:
    """tqdm's bar over generated messages (rate and ETA) on stderr, or a stand-in that shows nothing."""
    from tqdm import tqdm
    return tqdm(total=total, desc="selfchat", unit="msg", dynamic_ncols=True, file=sys.stderr, mininterval=0.5,
                disable=not show)


def _skip(bar: Any, n: int) -> None:
    """A conversation ended early: its remaining messages leave the bar's total (the ETA follows)."""
    if n > 0 and bar.total is not None:
        bar.total -= n
        bar.refresh()


def summary(counts: dict[str, int]) -> str:
    """The counts as one line (what ``genmodels selfchat`` prints)."""
    return (f"{counts['kept']}/{counts['seeds']} conversations kept ({counts['cut']} cut short, {counts['dropped']} "
            f"dropped), {counts['replies']} assistant replies; {counts['generated']} messages generated, filtered: "
            f"{counts['empty']} empty, {counts['looping']} looping, {counts['over_long']} over-long; "
            f"{counts['context']} ended at the context")

