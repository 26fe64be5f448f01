"""Chat: a conversation rendered through the model's chat template, the reply streamed as it decodes,
and the KV cache kept between turns so a turn costs only its new tokens.

    genmodels.chat(model, [{"role": "user", "content": "What is the capital of France?"}])  -> "The capital …"
    for piece in genmodels.chat_stream(model, messages, temperature=0.7, seed=0): print(piece, end="")

    conv = Conversation(model, system="Answer briefly.")   # what `genmodels chat` runs
    for piece in conv.say("Hi!"): ...                    # the reply joins conv.messages
    for piece in conv.say("And in French?"): ...         # prefill: only this turn's tokens

**The template.** ``model.chat_template`` (GGUF, HF and genmodels folders carry it; see
:mod:`genmodels.data.chat_template`), or ``template=``; a model without one (our own runs) chats
through :data:`~genmodels.data.chat_template.PLAIN_TEMPLATE` ("User: …\\n\\nAssistant:"), whose replies
also end at ``"\\n\\nUser:"`` (:data:`PLAIN_STOP`), where such a model would start the user's next line.
A template writes its own special tokens, so its text is encoded without the tokenizer's BOS rule (as
transformers' ``apply_chat_template(tokenize=True)`` does); the plain template's text gets the rule.

**The reply** ends at the model's EOS (the config's ``eos_token_id``; ``<|im_end|>`` for SmolLM2), at
a ``stop`` string (not part of the text, as in OpenAI's API: :mod:`genmodels.generation.stop`) or after
``max_new_tokens``. Pieces never split a UTF-8 character (:class:`genmodels.data.detokenize.TextStream`).

**The cache between turns.** A :class:`Conversation` keeps one KV cache and the token ids it holds.
Each turn renders the whole conversation, encodes it, and keeps the cached slots of the longest common
prefix of the two token lists (the reply as generated usually re-encodes to the same tokens; where it
does not, the cache is rolled back to where they part); only the rest is prefilled
(:attr:`Conversation.prefilled` counts it). A cache that cannot be rolled back (RetNet's recurrent
state, a sliding window that has compacted) is rebuilt from the start when the prefix is shorter than
what it holds.

**A full context.** When the conversation and ``max_new_tokens`` no longer fit the model's context
(``max_seq_len``), the oldest turns are dropped — the system message stays — until the prompt takes at
most half of what remains for it (so a long chat rebuilds its cache once every many turns, not every
turn, as llama.cpp's context shift halves); a warning says so the first time. A single message that
cannot fit is refused, naming the sizes.

**Stopping a reply** (Ctrl-C in ``genmodels chat``): closing the stream between pieces keeps the cache;
an exception inside the decode (a KeyboardInterrupt mid-step) drops it, and the next turn prefills the
conversation afresh. Either way :meth:`Conversation.say` keeps the partial reply in the conversation.
"""
from __future__ import annotations

import warnings
from typing import Any, Iterable, Iterator

import torch

from .data.chat_template import PLAIN_TEMPLATE, apply_chat_template, check_messages
from .generation.checks import check_generation_args, check_token_ids, vocab_size
from .generation.sampling import choose_next
from .generation.session import DecodeSession, Sampling
from .generation.stop import StopStream, check_stop
from .nn import kv_cache
from .nn.layout import decode_layout
from .registry import GENERATES, SEQ2SEQ, capabilities, require

DEFAULT_MAX_NEW_TOKENS = 256
PLAIN_STOP = ("\n\nUser:",)  # the plain template's next turn: where a model without a chat format goes on


class Conversation:
    """A chat with ``model`` (what :func:`genmodels.load` returns: ``model.tokenizer``,
    ``model.chat_template``): ``messages`` so far (the system message first, if any), one KV cache
    kept across turns. Sampling as :func:`genmodels.generate` (``temperature=0``: greedy)."""

    def __init__(self, model: torch.nn.Module, system: str | None = None, *, template: str | None = None,
                 stop: str | Iterable[str] | None = None, max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
                 temperature: float = 0.0, top_k: int | None = None, top_p: float | None = None,
                 repetition_penalty: float | None = None, seed: int | None = None,
                 eos_token_id: int | Iterable[int] | None = None):
        require(model, GENERATES, "genmodels.chat")
        if SEQ2SEQ in capabilities(model):
            raise ValueError("genmodels.chat needs a decoder-only model; this one is an encoder-decoder "
                             f"(family={getattr(model, 'family', None)!r}): use genmodels.generate")
        self.tokenizer = getattr(model, "tokenizer", None)
        if self.tokenizer is None:
            raise ValueError("genmodels.chat: the model has no tokenizer (model.tokenizer; a folder's tokenizer.json "
                             "or a GGUF file's tokenizer.ggml.* metadata), so messages cannot be encoded")
        check_generation_args(temperature, top_k, top_p, repetition_penalty, max_new_tokens, seed=seed)
        self.context = model.config.max_seq_len
        if max_new_tokens >= self.context:
            raise ValueError(f"max_new_tokens={max_new_tokens} leaves no room for a message in the model's context "
                             f"(max_seq_len={self.context}); give fewer")
        self.model, self.system, self.max_new_tokens = model, system, max_new_tokens
        self.template = template or getattr(model, "chat_template", None) or PLAIN_TEMPLATE
        self.stop = check_stop(stop) + (PLAIN_STOP if self.template == PLAIN_TEMPLATE else ())
        cfg_eos = model.config.eos_token_id if eos_token_id is None else eos_token_id
        self.ends = set(check_token_ids("eos_token_id", cfg_eos, vocab_size(model)))
        self.sampling = dict(max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                             repetition_penalty=repetition_penalty)
        device = next(model.parameters()).device  # the generator lives where the sampling runs (as generate's)
        self.generator = torch.Generator(device=device).manual_seed(seed) if seed is not None else None
        self.cache: Any = None
        self.cached: list[int] = []  # the token ids the cache has consumed (len == cache.offset + cache.pos)
        self.prefilled = 0           # tokens the last turn's prefill processed
        self.dropped = 0             # turns in which the oldest turns were dropped to fit the context
        self.messages: list[dict] = []
        self.kept: list[dict] = []   # the conversation as the last reply was asked (after any drop)
        self.reset()

    # ---- the conversation -------------------------------------------------------------------------
    def reset(self) -> None:
        """Forget the turns (the system message stays). The cache stays too: its system-prompt prefix is
        reused by the next turn."""
        self.messages = [{"role": "system", "content": self.system}] if self.system else []

    def say(self, text: str) -> Iterator[str]:
        """Add a user message and stream the reply, which joins :attr:`messages` when the stream ends —
        also when it is closed or interrupted early (every piece handed out), as it was generated (so
        the next turn's tokens repeat the cached ones)."""
        self.messages.append({"role": "user", "content": text})
        try:
            stream = self.reply(self.messages)
        except Exception:  # refused (a message that cannot fit): the conversation stays as it was
            self.messages.pop()
            raise
        pieces: list[str] = []
        try:
            for piece in stream:
                pieces.append(piece)
                yield piece
        finally:
            stream.close()
            self.messages = self.kept + [{"role": "assistant", "content": "".join(pieces)}]

    def reply(self, messages: Iterable[Any]) -> Iterator[str]:
        """Stream the reply to ``messages`` (ending with the user's turn), reusing the cache (module doc).
        :attr:`kept` is the conversation as it was sent (oldest turns dropped if the context was full)."""
        self.kept, ids = self.fit(check_messages(messages))
        return self._stream(ids)

    # ---- tokens ----------------------------------------------------------------------------------
    def encode(self, messages: list[dict]) -> list[int]:
        """Token ids of the rendered conversation, ending where the assistant's reply begins."""
        text = apply_chat_template(self.model, messages, template=self.template)
        return self.tokenizer.encode(text, add_special_tokens=self.template == PLAIN_TEMPLATE).ids

    def fit(self, messages: list[dict]) -> tuple[list[dict], list[int]]:
        """``messages`` and their ids, the oldest turns dropped if the prompt and ``max_new_tokens`` do not
        fit the context (module doc: down to half of the prompt's room; a warning the first time)."""
        room = self.context - self.max_new_tokens
        ids = self.encode(messages)
        if len(ids) <= room:
            return messages, ids
        first = 1 if messages and messages[0]["role"] == "system" else 0
        while len(ids) > room // 2 and len(messages) - first > 1:
            messages = messages[:first] + messages[first + 1:]
            while len(messages) - first > 1 and messages[first]["role"] != "user":  # start at a user turn
                messages = messages[:first] + messages[first + 1:]
            ids = self.encode(messages)
        if len(ids) > room:
            raise ValueError(f"the message ({len(ids)} tokens with the template) and max_new_tokens "
                             f"({self.max_new_tokens}) do not fit the model's context (max_seq_len={self.context})")
        if not self.dropped:
            warnings.warn(f"chat: the conversation outgrew the model's context ({self.context} tokens); the oldest "
                          "turns are dropped from now on (the system message stays)", stacklevel=3)
        self.dropped += 1
        return messages, ids

    @torch.inference_mode()  # the cache's tensors are inference tensors (decoding makes them)
    def _rewind(self, ids: list[int]) -> int:
        """Keep the cached slots of the common prefix of ``ids`` and the cache (at least one token of ``ids``
        left to prefill, for the next token's logits); returns the prefix length."""
        p, limit = 0, min(len(self.cached), len(ids) - 1)
        while p < limit and self.cached[p] == ids[p]:
            p += 1
        if self.cache is not None and p < len(self.cached):
            if not _roll_back(self.cache, p):
                self.cache, p = None, 0
        if self.cache is None:
            self.cache = self.model.new_cache(1, min(len(ids) + kv_cache.CHUNK, self.context), limit=self.context)
            p = 0
        del self.cached[p:]
        return p

    def _stream(self, ids: list[int]) -> Iterator[str]:
        p = self._rewind(ids)
        self.prefilled = len(ids) - p
        self.cached.extend(ids[p:])
        text = StopStream(self.tokenizer, self.stop)
        clean = False
        try:
            for token in self._tokens(ids[p:]):
                if token in self.ends:  # the end token is not part of the reply's text
                    break
                piece = text.push(token)
                if piece:
                    yield piece
                if text.stopped:
                    break
            piece = text.finish()
            clean = True
            if piece:
                yield piece
        except GeneratorExit:  # closed between pieces: the cache is whole
            clean = True
            raise
        finally:
            if not clean:  # an exception inside a step: the cache may be half-written
                self.cache, self.cached = None, []
            else:  # what the cache holds: tokens [0, offset) left a compacted window, then its slots
                del self.cached[getattr(self.cache, "offset", 0) + self.cache.pos:]

    @torch.inference_mode()
    def _tokens(self, new: list[int]) -> Iterator[int]:
        """Prefill ``new`` after what the cache holds, then yield each chosen token before it goes through
        the model: one request of a :class:`~genmodels.generation.session.DecodeSession` over the kept cache
        (the native step when the model has one; else PyTorch, with the column-major decode layout as
        ``generate`` takes it). ``self.cached`` grows with every chosen token (the ones fed are what the
        cache holds)."""
        device = next(self.model.parameters()).device
        held = torch.tensor([self.cached[:len(self.cached) - len(new)]], dtype=torch.long, device=device)
        history = held if self.sampling["repetition_penalty"] else None

        def choose(logits, seen, **kw):  # the repetition penalty sees the whole conversation, cached part too
            return choose_next(logits, seen if history is None else torch.cat([history, seen], 1), **kw)
        session = DecodeSession(self.model, choose=choose)
        settings = Sampling(generator=self.generator, ends=tuple(self.ends), **self.sampling)
        with decode_layout(self.model, enabled=device.type == "cpu" and not session.native and
                           self.max_new_tokens >= 16):
            request = session.add(torch.tensor([new], dtype=torch.long, device=device), settings, cache=self.cache)
            while not request.finished:
                session.choose_tokens()  # a step's first half: the token is shown before its forward
                token = int(request.output[0, -1])
                self.cached.append(token)
                yield token
                session.feed_tokens()


def _roll_back(cache: Any, n: int) -> bool:
    """Forget all but the first ``n`` slots of a slot cache (protocol v2 ``truncate``); False when it cannot:
    a recurrent state (nothing to truncate), a sliding window that has compacted (what an earlier query
    saw is gone)."""
    if not hasattr(cache, "truncate") or getattr(cache, "offset", 0):
        return False
    cache.truncate(n)
    return True


def chat_stream(model: torch.nn.Module, messages: Iterable[Any], **options: Any) -> Iterator[str]:
    """The reply to ``messages`` (``[{"role": …, "content": …}, …]``, ending with the user's turn) as text
    pieces while it decodes. ``options``: those of :class:`Conversation` (``template``, ``stop``,
    ``max_new_tokens``, ``temperature``, ``top_k``, ``top_p``, ``repetition_penalty``, ``seed``,
    ``eos_token_id``)."""
    return Conversation(model, **options).reply(messages)


def chat(model: torch.nn.Module, messages: Iterable[Any], **options: Any) -> str:
    """The reply to ``messages`` as one string (:func:`chat_stream` joined)."""
    return "".join(chat_stream(model, messages, **options))
