"""Suite-wide settings: one intra-op thread per worker (the suite runs with ``-n 2``), offline HF,
and a private token cache per session.

OpenMP threads wait passively (``OMP_WAIT_POLICY=PASSIVE``, read when torch loads libgomp, so set before
``import torch``): the tests that run kernels on 2 threads (tests/native/conftest.py) share the machine's
cores with the other worker, and a spinning team whose partner is descheduled turned each barrier into
a scheduler time slice (tests/native/test_retnet_native.py with its 2-thread cases: 146 s spinning, 14 s
passive, at a load of 9-12 on 2 cores). The results are the same either way; only the waiting differs."""
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest  # noqa: E402
import torch  # noqa: E402

# GENMODELS_REQUIRE_REFERENCES=1 (.ci/run): a test skipped for a missing reference library fails
from tests.helpers.references import pytest_make_collect_report, pytest_runtest_makereport  # noqa: E402,F401
# the real chat model (SmolLM2-135M-Instruct's GGUF), loaded once per session for every test file that asks
from tests.helpers.smollm2 import smollm2, smollm2_reference  # noqa: E402,F401

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
