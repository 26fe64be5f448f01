"""Stop strings, matched on decoded text, and the stopping text stream every text front end shares
(``genmodels generate``, ``genmodels chat``, the server).

A stop string ends a row when it appears in the row's *generated* text (the prompt is not searched).
As in OpenAI's API, the stop string is not part of the returned text: the text ends where the
first stop string starts. Tokens are not cut, so the token ids of a stopped row run up to and
including the token that completed the stop string; :attr:`StopStream.text` is the text to show.

Streaming holds text back while it could still be the start of a stop string (the longest end of
the text that some stop string begins with); :meth:`StopStream.finish` releases what was held once
the row is over. Text comes from :class:`genmodels.data.detokenize.TextStream` (never half a UTF-8
character).
"""
from __future__ import annotations

from typing import Any, Iterable, Sequence

from ..data.detokenize import TextStream


def check_stop(stop) -> tuple[str, ...]:
    """``None``, one string or a sequence of strings, each non-empty -> a tuple of them."""
    if stop is None:
        return ()
    if isinstance(stop, str):
        stop = [stop]
    elif isinstance(stop, bytes) or not isinstance(stop, Iterable):
        raise ValueError(f"stop={stop!r} must be a string or a list of non-empty strings")
    out = tuple(stop)
    for s in out:
        if not isinstance(s, str) or not s:
            raise ValueError(f"stop={list(out)!r} must hold non-empty strings; got {s!r}")
    return out


class StopStrings:
    """Where stop strings occur in a text, and how much of its end must wait for more text."""

    def __init__(self, stop: Sequence[str]):
        self.stop = check_stop(stop)

    def find(self, text: str, start: int = 0) -> int:
        """Index where the earliest stop string starts in ``text[start:]``, or -1 if none occurs."""
        hits = [i for i in (text.find(s, start) for s in self.stop) if i >= 0]
        return min(hits) if hits else -1

    def before(self, text: str) -> str:
        """``text`` up to where the earliest stop string starts (all of it when none occurs)."""
        cut = self.find(text)
        return text if cut < 0 else text[:cut]

    def pending(self, text: str) -> int:
        """Length of the longest end of ``text`` that a stop string starts with (it may yet complete)."""
        best = 0
        for s in self.stop:
            for n in range(min(len(s) - 1, len(text)), best, -1):
                if s.startswith(text[len(text) - n:]):
                    best = n
                    break
        return best


class StopStream:
    """Token ids in, text that is final out: never half a character, stop strings cut off.

    ``push(ids)`` takes a row's next token id(s) and returns the new text that can be shown now;
    ``stopped`` turns True once a stop string appeared (later tokens are ignored); ``finish()``
    returns the text still held back (never part of a stop string); ``text`` is the row's text so
    far, cut where a stop string starts. Without stop strings it is a plain :class:`TextStream`.
    """

    def __init__(self, tokenizer: Any, stop: Sequence[str] = (), skip_special_tokens: bool = True):
        self.stream = TextStream(tokenizer, skip_special_tokens)
        self.matcher = StopStrings(stop)
        self.text = ""
        self.shown = 0  # characters of ``text`` already handed out
        self.stopped = False

    def push(self, ids: int | Iterable[int]) -> str:
        if self.stopped:
            return ""
        self.text += self.stream.push([ids] if isinstance(ids, int) else ids)
        return self._release(final=False)

    def finish(self) -> str:
        """Everything not yet handed out (the row is over: a held-back start was no stop string)."""
        if not self.stopped:
            self.text += self.stream.flush()
        return self._release(final=True)

    def _release(self, final: bool) -> str:
        cut = self.matcher.find(self.text, self.shown)  # text before ``shown`` holds no start of a stop
        if cut >= 0:
            self.stopped, self.text = True, self.text[:cut]
        ready = len(self.text) if final or self.stopped else len(self.text) - self.matcher.pending(self.text)
        piece = self.text[self.shown:max(ready, self.shown)]
        self.shown += len(piece)
        return piece
