"""CI cannot go green without the reference comparisons: ``.ci/run`` sets GENMODELS_REQUIRE_REFERENCES=1, under
which a test or a module skipped because a library cannot be imported fails (tests/helpers/references.py).

A small pytest run in a subprocess: a module that imports a missing library at the top, a test that imports one
inside, a torchscale-style "is not installed" skip, and a skip for another reason (which stays a skip).
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
CASES = {
    "test_module_level.py": "import pytest\nlib = pytest.importorskip('genmodels_no_such_reference')\n\n\n"
                            "def test_compares():\n    assert lib\n",
    "test_in_a_test.py": "import pytest\n\n\ndef test_compares():\n"
                         "    pytest.importorskip('genmodels_no_such_reference.sub')\n\n\n"
                         "def test_helper_skip():\n"
                         "    pytest.skip('torchscale 0.3.0 is not installed (pip install ...)')\n\n\n"
                         "def test_other_reason():\n    pytest.skip('CPU capability DEFAULT: no AVX2 to build for')\n",
}


def _run(tmp_path: Path, required: str | None) -> subprocess.CompletedProcess:
    for name, text in CASES.items():
        (tmp_path / name).write_text(text)
    env = {k: v for k, v in os.environ.items() if k not in ("GENMODELS_REQUIRE_REFERENCES", "PYTEST_ADDOPTS")}
    env["PYTHONPATH"] = str(ROOT)
    if required is not None:
        env["GENMODELS_REQUIRE_REFERENCES"] = required
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "tests.helpers.references", "-p", "no:cacheprovider",
                           "-q", "-rs", "--continue-on-collection-errors", "--rootdir", str(tmp_path), str(tmp_path)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("required", [None, "0"])
def test_without_it_a_missing_library_skips(tmp_path, required):
    r = _run(tmp_path, required)
    assert r.returncode == 0, r.stdout[-3000:]
    assert "4 skipped" in r.stdout and "failed" not in r.stdout and "error" not in r.stdout


def test_with_it_a_missing_library_fails_and_other_skips_stay(tmp_path):
    r = _run(tmp_path, "1")
    assert r.returncode == 1, r.stdout[-3000:]
    out = r.stdout
    assert "2 failed" in out and "1 skipped" in out and "1 error" in out, out[-3000:]  # the module: a collection error
    assert "GENMODELS_REQUIRE_REFERENCES=1: a reference library that cannot be imported fails" in out
    assert "no AVX2 to build for" in out  # the other reason is still a skip


def test_the_suite_takes_the_hooks(request):
    from tests.helpers import references
    hook = request.config.pluginmanager.hook
    for name in ("pytest_runtest_makereport", "pytest_make_collect_report"):
        assert getattr(references, name) in [impl.function for impl in getattr(hook, name).get_hookimpls()], name


def test_ci_sets_it():
    ci = (ROOT / ".ci" / "run").read_text()
    assert "export GENMODELS_REQUIRE_REFERENCES=1" in ci
    assert ci.index("export GENMODELS_REQUIRE_REFERENCES=1") < ci.index("make test")
