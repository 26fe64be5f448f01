"""genmodels.native.prefill's memo: the support reason and the model struct are built once per model as it is
(and batch, thread) and rebuilt when the model changes — a weight's storage, a module, a plain attribute
(an eps), a wrapper on the instance, the thread count — so a kept struct never computes a stale model."""
from __future__ import annotations

import copy

import pytest
import torch

from genmodels.native import prefill as native_prefill
from genmodels.native.decoder import FusedDecodeStep

from tests.helpers.native import native_built, skip_if_disabled  # noqa: F401  (autouse fixture)
from tests.helpers.tiny import random_ids, tiny_model

skip_if_disabled()

TOL = dict(atol=1e-5, rtol=1e-5)


class Counted(FusedDecodeStep):
    built = 0

    def __init__(self, *a, **k):
        type(self).built += 1
        super().__init__(*a, **k)


def both(model, ids):
    """(native fp32 prefill's logits, the PyTorch path's) of ``ids`` into fresh caches."""
    b, t = ids.shape
    with torch.inference_mode():
        got = native_prefill.prefill(model, model.new_cache(b, t), ids, bf16=False)
        want = model.head(model.hidden_states(ids, cache=model.new_cache(b, t))[:, -1])
    return got, want


def test_struct_built_once_and_each_call_gets_its_own_logits(monkeypatch):
    monkeypatch.setattr(native_prefill, "FusedDecodeStep", Counted)
    Counted.built = 0
    model, ids = tiny_model("llama"), random_ids(2, 12)
    first, want = both(model, ids)
    kept = first.clone()
    second, _ = both(model, random_ids(2, 9))
    assert Counted.built == 1
    assert second is not first and torch.equal(first, kept)  # the second call did not write into the first's
    torch.testing.assert_close(first, want, **TOL)
    both(model, random_ids(1, 12))  # another batch: its own struct
    assert Counted.built == 2


def _edit(model, edit: str) -> None:
    blocks = model.decoder_view()[0]
    g = torch.Generator().manual_seed(1)
    if edit == "data":  # new storage under the same Parameter (a reload, .data = …): same id, new pointer
        w = blocks[0].attn.qkv.weight
        w.data = torch.randn(w.shape, generator=g) * 0.2
    elif edit == "module":  # a module replaced by another of the same kind and shapes
        new = copy.deepcopy(blocks[1].mlp)
        with torch.no_grad():
            for p in new.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)
        blocks[1].mlp = new
    elif edit == "eps":  # a plain attribute the struct reads
        for blk in blocks:
            blk.norm1.eps = blk.norm2.eps = 0.5
        model.decoder_view()[1].eps = 0.5


@pytest.mark.parametrize("edit", ["data", "module", "eps"])
def test_a_changed_model_is_prefilled_as_it_is_now(edit):
    model, ids = tiny_model("llama"), random_ids(2, 12)
    before, _ = both(model, ids)
    _edit(model, edit)
    got, want = both(model, ids)
    torch.testing.assert_close(got, want, **TOL)
    assert not torch.allclose(got, before)


def test_a_wrapper_set_after_a_prefill_is_refused():
    model = tiny_model("llama")
    assert native_prefill.unsupported(model) is None
    model.hidden_states = model.hidden_states
    assert "replaced on this instance" in native_prefill.unsupported(model)


def test_thread_count_rebuilds_the_struct(monkeypatch):
    monkeypatch.setattr(native_prefill, "FusedDecodeStep", Counted)
    Counted.built = 0
    model, ids = tiny_model("llama"), random_ids(1, 12)
    n = torch.get_num_threads()
    try:
        both(model, ids)
        torch.set_num_threads(2 if n != 2 else 1)
        got, want = both(model, ids)
    finally:
        torch.set_num_threads(n)
    assert Counted.built == 2
    torch.testing.assert_close(got, want, **TOL)


def test_switching_the_kernels_off_is_seen(monkeypatch):
    model = tiny_model("llama")
    assert native_prefill.unsupported(model) is None
    assert native_prefill.remembered(model, "step", lambda m: "checked") == "checked"
    assert native_prefill.remembered(model, "step", lambda m: "again") == "checked"  # kept
    monkeypatch.setenv("GENMODELS_NATIVE", "0")
    assert "GENMODELS_NATIVE=0" in native_prefill.unsupported(model)
    assert native_prefill.remembered(model, "step", lambda m: "again") == "again"
