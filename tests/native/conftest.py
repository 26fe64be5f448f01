"""What the native-kernel tests share: every native-vs-PyTorch test runs on 1 and on 2 threads.

The kernels split rows, heads and weight blocks over an OpenMP team of ``torch.get_num_threads()`` threads
(read when a step is built or at each call), and a missing barrier or a block split that leaves one out is
invisible on one thread (test-audit-2026-12-07, M30: the RetNet step without its barrier gave wrong tokens
on every multi-core machine while every test pinned one thread). A test that compares a kernel with the
PyTorch path takes the ``threads`` fixture (``@pytest.mark.usefixtures("threads")`` or an argument); the
suite's default of one thread per worker is restored after it.
"""
import pytest
import torch


@pytest.fixture(params=[1, 2], ids=["1thread", "2threads"])
def threads(request):
    """``torch.set_num_threads(n)`` for the test (n = 1, 2), the previous count restored after it."""
    before = torch.get_num_threads()
    torch.set_num_threads(request.param)
    try:
        yield request.param
    finally:
        torch.set_num_threads(before)

