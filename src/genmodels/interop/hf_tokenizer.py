"""``tokenizer_config.json`` in a Hugging Face export of a chat model, as transformers reads it.

``export_hf`` writes ``tokenizer.json`` and, for a model with a chat template, ``chat_template.jinja``
(what transformers 4.43+ reads first and itself saves). Older transformers, and tools that read only
``tokenizer_config.json`` (text-generation-inference, vLLM's fallbacks), find the template under its
``"chat_template"`` key; :func:`write_tokenizer_config` writes it there too, with:

* ``tokenizer_class: PreTrainedTokenizerFast`` — the generic fast tokenizer over ``tokenizer.json`` as
  written, so transformers does not rebuild one from the architecture's defaults (``LlamaTokenizerFast``
  would add a BOS the GGUF's rules did not);
* ``bos_token`` / ``eos_token`` / ``pad_token`` as text (the template's ``bos_token`` / ``eos_token``,
  and what ``generate`` stops on), ``model_max_length`` (the context), and
  ``clean_up_tokenization_spaces: false`` (decoding returns the tokens' text unchanged, as ours does).

A model without a template gets no ``tokenizer_config.json`` (its export is unchanged from before).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

FILE = "tokenizer_config.json"


def tokenizer_config(model: Any) -> dict[str, Any]:
    """The ``tokenizer_config.json`` object for ``model`` (its config, tokenizer and chat template)."""
    from ..data.chat_template import special_tokens
    return {"tokenizer_class": "PreTrainedTokenizerFast", **special_tokens(model),
            "model_max_length": model.config.max_seq_len, "clean_up_tokenization_spaces": False,
            "chat_template": model.chat_template}


def write_tokenizer_config(model: Any, tokenizer: Any, folder: Path) -> None:
    """``folder/tokenizer_config.json`` when ``model`` has a chat template and a tokenizer is written."""
    if tokenizer is None or not getattr(model, "chat_template", None):
        return
    text = json.dumps(tokenizer_config(model), indent=2, ensure_ascii=False) + "\n"
    (Path(folder) / FILE).write_text(text, encoding="utf-8")
