"""Bad input never reaches a traceback: OpenAI's error body ``{"error": {message, type, param, code}}``
with 400/404 naming the field, 401 without the key; the ``openai`` client raises its own classes."""
from __future__ import annotations

import openai
import pytest

from genmodels.cli import main
from genmodels.serve import ServerThread, Service, build_app
from tests.serve import raw

CASES = [  # (path, body, status, param, words in the message)
    ("/v1/completions", {"prompt": "hi", "model": "gpt-4"}, 404, "model", "does not exist"),
    ("/v1/completions", {"prompt": "x" * 300}, 400, "prompt", "context"),
    ("/v1/completions", {"prompt": "hi", "max_tokens": 1000}, 400, "max_tokens", "at most"),
    ("/v1/completions", {"prompt": "hi", "max_tokens": 0}, 400, "max_tokens", ">= 1"),
    ("/v1/completions", {"prompt": "hi", "temperature": -1}, 400, "temperature", "[0, 2]"),
    ("/v1/completions", {"prompt": "hi", "temperature": "hot"}, 400, "temperature", "finite number"),
    ("/v1/completions", {"prompt": "hi", "top_p": 0}, 400, "top_p", "(0, 1]"),
    ("/v1/completions", {"prompt": "hi", "n": 0}, 400, "n", ">= 1"),
    ("/v1/completions", {"prompt": "hi", "n": 99}, 400, "n", "more than"),
    ("/v1/completions", {"prompt": "hi", "seed": -3}, 400, "seed", "2**64"),
    ("/v1/completions", {"prompt": "hi", "stop": [""]}, 400, "stop", "non-empty"),
    ("/v1/completions", {"prompt": "hi", "logprobs": 9}, 400, "logprobs", "[0, 5]"),
    ("/v1/completions", {"prompt": "hi", "stream": "yes"}, 400, "stream", "true or false"),
    ("/v1/completions", {"prompt": "hi", "frequency_penalty": 0.5}, 400, "frequency_penalty", "not supported"),
    ("/v1/completions", {"prompt": "hi", "temprature": 0}, 400, "temprature", "unknown field"),
    ("/v1/completions", {"prompt": [1, 2, 99999]}, 400, "prompt", "token id 99999"),
    ("/v1/completions", {"prompt": ""}, 400, "prompt", "no tokens"),
    ("/v1/completions", [1, 2], 400, None, "JSON object"),
    ("/v1/chat/completions", {"messages": []}, 400, "messages", "non-empty list"),
    ("/v1/chat/completions", {"messages": [{"content": "hi"}]}, 400, "messages[0].role", "role"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": 3}]}, 400, "messages[0].content", "string"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "top_logprobs": 2}, 400,
     "top_logprobs", "logprobs=true"),
    ("/v1/embeddings", {"input": "hi"}, 404, "model", "does not embed"),
    ("/v1/nothing", {}, 404, None, "no such path"),
]


@pytest.mark.parametrize("path,body,status,param,words", CASES, ids=[f"{c[0]}-{c[3]}-{c[2]}" for c in CASES])
def test_bad_requests_get_openais_error_body_naming_the_field(server, path, body, status, param, words):
    r = raw.post(server.url + path, body)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["param"] == param
    assert words in error["message"] and "Traceback" not in r.text


def test_malformed_json_and_wrong_methods(server):
    r = raw.post(server.url + "/v1/completions", raw=b'{"prompt": "hi",')
    assert r.status_code == 400 and "could not parse the JSON" in r.json()["error"]["message"]
    r = raw.get(server.url + "/v1/completions")
    assert r.status_code == 405 and r.json()["error"]["type"] == "invalid_request_error"


def test_the_openai_client_raises_its_own_errors(client):
    with pytest.raises(openai.NotFoundError) as e:
        client.completions.create(model="gpt-4", prompt="hi")
    assert e.value.body["code"] == "model_not_found"
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=10**6)
    assert e.value.body["param"] == "max_tokens" and e.value.body["code"] == "context_length_exceeded"


def test_with_an_api_key_every_request_without_it_gets_401(chat_model):
    service = Service(chat_model, "tiny", max_batch=2)
    with ServerThread(build_app(service, api_key="s3cret")) as s:
        for path in ("/health", "/v1/models"):
            assert raw.get(s.url + path).status_code == 401
            assert raw.get(s.url + path, headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert raw.post(s.url + "/v1/completions", {"prompt": "hi"}).json()["error"]["code"] == "invalid_api_key"
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=s.url + "/v1", api_key="wrong", max_retries=0).models.list()
        good = openai.OpenAI(base_url=s.url + "/v1", api_key="s3cret", max_retries=0)
        assert good.completions.create(model="tiny", prompt="hi", max_tokens=2).usage.completion_tokens >= 1
        assert raw.get(s.url + "/").status_code == 200  # the playground page itself (it asks for the key)


@pytest.mark.parametrize("flags,words", [(["--port", "70000"], "--port 70000 must be in [0, 65535]"),
                                         (["--max-batch", "0"], "--max-batch 0 must be an integer >= 1"),
                                         (["--api-key", " "], "--api-key is empty"),
                                         (["--threads", "0"], "--threads 0 must be an integer >= 1"),
                                         (["--quantized"], "--quantized keeps a GGUF file's blocks; nowhere is not")])
def test_serve_flags_are_refused_in_one_line(flags, words, capsys):
    assert main(["serve", "nowhere", *flags]) == 2
    err = capsys.readouterr().err
    assert err.strip() == f"error: {words}" or (err.count("\n") == 1 and words in err), err
