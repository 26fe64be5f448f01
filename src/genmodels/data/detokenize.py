"""Text from tokens as they are decoded: each new token's text, never half a character.

A byte-level BPE token can hold part of a UTF-8 character (an emoji is often two or three tokens);
decoding it alone gives ``"\\ufffd"``. A SentencePiece tokenizer drops a leading ``▁``'s space at the
start of a decode. So the new text of a token is not ``decode([token])``: :class:`TextStream` decodes
a short window of the latest tokens twice — up to the text already shown, and up to the newest token —
and hands out the difference once it no longer ends in an incomplete character (the incremental
detokenizer of text-generation-inference and vLLM: ``prefix_offset`` / ``read_offset``). Each token
costs a decode of a few tokens, not of the whole reply.

    stream = TextStream(tokenizer)
    for token in tokens:
        print(stream.push([token]), end="")
    print(stream.flush())

The pieces joined equal ``tokenizer.decode(all_tokens)`` (tested on byte-level and SentencePiece
tokenizers with emoji split across tokens).
"""
from __future__ import annotations

from typing import Any, Iterable

REPLACEMENT = "\ufffd"  # what a decode makes of an incomplete UTF-8 sequence


class TextStream:
    """Incremental, UTF-8-safe decoding of one token sequence (see the module).

    ``tokenizer``: a ``tokenizers.Tokenizer`` (anything with ``decode(ids, skip_special_tokens=)``).
    ``skip_special_tokens``: as in ``decode`` (EOS and chat markers give no text by default)."""

    def __init__(self, tokenizer: Any, skip_special_tokens: bool = True):
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self.ids: list[int] = []
        self.prefix = 0  # start of the decode window (a token boundary before the text already shown)
        self.read = 0    # tokens whose text has been handed out
        self.text = ""   # everything handed out so far

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=self.skip_special_tokens)

    def push(self, ids: Iterable[int]) -> str:
        """Add tokens; return the text they complete (``""`` while a character is still incomplete).

        The window starts one shown piece back, so a decoder's start-of-text rule (SentencePiece
        strips the space of a leading ``▁``) applies to both decodes alike and cancels out."""
        self.ids.extend(int(i) for i in ids)
        shown = self._decode(self.ids[self.prefix:self.read])
        full = self._decode(self.ids[self.prefix:])
        if len(full) <= len(shown) or full.endswith(REPLACEMENT):
            return ""  # nothing new yet, or a character still cut in half
        piece = full[len(shown):]
        self.prefix, self.read = self.read, len(self.ids)
        self.text += piece
        return piece

    def flush(self) -> str:
        """The text held back at the end (an incomplete character decodes as ``"\\ufffd"`` here)."""
        shown = self._decode(self.ids[self.prefix:self.read])
        full = self._decode(self.ids[self.prefix:])
        piece = full[len(shown):]
        self.prefix = self.read = len(self.ids)
        self.text += piece
        return piece
