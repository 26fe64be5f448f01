"""Stop strings (issue #21 d4, through issue #20 d4's session): matched on each row's generated text, the stop
string not part of the text (OpenAI's convention), streaming never shows a possible start of one."""
from __future__ import annotations

import pytest
import torch

import genmodels
from genmodels.generation.stop import StopStream, StopStrings, check_stop
from tests.helpers.tiny import random_ids, tiny_model

torch.set_num_threads(1)


class Digits:
    """A tokenizer whose token i decodes to ``f"{i % 10}"`` plus a space after every odd id: texts where
    stop strings span tokens and recur."""

    def decode(self, ids, skip_special_tokens=True):
        return "".join(f"{i % 10}" + (" " if i % 2 else "") for i in ids)


def test_stop_strings_find_the_earliest_and_hold_a_possible_start():
    m = StopStrings(["\n\n", "END"])
    assert m.find("ab\n\ncdEND") == 2 and m.find("abEN") == -1 and m.find("x\n\n", 2) == -1
    assert m.pending("ab\n") == 1 and m.pending("abEN") == 2 and m.pending("abE") == 1 and m.pending("ab") == 0
    assert m.before("ab END\n\n") == "ab " and m.before("abc") == "abc"
    with pytest.raises(ValueError, match="non-empty strings"):
        check_stop(["ok", ""])
    with pytest.raises(ValueError, match="must be a string or a list"):
        check_stop(3)


class Chars:
    def decode(self, ids, skip_special_tokens=True):
        return "".join("ab\nc"[i] for i in ids)


def test_stop_stream_holds_back_what_may_start_a_stop_and_never_shows_the_stop():
    s = StopStream(Chars(), ["\n\n"])
    assert [s.push(i) for i in (0, 1, 2)] == ["a", "b", ""]  # "\n" may start "\n\n": held
    assert s.push(3) == "\nc" and not s.stopped          # it did not: released with what follows
    assert s.push(2) == "" and s.push(2) == "" and s.stopped and s.text == "ab\nc"
    assert s.push(0) == "" and s.finish() == "" and s.text == "ab\nc"
    t = StopStream(Chars(), ["\n\n"])
    assert t.push([0, 2]) == "a" and t.finish() == "\n" and t.text == "a\n"  # over: the held "\n" was no stop


def _reference(ids: list[int], stop: list[str], tok) -> tuple[int, str]:
    """Tokens a row keeps (up to the one completing a stop string) and its text cut there, by brute force."""
    for n in range(1, len(ids) + 1):
        text = tok.decode(ids[:n])
        hits = [text.find(s) for s in stop if s in text]
        if hits:
            return n, text[:min(hits)]
    return len(ids), tok.decode(ids)


@pytest.mark.parametrize("native", ["1", "0"])
def test_generate_ends_each_row_where_its_text_reaches_a_stop_string(native, monkeypatch):
    monkeypatch.setenv("GENMODELS_NATIVE", native)
    model, tok = tiny_model("llama", eos_token_id=None, pad_token_id=0), Digits()
    model.tokenizer = tok
    prompt = random_ids(2, 5)
    free = genmodels.generate(model, prompt, 24)[:, 5:].tolist()
    stop = [tok.decode(free[0])[6:9], "no such text"]  # spans tokens in row 0; row 1 may or may not meet it
    pieces = [[], []]
    streams = [StopStream(tok, stop) for _ in range(2)]

    def streamer(new):
        for r in range(2):
            pieces[r].append(streams[r].push(int(new[r])))

    out = genmodels.generate(model, prompt, 24, stop=stop, streamer=streamer)
    refs = [_reference(row, stop, tok) for row in free]
    assert refs[0][0] < 24 and out.shape[1] == 5 + max(n for n, _ in refs)
    for r, (n, text) in enumerate(refs):
        assert out[r, 5:5 + n].tolist() == free[r][:n] and set(out[r, 5 + n:].tolist()) <= {0}
        assert "".join(pieces[r]) + streams[r].finish() == text
        assert not any(s in text for s in stop)


def test_stop_strings_are_refused_where_they_cannot_be_matched():
    model, ids = tiny_model("llama"), random_ids(1, 4)
    with pytest.raises(ValueError, match=r"stop=\['x'\]: stop strings are matched on decoded text"):
        genmodels.generate(model, ids, 2, stop=["x"])  # no tokenizer
    model.tokenizer = Digits()
    with pytest.raises(ValueError, match="beam search"):
        genmodels.generate(model, ids, 2, stop="x", num_beams=2)
    with pytest.raises(ValueError, match="non-empty strings"):
        genmodels.generate(model, ids, 2, stop=[""])
