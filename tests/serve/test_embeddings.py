"""/v1/embeddings on a sentence encoder, through the ``openai`` client: the vectors of genmodels.embed."""
from __future__ import annotations

import openai
import pytest
import torch

import genmodels
from genmodels.serve import ServerThread, Service, build_app
from tests.serve import raw
from tests.serve.conftest import tiny_encoder


@pytest.fixture(scope="module")
def encoder_server():
    model = tiny_encoder()
    with ServerThread(build_app(Service(model, "mini"))) as s:
        s.model = model
        yield s


def test_embeddings_equal_genmodels_embed(encoder_server):
    texts = ["the cat sat", "hello", "a longer sentence about Paris"]
    want = genmodels.embed(encoder_server.model, texts)
    c = openai.OpenAI(base_url=encoder_server.url + "/v1", api_key="none", max_retries=0)
    for fmt in ("base64", "float"):  # the client asks for base64 unless told
        kw = {} if fmt == "base64" else {"encoding_format": "float"}
        r = c.embeddings.create(model="mini", input=texts, **kw)
        got = torch.tensor([d.embedding for d in sorted(r.data, key=lambda d: d.index)])
        torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    n = sum(len(encoder_server.model.tokenizer.encode(t).ids) for t in texts)
    assert r.usage.prompt_tokens == r.usage.total_tokens == n


def test_an_encoder_refuses_generation_and_bad_input_by_name(encoder_server):
    r = raw.post(encoder_server.url + "/v1/completions", {"prompt": "hi"})
    assert r.status_code == 404 and "does not generate text" in r.json()["error"]["message"]
    r = raw.post(encoder_server.url + "/v1/embeddings", {"input": ["ok", ""]})
    assert r.status_code == 400 and r.json()["error"]["param"] == "input"
    r = raw.post(encoder_server.url + "/v1/embeddings", {"input": "ok", "encoding_format": "int8"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "encoding_format"
