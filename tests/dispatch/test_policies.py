"""The planning policies: merit order, each constraint, accounting identity, no peeking,
baseline ordering. Scenarios are built in memory and run through SiteProcessor."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dispatch.accounting import settle
from dispatch.backtest import merge_event_time, run_policy
from dispatch.policies import (AlwaysOnPolicy, FixedStrikePolicy, MyopicPolicy, PerfectForesightPolicy,
                               RollingHorizonPolicy, fleet_on_dp, pause_dp)
from dispatch.processor import SiteProcessor
from schemas.feeds import DemandResponseEvent, GridPrice, Hashprice
from schemas.site import load_sample_site

UTC = timezone.utc
T0 = datetime(2024, 7, 1, tzinfo=UTC)
Q = timedelta(minutes=15)
SITE = load_sample_site()


def rt(i: int, price: float, site_id: str = "sample") -> GridPrice:
    s = T0 + Q * i
    return GridPrice(site_id=site_id, settlement_point="HB_HUBAVG", market="RT", interval_start=s,
                     interval_minutes=15, price_usd_mwh=price, published_at=s + Q)


def records(prices: list[float], hp: float = 60.0, extra=()) -> list:
    h = Hashprice(site_id="sample", usd_per_ph_day=hp, as_of=T0 - timedelta(days=1), published_at=T0 - timedelta(hours=1))
    return merge_event_time([rt(i, p) for i, p in enumerate(prices)], list(extra), [h])


def run(policy, prices, site=SITE, **kw):
    proc = SiteProcessor(site, policy)
    out = []
    for r in records(prices, **kw):
        out.extend(proc.process(r).actions)
    return {a.interval_start: a for a in out}


def at(actions, i):
    return actions[T0 + Q * i]


def units(a):
    return {f.fleet: f.units_online for f in a.fleets}


def test_breakevens_follow_hashprice():
    s19, s21 = SITE.miner_fleets
    assert s19.breakeven_grid_usd_mwh(60) == pytest.approx(60 * 0.98 / (0.024 * 29.5) / 1.05)
    assert s21.breakeven_grid_usd_mwh(54.3) * 1.05 == pytest.approx(126.7, abs=0.5)


def test_merit_order_least_efficient_fleet_first():
    # breakevens at hashprice 60: S19j Pro ~$79, S21 ~$133
    acts = run(MyopicPolicy(), [30, 100, 100, 200, 200, 30, 30])
    assert units(at(acts, 1)) == {"s19jpro": 15000, "s21": 10000}   # knows only $30
    assert units(at(acts, 2)) == {"s19jpro": 0, "s21": 10000}       # $100: only the S19s go
    assert units(at(acts, 4)) == {"s19jpro": 0, "s21": 0}           # $200: both
    assert units(at(acts, 6)) == {"s19jpro": 15000, "s21": 10000}
    # GPUs are worth far more than mining: they keep running at $200
    assert all(g.gpus_running == g.gpus_demand for g in at(acts, 4).gpus)


def test_hold_times_from_memory_and_dp():
    site = SITE.model_copy(update={"miner_fleets": [f.model_copy(update={"min_on_minutes": 60, "min_off_minutes": 60})
                                                      for f in SITE.miner_fleets]})
    prices = [30] * 3 + [200] + [30] * 3 + [200] * 8 + [30] * 6
    acts = run(MyopicPolicy(), prices, site=site)
    seq = [units(at(acts, i))["s21"] for i in range(1, len(prices))]
    # every on/off run lasts at least 4 intervals (60 min), except the first
    runs, cur, n = [], seq[0], 0
    for x in seq:
        if x == cur:
            n += 1
        else:
            runs.append(n)
            cur, n = x, 1
    assert all(r >= 4 for r in runs[1:]), seq
    # the DP: a one-interval spike is not worth a 4-interval outage of a small margin
    assert fleet_on_dp([10, -5, 10, 10, 10], 0.25, True, 99, 4, 4) is True
    assert fleet_on_dp([-50, -50, -50, -50, 10], 0.25, True, 99, 4, 4) is False


def test_pause_cost_and_min_pause():
    # a pause costs 2 value-intervals; one bad interval does not pay, four do
    assert pause_dp([-1.0, 5, 5, 5], 0.25, cost=1.0, min_pause=4, paused_for=None) is False
    assert pause_dp([-10.0] * 6, 0.25, cost=1.0, min_pause=4, paused_for=None) is True
    assert pause_dp([5.0, 5], 0.25, cost=1.0, min_pause=4, paused_for=2) is True  # must stay
    # training pauses in a long scarcity event and stays paused >= 1 h; pays its cost once
    prices = [30] * 2 + [4000] * 10 + [30] * 8
    acts = run(MyopicPolicy(), prices)
    tr = [next(g for g in at(acts, i).gpus if g.gpu_class == "training").gpus_running for i in range(1, len(prices))]
    assert 0 in tr
    first = tr.index(0)
    assert tr[first:first + 4] == [0, 0, 0, 0]
    costs = [at(acts, i).expected.gpu_value_usd for i in range(1, len(prices))]
    assert min(costs) < 0 or costs[first] < costs[first - 1]


def test_power_cap_tiers():
    # batch: tier 1 pays above ~$322/MWh, tier 2 above ~$483; inference is never capped
    acts = run(MyopicPolicy(), [30, 400, 400, 600, 600])
    b = lambda i: next(g for g in at(acts, i).gpus if g.gpu_class == "batch")  # noqa: E731
    inf = lambda i: next(g for g in at(acts, i).gpus if g.gpu_class == "inference")  # noqa: E731
    assert b(2).power_cap_tier == 1 and b(4).power_cap_tier == 2
    assert b(2).power_mw == pytest.approx(b(1).power_mw * 0.85)
    assert inf(4).power_cap_tier == 0 and inf(4).gpus_running == inf(4).gpus_demand


@pytest.mark.parametrize("policy", [MyopicPolicy, RollingHorizonPolicy, AlwaysOnPolicy])
def test_dr_firm_level_met_from_event_start(policy):
    ev = DemandResponseEvent(site_id="sample", event_id="ers-1", program="ERS-30", revision=0, status="scheduled",
                             notice_at=T0 + Q * 6, start=T0 + Q * 8, end=T0 + Q * 16,
                             obligation_kind="firm_service_level", obligation_mw=20, penalty_usd_mwh=1000,
                             issued_at=T0 + Q * 6)
    proc = SiteProcessor(SITE, policy())
    acts = {}
    for r in records([25.0] * 24, extra=[ev]):
        for a in proc.process(r).actions:
            acts[a.interval_start] = a
    for i in range(1, 24):
        a = acts[T0 + Q * i]
        if 8 <= i < 16:
            assert a.load_mw <= 20 + 1e-9 and a.dr.shortfall_mw == 0 and a.dr.active_event_ids == ["ers-1"]
            # shed order: mining first, GPUs keep running (13.6 MW fits under 20 MW)
            assert all(g.gpus_running == g.gpus_demand for g in a.gpus)
        else:
            assert a.load_mw > 90


def test_dr_infeasible_reports_shortfall():
    ev = DemandResponseEvent(site_id="sample", event_id="x", program="ERS-30", revision=0, status="scheduled",
                             notice_at=T0, start=T0 + Q * 2, end=T0 + Q * 4, obligation_kind="firm_service_level",
                             obligation_mw=0, penalty_usd_mwh=1000, issued_at=T0)
    site = SITE.model_copy(update={"gpus": SITE.gpus.model_copy(update={"classes": [
        c.model_copy(update={"interruptible": c.gpu_class != "inference"}) for c in SITE.gpus.classes]})})
    proc = SiteProcessor(site, MyopicPolicy())
    acts = [a for r in records([25.0] * 6, extra=[ev]) for a in proc.process(r).actions]
    a = next(a for a in acts if a.interval_start == T0 + Q * 2)
    # the shed order goes all the way to inference: nothing left, zero shortfall
    assert a.load_mw == pytest.approx(0, abs=1e-9) and a.dr.shortfall_mw == 0


prices_st = st.lists(st.floats(min_value=-250, max_value=5000, allow_nan=False), min_size=4, max_size=40)


@settings(max_examples=40, deadline=None)
@given(prices_st, st.floats(min_value=20, max_value=400))
def test_accounting_identity_every_interval(prices, hp):
    for policy in (RollingHorizonPolicy(), MyopicPolicy()):
        acts = run(policy, prices, hp=hp)
        for i, p in enumerate(prices):
            a = acts.get(T0 + Q * i)
            if a is None:
                continue
            t = settle(a, p, SITE)
            h = 0.25
            assert t.net_usd == pytest.approx(t.mining_revenue_usd + t.gpu_value_usd - t.energy_cost_usd
                                              + t.hedge_pnl_usd + t.dr_payment_usd - t.dr_penalty_usd)
            assert t.energy_cost_usd == pytest.approx(p * a.load_mw * h)
            assert t.hedge_pnl_usd == pytest.approx((p - 35) * 90 * h)
            assert a.sold_back_mw == pytest.approx(max(90 - a.load_mw, 0))
            assert a.load_mw == pytest.approx(sum(f.power_mw for f in a.fleets) + sum(g.power_mw for g in a.gpus))
            mining = sum(f.hashrate_ph * hp * 0.98 * h / 24 for f in a.fleets)
            assert t.mining_revenue_usd == pytest.approx(mining)


def test_no_decision_reads_its_own_interval_or_later():
    import random

    rng = random.Random(3)
    base = [max(-20.0, rng.lognormvariate(3.3, 0.8)) for _ in range(400)]
    for k in (50, 200, 350):
        ref = run(RollingHorizonPolicy(), base)
        bumped = base[:k] + [p * 40 + 900 for p in base[k:]]
        alt = run(RollingHorizonPolicy(), bumped)
        for i in range(1, k + 1):  # the decision for interval k may use prices up to k-1 only
            a, b = at(ref, i), at(alt, i)
            assert a.model_dump() == b.model_dump(), f"decision {i} changed when prices from {k} on did"
        assert any(at(ref, i).model_dump() != at(alt, i).model_dump() for i in range(k + 1, len(base)))


def test_perfect_foresight_bounds_every_causal_policy():
    import random

    rng = random.Random(11)
    prices = []
    for i in range(96 * 7):
        p = rng.lognormvariate(3.2, 0.6)
        if rng.random() < 0.03:
            p = rng.choice([150, 400, 2500])
        prices.append(p)
    recs = records(prices)
    realized = {T0 + Q * i: p for i, p in enumerate(prices)}
    nets = {}
    for name, pol in [("pf", PerfectForesightPolicy(realized)), ("always", AlwaysOnPolicy()),
                      ("strike", FixedStrikePolicy(100)), ("myopic", MyopicPolicy()), ("rolling", RollingHorizonPolicy())]:
        nets[name] = run_policy(SITE, pol, recs, realized).totals["net_usd"]
    for name in ("always", "strike", "myopic", "rolling"):
        assert nets["pf"] >= nets[name] - 1e-6, nets
    # (on i.i.d. spikes a myopic rule can lose to always-on: no ordering among causal policies)


def _fourcp_event(start: int, end: int) -> DemandResponseEvent:
    return DemandResponseEvent(site_id="sample", event_id="4cp-1", program="4CP", revision=0, status="scheduled",
                               notice_at=T0 + Q * (start - 4), start=T0 + Q * start, end=T0 + Q * end,
                               obligation_kind="advisory", obligation_mw=0, penalty_usd_mwh=0,
                               issued_at=T0 + Q * (start - 4))


def test_4cp_advisory_curtails_when_the_transmission_saving_beats_the_margin():
    ev = _fourcp_event(8, 20)  # a 3 h alert window
    # $60k/MW-year, 25% chance the window holds the peak: 0.25 x 60000 / (4 x 12 x 0.25) = $1,250/MWh
    site = SITE.model_copy(update={"transmission_4cp_usd_mw_year": 60000.0})
    prices = [25.0] * 24
    acts = run(MyopicPolicy(), prices, site=site, extra=[ev])
    for i in range(1, 24):
        a = at(acts, i)
        mining = sum(f.units_online for f in a.fleets)
        gp = {g.gpu_class: g for g in a.gpus}
        if 8 <= i < 20:
            assert mining == 0, i                               # worth $1,250/MWh > mining margin
            assert gp["batch"].gpus_running == 0                # batch ($603/MWh) deferred too
            assert gp["inference"].gpus_running == gp["inference"].gpus_demand  # SLA kept
            assert any("4CP" in r for r in a.reasons)
            assert a.dr.shortfall_mw == 0 and a.dr.limit_mw is None  # advisory: no obligation
        else:
            assert mining == 25000, i
    # P&L at the expected price: the 4CP value steers the decision, it is not booked as energy
    a = at(acts, 10)
    assert a.expected.energy_cost_usd == pytest.approx(25.0 * a.load_mw * 0.25)
    # without a 4CP charge in the site config the alert changes nothing
    plain = run(MyopicPolicy(), prices, extra=[ev])
    assert all(sum(f.units_online for f in at(plain, i).fleets) == 25000 for i in range(1, 24))
    # a small charge does not pay for curtailing the S21s: $20/MW-year -> under $1/MWh
    small = run(MyopicPolicy(), prices, site=SITE.model_copy(update={"transmission_4cp_usd_mw_year": 20.0}), extra=[ev])
    assert all(sum(f.units_online for f in at(small, i).fleets) == 25000 for i in range(1, 24))
