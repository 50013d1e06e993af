"""The feed watchdog: stale inputs put the site in a documented safe state, on event time.

Checked at every decision (``SiteProcessor.decide``), after the policy decided, on the
interval being decided (``t``) and the state folded so far, so live and backtest agree:

* **real-time price silent**: the newest RT price was published (at its interval's end) more
  than ``SiteConfig.watchdog_price_minutes`` before ``t`` while other feeds moved event time on;
* **hashprice stale**: the newest hashprice was published more than
  ``SiteConfig.watchdog_hashprice_hours`` before ``t`` (no hashprice at all is not "stale": the
  policy then keeps the miners as they are, and nothing here changes).

Safe state (``DispatchAction.watchdog`` = True, and one ``"WATCHDOG: ..."`` reason per cause):

1. every miner fleet whose breakeven, at the last known hashprice, is below the last known
   RT price is switched off (hold times do not apply: safety first);
2. the load is brought at or under the lowest firm service level that could be active: any
   known firm / reduction DR event in force at ``t`` or starting before the next decision, and
   every enrolled ``firm_service_level`` program (an unannounced deployment cannot be ruled out
   while feeds are silent); this sheds the remaining mining. GPU load is not cut by the
   watchdog (announced events are already met by the policy); a residual excess over an
   enrolled program's level is reported in the reason.

The P&L terms are recomputed for the curtailed fleets. Nothing changes when no feed is stale.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from dispatch.state import SiteState
from schemas.action import DispatchAction
from schemas.site import SiteConfig

PREFIX = "WATCHDOG: "

#: (interval, price limit min, hashprice limit h) -> the RT price's interval-start age and the
#: hashprice age past which that feed is stale, as timedeltas (exact, in microseconds like the
#: timestamps; asked every interval, built once)
_limits: dict[tuple, tuple[timedelta, timedelta]] = {}


def stale_reasons(site: SiteConfig, state: SiteState, t: datetime) -> list[str]:
    key = (site.interval_minutes, site.watchdog_price_minutes, site.watchdog_hashprice_hours)
    limits = _limits.get(key)
    if limits is None:
        limits = _limits[key] = (timedelta(minutes=key[0] + key[1]), timedelta(hours=key[2]))
    out = []
    order, hp = state.rt_order, state.hashprice
    if order and t - order[-1] > limits[0]:
        last = order[-1]
        silent = (t - last).total_seconds() / 60 - site.interval_minutes  # since it was published
        out.append(f"{PREFIX}real-time price feed silent for {silent:.0f} min (last price for "
                   f"{last.isoformat()}, limit {site.watchdog_price_minutes} min): safe state")
    if hp is not None and t - hp.published_at > limits[1]:
        age_h = (t - hp.published_at).total_seconds() / 3600
        out.append(f"{PREFIX}hashprice stale: published {age_h:.1f} h ago (limit "
                   f"{site.watchdog_hashprice_hours:g} h); using the last known "
                   f"${hp.usd_per_ph_day:,.2f}/PH/day: safe state")
    return out


def firm_level(site: SiteConfig, state: SiteState, t: datetime) -> tuple[float, str] | None:
    """The lowest load ceiling that could be active in the interval starting at ``t``."""
    nxt = t + timedelta(minutes=site.interval_minutes)
    levels: list[tuple[float, str]] = []
    for e in (state.upcoming_obligations(t) if state.dr_events else []):
        if e.start < nxt and e.obligation_kind != "advisory":
            lim = e.obligation_mw if e.obligation_kind == "firm_service_level" else (e.baseline_mw or 0.0) - e.obligation_mw
            levels.append((max(lim, 0.0), f"DR event {e.event_id}"))
    for p in site.dr_programs:
        if p.kind == "firm_service_level" and p.firm_service_level_mw is not None:
            levels.append((p.firm_service_level_mw, f"program {p.name}"))
    return min(levels) if levels else None


def apply(site: SiteConfig, state: SiteState, action: DispatchAction) -> DispatchAction:
    """The action itself when no feed is stale, else its safe-state version."""
    t = action.interval_start
    alarms = stale_reasons(site, state, t)
    if not alarms:
        return action
    h = site.interval_minutes / 60.0
    p_known = action.price_known_usd_mwh
    p_exp = action.price_expected_usd_mwh if action.price_expected_usd_mwh is not None else (p_known or 0.0)
    hp = state.hashprice.usd_per_ph_day if state.hashprice is not None else None
    cfg = {f.name: f for f in site.miner_fleets}
    fleets = list(action.fleets)
    notes: list[str] = []
    load = action.load_mw
    rev_cut = 0.0
    mw_cut = 0.0

    def cut(i: int, why: str) -> None:
        nonlocal load, rev_cut, mw_cut
        fd = fleets[i]
        if fd.units_online == 0:
            return
        f = cfg[fd.fleet]
        if hp is not None:
            rev_cut += fd.hashrate_ph * hp * (1.0 - f.pool_fee) * h / 24.0
        mw_cut += fd.power_mw
        load -= fd.power_mw
        fleets[i] = fd.model_copy(update={"units_online": 0, "power_mw": 0.0, "hashrate_ph": 0.0})
        notes.append(f"{PREFIX}{fd.fleet} off: {why}")

    for i, fd in enumerate(fleets):
        if p_known is not None and (hp is None or p_known > fd.breakeven_usd_mwh):
            cut(i, f"last known price ${p_known:,.2f} above breakeven ${fd.breakeven_usd_mwh:,.2f}/MWh")
    level = firm_level(site, state, t)
    if level is not None and load > level[0] + 1e-9:
        for i in range(len(fleets)):
            if load > level[0] + 1e-9:
                cut(i, f"load at or under the firm service level {level[0]:g} MW of {level[1]}")
        if load > level[0] + 1e-9:
            notes.append(f"{PREFIX}load {load:.3f} MW still above the firm service level {level[0]:g} MW "
                         f"of {level[1]} after curtailing all mining (GPU load is left to the policy)")
    load = max(load, 0.0)
    e = action.expected
    dr = action.dr
    penalty = e.dr_penalty_usd
    if dr.limit_mw is not None:
        short = max(load - dr.limit_mw, 0.0)
        if dr.shortfall_mw > 0:
            penalty *= short / dr.shortfall_mw
        dr = dr.model_copy(update={"shortfall_mw": short})
    mining = e.mining_revenue_usd - rev_cut
    energy = e.energy_cost_usd - p_exp * mw_cut * h
    net = mining + e.gpu_value_usd - energy + e.hedge_pnl_usd + e.dr_payment_usd - penalty
    terms = e.model_copy(update={"mining_revenue_usd": mining, "energy_cost_usd": energy,
                                 "dr_penalty_usd": penalty, "net_usd": net})
    sold = max(site.hedge.quantity_mw - load, 0.0) if site.hedge else 0.0
    return action.model_copy(update={
        "fleets": fleets, "load_mw": load, "sold_back_mw": sold, "dr": dr, "expected": terms,
        "reasons": alarms + notes + list(action.reasons), "watchdog": True})

