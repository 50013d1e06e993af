"""The feed watchdog (dispatch/watchdog.py): on event time, a silent real-time price feed or a
stale hashprice puts the site in the documented safe state, with a WATCHDOG alarm reason and
``action.watchdog``; nothing changes while the feeds are fresh."""

from __future__ import annotations

from datetime import timedelta

import orjson

from dispatch.processor import run_in_process
from schemas.action import DispatchAction
from schemas.codec import encode
from schemas.site import load_sample_site
from tests import factories as f

SITE = load_sample_site()  # ERS-30 enrolled: firm service level 20 MW; breakevens $71.58 / $120.67 at 54.3


def _site(**kw):
    return SITE.model_copy(update={"dr_programs": [], **kw})


def _gpus(minutes: int, start: int = 0):
    return [f.gpu_sample("trn-00", "training", gpus=64, minute=m) for m in range(start, minutes, 5)]


def _run(site, events):
    events = sorted(events, key=lambda e: e.event_time())
    return run_in_process(site, events)


def _by_t(actions):
    return {a.interval_start: a for a in actions}


def test_fresh_feeds_never_trip_the_watchdog():
    ev = [f.hashprice(54.3)] + [f.rt_price(i, 40.0 + (i % 7) * 30) for i in range(32)] + _gpus(32 * 15)
    actions = _run(SITE, ev)
    assert len(actions) > 25
    assert not any(a.watchdog or any(r.startswith("WATCHDOG") for r in a.reasons) for a in actions)


def test_silent_price_feed_curtails_mining_above_breakeven():
    # price $100: above s19jpro's breakeven ($71.58), below s21's ($120.67); then silence
    # while GPU telemetry moves event time on for 4 hours
    site = _site()
    ev = [f.hashprice(54.3)] + [f.rt_price(i, 100.0) for i in range(4)] + _gpus(5 * 60)
    by_t = _by_t(_run(site, ev))
    last_published = f.T0 + timedelta(minutes=60)  # price for 00:45 published at 01:00
    for t, a in sorted(by_t.items()):
        fleets = {fl.fleet: fl.units_online for fl in a.fleets}
        if t - last_published <= timedelta(minutes=60):
            assert not a.watchdog, (t, a.reasons)
            continue
        assert a.watchdog, t
        assert a.reasons[0].startswith("WATCHDOG: real-time price feed silent for"), a.reasons
        assert "limit 60 min" in a.reasons[0]
        assert fleets["s19jpro"] == 0                              # last price above its breakeven
        assert fleets["s21"] == next(fl.units_total for fl in a.fleets if fl.fleet == "s21")  # below: stays
        assert a.load_mw == sum(fl.power_mw for fl in a.fleets) + sum(g.power_mw for g in a.gpus)
        assert a.expected.net_usd == (a.expected.mining_revenue_usd + a.expected.gpu_value_usd
                                      - a.expected.energy_cost_usd + a.expected.hedge_pnl_usd
                                      + a.expected.dr_payment_usd - a.expected.dr_penalty_usd)
    assert sum(a.watchdog for a in by_t.values()) >= 8


def test_safe_state_is_at_or_under_any_firm_service_level_that_could_be_active():
    # the sample site is enrolled in ERS-30 (firm level 20 MW): with the price feed silent, an
    # unannounced deployment cannot be ruled out, so all mining goes, even below breakeven
    ev = [f.hashprice(54.3)] + [f.rt_price(i, 20.0) for i in range(4)] + _gpus(4 * 60)
    actions = _run(SITE, ev)
    tripped = [a for a in actions if a.watchdog]
    assert tripped and not actions[0].watchdog
    assert actions[0].fleets[0].units_online > 0  # cheap power: mining on before the watchdog
    for a in tripped:
        assert a.load_mw <= 20.0 + 1e-9, a.reasons
        assert all(fl.units_online == 0 for fl in a.fleets)
        assert any("firm service level 20 MW of program ERS-30" in r for r in a.reasons)


def test_known_firm_event_is_respected_in_the_safe_state():
    site = _site()  # no enrolled program: only the announced event binds
    # an announced firm event of 30 MW at 03:00-04:00; prices ($20, under both breakevens) stop at 01:00
    ev = [f.hashprice(54.3), f.dr_event(180, 60, mw=30.0)] + [f.rt_price(i, 20.0) for i in range(4)] + _gpus(5 * 60)
    by_t = _by_t(_run(site, ev))
    before = by_t[f.T0 + timedelta(minutes=165)]
    assert before.watchdog and all(fl.units_online == fl.units_total for fl in before.fleets)  # cheap: stays on
    for m in range(180, 240, 15):
        a = by_t[f.T0 + timedelta(minutes=m)]
        assert a.watchdog and a.load_mw <= 30.0 + 1e-9 and a.dr.shortfall_mw == 0, a.reasons
    after = by_t[f.T0 + timedelta(minutes=240)]
    assert after.watchdog and all(fl.units_online == fl.units_total for fl in after.fleets)


def test_stale_hashprice_uses_last_known_and_alarms():
    site = _site(watchdog_hashprice_hours=2)
    ev = [f.hashprice(54.3)] + [f.rt_price(i, 100.0) for i in range(16)] + _gpus(16 * 15)
    by_t = _by_t(_run(site, ev))
    for t, a in sorted(by_t.items()):
        stale = t - f.T0 > timedelta(hours=2)
        assert a.watchdog == stale, (t, a.reasons)
        if stale:
            assert a.reasons[0].startswith("WATCHDOG: hashprice stale: published")
            assert "using the last known $54.30/PH/day" in a.reasons[0]
            assert a.hashprice_usd_per_ph_day == 54.3
            assert {fl.fleet: fl.units_online for fl in a.fleets}["s19jpro"] == 0


def test_watchdog_is_deterministic_and_survives_the_wire_and_the_archive(tmp_path):
    from sinks.archive import Archive, ArchiveBatch, read_actions

    site = _site(watchdog_price_minutes=30)
    ev = [f.hashprice(54.3)] + [f.rt_price(i, 100.0) for i in range(4)] + _gpus(3 * 60)
    a1, a2 = _run(site, ev), _run(site, list(reversed(ev)))
    assert [encode(a) for a in a1] == [encode(a) for a in a2]
    tripped = [a for a in a1 if a.watchdog]
    assert tripped
    wire = orjson.loads(encode(tripped[0]))
    assert wire["watchdog"] is True
    assert encode(DispatchAction.model_validate_json(orjson.dumps(wire))) == encode(tripped[0])
    # an action without the field (older producer) still decodes, as not tripped
    del wire["watchdog"]
    assert DispatchAction.model_validate_json(orjson.dumps(wire)).watchdog is False
    with Archive(tmp_path / "a.duckdb") as arc:
        b = ArchiveBatch()
        for a in a1:
            b.add_action(a)
        arc.write_batch(b)
        back = read_actions(arc.connection(), site.site_id)
        (n,) = arc.connection().execute("SELECT count(*) FROM actions WHERE json_extract(payload, '$.watchdog')::BOOLEAN").fetchone()
    assert n == len(tripped)
    assert len(back) == len(a1)


def test_stale_check_holds_the_limits_to_the_microsecond():
    # the limits are compared as timedeltas, to the microsecond: the price limit (60 min after
    # publication) and the hashprice limit hold exactly
    from dispatch.state import SiteState
    from dispatch.watchdog import stale_reasons

    site = _site()
    state = SiteState(site_id=site.site_id)
    state.fold(f.rt_price(0, 40.0))                 # interval 00:00, published 00:15
    hp = f.hashprice(54.3)
    state.fold(hp)
    published = f.T0 + timedelta(minutes=15)
    limit = published + timedelta(minutes=site.watchdog_price_minutes)
    us = timedelta(microseconds=1)
    assert stale_reasons(site, state, limit - us) == []
    assert stale_reasons(site, state, limit) == []
    assert stale_reasons(site, state, limit + us)[0].startswith("WATCHDOG: real-time price feed silent")
    state2 = SiteState(site_id=site.site_id)
    state2.fold(hp)
    hp_limit = hp.published_at + timedelta(hours=site.watchdog_hashprice_hours)
    assert stale_reasons(site, state2, hp_limit) == []
    assert stale_reasons(site, state2, hp_limit + us)[0].startswith("WATCHDOG: hashprice stale")
