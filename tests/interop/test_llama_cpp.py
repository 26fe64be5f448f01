"""llama.cpp reads the GGUF files our writer produces (issue #26 d1): SmolLM2-135M-Instruct written by
``write_gguf`` in every ``--outtype`` is served by llama.cpp's own ``llama-server``, which tokenizes a text
with code, digits, whitespace and chat markers to the same ids as ours (the file's tokenizer metadata) and
decodes the same greedy tokens as genmodels on that file (quantised files: ``load(path, quantized=True)``,
the native step on the blocks).

llama.cpp is a benchmark-only dependency: the Makefile does not build it, so in CI (and wherever
``GENMODELS_LLAMA_CPP`` is unset) these tests are skipped, saying so. To run them, build llama.cpp
(docs/quantization.md, "llama.cpp on our files") and point the variable at the folder holding
``llama-server``:  ``GENMODELS_LLAMA_CPP=/path/to/llama.cpp/build/bin pytest tests/interop/test_llama_cpp.py``.

Greedy tokens are compared for ``N`` steps; llama.cpp multiplies quantised weights with int8-rounded
activations (Q8_0/Q8_1 blocks) where genmodels keeps fp32 activations, so a near-tie may break differently:
a divergence is accepted only where our own top-2 logit margin at that step is below ``TIE`` (and the
first ``AGREE`` tokens must match in any case); the result is in docs/quantization.md.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import time
import urllib.request
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


def _post(port: int, route: str, body: dict) -> dict:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{route}", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=300) as r:
        return json.loads(r.read())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``llama-server -m path`` on a free local port, one slot, one thread; stopped on exit."""

    def __init__(self, path: Path):
        exe = Path(LLAMA_CPP) / "llama-server"
        assert exe.is_file(), f"GENMODELS_LLAMA_CPP={LLAMA_CPP}: no llama-server in that folder"
        self.port = _free_port()
        self.proc = subprocess.Popen([str(exe), "-m", str(path), "--host", "127.0.0.1", "--port", str(self.port),
                                      "-t", "1", "-c", "512", "-np", "1"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    def __enter__(self) -> "Server":
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"llama-server exited {self.proc.returncode}: {self.proc.stderr.read()[-3000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=5) as r:
                    if r.status == 200:
                        return self
            except OSError:
                time.sleep(0.5)
        raise AssertionError("llama-server did not become healthy in 300 s")

    def __exit__(self, *exc) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


@pytest.fixture(scope="module")
def written(smollm2, tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("llama_cpp")
    return {t: write_gguf(smollm2, folder / f"smollm2-{t}.gguf", t) for t in OUTTYPES}


def _ours(path: Path, outtype: str, prompt: list[int]) -> tuple[list[int], torch.Tensor]:
    """Our greedy tokens on the file and the logits before each of them (PyTorch forward, for the margins)."""
    model = genmodels.load(path, quantized=outtype not in ("f32", "f16"))
    x = torch.tensor([prompt])
    out = genmodels.generate(model, x, max_new_tokens=N, eos_token_id=[])
    with torch.no_grad():
        logits = model(out[:, :-1])[0, len(prompt) - 1:]  # (N, V): the step that chose each new token
    return out[0, len(prompt):].tolist(), logits


@pytest.mark.parametrize("outtype", OUTTYPES)
def test_llama_cpp_reads_our_file_and_decodes_our_greedy_tokens(written, outtype):
    path = written[outtype]
    model = genmodels.load(path)
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    prompt = model.tokenizer.encode(genmodels.apply_chat_template(model, messages)).ids
    ours, logits = _ours(path, outtype, prompt)
    with Server(path) as s:
        assert _post(s.port, "/tokenize", {"content": TEXT})["tokens"] == model.tokenizer.encode(TEXT).ids
        reply = _post(s.port, "/completion", {"prompt": prompt, "n_predict": N, "temperature": 0, "top_k": 1,
                                              "cache_prompt": False, "return_tokens": True, "ignore_eos": True})
    theirs = reply["tokens"]
    assert len(theirs) == N, reply
    first = next((i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b), None)
    if first is not None:
        top2 = logits[first].topk(2).values
        margin = float(top2[0] - top2[1])
        assert first >= AGREE and margin < TIE, (
            f"{outtype}: llama.cpp's greedy tokens leave ours at step {first} (ours {ours[first]}, llama.cpp "
            f"{theirs[first]}) where our top-2 margin is {margin:.4f}")
