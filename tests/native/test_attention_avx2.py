"""The 8-lane (AVX2) build of the native attention kernel, compiled and tested on AVX-512 machines too.

The library is built with ``-march=native``, so an AVX-512 CPU compiles only the 16-lane variant of
csrc/attention.c (``VW 16``, ``SWEEP 16``) and a bug confined to the 8-lane code, which every AVX2-only user
runs, would pass there (test-audit-2026-12-07, "the 8-lane attention kernel is never built on this machine
kind"). Here the kernels are built once more with ``CC … -mno-avx512f`` (the build's own path: the CC command
is part of the cache key, so the library is cached beside the default one and built once per machine), and
the accuracy tests of test_attention_native.py run again with the attention kernel reading that library.
On a CPU without AVX-512 the default build already is the 8-lane one, which test_attention_native.py tests.
"""
from __future__ import annotations

import os
import shlex

import pytest

from genmodels import native

from tests.helpers.native import native_built, skip_if_disabled  # noqa: F401  (autouse fixture)
# collected again here, each run on the 8-lane build (the autouse fixture below)
from tests.native.test_attention_native import (  # noqa: F401
    test_a_nan_spreads_as_in_pytorch_never_hidden, test_equals_pytorchs_fused_kernel_on_separate_non_contiguous_inputs,
    test_large_logits_do_not_overflow, test_rows_of_very_negative_scores_give_finite_exact_gradients,
    test_spatial_attention_native_equals_sdpa_values_and_gradients, test_threads_split_the_work_without_changing_it,
    test_values_and_gradients_are_as_accurate_as_pytorchs_kernel, test_weights_far_below_the_row_maximum_are_zero,
)

skip_if_disabled()


@pytest.fixture(scope="module")
def eight_lanes():
    """The kernels built with AVX-512 switched off: 8 lanes, AVX2 + FMA (the fast build of AVX2-only CPUs)."""
    if native.library().gm_attention_lanes() != 16:
        pytest.skip("the default build is already the 8-lane one (no AVX-512): test_attention_native.py tests it")
    lib = native._bind(native._load([*shlex.split(os.environ.get("CC") or "cc"), "-mno-avx512f"]))
    assert (lib.gm_attention_lanes(), lib.gm_attention_fast()) == (8, 1)
    return lib


@pytest.fixture(autouse=True)
def _attention_on_eight_lanes(eight_lanes, monkeypatch):
    monkeypatch.setattr("genmodels.native.attention.library", lambda: eight_lanes)


def test_the_kernel_runs_on_eight_lanes():
    from genmodels.native import attention
    assert attention.library().gm_attention_lanes() == 8 and native.library().gm_attention_lanes() == 16
