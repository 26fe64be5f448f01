"""`genmodels chat`: one answer for scripts (--prompt, or stdin when it is not a terminal), the interactive
loop driven without a terminal (injected reader and streams: /reset, Ctrl-C at the prompt and during a
reply, Ctrl-D), the sampling flags refused as generate refuses them, and the real SmolLM2 answering."""
from __future__ import annotations

import io

import pytest

import genmodels
from genmodels.chat import Conversation
from genmodels.cli import build_parser, main
from genmodels.cli_chat import cmd_chat, interactive

from tests.helpers.tiny_chat import tiny_chat_model

ENDS = [0, 1, 2, 3]
GREEDY = ["--temperature", "0", "--max-new-tokens", "12"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    path = tmp_path_factory.mktemp("chat") / "model"
    model = tiny_chat_model(tokenizer="char", max_seq_len=512)
    model.config.eos_token_id = 2
    genmodels.save(model, path)
    return path


@pytest.fixture(scope="module")
def model(folder):
    return genmodels.load(folder)


def reader(lines):
    """A line reader: each item is returned, or raised when it is an exception; then EOFError (Ctrl-D)."""
    items = iter(lines)

    def read():
        item = next(items, EOFError)
        if isinstance(item, type) and issubclass(item, BaseException) or isinstance(item, BaseException):
            raise item
        return item
    return read


def test_prompt_answers_once(folder, model, capsys):
    assert main(["chat", str(folder), "--prompt", "Hello", *GREEDY]) == 0
    want = genmodels.chat(model, [{"role": "user", "content": "Hello"}], max_new_tokens=12, top_k=50)
    assert capsys.readouterr().out == want + "\n"


def test_stdin_that_is_not_a_terminal_answers_once(folder, model):
    args = build_parser().parse_args(["chat", str(folder), "--system", "Be brief.", *GREEDY])
    out = io.StringIO()
    assert cmd_chat(args, stdin=io.StringIO("Hello\n"), stdout=out) == 0
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello"}]
    assert out.getvalue() == genmodels.chat(model, messages, max_new_tokens=12, top_k=50) + "\n"


@pytest.mark.parametrize("argv, words", [
    (["--prompt", " "], "error: --prompt holds no message; give the text to answer"),
    (["--prompt", "Hi", "--top-p", "2"], "error: --top-p=2.0"),
    (["--prompt", "Hi", "--temperature", "-1"], "error: --temperature=-1.0"),
    (["--prompt", "Hi", "--stop", ""], "error: --stop '' is empty"),
])
def test_bad_input_is_one_error_line(folder, argv, words, capsys):
    assert main(["chat", str(folder), *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith(words) and err.count("\n") == 1


def test_model_without_tokenizer_is_named(tmp_path, capsys):
    model = tiny_chat_model(tokenizer="char")
    model.tokenizer = None
    genmodels.save(model, tmp_path / "bare")
    assert main(["chat", str(tmp_path / "bare"), "--prompt", "Hi"]) == 2
    assert capsys.readouterr().err == f"error: {tmp_path / 'bare'} has no tokenizer (tokenizer.json, or a GGUF " \
        "file's tokenizer.ggml.* metadata), so messages cannot be encoded\n"


def conversation(model):
    return Conversation(model, system="Be brief.", max_new_tokens=12, eos_token_id=ENDS)


def test_interactive_reset_and_ctrl_d(model):
    conv, out, err = conversation(model), io.StringIO(), io.StringIO()
    assert interactive(conv, reader(["Hello", "", "/reset", "Hello"]), out, err) == 0
    first = genmodels.chat(model, [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello"}],
                           max_new_tokens=12, eos_token_id=ENDS)
    assert out.getvalue() == f"{first}\n{first}\n\n"  # the same answer after /reset; a newline at Ctrl-D
    assert "(conversation cleared)" in err.getvalue()
    assert [m["role"] for m in conv.messages] == ["system", "user", "assistant"]


def test_ctrl_c_at_the_prompt_gives_a_fresh_prompt(model):
    conv, out, err = conversation(model), io.StringIO(), io.StringIO()
    assert interactive(conv, reader([KeyboardInterrupt, "Hello", "/exit", "never read"]), out, err) == 0
    assert len(conv.messages) == 3


class StopsAfter(io.StringIO):
    """An output stream whose n-th write raises KeyboardInterrupt (Ctrl-C while a reply prints)."""

    def __init__(self, n):
        super().__init__()
        self.n = n

    def write(self, s):
        self.n -= 1
        if self.n == 0:
            raise KeyboardInterrupt
        return super().write(s)


def test_ctrl_c_during_a_reply_stops_it_and_keeps_the_session(model):
    conv, out, err = conversation(model), StopsAfter(4), io.StringIO()
    assert interactive(conv, reader(["Hello", "Hi again"]), out, err) == 0
    assert "(reply stopped)" in err.getvalue()
    partial, shown = conv.messages[2]["content"], out.getvalue().split("\n")[0]
    assert len(shown) == 3 and partial[:-1] == shown  # three pieces shown; the fourth was being printed
    assert [m["role"] for m in conv.messages] == ["system", "user", "assistant", "user", "assistant"]
    second = genmodels.chat(model, conv.messages[:4], max_new_tokens=12, eos_token_id=ENDS)
    assert conv.messages[4]["content"] == second  # the kept cache answers as a fresh prefill would


def test_smollm2_answers_paris(smollm2, monkeypatch, capsys):
    """The real model (loaded once per session, tests/helpers/smollm2.py) through the command."""
    monkeypatch.setattr(genmodels, "load", lambda path: smollm2)
    assert main(["chat", "SmolLM2-135M-Instruct.Q4_1.gguf", "--prompt", "What is the capital of France?",
                 "--temperature", "0", "--max-new-tokens", "16"]) == 0
    assert "Paris" in capsys.readouterr().out
