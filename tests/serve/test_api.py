"""The server through the official ``openai`` client: completions, streaming chat, logprobs, seeds, stop
strings and n, each equal to what the library gives on the same prompt alone."""
from __future__ import annotations

import torch

import genmodels
from tests.helpers.serve_load import alone

PROMPTS = ["Hello", "Once upon", "The cat sat", "abc"]


def test_models_lists_the_served_model(client):
    (m,) = client.models.list().data
    assert m.id == "tiny" and m.owned_by == "genmodels"


def test_greedy_completions_equal_generate_alone(client, chat_model):
    expected = alone(chat_model, PROMPTS, 12)
    for prompt, want in zip(PROMPTS, expected):
        r = client.completions.create(model="tiny", prompt=prompt, max_tokens=12, temperature=0)
        assert r.choices[0].text == want
        n_prompt = len(chat_model.tokenizer.encode(prompt).ids)
        assert (r.usage.prompt_tokens, r.usage.total_tokens) == (n_prompt, n_prompt + r.usage.completion_tokens)
        assert r.choices[0].finish_reason == ("length" if r.usage.completion_tokens == 12 else "stop")


def test_a_seeded_sample_equals_generate_with_that_seed(client, chat_model):
    ids = torch.tensor([chat_model.tokenizer.encode("Hello").ids])
    out = genmodels.generate(chat_model, ids, 10, temperature=0.9, top_p=0.95, seed=7, eos_token_id=[])
    want = chat_model.tokenizer.decode(out[0, ids.shape[1]:].tolist())
    got = [client.completions.create(model="tiny", prompt="Hello", max_tokens=10, temperature=0.9, top_p=0.95,
                                     seed=7).choices[0].text for _ in range(2)]
    assert got[0] == got[1]
    if 2 not in out[0, ids.shape[1]:].tolist():  # no end token within the 10 (seed 7: none)
        assert got[0] == want


def test_streamed_chat_equals_genmodels_chat(client, chat_model):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2+2?"}]
    want = genmodels.chat(chat_model, messages, max_new_tokens=20, temperature=0)
    stream = client.chat.completions.create(model="tiny", messages=messages, max_tokens=20, temperature=0,
                                            stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == want
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finish == ["length" if chunks[-1].usage.completion_tokens == 20 else "stop"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens >= 1
    whole = client.chat.completions.create(model="tiny", messages=messages, max_tokens=20, temperature=0)
    assert whole.choices[0].message.content == want and whole.choices[0].message.role == "assistant"


def test_stop_strings_cut_the_text_as_generate_does(client, chat_model):
    full = alone(chat_model, ["The cat"], 30)[0]
    stop = full[10:12]
    r = client.completions.create(model="tiny", prompt="The cat", max_tokens=30, temperature=0, stop=[stop])
    assert r.choices[0].text == full[:full.index(stop)] and r.choices[0].finish_reason == "stop"


def test_n_choices_and_token_logprobs(client, chat_model):
    r = client.completions.create(model="tiny", prompt="Hello", max_tokens=5, temperature=0, n=2, logprobs=3)
    assert [c.index for c in r.choices] == [0, 1] and r.choices[0].text == r.choices[1].text
    lp = r.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == r.usage.completion_tokens // 2
    ids = torch.tensor([chat_model.tokenizer.encode("Hello").ids])
    with torch.no_grad():
        first = torch.log_softmax(chat_model(ids)[0, -1].float(), -1)  # the first token's distribution
    token = int(first.argmax())
    assert abs(lp.token_logprobs[0] - float(first[token])) < 1e-4
    assert len(lp.top_logprobs[0]) == 3 and max(lp.top_logprobs[0].values()) == lp.token_logprobs[0]
    chat = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=3,
                                          temperature=0, logprobs=True, top_logprobs=2)
    content = chat.choices[0].logprobs.content
    assert len(content) == chat.usage.completion_tokens and len(content[0].top_logprobs) == 2
