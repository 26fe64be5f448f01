"""Servers on free localhost ports for the serve tests: a tiny random chat model (one token per ASCII
character, so every reply decodes and compares exactly) and a tiny MiniLM-shaped encoder."""
from __future__ import annotations

import pytest

pytest.importorskip("starlette", reason="the serve extra (starlette, uvicorn) is part of the test extra")


def tiny_encoder(seed: int = 0):
    """A random 2-layer MiniLM-shaped encoder over the char tokenizer, mean-pooled and normalised."""
    import genmodels

    from tests.helpers.tiny import randomise
    from tests.helpers.tiny_chat import char_tokenizer
    from tokenizers import Tokenizer
    tok = Tokenizer.from_str(char_tokenizer().to_str())  # its own copy: embed() sets truncation on its tokenizer
    cfg = genmodels.preset("minilm-l6", vocab_size=tok.get_vocab_size(), d_model=32, n_layers=2, n_heads=2, d_ff=64,
                           max_seq_len=64)
    model = randomise(genmodels.build_model(cfg), seed=seed).eval()
    model.config.extra["sentence_transformers"] = {"pooling": "mean", "normalize": True}
    model.tokenizer = tok
    return model


@pytest.fixture(scope="module")
def chat_model():
    from tests.helpers.tiny_chat import tiny_chat_model
    return tiny_chat_model(tokenizer="char")


@pytest.fixture(scope="module")
def server(chat_model):
    """The chat model served with --max-batch 8 (the engine: ``server.service.engine``)."""
    from genmodels.serve import ServerThread, Service, build_app
    service = Service(chat_model, "tiny", max_batch=8)
    with ServerThread(build_app(service)) as s:
        s.service = service
        yield s


@pytest.fixture(scope="module")
def client(server):
    import openai
    return openai.OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0, timeout=60)
