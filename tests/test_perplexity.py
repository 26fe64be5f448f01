"""genmodels.perplexity: llama-perplexity's count (chunks of c tokens, the second half of each scored, BOS in
front of each chunk when the tokenizer adds one) equals exp(mean NLL) computed by hand; bad inputs are refused
in one line naming them; HumanEval's text is read from its gz without importing the package."""
from __future__ import annotations

import gzip
import json
import math
import re

import pytest
import torch
import torch.nn.functional as F

import genmodels
from genmodels.cli import main
from genmodels.perplexity import humaneval_text, perplexity, text_ids

from tests.helpers.tiny_chat import tiny_chat_model

C = 16


@pytest.fixture(scope="module")
def model():
    return tiny_chat_model(tokenizer="char", max_seq_len=64)


def _by_hand(model, ids, c, bos=None):
    """exp(mean NLL) over the scored tokens, from whole-chunk logits (model(x)) and F.cross_entropy."""
    nlls = []
    with torch.no_grad():
        for k in range(len(ids) // c):
            x = torch.tensor(ids[k * c:(k + 1) * c])[None]
            if bos is not None:
                x[0, 0] = bos
            logits = model(x)[0]  # (c, V)
            nlls.append(F.cross_entropy(logits[c // 2:-1].double(), x[0, c // 2 + 1:], reduction="none"))
    nll = torch.cat(nlls)
    return math.exp(nll.mean().item()), nll.numel()


@pytest.mark.parametrize("n, bos", [(2 * C, None), (5 * C + 7, None), (3 * C, 1)])
def test_equals_exp_mean_nll_by_hand(model, n, bos):
    ids = torch.randint(4, model.config.vocab_size, (n,), generator=torch.Generator().manual_seed(n)).tolist()
    got = perplexity(model, ids, C, bos_id=bos)
    want, scored = _by_hand(model, ids, C, bos)
    assert got.chunks == n // C and got.scored == scored == (n // C) * (C - C // 2 - 1)
    assert got.ppl == pytest.approx(want, rel=1e-9)
    assert got.nll == pytest.approx(math.log(want), rel=1e-9) and got.tokens == n


def test_the_remainder_and_the_first_half_are_not_scored(model):
    """Changing a token llama.cpp never scores (in a chunk's first half, or past the last whole chunk) moves
    only the context, never the count: the last chunk's remainder changes nothing at all."""
    ids = list(range(4, 4 + 2 * C + 5))
    a = perplexity(model, ids, C)
    b = perplexity(model, ids[:2 * C] + [50] * 5, C)
    assert a == b


def test_text_ids_says_whether_the_tokenizer_adds_a_bos(model):
    ids, bos = text_ids(model.tokenizer, "def f(x):\n    return x\n")
    assert bos is None and model.tokenizer.decode(ids) == "def f(x):\n    return x\n"
    with pytest.raises(ValueError, match="the text is empty"):
        text_ids(model.tokenizer, "")


@pytest.mark.parametrize("ids, context, match", [
    (list(range(4, 4 + 2 * C - 1)), C, f"is {2 * C - 1} tokens; perplexity with context={C} needs at least {2 * C}"),
    (list(range(4, 40)), 2, "context=2: give an integer of at least 4"),
    (list(range(4, 200)), 65, "context=65 is longer than the model's max_seq_len=64"),
    (list(range(4, 200)), (C, 0), "chunks=0: give a positive integer"),
    ([5] * 2 * C + [10 ** 6], C, "token 32 is id 1000000, outside the model's vocabulary"),
])
def test_bad_inputs_are_named(model, ids, context, match):
    context, chunks = context if isinstance(context, tuple) else (context, None)
    with pytest.raises(ValueError, match=match):
        perplexity(model, ids, context, chunks=chunks)


def test_chunks_scores_the_first_chunks_only(model):
    """llama-perplexity's --chunks: the first N chunks, the same number as the text cut after them."""
    ids = torch.randint(4, model.config.vocab_size, (5 * C,), generator=torch.Generator().manual_seed(1)).tolist()
    a, b = perplexity(model, ids, C, chunks=2), perplexity(model, ids[:2 * C], C)
    assert (a.ppl, a.nll, a.scored, a.chunks) == (b.ppl, b.nll, b.scored, 2)
    assert perplexity(model, ids, C, chunks=9).chunks == 5


@pytest.mark.parametrize("preset, match", [("bert-tiny", "perplexity needs a model that generates text"),
                                            ("t5-tiny", "perplexity needs a decoder-only language model")])
def test_a_model_that_is_not_a_causal_lm_is_refused(preset, match):
    other = genmodels.build_model(genmodels.preset(preset))
    with pytest.raises(ValueError, match=match):
        perplexity(other, [5] * 64, 16)


def _gz(path, records):
    with gzip.open(path, "wt", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
    return path


def test_humaneval_text_is_prompt_then_solution(tmp_path):
    path = _gz(tmp_path / "h.jsonl.gz", [{"prompt": "def f():\n", "canonical_solution": "    pass\n"},
                                         {"prompt": "def g():\n", "canonical_solution": "    return 1\n"}])
    assert humaneval_text(path) == "def f():\n    pass\n\n\ndef g():\n    return 1\n"


def test_humaneval_bad_files_are_named(tmp_path):
    with pytest.raises(ValueError, match="no such file"):
        humaneval_text(tmp_path / "none.gz")
    (tmp_path / "plain.gz").write_text("not gzip")
    with pytest.raises(ValueError, match="plain.gz: line 0: not HumanEval's gzip JSON lines"):
        humaneval_text(tmp_path / "plain.gz")
    path = _gz(tmp_path / "k.jsonl.gz", [{"prompt": "x"}])
    with pytest.raises(ValueError, match="line 1: not HumanEval's gzip JSON lines \\(KeyError"):
        humaneval_text(path)


def test_cli_scores_a_text_file_and_refuses_in_one_line(model, tmp_path, capsys):
    folder = tmp_path / "m"
    genmodels.save(model, folder, model.tokenizer)
    text = tmp_path / "t.txt"
    text.write_text("def add(a, b):\n    return a + b\n" * 3)
    assert main(["perplexity", str(folder), "--text-file", str(text), "--context", str(C), "--json",
                 "--save-text", str(tmp_path / "saved.txt")]) == 0
    got = json.loads(capsys.readouterr().out)
    ids, _ = text_ids(model.tokenizer, text.read_text())
    assert got["ppl"] == pytest.approx(_by_hand(model, ids, C)[0], rel=1e-6) and got["context"] == C
    assert (tmp_path / "saved.txt").read_text() == text.read_text()
    for argv, match in [(["--text-file", str(tmp_path / "none.txt")], "--text-file .*none.txt: no such file"),
                        (["--text-file", str(text), "--context", "0"], "--context 0: give at least 1"),
                        (["--text-file", str(text), "--humaneval"], "not allowed with argument"),
                        (["--humaneval", str(tmp_path / "none.gz")], "none.gz: no such file")]:
        try:
            code = main(["perplexity", str(folder), *argv])
        except SystemExit as e:  # argparse's usage errors
            code = e.code
        err = capsys.readouterr().err
        assert code == 2 and err.startswith("error:") and len(err.strip().splitlines()) == 1, err
        assert re.search(match, err), err
