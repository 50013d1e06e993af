"""The first engine: merit order by breakeven, GPU tiers and pauses, DR as a hard limit."""

from __future__ import annotations

import pytest

from dispatch.accounting import settle
from dispatch.policies import MyopicPolicy
from dispatch.processor import run_in_process
from schemas.site import load_sample_site
from tests import factories as f

SITE = load_sample_site()
H = 0.25


def _run(prices, extra=(), hp=54.3):
    ev = [f.hashprice(hp)] + [f.rt_price(i, p) for i, p in enumerate(prices)] + list(extra)
    return run_in_process(SITE, sorted(ev, key=lambda e: e.event_time()), MyopicPolicy())


def _units(a):
    return {x.fleet: x.units_online for x in a.fleets}


def test_least_efficient_fleet_goes_first():
    # breakevens at $54.3: S19j Pro $71.6/MWh, S21 $120.7/MWh (grid, with PUE 1.05)
    acts = _run([50, 90, 150, 50, 50])
    assert [a.price_known_usd_mwh for a in acts] == [50, 90, 150, 50]
    assert _units(acts[0]) == {"s19jpro": 15000, "s21": 10000}  # decided on $50
    assert _units(acts[1]) == {"s19jpro": 0, "s21": 10000}  # on $90
    assert _units(acts[2]) == {"s19jpro": 0, "s21": 0}  # on $150
    assert _units(acts[3]) == {"s19jpro": 15000, "s21": 10000}  # on $50


def test_breakeven_moves_with_hashprice():
    # at $90/MWh the S19j Pro runs when hashprice is high enough
    assert _units(_run([90, 90], hp=80.0)[0])["s19jpro"] == 15000
    assert _units(_run([90, 90], hp=54.3)[0])["s19jpro"] == 0


def test_scarcity_caps_and_pauses_gpus_but_never_inference():
    acts = _run([4000, 4000, 4000])
    g = {x.gpu_class: x for x in acts[0].gpus}
    assert g["inference"].gpus_running == g["inference"].gpus_demand and g["inference"].power_cap_tier == 0
    assert g["training"].gpus_running == 0  # pause pays: $4,000/MWh vs ~$1,380/MWh of value
    assert g["batch"].gpus_running == 0
    assert acts[0].expected.gpu_value_usd < g["inference"].gpus_running * 2.5 * H  # pause cost charged


def test_training_pause_must_pay_for_itself_and_holds_one_hour():
    # $1,600/MWh: training at 70% cap is worth ~$1,380/MWh of grid power, so pausing saves
    # ~$220/MWh x 1.63 kW x 1 h = ~$0.36/GPU, less than its cost (20 min of $2 = $0.67): keep running
    acts = _run([1600, 1600])
    assert {x.gpu_class: x.gpus_running for x in acts[0].gpus}["training"] > 0
    acts = _run([5000, 20, 20, 20, 20, 20, 20])
    paused = [{x.gpu_class: x.gpus_running for x in a.gpus}["training"] == 0 for a in acts]
    assert paused[:4] == [True, True, True, True]  # min pause 60 min = 4 intervals
    assert paused[4] is False


def test_power_cap_tier_chosen_by_margin():
    # batch: $1/GPU-h on 1.6575 kW grid; 100%->85% loses 8% throughput ($0.08) for 0.249 kW:
    # worth it above ~$322/MWh
    a = _run([400, 400])[0]
    g = {x.gpu_class: x for x in a.gpus}
    assert g["batch"].power_cap_tier >= 1
    a = _run([200, 200])[0]
    assert {x.gpu_class: x for x in a.gpus}["batch"].power_cap_tier == 0


def test_dr_firm_level_met_from_start_in_merit_order():
    # event from 01:00 to 02:00, notice 00:30; prices cheap so only the obligation drives it
    acts = _run([20] * 12, [f.dr_event(60, 60)])
    by_t = {a.interval_start.strftime("%H:%M"): a for a in acts}
    for hhmm in ("01:00", "01:15", "01:30", "01:45"):
        a = by_t[hhmm]
        assert a.load_mw <= 20.0 + 1e-9
        assert a.dr.shortfall_mw == 0 and a.dr.limit_mw == 20
        assert _units(a)["s19jpro"] == 0  # least efficient first
        assert all(g.gpus_running == g.gpus_demand for g in a.gpus)  # mining alone suffices
    assert by_t["00:45"].load_mw > 90 and by_t["02:00"].load_mw > 90


def test_dr_impossible_obligation_reports_shortfall():
    # a 120 MW reduction against a 100 MW baseline: even with every load off, 20 MW short
    acts = _run([20] * 8, [f.dr_event(30, 30, mw=120.0, kind="reduction", baseline_mw=100.0)])
    a = next(a for a in acts if a.dr.active_event_ids)
    assert a.load_mw == pytest.approx(0.0)
    assert a.dr.shortfall_mw == pytest.approx(20.0)
    assert any("shortfall" in r for r in a.reasons)
    assert a.expected.dr_penalty_usd == pytest.approx(a.dr.shortfall_mw * H * 1000)


def test_cancelled_revision_releases_the_obligation():
    ev = [f.dr_event(60, 60), f.dr_event(60, 60, revision=1, status="cancelled", issued_min=45)]
    acts = _run([20] * 10, ev)
    assert all(not a.dr.active_event_ids for a in acts)


def test_accounting_identity_and_settlement():
    for a in _run([20, 90, 150, 4000, 30], [f.dr_event(45, 30)]):
        e = a.expected
        net = e.mining_revenue_usd + e.gpu_value_usd - e.energy_cost_usd + e.hedge_pnl_usd + e.dr_payment_usd - e.dr_penalty_usd
        assert e.net_usd == pytest.approx(net)
        assert e.energy_cost_usd == pytest.approx(a.price_expected_usd_mwh * a.load_mw * H)
        assert a.sold_back_mw == pytest.approx(max(90 - a.load_mw, 0))
        mining = sum(x.hashrate_ph for x in a.fleets) * 54.3 * 0.98 * H / 24
        assert e.mining_revenue_usd == pytest.approx(mining)
        r = settle(a, 123.0, SITE)
        assert r.energy_cost_usd == pytest.approx(123.0 * a.load_mw * H)
        assert r.hedge_pnl_usd == pytest.approx((123.0 - 35) * 90 * H)
        assert r.mining_revenue_usd == e.mining_revenue_usd
