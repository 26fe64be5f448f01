"""DPMSolverMultistepScheduler against diffusers at the step counts around ``lower_order_final``'s boundary.

diffusers lowers the order of the last two steps only when N < 15. With the default order 2 and final σ 0 the
rule changes nothing (the last step is first order anyway), so only ``solver_order=3`` or
``final_sigmas_type="sigma_min"`` can see it, and only at N = 15 itself: a rule of N <= 15 passed every other
test (test-audit-2026-12-07, M02: up to 0.155 off at N = 15, exact at 14 and 16).
"""
import pytest

from .common import assert_steps_equal, make_pair

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # diffusers' own


@pytest.mark.parametrize("options", [dict(solver_order=3), dict(final_sigmas_type="sigma_min"),
                                     dict(solver_order=3, final_sigmas_type="sigma_min")],
                         ids=["order3", "sigma_min", "order3-sigma_min"])
@pytest.mark.parametrize("n", [14, 15, 16])
def test_steps_equal_diffusers_around_lower_order_final(options, n):
    ours, theirs = make_pair("dpm", **options)
    assert_steps_equal(ours, theirs, n)
