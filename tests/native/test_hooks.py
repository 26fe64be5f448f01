"""A forward hook is never skipped: the native kernels compute the blocks without calling any module, so a model
with a forward (pre-)hook — an activation probe, a steering edit — runs the PyTorch path, which calls it
(native/layout.py ``hooked``), also when the hook is added after the native path has been used (the kept support
check's fingerprint counts hooks)."""
import torch

import genmodels
from genmodels.native import decoder, encoder, step
from genmodels.native.encoder import native_encoder
from tests.helpers.tiny import random_ids, randomise, tiny_model


def _mlp(model):
    return model.decoder_view()[0][0].mlp


def test_generate_calls_a_hook_added_after_native_decoding(monkeypatch):
    monkeypatch.delenv("GENMODELS_NATIVE_PREFILL", raising=False)
    model, ids = tiny_model("llama"), random_ids(1, 12)
    plain = genmodels.generate(model, ids, max_new_tokens=4)  # native prefill and step, their checks kept
    assert step.unsupported(model) is None
    calls = []
    handle = _mlp(model).register_forward_hook(lambda m, inp, out: calls.append(out.shape))
    try:
        hooked = genmodels.generate(model, ids, max_new_tokens=4)
        assert len(calls) >= 4  # the prefill and every decode step went through the module
        assert torch.equal(hooked, plain)  # a hook that returns nothing changes nothing
        assert "has a forward hook" in decoder.unsupported(model)
    finally:
        handle.remove()
    assert decoder.unsupported(model) is None


def test_a_steering_hook_changes_what_generate_returns():
    model, ids = tiny_model("llama"), random_ids(1, 12)
    plain = genmodels.generate(model, ids, max_new_tokens=6)
    handle = _mlp(model).register_forward_hook(lambda m, inp, out: out * 0 + 3.0)
    try:
        steered = genmodels.generate(model, ids, max_new_tokens=6)
    finally:
        handle.remove()
    assert not torch.equal(steered, plain)


def test_a_global_hook_is_named():
    model = tiny_model("llama")
    handle = torch.nn.modules.module.register_module_forward_pre_hook(lambda m, args: None)
    try:
        assert decoder.unsupported(model) == "a global forward hook is registered (the native kernels would not call it)"
    finally:
        handle.remove()


def test_the_native_encoder_steps_aside_for_a_hook():
    model = randomise(genmodels.build_model(genmodels.preset("bert-tiny")), seed=0).eval()
    assert native_encoder(model) is not None
    handle = list(model.transformer_blocks())[0].register_forward_pre_hook(lambda m, args: None)
    try:
        assert native_encoder(model) is None and "forward hook" in encoder.unsupported(model)
    finally:
        handle.remove()


def test_the_kept_support_check_sees_a_hook_added_later():
    """DecodeSession keeps the native step's and prefill's support checks while the model is unchanged
    (native_prefill.remembered): a hook added meanwhile is a change."""
    from genmodels.native import prefill as native_prefill
    model, ids = tiny_model("llama"), random_ids(1, 12)
    cache = model.new_cache(1, 32)
    assert native_prefill.prefill_if_supported(model, cache, ids) is not None
    assert native_prefill.remembered(model, "step", step.unsupported) is None
    handle = _mlp(model).register_forward_hook(lambda m, inp, out: None)
    try:
        assert native_prefill.prefill_if_supported(model, model.new_cache(1, 32), ids) is None
        assert "forward hook" in native_prefill.remembered(model, "step", step.unsupported)
    finally:
        handle.remove()
