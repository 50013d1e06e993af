"""The engine's horizon DPs are exact: HiGHS, solving the same problems as MILPs, finds no
better plan.

``dispatch.policies`` solves each unit's horizon problem (a miner fleet with minimum on/off
times, a pausable GPU class with a pause cost and a minimum pause) by dynamic programming
rather than a generic LP/MILP (its module docstring says why). Here every random instance also
goes to HiGHS (``highspy``) as a MILP with the same horizon and truncation: the DP's decision
for the first interval must belong to an optimal plan, i.e. the MILP with interval 0 fixed to
the DP's choice reaches the free MILP's optimum.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dispatch.policies import fleet_on_dp, pause_dp

highspy = pytest.importorskip("highspy")

H = 0.25  # hours per interval
#: margins in $/h of one unit: ordinary three times in four, else a price spike (large negative)
_ordinary = st.floats(-40, 40, allow_nan=False)
margins_st = st.lists(st.one_of(_ordinary, _ordinary, _ordinary, st.floats(-3000, -100, allow_nan=False)),
                      min_size=1, max_size=16)


def _solver():
    h = highspy.Highs()
    h.silent()
    return h


def _fleet_milp(margins: list[float], on_now: bool, held: int, hold_on: int, hold_off: int,
                first: bool | None) -> float:
    """Best value of the fleet's on/off plan over the horizon (``first``: interval 0 fixed)."""
    n = len(margins)
    h = _solver()
    x = h.addBinaries(n)      # on in interval k
    up = h.addBinaries(n)     # started at k
    down = h.addBinaries(n)   # stopped at k
    prev = 1.0 if on_now else 0.0
    for k in range(n):
        h.addConstr(x[k] - (x[k - 1] if k else prev) == up[k] - down[k])
        for j in range(k, min(k + hold_on, n)):
            h.addConstr(x[j] >= up[k])
        for j in range(k, min(k + hold_off, n)):
            h.addConstr(x[j] <= 1 - down[k])
    # the hold in force at interval 0: `held` intervals in the current state so far
    for j in range(min(max((hold_on if on_now else hold_off) - held, 0), n)):
        h.addConstr(x[j] == prev)
    if first is not None:
        h.addConstr(x[0] == (1.0 if first else 0.0))
    h.maximize(sum(m * H * x[k] for k, m in enumerate(margins)))
    assert h.getModelStatus() == highspy.HighsModelStatus.kOptimal
    return h.getObjectiveValue()


def _pause_milp(margins: list[float], cost: float, min_pause: int, paused_for: int | None,
                first: bool | None) -> float:
    """Best value of a pausable class over the horizon (``first``: paused in interval 0)."""
    n = len(margins)
    h = _solver()
    y = h.addBinaries(n)      # paused in interval k
    start = h.addBinaries(n)  # a pause starts at k (costs `cost`)
    prev = 0.0 if paused_for is None else 1.0
    for k in range(n):
        h.addConstr(start[k] >= y[k] - (y[k - 1] if k else prev))
        for j in range(k, min(k + min_pause, n)):
            h.addConstr(y[j] >= start[k])
    if paused_for is not None:
        for j in range(min(max(min_pause - paused_for, 0), n)):
            h.addConstr(y[j] == 1)
    if first is not None:
        h.addConstr(y[0] == (1.0 if first else 0.0))
    h.maximize(sum(m * H * (1 - y[k]) for k, m in enumerate(margins)) - sum(cost * start[k] for k in range(n)))
    assert h.getModelStatus() == highspy.HighsModelStatus.kOptimal
    return h.getObjectiveValue()


def _close(a: float, b: float) -> bool:
    return abs(a - b) <= 1e-6 * max(1.0, abs(a), abs(b))


@settings(max_examples=300, deadline=None)
@given(margins=margins_st, on_now=st.booleans(), held=st.integers(0, 8), hold_on=st.integers(1, 6),
       hold_off=st.integers(1, 6))
def test_fleet_dp_first_decision_is_milp_optimal(margins, on_now, held, hold_on, hold_off):
    on = fleet_on_dp(margins, H, on_now, held, hold_on, hold_off)
    best = _fleet_milp(margins, on_now, held, hold_on, hold_off, None)
    assert _close(_fleet_milp(margins, on_now, held, hold_on, hold_off, on), best), (on, best)


@settings(max_examples=300, deadline=None)
@given(margins=margins_st, cost=st.one_of(st.floats(0, 15, allow_nan=False), st.floats(0, 200, allow_nan=False)),
       min_pause=st.integers(1, 6),
       paused_for=st.one_of(st.none(), st.integers(1, 8)))
def test_pause_dp_first_decision_is_milp_optimal(margins, cost, min_pause, paused_for):
    pause = pause_dp(margins, H, cost, min_pause, paused_for)
    best = _pause_milp(margins, cost, min_pause, paused_for, None)
    assert _close(_pause_milp(margins, cost, min_pause, paused_for, pause), best), (pause, best)


def test_the_milp_sees_what_a_myopic_rule_misses():
    """The check has teeth: paused, with one interval that pays between two that do not, the
    myopic answer (resume: the margin now is positive) is not optimal, because pausing again
    costs more than the interval earns; the DP's (stay paused) is."""
    margins = [5.0, -900.0, -900.0]  # resuming earns $1.25, pausing again costs $2
    best = _pause_milp(margins, 2.0, 2, 3, None)
    assert pause_dp(margins, H, 2.0, 2, 3) is True
    assert _close(_pause_milp(margins, 2.0, 2, 3, True), best)
    assert not _close(_pause_milp(margins, 2.0, 2, 3, False), best)


def test_the_milp_sees_a_min_off_time_the_myopic_rule_ignores():
    """On, one interval under water before three good ones, min off-time 4: switching off now
    (the myopic answer) keeps the fleet off through the good intervals; the DP stays on."""
    margins = [-10.0, 50.0, 50.0, 50.0]
    best = _fleet_milp(margins, True, 99, 1, 4, None)
    assert fleet_on_dp(margins, H, True, 99, 1, 4) is True
    assert _close(_fleet_milp(margins, True, 99, 1, 4, True), best)
    assert not _close(_fleet_milp(margins, True, 99, 1, 4, False), best)
