"""The site processor: decisions on event time, no peeking, determinism, DR timing."""

from __future__ import annotations

from datetime import timedelta

import pytest

from dispatch.processor import SiteProcessor, run_in_process
from schemas.site import load_sample_site
from tests import factories as f

SITE = load_sample_site()


def _events(prices, extra=()):
    ev = [f.hashprice(54.3)] + [f.rt_price(i, p) for i, p in enumerate(prices)] + list(extra)
    return sorted(ev, key=lambda e: e.event_time())


def test_first_decision_follows_first_price_and_uses_lag_one():
    acts = run_in_process(SITE, _events([20, 90, 150, 30]))
    # prices published at 00:15, 00:30, 00:45, 01:00: boundaries 00:15, 00:30, 00:45 are decided
    assert [a.interval_start for a in acts] == [f.T0 + timedelta(minutes=15 * k) for k in (1, 2, 3)]
    assert [a.price_known_usd_mwh for a in acts] == [20, 90, 150]


def test_no_peeking_changing_future_prices_leaves_past_decisions_unchanged():
    base = [20, 30, 90, 150, 4000, 60, 40, 30, 25, 22]
    acts = run_in_process(SITE, _events(base))
    for k in range(1, len(base)):
        changed = base[:k] + [9999.0] * (len(base) - k)
        acts2 = run_in_process(SITE, _events(changed))
        # the decision for [t, t+d) uses prices of intervals before t only:
        # the price of interval k is first visible to the decision at interval k+1
        n_same = k  # decisions for intervals 1..k
        assert [a.model_dump() for a in acts2[:n_same]] == [a.model_dump() for a in acts[:n_same]]
        assert all(a.price_known_usd_mwh != 9999.0 for a in acts2[:n_same])


def test_same_events_same_decisions():
    ev = _events([20, 90, 150, 4000, 4500, 50, 40], [f.dr_event(60), f.gpu_sample("trn-1", minute=3)])
    a = [x.model_dump() for x in run_in_process(SITE, ev)]
    b = [x.model_dump() for x in run_in_process(SITE, ev)]
    assert a == b


def test_event_for_another_site_is_refused():
    p = SiteProcessor(SITE)
    with pytest.raises(Exception, match="site"):
        p.process(f.rt_price(0, 20, site="other"))


def test_late_event_is_flagged_and_does_not_change_published_decisions():
    p = SiteProcessor(SITE)
    for e in _events([20, 30, 40]):
        p.process(e)
    out = p.process(f.rt_price(10, 50))  # advances the clock past several boundaries
    assert out.actions and not out.late
    late = p.process(f.gpu_sample("trn-9", minute=20))
    assert late.late and late.actions == []


def test_remember_skips_an_action_that_repeats_the_last_dispatch_objects_only():
    # the engine hands out the same (cached) fleets/gpus lists while nothing changes: then
    # nothing is carried; any other list (a watchdog's copy, a change) is carried in full
    from itertools import pairwise

    from dispatch.engine import EngineMemory, remember
    from dispatch.policies import MyopicPolicy
    from dispatch.processor import SiteProcessor
    from schemas.site import load_sample_site

    site = load_sample_site()
    proc = SiteProcessor(site, MyopicPolicy())
    actions = []
    for e in [f.hashprice(54.3)] + [f.rt_price(i, p) for i, p in enumerate([40.0, 40.0, 500.0, 500.0, 40.0, 40.0])]:
        actions.extend(proc.process(e).actions)
    assert any(a.fleets is b.fleets for a, b in pairwise(actions))  # unchanged: one cached list
    assert any(a.fleets is not b.fleets for a, b in pairwise(actions))
    mem = EngineMemory.initial(site)
    for a in actions:
        remember(mem, a)
    fresh = EngineMemory.initial(site)
    for a in actions:  # the same actions with copied lists: never skipped
        remember(fresh, a.model_copy(update={"fleets": list(a.fleets), "gpus": list(a.gpus)}))
    assert mem.fleets == fresh.fleets and mem.classes == fresh.classes
    assert {n: fm.units_online for n, fm in mem.fleets.items()} == {fl.fleet: fl.units_online for fl in actions[-1].fleets}
    assert any(fm.changed_at is not None for fm in mem.fleets.values())
