"""Reference libraries are required where ``GENMODELS_REQUIRE_REFERENCES=1`` (``.ci/run`` sets it).

The comparisons with transformers, diffusers, torchscale and sentence-transformers are what "correct by
comparison" rests on, and they skip on a developer's machine that lacks one of these libraries
(``pytest.importorskip``; :func:`tests.helpers.torchscale.require_torchscale`). A skip shows only as a count,
so a CI image that lost a library would go green without them. With the variable set, a test or a module
skipped because a library could not be imported FAILS instead, naming the library and the variable. Other
skips (the native kernels switched off on purpose, a CPU without AVX2) are not affected.

tests/conftest.py takes the two hooks below; ``pytest -p tests.helpers.references`` loads them elsewhere.
"""
from __future__ import annotations

import os

import pytest

VARIABLE = "GENMODELS_REQUIRE_REFERENCES"
MISSING = ("could not import", "is not installed")  # pytest.importorskip's reason; require_torchscale's


def references_required() -> bool:
    """True where ``GENMODELS_REQUIRE_REFERENCES`` is set to anything but "", 0, false, no or off."""
    return os.environ.get(VARIABLE, "").strip().lower() not in ("", "0", "false", "no", "off")


def _skip_reason(report) -> str:
    longrepr = report.longrepr  # a skip's is (path, line, "Skipped: <reason>")
    return str(longrepr[2] if isinstance(longrepr, tuple) and len(longrepr) == 3 else longrepr)


def fail_missing_reference(report) -> None:
    """Turn ``report`` (a test's or a module's) from a skip for a missing library into a failure."""
    if not (report.skipped and references_required()):
        return
    reason = _skip_reason(report)
    if any(m in reason for m in MISSING):
        report.outcome = "failed"
        report.longrepr = (f"{reason}\n{VARIABLE}=1: a reference library that cannot be imported fails the "
                           "tests that compare with it (`make setup` installs them all)")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    fail_missing_reference(outcome.get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    outcome = yield
    fail_missing_reference(outcome.get_result())
