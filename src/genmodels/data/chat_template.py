"""Chat templates: a conversation (``[{"role": …, "content": …}, …]``) rendered to the model's prompt text.

A chat model carries its template as Jinja source: in a GGUF file (``tokenizer.chat_template``), in a
Hugging Face folder (``chat_template.jinja``, or ``"chat_template"`` in ``tokenizer_config.json``), in a
genmodels folder (``chat_template.jinja``, written beside ``tokenizer.json``). ``genmodels.load`` puts
it at ``model.chat_template``; :func:`apply_chat_template` renders it.

Rendering follows transformers' ``apply_chat_template`` (so the strings are equal): a sandboxed,
immutable Jinja environment with ``trim_blocks`` and ``lstrip_blocks``, the loop controls
(``break``/``continue``) and a ``{% generation %}`` block that renders its body; ``tojson`` without
HTML escaping; ``raise_exception(msg)`` and ``strftime_now(fmt)``; the variables ``messages``,
``add_generation_prompt``, ``tools``, ``documents`` and the model's special tokens (``bos_token``,
``eos_token``, ``pad_token``; others may be passed by name). A template's own ``raise_exception`` — "Conversation
roles must alternate user/assistant/user/assistant/..." — becomes a one-line
:class:`ChatTemplateError`, as does a template that does not parse.

A model without a template (our own runs) chats through :data:`PLAIN_TEMPLATE`::

    User: Hello

    Assistant:
"""
from __future__ import annotations

import copy
import json
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable

TEMPLATE_FILE = "chat_template.jinja"

# "Role: content" paragraphs, then "Assistant:" when a reply is wanted: for models trained without a
# chat format. The reply is read up to the model's EOS (or the caller's stop).
PLAIN_TEMPLATE = ("{% for message in messages %}"
                  "{{ message['role'] | capitalize }}: {{ message['content'] }}\n\n"
                  "{% endfor %}"
                  "{% if add_generation_prompt %}Assistant:{% endif %}")


class ChatTemplateError(ValueError):
    """A template that does not parse, raises (``raise_exception``) or fails while rendering."""


def read_chat_template(folder: str | Path) -> str | None:
    """The chat template kept in a model folder: ``chat_template.jinja``, else ``tokenizer_config.json``'s
    ``chat_template`` (a string, or a list of named templates: the one named ``default``); ``None``."""
    folder = Path(folder)
    file = folder / TEMPLATE_FILE
    if file.is_file():
        try:
            return file.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise ValueError(f"{file}: not UTF-8 text (a chat template is Jinja source)") from None
    config = folder / "tokenizer_config.json"
    if not config.is_file():
        return None
    from ..files import read_json
    value = read_json(config).get("chat_template")
    if isinstance(value, list):  # [{"name": "default", "template": …}, {"name": "tool_use", …}]
        named = {t.get("name"): t.get("template") for t in value if isinstance(t, dict)}
        value = named.get("default")
    if value is not None and not isinstance(value, str):
        raise ValueError(f"{config}: \"chat_template\" must be Jinja source text, found {type(value).__name__}")
    return value


def _raise_exception(message: str):
    raise ChatTemplateError(f"the chat template refused the conversation: {message}")


def _tojson(x: Any, ensure_ascii: bool = False, indent: int | None = None, separators=None,
            sort_keys: bool = False) -> str:
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


@lru_cache(maxsize=16)
def compile_template(source: str):
    """The template compiled in the sandbox (cached by source)."""
    import jinja2
    from jinja2.ext import Extension
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class Generation(Extension):  # {% generation %}…{% endgeneration %}: the body, unchanged
        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

        def _body(self, caller):
            return caller()

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                       extensions=[Generation, "jinja2.ext.loopcontrols"])
    env.filters["tojson"] = _tojson
    env.globals.update(raise_exception=_raise_exception, strftime_now=lambda fmt: datetime.now().strftime(fmt))
    try:
        return env.from_string(source)
    except jinja2.TemplateSyntaxError as e:
        raise ChatTemplateError(f"the chat template does not parse (line {e.lineno}: {e.message})") from None


def check_messages(messages: Iterable[Any]) -> list[dict]:
    """Copies of the messages (the template never edits the caller's); each a dict with a string role."""
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise ValueError(f"messages[{i}] must be a dict with a string \"role\" (and \"content\"), "
                             f"got {m!r:.60}")
        out.append(copy.deepcopy(m))
    return out


def render(source: str, messages: Iterable[Any], add_generation_prompt: bool = False, **variables: Any) -> str:
    """The prompt text ``source`` makes of ``messages`` (transformers' rendering; see the module)."""
    import jinja2
    template = compile_template(source)
    context = {"tools": None, "documents": None, **variables}
    try:
        return template.render(messages=check_messages(messages), add_generation_prompt=add_generation_prompt,
                               **context)
    except ChatTemplateError:
        raise
    except jinja2.TemplateError as e:  # undefined names, sandbox refusals
        raise ChatTemplateError(f"the chat template failed: {type(e).__name__}: {e}") from None


def special_tokens(model: Any) -> dict[str, str]:
    """``bos_token`` / ``eos_token`` / ``pad_token`` as text, from the model's config ids and its
    tokenizer (the names templates read; ModelConfig keeps no unknown-token id)."""
    tok, cfg = getattr(model, "tokenizer", None), getattr(model, "config", None)
    out = {}
    for name in ("bos", "eos", "pad"):
        i = getattr(cfg, f"{name}_token_id", None)
        text = tok.id_to_token(i) if tok is not None and isinstance(i, int) else None
        if text is not None:
            out[f"{name}_token"] = text
    return out


def apply_chat_template(model: Any, messages: Iterable[Any], add_generation_prompt: bool = True,
                        template: str | None = None, **variables: Any) -> str:
    """The prompt text for ``messages`` through ``model``'s chat template (``template`` overrides it;
    a model without one uses :data:`PLAIN_TEMPLATE`). ``add_generation_prompt`` ends the text where the
    assistant's reply begins. Extra ``variables`` reach the template (they override the special tokens)."""
    source = template or getattr(model, "chat_template", None) or PLAIN_TEMPLATE
    return render(source, messages, add_generation_prompt, **{**special_tokens(model), **variables})


def write_chat_template(model: Any, folder: Path) -> None:
    """``chat_template.jinja`` in a folder being written (genmodels or HF export), when the model has a
    template (transformers reads the same file)."""
    source = getattr(model, "chat_template", None)
    if source:
        (Path(folder) / TEMPLATE_FILE).write_text(source, encoding="utf-8")
