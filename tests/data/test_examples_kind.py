"""The `examples` data kind as a run sees it: its `data:` section, the tokenizer and chat template it finds,
the packed splits it prepares, and what a fresh start from model.init_from and a resume read."""
from __future__ import annotations

import json

import pytest

from genmodels.config import ConfigError
from genmodels.data import save_tokenizer, train_bpe_tokenizer
from genmodels.data.chat_template import PLAIN_TEMPLATE, render
from genmodels.data.examples_kind import ExamplesDataConfig, prepare_example_run, resumed, started

CHAT = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


@pytest.fixture
def folder(tmp_path):
    """A model-like folder: tokenizer.json (and, when a test writes it, chat_template.jinja); an examples file."""
    tok = train_bpe_tokenizer(["User: hi\n\nAssistant: hello\n\n", "def f(x): return x\n"] * 20, 280,
                              special_tokens=("<|endoftext|>", "<|pad|>", "<|im_start|>", "<|im_end|>"))
    save_tokenizer(tok, tmp_path / "model")
    (tmp_path / "ex.jsonl").write_text("".join(json.dumps(r) + "\n" for r in [{"messages": CHAT}] * 6
                                               + [{"text": "def f(x): return x"}] * 6))
    return tmp_path


def config(folder, **kw):
    return ExamplesDataConfig.from_dict({"kind": "examples", "path": str(folder / "ex.jsonl"), "seq_len": 32, **kw})


@pytest.mark.parametrize("kw,why", [
    ({"path": None}, r"data\.path is required"),
    ({"path": "nowhere.jsonl"}, r"data\.path='nowhere\.jsonl' is not a file"),
    ({"seq_len": 0}, r"data\.seq_len=0 must be at least 1"),
    ({"val_fraction": 1.0}, r"data\.val_fraction=1\.0 must be between 0 and 1"),
    ({"tokenizer": "nowhere"}, r"data\.tokenizer='nowhere': no tokenizer\.json there"),
    ({"chat_template": "nowhere.jinja"}, r"data\.chat_template='nowhere\.jinja' is not a file"),
    ({"kind": "tokens"}, r"data\.kind='tokens': this section is for kind 'examples'"),
    ({"text_field": "x"}, r"unknown data config key\(s\): text_field"),
])
def test_the_data_section_refuses_in_one_line_naming_the_field(folder, kw, why):
    with pytest.raises(ConfigError, match=why):
        config(folder, **kw)


def test_no_tokenizer_is_refused_naming_both_ways_to_give_one(folder):
    with pytest.raises(ConfigError, match=r"data\.tokenizer is required .* model\.init_from"):
        prepare_example_run(config(folder), say=lambda s: None, root=folder / "cache")


def test_messages_use_the_template_beside_the_tokenizer_else_the_plain_one(folder):
    said = []
    plain = prepare_example_run(config(folder, tokenizer=str(folder / "model")), said.append, folder / "cache")
    assert plain.chat_template is None and "the plain chat template" in said[-1]
    (folder / "model" / "chat_template.jinja").write_text(CHATML)
    own = prepare_example_run(config(folder, tokenizer=str(folder / "model" / "tokenizer.json")), said.append,
                              folder / "cache")
    assert own.chat_template == CHATML and "its own chat template" in said[-1]
    row = lambda data: data.tokenizer.decode([int(i) for i in data.train.batch([0])["input_ids"][0]],
                                             skip_special_tokens=False)
    # (inputs end one token before each example: the plain one before its EOS, ChatML before its last "\n")
    assert render(CHATML, CHAT)[:-1] in row(own) and render(PLAIN_TEMPLATE, CHAT) in row(plain)
    (folder / "other.jinja").write_text("{% for m in messages %}[{{ m['content'] }}]{% endfor %}")
    chosen = prepare_example_run(config(folder, tokenizer=str(folder / "model"), chat_template=str(folder / "other.jinja")),
                                 said.append, folder / "cache")
    assert "[hi][hello[hi]" in row(chosen)  # data.chat_template wins over the folder's
    assert plain.fingerprint == own.fingerprint == chosen.fingerprint  # the data's identity: the file's bytes


def test_a_fresh_start_from_init_from_takes_its_tokenizer_and_a_resume_the_run_folders(folder):
    dc = config(folder)
    assert started(dc, str(folder / "model")).tokenizer == str(folder / "model" / "tokenizer.json")
    assert started(config(folder, tokenizer=str(folder / "model")), "elsewhere").tokenizer == str(folder / "model")
    with pytest.raises(ConfigError, match=r"model\.init_from='.*ex\.jsonl' has no tokenizer\.json"):
        started(dc, str(folder / "ex.jsonl"))
    run = folder / "run"
    run.mkdir()
    (folder / "model" / "tokenizer.json").rename(run / "tokenizer.json")
    (run / "chat_template.jinja").write_text(CHATML)
    again = prepare_example_run(resumed(dc, run), lambda s: None, folder / "cache")
    assert again.chat_template == CHATML  # the template the fresh run wrote beside its tokenizer
