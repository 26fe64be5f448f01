"""What every native-kernel test module shares: skipped only when the kernels are switched off on
purpose (GENMODELS_NATIVE=0); otherwise a build that fails (e.g. a C file that no longer compiles)
fails every test of the module with the compiler's error instead of turning them into silent skips.

    from tests.helpers.native import native_built, skip_if_disabled  # noqa: F401  (autouse fixture)
    skip_if_disabled()
"""
import pytest
import torch

from genmodels import native


def skip_if_disabled() -> None:
    if not native.enabled():
        pytest.skip("native kernels disabled on purpose (GENMODELS_NATIVE=0)", allow_module_level=True)


def require_native() -> None:
    """Inside a test that needs the kernels: skip only when switched off on purpose, fail otherwise."""
    if not native.enabled():
        pytest.skip("native kernels disabled on purpose (GENMODELS_NATIVE=0)")
    if native.library() is None:
        pytest.fail("native kernels did not build (set GENMODELS_NATIVE=0 to run without them): "
                    f"{native.unavailable_reason()}", pytrace=False)


@pytest.fixture(params=[1, 2], ids=["1thread", "2threads"])
def threads(request):
    """``torch.set_num_threads(n)`` for the test (n = 1, 2), the previous count restored after it: the kernels
    split their work over ``torch.get_num_threads()`` threads (tests/native/conftest.py says why)."""
    before = torch.get_num_threads()
    torch.set_num_threads(request.param)
    try:
        yield request.param
    finally:
        torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def native_built():
    if native.library() is None:  # the module was not skipped: the kernels must have built
        pytest.fail("native kernels did not build (set GENMODELS_NATIVE=0 to run without them): "
                    f"{native.unavailable_reason()}", pytrace=False)
