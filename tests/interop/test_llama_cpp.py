"""llama.cpp reads the GGUF files our writer produces (issue #26 d1): SmolLM2-135M-Instruct written by
``write_gguf`` in every ``--outtype`` is read by llama.cpp's own tools: ``llama-tokenize`` gives the same ids as
ours on a text with code, digits, whitespace and chat markers (the file's tokenizer metadata), and
``llama-completion`` decodes greedily the same text as genmodels on that file (quantised files:
``load(path, quantized=True)``, the native step on the blocks).

llama.cpp is a benchmark-only dependency: the Makefile does not build it, so in CI (and wherever
``GENMODELS_LLAMA_CPP`` is unset) these tests are skipped, saying so. To run them, build llama.cpp
(docs/quantization.md, "llama.cpp on our files") and point the variable at the folder holding its tools:
``GENMODELS_LLAMA_CPP=/path/to/llama.cpp/build/bin pytest tests/interop/test_llama_cpp.py``.

Greedy decoding is compared for ``N`` tokens as text (llama-completion prints text, not ids): the first of our
tokens whose text leaves llama.cpp's is the divergence. llama.cpp multiplies quantised weights with
int8-rounded activations (Q8_0/Q8_1 blocks) where genmodels here keeps fp32 activations (its batch-1 default is
int8 too, with its own rounding: forced to fp32 here, the path the margins are of), so a near-tie may break
differently: a divergence is accepted only after the first ``AGREE`` tokens and where our own top-2 logit
margin at that step is below ``TIE``; the result is in docs/quantization.md.
"""
from __future__ import annotations

import ast
import contextlib
import os
import subprocess
from pathlib import Path

import pytest
import torch

import genmodels
from genmodels.interop.gguf_write import write_gguf

LLAMA_CPP = os.environ.get("GENMODELS_LLAMA_CPP", "")
pytestmark = pytest.mark.skipif(not LLAMA_CPP, reason=(
    "llama.cpp is a benchmark-only dependency that the Makefile does not build (not in CI): set "
    "GENMODELS_LLAMA_CPP=<llama.cpp build>/bin to check our GGUF files with it (docs/quantization.md)"))

OUTTYPES = ("f32", "f16", "q8_0", "q4_0", "q4_1")
N, AGREE, TIE = 24, 8, 0.1
TEXT = "def f(x):\n    return x ** 2  # 12345\n\n\t<|im_start|>user\nÜber 中文 😀<|im_end|>"
QUESTION = "Write a Python function that checks whether a number is prime."


def tool(name: str, *args: str) -> str:
    """stdout of ``$GENMODELS_LLAMA_CPP/name args`` (one thread); a failure shows its stderr's end."""
    exe = Path(LLAMA_CPP) / name
    assert exe.is_file(), f"GENMODELS_LLAMA_CPP={LLAMA_CPP}: no {name} in that folder"
    r = subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, f"{name} exited {r.returncode}: {r.stderr[-3000:]}"
    return r.stdout


def llama_tokenize(path: Path, text_file: Path) -> list[int]:
    return ast.literal_eval(tool("llama-tokenize", "-m", str(path), "-f", str(text_file), "--ids",
                                 "--log-disable").strip().splitlines()[-1])


def llama_greedy(path: Path, prompt: str, n: int = N) -> str:
    """The text llama-completion generates greedily after ``prompt`` (given with -p: -f would drop its final
    newline; not shown), ``n`` tokens at most."""
    return tool("llama-completion", "-m", str(path), "-p", prompt, "-n", str(n), "--temp", "0",
                "--top-k", "1", "--seed", "0", "-no-cnv", "--no-display-prompt", "--no-warmup", "--simple-io",
                "-t", "1", "-c", "512")


def fp32_activations():
    """Our batch-1 quantised products on fp32 activations (GENMODELS_NATIVE_QDOT=fp32), as the docstring says."""
    from genmodels import native
    from genmodels.native import quant
    return quant.qdot_forced("fp32") if native.library() is not None else contextlib.nullcontext()


def ours(path: Path, outtype: str, prompt: list[int]) -> tuple[object, list[int], torch.Tensor]:
    """(model, our ``N`` greedy tokens on the file — no stop —, the logits before each (PyTorch forward))."""
    model = genmodels.load(path, quantized=outtype not in ("f32", "f16"))
    x = torch.tensor([prompt])
    with fp32_activations():  # the tokens of the logits below (the int8 default moves them: docs/quantization.md)
        out = genmodels.generate(model, x, max_new_tokens=N, eos_token_id=[])
    with torch.no_grad():
        logits = model(out[:, :-1])[0, len(prompt) - 1:]  # (N, V): the step that chose each new token
    return model, out[0, len(prompt):].tolist(), logits


def divergence(tokenizer, tokens: list[int], text: str, end: int) -> int | None:
    """The first of ``tokens`` whose decoded text is no longer a prefix of ``text`` (None: none is); our first
    ``end`` token agrees where llama.cpp stopped there (it prints no text for it), and ends the comparison."""
    for i, t in enumerate(tokens):
        if t == end:
            return None if tokenizer.decode(tokens[:i], skip_special_tokens=True) == text else i
        if not text.startswith(tokenizer.decode(tokens[:i + 1], skip_special_tokens=True)):
            return i
    return None


@pytest.mark.parametrize("outtype", OUTTYPES)
def test_llama_cpp_reads_our_file_and_decodes_our_greedy_tokens(smollm2, outtype, tmp_path):
    path = write_gguf(smollm2, tmp_path / f"smollm2-{outtype}.gguf", outtype)  # one file per test (-k picks)
    model, tokens, logits = check(path, outtype, tmp_path)
    theirs = (tmp_path / "theirs.txt").read_text(encoding="utf-8")
    first = divergence(model.tokenizer, tokens, theirs, model.config.eos_token_id)
    if first is not None:
        top2 = logits[first].topk(2).values
        margin = float(top2[0] - top2[1])
        assert first >= AGREE and margin < TIE, (
            f"{outtype}: llama.cpp's greedy text leaves ours at token {first} ({tokens[first]}) where our "
            f"top-2 margin is {margin:.4f}")


def check(path: Path, outtype: str, folder: Path):
    """The tokenizer ids equal; (model, our greedy tokens, their logits), llama.cpp's text in ``folder/theirs.txt``."""
    (folder / "text.txt").write_text(TEXT, encoding="utf-8")
    plain = genmodels.load(path)  # the file's tokenizer and chat template
    assert llama_tokenize(path, folder / "text.txt") == plain.tokenizer.encode(TEXT).ids
    prompt_text = genmodels.apply_chat_template(plain, [{"role": "user", "content": QUESTION}])
    prompt = plain.tokenizer.encode(prompt_text).ids
    del plain
    model, tokens, logits = ours(path, outtype, prompt)
    (folder / "theirs.txt").write_text(llama_greedy(path, prompt_text), encoding="utf-8")
    return model, tokens, logits
