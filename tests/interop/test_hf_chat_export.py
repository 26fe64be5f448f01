"""A chat model exported to a Hugging Face folder keeps its template where transformers reads it:
``chat_template.jinja`` and ``tokenizer_config.json``'s ``chat_template``, with the special tokens."""
from __future__ import annotations

import json

import pytest

import genmodels

from tests.helpers.tiny_chat import CHATML, tiny_chat_model

CONVERSATION = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi 😀"},
                {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Capital of France?"}]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    path = tmp_path_factory.mktemp("hf") / "chat"
    genmodels.export_hf(tiny_chat_model(), path)
    return path


def test_tokenizer_config_holds_the_template_and_special_tokens(exported):
    config = json.loads((exported / "tokenizer_config.json").read_text(encoding="utf-8"))
    assert config["chat_template"] == CHATML == (exported / "chat_template.jinja").read_text(encoding="utf-8")
    assert (config["bos_token"], config["eos_token"], config["tokenizer_class"]) == \
        ("<|im_start|>", "<|im_end|>", "PreTrainedTokenizerFast")
    genmodels.export_hf(tiny_chat_model(), exported)  # ours to replace: a re-export needs no overwrite


@pytest.mark.parametrize("jinja_file", [True, False])
def test_transformers_renders_and_encodes_as_we_do(exported, jinja_file, tmp_path):
    transformers = pytest.importorskip("transformers")
    folder = exported
    if not jinja_file:  # the template only in tokenizer_config.json (what older readers see)
        folder = tmp_path / "config-only"
        folder.mkdir()
        for f in ("tokenizer.json", "tokenizer_config.json", "config.json"):
            (folder / f).write_bytes((exported / f).read_bytes())
    theirs = transformers.AutoTokenizer.from_pretrained(folder)
    ours = tiny_chat_model()
    text = genmodels.apply_chat_template(ours, CONVERSATION)
    assert theirs.apply_chat_template(CONVERSATION, tokenize=False, add_generation_prompt=True) == text
    assert theirs(text, add_special_tokens=True)["input_ids"] == ours.tokenizer.encode(text).ids
    assert (theirs.bos_token, theirs.eos_token) == ("<|im_start|>", "<|im_end|>")


def test_loaded_back_with_its_template(exported, tmp_path):
    assert genmodels.load(exported).chat_template == CHATML
    folder = tmp_path / "config-only"
    folder.mkdir()
    for f in ("tokenizer.json", "tokenizer_config.json", "config.json", "model.safetensors"):
        (folder / f).write_bytes((exported / f).read_bytes())
    assert genmodels.load(folder).chat_template == CHATML


def test_no_template_no_tokenizer_config(tmp_path):
    """A model without a template exports as before: no tokenizer_config.json."""
    genmodels.export_hf(tiny_chat_model(template=None), tmp_path / "plain")
    assert not (tmp_path / "plain" / "tokenizer_config.json").exists()
