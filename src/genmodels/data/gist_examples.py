"""Example records for gist training (Mu, Li, Goodman 2023): instruction → ``<GIST>`` × k → input → output.

The records are the ``examples`` data kind's prompt/response form, so the loss falls on the output only:

    {"prompt": "Instruction: {instruction}\\n<GIST><GIST>\\nInput: {input}\\nOutput:", "response": " {output}"}

(the reference's LLaMA layout). ``<GIST>`` must be one token of the run's tokenizer:
:func:`add_gist_token` returns a copy of a tokenizer with it (a special token, the next id); a model
started from ``model.init_from`` then grows one embedding row for it, the mean of its rows
(:mod:`genmodels.models.vocab`).
"""
from __future__ import annotations

GIST_TOKEN = "<GIST>"


def gist_record(instruction: str, input: str, output: str, k: int = 1) -> dict[str, str]:
    """One prompt/response record laid out instruction → gist × k → input → output."""
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"gist_record: k={k!r} gist tokens; expected an integer >= 1")
    prompt = f"Instruction: {instruction}\n{GIST_TOKEN * k}\n" + (f"Input: {input}\n" if input else "") + "Output:"
    return {"prompt": prompt, "response": f" {output}"}


def add_gist_token(tokenizer):
    """A copy of ``tokenizer`` (``tokenizers.Tokenizer``) with ``<GIST>`` as a special token (the same
    tokenizer, copied, when it has one already)."""
    from tokenizers import Tokenizer
    copy = Tokenizer.from_str(tokenizer.to_str())
    if copy.token_to_id(GIST_TOKEN) is None:
        copy.add_special_tokens([GIST_TOKEN])
    return copy


def gist_id(tokenizer) -> int | None:
    """The id of ``<GIST>`` in ``tokenizer`` (None without one)."""
    return None if tokenizer is None else tokenizer.token_to_id(GIST_TOKEN)
