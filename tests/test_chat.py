"""genmodels.chat / chat_stream / Conversation on a tiny random model: replies equal generate's on the
rendered prompt (native step and PyTorch), the cache kept between turns (turn 2 prefills only its new
tokens, and replies as a fresh prefill would), roll-back to a common prefix, the context filling (oldest
turns dropped, said once), /reset, a reply stopped between pieces or inside a step, stop strings, the
plain template; UTF-8-safe pieces (TextStream)."""
from __future__ import annotations

import warnings

import pytest
import torch

import genmodels
from genmodels.chat import PLAIN_STOP, Conversation
from genmodels.data.chat_template import PLAIN_TEMPLATE
from genmodels.data.detokenize import TextStream

from tests.helpers.tiny_chat import chat_tokenizer, tiny_chat_model

ENDS = [0, 1, 2, 3]  # char tokenizer: every special token (and <unk>) ends a reply, so replies re-encode exactly
SYSTEM = "Be brief."
TURNS = ["Hello there, how are you?", "What is the capital of France?", "And of Japan?", "Thanks!",
         "One more question, please.", "Goodbye."]


@pytest.fixture(scope="module")
def model():
    return tiny_chat_model(tokenizer="char", max_seq_len=512)


def generate_reply(model, messages, n, template=None, ends=ENDS, **kw) -> str:
    """The reference: genmodels.generate on the rendered, encoded prompt, decoded up to the end token."""
    source = template or model.chat_template
    text = genmodels.apply_chat_template(model, messages, template=source)
    ids = model.tokenizer.encode(text, add_special_tokens=source == PLAIN_TEMPLATE).ids
    out = genmodels.generate(model, torch.tensor([ids]), max_new_tokens=n, eos_token_id=ends, **kw)[0, len(ids):]
    new = out.tolist()
    if new and new[-1] in ends:
        new = new[:-1]
    return model.tokenizer.decode(new)


@pytest.mark.parametrize("native", ["1", "0"])
@pytest.mark.parametrize("sampling", [dict(temperature=0.0), dict(temperature=0.9, top_k=20, top_p=0.9, seed=3),
                                      dict(temperature=0.0, repetition_penalty=1.3)])
def test_reply_equals_generate_on_the_rendered_prompt(model, native, sampling, monkeypatch):
    monkeypatch.setenv("GENMODELS_NATIVE", native)
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": TURNS[0]}]
    pieces = list(genmodels.chat_stream(model, messages, max_new_tokens=24, eos_token_id=ENDS, **sampling))
    assert "".join(pieces) == generate_reply(model, messages, 24, **sampling)
    assert genmodels.chat(model, messages, max_new_tokens=24, eos_token_id=ENDS, **sampling) == "".join(pieces)


def count_prefill(model, monkeypatch) -> list[int]:
    """Record the length of every multi-token forward (a prefill) the model runs."""
    seen, forward = [], model.hidden_states

    def counting(input_ids=None, *a, **kw):
        if input_ids is not None and input_ids.shape[1] > 1:
            seen.append(input_ids.shape[1])
        return forward(input_ids, *a, **kw)
    monkeypatch.setattr(model, "hidden_states", counting)
    return seen


@pytest.mark.parametrize("native, sampling", [("1", {}), ("0", {}), ("1", dict(repetition_penalty=1.3))])
def test_turn_two_prefills_only_its_new_tokens(model, native, sampling, monkeypatch):
    monkeypatch.setenv("GENMODELS_NATIVE", native)
    prefills = count_prefill(model, monkeypatch)
    conv = Conversation(model, system=SYSTEM, max_new_tokens=24, eos_token_id=ENDS, **sampling)
    first = "".join(conv.say(TURNS[0]))
    turn1 = conv.encode(conv.messages[:2])  # system + user 1, up to the reply
    fed = conv.cache.pos - len(turn1)  # reply tokens whose keys are cached (all but an unfed last one)
    assert fed >= len(model.tokenizer.encode(first).ids) - 1
    second = "".join(conv.say(TURNS[1]))
    whole = conv.encode(conv.messages[:4])
    assert prefills == [len(turn1), len(whole) - len(turn1) - fed]  # turn 2: only what the cache lacks
    assert conv.prefilled == prefills[-1] < len(whole) // 2
    assert second == generate_reply(model, conv.messages[:4], 24, **sampling)  # as a fresh prefill would
    third = "".join(conv.say(TURNS[2]))
    assert third and third == generate_reply(model, conv.messages[:6], 24, **sampling)


def test_each_token_is_shown_before_its_forward(model, monkeypatch):
    """The first piece comes right after the prefill, not after a decode step (time to first token)."""
    monkeypatch.setenv("GENMODELS_NATIVE", "0")  # every forward through hidden_states, so they can be counted
    forwards, forward = [], model.hidden_states

    def counting(input_ids=None, *a, **kw):
        forwards.append(input_ids.shape[1])
        return forward(input_ids, *a, **kw)
    monkeypatch.setattr(model, "hidden_states", counting)
    conv = Conversation(model, max_new_tokens=8, eos_token_id=ENDS)
    stream = conv.say(TURNS[0])
    assert next(stream) and forwards == [conv.prefilled]  # the prefill only
    next(stream)
    assert forwards == [conv.prefilled, 1]  # the first token went through the model after it was shown
    stream.close()


def test_changed_history_rolls_the_cache_back_to_the_common_prefix(model, monkeypatch):
    conv = Conversation(model, system=SYSTEM, max_new_tokens=16, eos_token_id=ENDS)
    "".join(conv.say(TURNS[0]))
    "".join(conv.say(TURNS[1]))
    edited = conv.messages[:2] + [{"role": "assistant", "content": "Fine."}, {"role": "user", "content": TURNS[2]}]
    prefix = conv.encode(conv.messages[:2])
    reply = "".join(conv.reply(edited))
    assert conv.prefilled == len(conv.encode(edited)) - len(prefix)  # kept: system + first message
    assert reply == generate_reply(model, edited, 16)


def test_full_context_drops_oldest_turns_said_once(monkeypatch):
    model = tiny_chat_model(tokenizer="char", max_seq_len=256)
    conv = Conversation(model, system=SYSTEM, max_new_tokens=24, eos_token_id=ENDS)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for text in TURNS * 2:
            reply = "".join(conv.say(text))
            assert len(conv.encode(conv.messages[:-1])) + 24 <= 256
    said = [w for w in caught if "outgrew the model's context" in str(w.message)]
    assert len(said) == 1 and conv.dropped >= 2 and len(conv.messages) < 1 + 2 * len(TURNS)
    assert conv.messages[0] == {"role": "system", "content": SYSTEM} and conv.messages[1]["role"] == "user"
    assert conv.messages[-2]["content"] == TURNS[-1]
    assert reply == generate_reply(model, conv.messages[:-1], 24)  # the rebuilt cache answers as a fresh one


def test_message_too_long_for_the_context_is_refused_and_the_session_goes_on():
    model = tiny_chat_model(tokenizer="char", max_seq_len=128)
    conv = Conversation(model, max_new_tokens=16, eos_token_id=ENDS)
    with pytest.raises(ValueError, match=r"the message \(\d+ tokens with the template\) and max_new_tokens \(16\) "
                                         r"do not fit the model's context \(max_seq_len=128\)"):
        list(conv.say("x" * 200))
    assert conv.messages == []
    assert "".join(conv.say("Hi")) == generate_reply(model, [{"role": "user", "content": "Hi"}], 16)


def test_reset_keeps_the_system_message_and_its_cached_prefix(model):
    conv = Conversation(model, system=SYSTEM, max_new_tokens=16, eos_token_id=ENDS)
    "".join(conv.say(TURNS[0]))
    conv.reset()
    assert conv.messages == [{"role": "system", "content": SYSTEM}]
    reply = "".join(conv.say(TURNS[1]))
    fresh = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": TURNS[1]}]
    assert reply == generate_reply(model, fresh, 16)
    assert conv.prefilled < len(conv.encode(fresh)) - len(SYSTEM)  # the system prompt came from the cache


def test_reply_stopped_between_pieces_keeps_the_session_and_cache(model):
    conv = Conversation(model, system=SYSTEM, max_new_tokens=24, eos_token_id=ENDS)
    stream, shown = conv.say(TURNS[0]), []
    for piece in stream:  # the reader stops after three pieces (Ctrl-C while printing)
        shown.append(piece)
        if len(shown) == 3:
            break
    stream.close()
    assert conv.messages[-1] == {"role": "assistant", "content": "".join(shown)}
    cache, held = conv.cache, conv.cache.pos
    reply = "".join(conv.say(TURNS[1]))
    assert conv.cache is cache and conv.prefilled == len(conv.encode(conv.messages[:-1])) - held  # it went on
    assert reply == generate_reply(model, conv.messages[:-1], 24)


class Interrupting:
    """A tokenizer whose decode raises KeyboardInterrupt on its n-th call (Ctrl-C inside the decode)."""

    def __init__(self, tokenizer, n):
        self.tokenizer, self.n = tokenizer, n

    def __getattr__(self, name):
        return getattr(self.tokenizer, name)

    def decode(self, *a, **kw):
        self.n -= 1
        if self.n == 0:
            raise KeyboardInterrupt
        return self.tokenizer.decode(*a, **kw)


def test_interrupt_inside_a_step_drops_the_cache_and_keeps_the_session(model):
    conv = Conversation(model, system=SYSTEM, max_new_tokens=24, eos_token_id=ENDS)
    conv.tokenizer = Interrupting(conv.tokenizer, 9)
    shown = []
    with pytest.raises(KeyboardInterrupt):
        for piece in conv.say(TURNS[0]):
            shown.append(piece)
    assert conv.cache is None and conv.messages[-1] == {"role": "assistant", "content": "".join(shown)}
    conv.tokenizer = model.tokenizer
    reply = "".join(conv.say(TURNS[1]))
    assert conv.prefilled == len(conv.encode(conv.messages[:-1]))  # rebuilt from the start
    assert reply == generate_reply(model, conv.messages[:-1], 24)


def test_stop_strings_and_end_tokens_end_the_reply_without_their_text(model):
    messages = [{"role": "user", "content": TURNS[0]}]
    full = genmodels.chat(model, messages, max_new_tokens=24, eos_token_id=ENDS)
    stop = full[5:7]
    cut = genmodels.chat(model, messages, max_new_tokens=24, eos_token_id=ENDS, stop=[stop])
    assert cut == full[:full.index(stop)]
    end = model.tokenizer.token_to_id(full[6])  # an ordinary character as an end token: not in the text
    ended = genmodels.chat(model, messages, max_new_tokens=24, eos_token_id=ENDS + [end])
    assert ended == full[:full.index(full[6])] == generate_reply(model, messages, 24, ends=ENDS + [end])


def test_model_without_template_chats_through_the_plain_one(model):
    plain = tiny_chat_model(template=None, tokenizer="char", max_seq_len=512)
    conv = Conversation(plain, max_new_tokens=24, eos_token_id=ENDS)
    assert conv.template == PLAIN_TEMPLATE and conv.stop == PLAIN_STOP
    reply = "".join(conv.say("Hello"))
    reference = generate_reply(plain, [{"role": "user", "content": "Hello"}], 24, template=PLAIN_TEMPLATE)
    assert reply == reference.split(PLAIN_STOP[0])[0]


@pytest.mark.parametrize("kw, words", [
    (dict(max_new_tokens=512), "max_new_tokens=512 leaves no room for a message in the model's context"),
    (dict(top_p=1.5), "top_p"),
    (dict(stop=[""]), "non-empty"),
])
def test_bad_options_are_refused(model, kw, words):
    with pytest.raises(ValueError, match=words):
        genmodels.chat(model, [{"role": "user", "content": "Hi"}], **kw)


def test_model_without_tokenizer_is_refused():
    model = tiny_chat_model()
    model.tokenizer = None
    with pytest.raises(ValueError, match="has no tokenizer"):
        genmodels.chat(model, [{"role": "user", "content": "Hi"}])


@pytest.mark.parametrize("text", ["Héllo wörld 😀🇫🇷 中文字符 — ok\n\n  done", "😀😀😀 ünïcödé"])
def test_text_stream_never_splits_a_character(text):
    """Byte-level BPE splits emoji and CJK across tokens: no piece holds half a character, and the pieces
    join to the whole decode."""
    tok = chat_tokenizer()
    ids = tok.encode(text).ids
    assert len(ids) > len(text.split())  # several characters span more than one token
    stream = TextStream(tok)
    pieces = [stream.push([i]) for i in ids] + [stream.flush()]
    assert all("\ufffd" not in p for p in pieces)
    assert "".join(pieces) == tok.decode(ids) == text
    naive = [tok.decode([i]) for i in ids]
    assert any("\ufffd" in p for p in naive)  # decoding token by token would print broken characters


@pytest.mark.parametrize("kind", ["retnet", "gpt2", "window"])
def test_other_caches_continue_and_roll_back(kind):
    """RetNet's recurrent state (nothing to truncate: rebuilt), GPT-2's learned positions, and a sliding window
    that compacts (slots no longer its positions: rebuilt): turn 3 continues the cache and answers as a fresh
    prefill; an edited history answers as a fresh prefill too."""
    from tests.helpers.tiny import randomise
    from tests.helpers.tiny_chat import CHATML, char_tokenizer
    if kind == "window":
        model = tiny_chat_model(tokenizer="char", max_seq_len=512, sliding_window=24)
    else:
        model = randomise(genmodels.build_model(genmodels.preset(f"{kind}-tiny", vocab_size=101, max_seq_len=512)))
        model.eval().tokenizer, model.chat_template = char_tokenizer(), CHATML
    conv = Conversation(model, max_new_tokens=16, eos_token_id=ENDS)
    replies = ["".join(conv.say(text)) for text in TURNS[:3]]
    assert conv.prefilled < 40 and replies[-1] == generate_reply(model, conv.messages[:-1], 16)
    assert kind != "window" or conv.cache.offset > 0  # the window compacted
    edited = conv.messages[:2] + [{"role": "assistant", "content": "Fine."}, {"role": "user", "content": TURNS[3]}]
    assert "".join(conv.reply(edited)) == generate_reply(model, edited, 16)
