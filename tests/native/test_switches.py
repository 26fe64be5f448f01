"""The native layer's environment switches (native/switches.py): a mistyped value is refused in one line naming
the switch and what it takes — never a silent fallback to another path, not even through the ``never_raises``
model checks — and the C side's own reading of GENMODELS_NATIVE_QDOT agrees with Python's (case, spaces)."""
import pytest

from genmodels import native
from genmodels.native import decoder, quant
from genmodels.native.switches import SWITCHES, SwitchError
from tests.helpers.tiny import tiny_model


@pytest.mark.parametrize("name", sorted(SWITCHES))
def test_a_mistyped_switch_is_refused_naming_what_it_takes(name, monkeypatch):
    monkeypatch.setenv(name, "bfl6x")
    allowed = ", ".join(SWITCHES[name])
    with pytest.raises(SwitchError, match=rf"^{name}='bfl6x': allowed are {allowed} \(unset: {SWITCHES[name][0]}\)$"):
        native.library()


def test_the_model_checks_let_a_mistyped_switch_through(monkeypatch):
    """decoder.unsupported turns any exception into a reason (and the PyTorch path runs): not this one."""
    model = tiny_model("llama")
    assert decoder.unsupported(model) is None
    monkeypatch.setenv("GENMODELS_NATIVE_PREFILL", "bfl6")
    with pytest.raises(SwitchError, match="GENMODELS_NATIVE_PREFILL='bfl6'"):
        decoder.unsupported(model)


@pytest.mark.parametrize("value", [" FP32 ", "Fp32\n", "AVX2", " avx2\t", "INT8", ""])
def test_the_c_side_reads_the_qdot_switch_as_python_does(value, monkeypatch):
    lib = native.library()
    before = quant.qdot_mode(lib=lib)
    try:
        monkeypatch.setenv("GENMODELS_NATIVE_QDOT", value)
        word = native.switch("GENMODELS_NATIVE_QDOT")
        with quant.qdot_forced("vnni", lib=lib) as best:  # the best this build has
            pass
        want = {"fp32": "fp32", "avx2": min("avx2", best, key=list(quant.QDOT_MODES).index), "int8": best}[word]
        assert quant.qdot_mode("env", lib=lib) == want
    finally:
        quant.qdot_mode(before, lib=lib)
