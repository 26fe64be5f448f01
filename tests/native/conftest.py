"""What the native-kernel tests share: every native-vs-PyTorch test runs on 1 and on 2 threads.

The kernels split rows, heads and weight blocks over an OpenMP team of ``torch.get_num_threads()`` threads
(read when a step is built or at each call), and a missing barrier or a block split that leaves one out is
invisible on one thread (test-audit-2026-12-07, M30: the RetNet step without its barrier gave wrong tokens
on every multi-core machine while every test pinned one thread). A test that compares a kernel with the
PyTorch path takes the ``threads`` fixture (tests/helpers/native.py; ``@pytest.mark.usefixtures("threads")`` or
an argument); the suite's default of one thread per worker is restored after it.
"""
from tests.helpers.native import threads  # noqa: F401  (the fixture, for every module here)
