"""Planning policies: one fast core, several ways of knowing the price.

Every policy here is a :class:`dispatch.engine.Policy` run through ``SiteProcessor`` like the
default merit order. They share :class:`PlanningCore`, which turns a price path for the coming
intervals (``prices[0]`` = the price the engine expects for the interval it decides) into a
dispatch that respects every constraint of the site:

- miner fleets: run while the expected price is under the fleet's breakeven (from the hashprice
  known at decision time); minimum on/off times are honoured from the engine memory, and when
  they are longer than one interval the on/off plan is the optimum of a small dynamic program
  over the horizon (so hysteresis comes from the model, not from a rule);
- GPU classes: best power-cap tier per interval (value x throughput - price x power); a class
  that is ``interruptible`` is paused when the dynamic program over the horizon says that the
  energy saved beats its checkpoint/restart cost, with the minimum pause honoured;
  ``inference`` (not interruptible) keeps its SLA. A ``deferrable`` class (batch) has no pause
  cost: its jobs stay in the demand (telemetry reports them ``paused``) and resume as soon as
  running pays again, so the deferred work is caught up by the jobs running later, valued in
  the intervals where it runs. The decision prices a deferral at the GPU-hours given up, which
  is exact for a saturated cluster; when GPUs will be idle later, deferring costs less than
  that, and the engine does not exploit it (no queue model). A backtest driven by a job trace
  keeps the trace's end times, so there deferred work is lost, not caught up;
- demand response and the interconnect are hard limits, met in DESIGN.md's shed order (mining
  least efficient first, then batch, training, inference), with any unavoidable shortfall
  reported; a fleet is not restarted when its minimum on-time would reach into a known event.

What differs between policies is only :meth:`PlanningCore.price_path`:

========================  =================================================================
``AlwaysOnPolicy``        everything runs (no flexibility; DR limits still met)
``FixedStrikePolicy``     mining off when the last known RT price is above a fixed strike
``MyopicPolicy``          last known RT price for every interval (= the merit order, fast)
``PerfectForesightPolicy`` the realized prices of the coming intervals (an ORACLE: the only
                          policy allowed to peek; it is the upper bound of the scoring)
``RollingHorizonPolicy``  the online-learned forecast of :mod:`dispatch.forecast` (body + calibrated
                          spike probability x expected size); 4CP alerts (advisory DR events) add
                          their expected transmission saving to the decision price of every policy
========================  =================================================================

Rolling horizon: the exact optimum over the horizon is found by dynamic programming rather
than a generic LP/MILP: with this site model the fleets and the GPU classes only interact
through the DR/interconnect limit, which is met by the fixed shed order of the contract, so
each unit's problem is a tiny state machine (on/off with hold counters, running/paused with a
minimum pause) whose DP is exact and costs microseconds (tests/dispatch/test_dp_optimality.py
solves random instances as MILPs with HiGHS: the DP's first decision is always in an optimal
plan). The DP runs only when it can change the answer (a hold time longer than one interval, or
a pause-worthy price in the horizon); otherwise the decision is closed form.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from operator import itemgetter
from datetime import datetime, timedelta
from typing import Any

from schemas.base import trusted
from dispatch.engine import DR_SHED_ORDER, DecisionInput, DecisionRow, _jobs_to_pause
from dispatch.state import SiteState
from schemas.action import DispatchAction, DrStatusInAction, FleetDispatch, GpuClassDispatch, PnlTerms
from schemas.site import GpuClassConfig, MinerFleet, SiteConfig
from wattmix.errors import EngineError

#: planning horizon of the DP, in intervals (4 h of 15-min intervals)
DEFAULT_HORIZON = 16


@dataclass
class _Fleet:
    cfg: MinerFleet
    mw_unit: float
    hold_on: int   # min on-time in intervals
    hold_off: int


@dataclass
class _Class:
    cfg: GpuClassConfig
    name: str
    min_pause: int  # intervals
    pause_cost_per_gpu: float
    default_gpus: int = 0         # without GPU telemetry: the class's share of the fleet
    default_mw_gpu: float = 0.0
    v0: float = 0.0               # $/GPU-h at tier 0's throughput
    pf0: float = 1.0              # power fraction of tier 0
    cap_min_usd_h: float = math.inf  # price x MW/GPU ($/GPU-h) under which no cap tier pays


class _SiteCtx:
    """Per-site constants, computed once."""

    def __init__(self, site: SiteConfig) -> None:
        d = site.interval_minutes
        self.site = site
        self.h = d / 60.0
        self.step = timedelta(minutes=d)
        self.fleets = [
            _Fleet(f, f.grid_mw_per_unit, max(1, math.ceil(f.min_on_minutes / d)), max(1, math.ceil(f.min_off_minutes / d)))
            for f in sorted(site.miner_fleets, key=lambda f: f.name)
        ]
        self.fleet_order = [f.name for f in site.miner_fleets]
        self.shed_fleets = sorted(site.miner_fleets, key=lambda f: -f.j_per_th)
        self.tiers = [(t.power_fraction, t.throughput_fraction) for t in site.gpus.power_cap_tiers] if site.gpus else [(1.0, 1.0)]
        self.classes = [
            _Class(c, c.gpu_class, max(1, math.ceil(c.min_pause_minutes / d)) if c.min_pause_minutes else 1,
                   c.value_usd_per_gpu_hour * c.pause_cost_minutes / 60.0)
            for c in (site.gpus.classes if site.gpus else [])
        ]
        for cl in self.classes:
            c = cl.cfg
            cl.default_gpus = int(round(site.gpus.count * c.share))
            cl.default_mw_gpu = site.gpus.grid_mw_per_gpu
            v = c.value_usd_per_gpu_hour
            pf0, thr0 = self.tiers[0]
            cl.v0 = v * thr0
            cl.pf0 = pf0
            if c.power_cappable:
                # tier k beats tier 0 only if p x mw x (pf0 - pf_k) > v x (thr0 - thr_k)
                for pf, thr in self.tiers[1:]:
                    if pf < pf0 and thr < thr0:
                        cl.cap_min_usd_h = min(cl.cap_min_usd_h, v * (thr0 - thr) / (pf0 - pf))
                    else:
                        cl.cap_min_usd_h = -math.inf
                cl.cap_min_usd_h *= 0.999  # margin of safety: the exact comparison decides near it
        self.fourcp_rate = site.transmission_4cp_usd_mw_year or 0.0
        self.fourcp_prob = site.fourcp_peak_probability
        self.hedge_q = site.hedge.quantity_mw if site.hedge else 0.0
        self.hedge_k = site.hedge.price_usd_mwh if site.hedge else 0.0
        self.dr_payment = sum(p.committed_mw * p.capacity_payment_usd_mw_h for p in site.dr_programs) * self.h


#: what of a GPU class plan [cfg, demand, mw_gpu, running, tier] keys the static cache
_PLAN_KEY = itemgetter(1, 2, 3, 4)


def _plus(path: list[float], adders: list[float] | None) -> list[float]:
    if not adders:
        return path
    return [p + (adders[k] if k < len(adders) else 0.0) for k, p in enumerate(path)]


def _best_tier(cfg: GpuClassConfig, tiers, mw_gpu: float, p: float, cappable: bool) -> tuple[int, float]:
    """(tier, $/GPU-h margin) maximising value x throughput - price x power."""
    v = cfg.value_usd_per_gpu_hour
    best, bm = 0, v * tiers[0][1] - p * mw_gpu * tiers[0][0]
    if cappable:
        for k in range(1, len(tiers)):
            m = v * tiers[k][1] - p * mw_gpu * tiers[k][0]
            if m > bm + 1e-12:
                best, bm = k, m
    return best, bm


def pause_dp(margins: list[float], h: float, cost: float, min_pause: int, paused_for: int | None) -> bool:
    """Exact DP for one pausable class over the horizon: is 'paused' optimal now?

    ``margins[k]`` = $/GPU-h margin of running in interval k (at its best tier); pausing
    earns 0, a pause costs ``cost`` $/GPU when it starts and lasts at least ``min_pause``
    intervals. ``paused_for`` = intervals already paused (None when running now).
    Beyond the horizon the class runs (no further cost).
    """
    n = len(margins)
    m = max(1, min_pause)
    # V_run[k]: value from k on when running at k-1 (free to pause at k, paying cost)
    # V_p[j][k]: value from k on when paused for j intervals so far (j < m: must stay)
    v_run = [0.0] * (n + 1)
    v_p = [[0.0] * (n + 1) for _ in range(m + 1)]
    for k in range(n - 1, -1, -1):
        run_k = margins[k] * h
        # paused states: j = intervals paused before k (1..m); at j >= m may resume
        for j in range(m, 0, -1):
            stay = v_p[min(j + 1, m)][k + 1]
            v_p[j][k] = max(stay, run_k + v_run[k + 1]) if j >= m else stay
        v_run[k] = max(run_k + v_run[k + 1], -cost + v_p[1][k + 1])
    run_now = margins[0] * h + v_run[1]
    if paused_for is None:
        return (-cost + v_p[1][1]) > run_now + 1e-9
    j = max(1, min(paused_for, m))
    if j < m:
        return True
    return v_p[min(j + 1, m)][1] > run_now + 1e-9


def _tails(margins: list[float], h: float, hold_on: int, hold_off: int, start: int):
    """Backward DP from ``start``: returns (on_v, off_v) value tables at ``start``.

    on_v[c]: best value from ``start`` on given the fleet has been on for c intervals before
    ``start`` (c capped at hold_on); off_v likewise.
    """
    on_v = [0.0] * (hold_on + 1)
    off_v = [0.0] * (hold_off + 1)
    for k in range(len(margins) - 1, start - 1, -1):
        r = margins[k] * h
        new_on = [0.0] * (hold_on + 1)
        new_off = [0.0] * (hold_off + 1)
        for c in range(hold_on + 1):
            run = r + on_v[min(c + 1, hold_on)]
            new_on[c] = max(run, off_v[1]) if c >= hold_on else run
        for c in range(hold_off + 1):
            rest = off_v[min(c + 1, hold_off)]
            new_off[c] = max(rest, r + on_v[1]) if c >= hold_off else rest
        on_v, off_v = new_on, new_off
    return on_v, off_v


def fleet_on_dp(margins: list[float], h: float, on_now: bool, held: int, hold_on: int, hold_off: int) -> bool:
    """Should the fleet be on in interval 0? Exact DP with min on/off times (in intervals)."""
    on_v, off_v = _tails(margins, h, hold_on, hold_off, 1)
    r0 = margins[0] * h
    if on_now:
        if held < hold_on:
            return True
        return r0 + on_v[min(held + 1, hold_on)] >= off_v[1]
    if held < hold_off:
        return False
    return r0 + on_v[1] > off_v[min(held + 1, hold_off)]


class PlanningCore:
    """Shared decision core (see the module docstring). Subclasses give the price path."""

    name = "planning/1"
    flex_mining = True
    flex_gpus = True
    horizon = DEFAULT_HORIZON

    def __init__(self) -> None:
        self._ctx: _SiteCtx | None = None
        self._ctx_site: SiteConfig | None = None
        # immutable sub-records are shared between actions when nothing changed
        self._bes: dict[float, dict[str, float]] = {}
        self._fd: dict[tuple, FleetDispatch] = {}
        self._gd: dict[tuple, GpuClassDispatch] = {}
        self._st: dict[tuple, tuple] = {}

    # -- to override --------------------------------------------------------------------
    def price_path(self, inp: DecisionInput, p_known: float) -> list[float]:
        """Expected prices: [0] = the interval decided (at least one element)."""
        return [p_known]

    def full_path(self, inp: DecisionInput, p_known: float, prices: list[float]) -> list[float]:
        """The whole horizon, asked for only when a DP needs it (default: what price_path gave)."""
        return prices

    def mining_on(self, fleet: _Fleet, be: float, prices: list[float], p_known: float) -> bool:
        return prices[0] < be

    # -- the decision ---------------------------------------------------------------------
    def ctx(self, site: SiteConfig) -> _SiteCtx:
        if self._ctx_site is not site:
            self._ctx = _SiteCtx(site)
            self._ctx_site = site
            self._bes.clear()
            self._fd.clear()
            self._gd.clear()
            self._st.clear()
        return self._ctx  # type: ignore[return-value]

    def decide(self, inp: DecisionInput) -> DispatchAction:
        return self._action(*self._plan(inp))

    def decide_row(self, inp: DecisionInput) -> DecisionRow:
        """``DecisionRow.of(self.decide(inp))``, without building the action (the backtest's
        baselines: ~4 us less per decision)."""
        return self._row(*self._plan(inp))

    def _plan(self, inp: DecisionInput) -> tuple:
        """The decision, as the arguments of :meth:`_action` / :meth:`_row`."""
        site, state, mem, t = inp
        cx = self._ctx if self._ctx_site is site else self.ctx(site)
        if not state.rt_order:
            raise EngineError("no real-time price known: the clock must not start before the first price")
        p_known = state.rt_prices[state.rt_order[-1]]
        raw = self.price_path(inp, p_known)   # expected prices (the P&L uses these)
        prices = raw                           # decision prices (+ a 4CP alert's value)
        p_exp = raw[0]
        h = cx.h
        reasons: list[str] = []
        hp = state.hashprice.usd_per_ph_day if state.hashprice is not None else None
        upcoming = state.upcoming_obligations(t) if state.dr_events else []
        in_force = [e for e in upcoming if e.start <= t and e.obligation_kind != "advisory"] if upcoming else upcoming
        adders = None
        if upcoming and cx.fourcp_rate:
            adv = [e for e in upcoming if e.obligation_kind == "advisory" and e.start < t + cx.step * self.horizon]
            if adv:
                adders = self._fourcp_adders(cx, t, adv)
                prices = _plus(raw, adders)
                if adders[0]:
                    reasons.append("4CP alert " + ", ".join(e.event_id for e in adv if e.start <= t < e.end)
                                   + f": curtailing is worth ${adders[0]:,.0f}/MWh of transmission charge")
        p_dec = prices[0]

        # -- miners ----------------------------------------------------------------------
        units: dict[str, int] = {}
        bes = self._bes.get(hp) if hp is not None else None
        if bes is None and hp is not None:
            bes = self._bes[hp] = {f.name: f.breakeven_grid_usd_mwh(hp) for f in site.miner_fleets}
        for fl in cx.fleets:
            f = fl.cfg
            fm = mem.fleets[f.name]
            on_now = fm.units_online > 0
            if hp is None:
                units[f.name] = fm.units_online
                continue
            be = bes[f.name]
            long_hold = fl.hold_on > 1 or fl.hold_off > 1
            # intervals since the last change (only needed when a hold time can bind)
            held = 10**6 if fm.changed_at is None or not long_hold else int((t - fm.changed_at) / cx.step)
            if not self.flex_mining:
                want_on = True
            elif long_hold and type(self).mining_on is PlanningCore.mining_on:
                # hold times longer than one interval: the exact DP over the price path
                raw = self.full_path(inp, p_known, raw)
                prices = _plus(raw, adders) if adders else raw
                margins = [(be - p) * fl.mw_unit for p in prices]
                want_on = fleet_on_dp(margins, h, on_now, held, fl.hold_on, fl.hold_off)
            else:
                want_on = self.mining_on(fl, be, prices, p_known)
            want = f.units if want_on else 0
            # hold times (a constraint for every policy; a one-interval hold never binds:
            # the last change was at least one interval ago)
            if want != fm.units_online and fm.changed_at is not None and long_hold:
                if want < fm.units_online and held < fl.hold_on:
                    want = fm.units_online
                    reasons.append(f"{f.name}: kept on, min on-time")
                elif want > fm.units_online and held < fl.hold_off:
                    want = fm.units_online
                    reasons.append(f"{f.name}: kept off, min off-time")
            if want > fm.units_online and fl.hold_on > 1 and upcoming:
                hold_end = t + cx.step * fl.hold_on
                if any(e.obligation_kind != "advisory" and t < e.start < hold_end for e in upcoming):
                    want = fm.units_online
                    reasons.append(f"{f.name}: not restarted, min on-time would reach into a DR event")
            if want != fm.units_online:
                reasons.append(f"{f.name} {'on' if want else 'off'}: expected ${p_exp:,.2f} vs breakeven ${be:,.2f}/MWh")
            units[f.name] = want

        # -- GPUs -----------------------------------------------------------------------
        gplans: dict[str, list[Any]] = {}  # class -> [cfg, demand, mw_gpu, running, tier]
        if site.gpus is not None:
            fleet = site.gpus
            demand = state.gpu_demand() if state.gpu_jobs else None
            for cl in cx.classes:
                cfg = cl.cfg
                if demand is not None:
                    dm = demand[cl.name]
                    gpus = dm.gpus
                    mw_gpu = (dm.power_kw / dm.gpus if dm.gpus else fleet.power_kw_per_gpu) * fleet.pue / 1000.0
                else:
                    gpus = cl.default_gpus
                    mw_gpu = cl.default_mw_gpu
                plan = [cfg, gpus, mw_gpu, gpus, 0]
                gplans[cl.name] = plan
                if gpus == 0 or not self.flex_gpus:
                    continue
                if p_dec * mw_gpu < cl.cap_min_usd_h:
                    # below the price at which any power cap pays: full power (closed form)
                    tier, margin = 0, cl.v0 - p_dec * mw_gpu * cl.pf0
                else:
                    tier, margin = _best_tier(cfg, cx.tiers, mw_gpu, p_dec, cfg.power_cappable)
                plan[4] = tier
                if tier:
                    reasons.append(f"{cl.name}: power-capped to {cx.tiers[tier][0]:.0%}")
                if not cfg.interruptible:
                    continue
                cm = mem.classes[cl.name]
                paused_for = int((t - cm.paused_since) / cx.step) if cm.gpus_paused and cm.paused_since else None
                if paused_for is not None and paused_for < cl.min_pause:
                    plan[3] = max(gpus - cm.gpus_paused, 0)
                    reasons.append(f"{cl.name}: stays paused, min pause not reached")
                    continue
                if margin >= 0 and paused_for is None:
                    # closed form: running now pays; pausing later is decided later
                    continue
                if cl.pause_cost_per_gpu <= 0 and cl.min_pause <= 1:
                    pause = margin < 0
                else:
                    raw = self.full_path(inp, p_known, raw)
                    prices = _plus(raw, adders) if adders else raw
                    margins = [margin] + [
                        _best_tier(cfg, cx.tiers, mw_gpu, p, cfg.power_cappable)[1] for p in prices[1:]
                    ]
                    if len(margins) < cl.min_pause:
                        margins += [margins[-1]] * (cl.min_pause - len(margins))
                    pause = pause_dp(margins, h, cl.pause_cost_per_gpu, cl.min_pause, paused_for)
                if pause:
                    plan[3] = 0
                    reasons.append(f"{cl.name} {'deferred' if cfg.deferrable else 'paused'}: expected ${p_exp:,.2f}/MWh")

        # -- hard limits: DR obligations and the interconnect ------------------------------
        limit = site.interconnect_mw
        limit_src = "interconnect"
        for e in in_force:
            lim = e.obligation_mw if e.obligation_kind == "firm_service_level" else (e.baseline_mw or 0.0) - e.obligation_mw  # < 0: cannot be met
            if lim < limit:
                limit, limit_src = lim, f"DR {e.program} {e.event_id}"
        tiers = cx.tiers

        def load() -> float:
            x = 0.0
            for fl in cx.fleets:
                x += units[fl.cfg.name] * fl.mw_unit
            for g in gplans.values():
                x += g[3] * g[2] * tiers[g[4]][0]
            return x

        total = load()
        if total > limit + 1e-9:
            reasons.append(f"limit {limit:.2f} MW from {limit_src}")
            for f in cx.shed_fleets:
                excess = total - limit
                if excess <= 1e-9:
                    break
                cut = min(units[f.name], math.ceil(excess / f.grid_mw_per_unit - 1e-9))
                if cut > 0:
                    units[f.name] -= cut
                    reasons.append(f"{f.name}: {cut} units off for {limit_src}")
                    total = load()
            for c in DR_SHED_ORDER:
                g = gplans.get(c)
                if g is None or total - limit <= 1e-9:
                    continue
                if len(tiers) > 1 and g[0].power_cappable and g[4] < len(tiers) - 1:
                    g[4] = len(tiers) - 1
                    reasons.append(f"{c}: capped to {tiers[g[4]][0]:.0%} for {limit_src}")
                    total = load()
                    if total - limit <= 1e-9:
                        break
                per = g[2] * tiers[g[4]][0]
                n = min(g[3], math.ceil((total - limit) / per - 1e-9)) if per > 0 else 0
                if n > 0:
                    g[3] -= n
                    reasons.append(f"{c}: {n} GPUs paused for {limit_src}")
                    total = load()
        shortfall = total - limit if (in_force or total > site.interconnect_mw) and total > limit + 1e-9 else 0.0
        if shortfall:
            reasons.append(f"shortfall {shortfall:.2f} MW: load cannot go below {total:.2f} MW")

        # -- pause costs (only a class running fewer GPUs than it wants can start a pause) ----
        pause_cost = 0.0
        for cl in cx.classes:
            g = gplans[cl.name]
            if g[3] < g[1]:
                newly = max((g[1] - g[3]) - mem.classes[cl.name].gpus_paused, 0)
                pause_cost += newly * cl.pause_cost_per_gpu
        return cx, state, t, p_known, p_exp, hp, units, gplans, total, limit, in_force, shortfall, pause_cost, reasons

    def _fourcp_adders(self, cx: _SiteCtx, t: datetime, adv: list) -> list[float]:
        """$/MWh that curtailing is worth in each interval of the horizon under 4CP alerts.

        Cutting dMW in the interval that turns out to be the month's system peak saves
        ``rate x dMW / 4`` (the charge is on the average load of the 4 summer peaks). The peak
        is in the alert window with probability ``fourcp_peak_probability``, in any one of its
        ``n`` intervals alike, so each interval's curtailment is worth
        ``P x rate / (4 n h)`` $/MWh: added to the decision price (not to the P&L, whose terms
        are the energy identity of DESIGN.md); the merit order and the pause DP then weigh it
        against each load's margin like any price."""
        n = max(1, self.horizon)
        out = [0.0] * n
        step = cx.step
        for e in adv:
            n_e = max(1, math.ceil((e.end - e.start) / step))
            a = cx.fourcp_prob * cx.fourcp_rate / (4.0 * n_e * cx.h)
            for k in range(n):
                s = t + step * k
                if e.start <= s < e.end:
                    out[k] += a
        return out

    def _static(self, cx: _SiteCtx, state: SiteState, hp, units, gplans, total, limit, in_force, shortfall):
        """The price-independent part of an action: (fleets, gpus, mining $, gpu $, paused jobs,
        dr, penalty rate). Cached: between two changes of the dispatch it is the same objects."""
        key = (hp, tuple(units.values()), tuple(map(_PLAN_KEY, gplans.values())),
               total, limit, shortfall, tuple(e.event_id for e in in_force) if in_force else ())
        hit = self._st.get(key) if not state.gpu_jobs else None
        if hit is not None:
            return hit
        site = cx.site
        h = cx.h
        fleets = []
        mining_rev = 0.0
        fd_cache = self._fd
        for f in site.miner_fleets:
            n = units[f.name]
            ph = n * f.hashrate_th / 1000.0
            if hp is not None:
                mining_rev += ph * hp * (1.0 - f.pool_fee) * h / 24.0
            fd = fd_cache.get((f.name, n, hp))
            if fd is None:
                if len(fd_cache) > 4096:
                    fd_cache.clear()
                be = f.breakeven_grid_usd_mwh(hp) if hp is not None else 0.0
                fd = fd_cache[(f.name, n, hp)] = trusted(FleetDispatch, {
                    "schema_version": 1, "fleet": f.name, "units_online": n, "units_total": f.units,
                    "power_mw": n * f.grid_mw_per_unit, "hashrate_ph": ph, "breakeven_usd_mwh": be})
            fleets.append(fd)
        tiers = cx.tiers
        gpus = []
        gpu_value = 0.0
        paused_jobs: list[str] = []
        for c, g in gplans.items():
            cfg, demand, mw_gpu, running, tier = g
            pf, thr = tiers[tier]
            gpu_value += running * cfg.value_usd_per_gpu_hour * thr * h
            gkey = (c, demand, running, tier, mw_gpu)
            gd = self._gd.get(gkey)
            if gd is None:
                if len(self._gd) > 4096:
                    self._gd.clear()
                gd = self._gd[gkey] = trusted(GpuClassDispatch, {
                    "schema_version": 1, "gpu_class": c, "gpus_demand": demand, "gpus_running": running,
                    "power_cap_tier": tier, "power_fraction": pf, "throughput_fraction": thr,
                    "power_mw": running * mw_gpu * pf})
            gpus.append(gd)
            if running < demand and state.gpu_jobs:
                paused_jobs.extend(_jobs_to_pause(state, c, demand - running))  # type: ignore[arg-type]
        penalty_rate = max((e.penalty_usd_mwh for e in in_force), default=0.0)
        dr = trusted(DrStatusInAction, {
            "schema_version": 1, "active_event_ids": [e.event_id for e in in_force],
            "limit_mw": limit if in_force else None, "shortfall_mw": shortfall})
        out = (fleets, gpus, mining_rev, gpu_value, paused_jobs, dr, penalty_rate)
        if not state.gpu_jobs:
            if len(self._st) > 4096:
                self._st.clear()
            self._st[key] = out
        return out

    def _expected(self, cx: _SiteCtx, state: SiteState, t: datetime, p_exp, hp, units, gplans, total, limit,
                  in_force, shortfall, pause_cost, reasons) -> tuple:
        """The static part and the expected P&L terms: (fleets, gpus, paused jobs, dr, mining $,
        gpu $, energy $, hedge $, penalty $, net $); says "no change" when nothing else did."""
        h = cx.h
        fleets, gpus, mining_rev, gpu_value, paused_jobs, dr, penalty_rate = self._static(
            cx, state, hp, units, gplans, total, limit, in_force, shortfall)
        gpu_value -= pause_cost
        energy = p_exp * total * h
        hedge = (p_exp - cx.hedge_k) * cx.hedge_q * h
        penalty = shortfall * h * penalty_rate
        net = mining_rev + gpu_value - energy + hedge + cx.dr_payment - penalty
        if not math.isfinite(net):
            raise EngineError(f"non-finite P&L at {t.isoformat()}: expected price {p_exp!r}")
        if not reasons:
            reasons.append(f"no change: expected ${p_exp:,.2f}/MWh")
        return fleets, gpus, paused_jobs, dr, mining_rev, gpu_value, energy, hedge, penalty, net

    def _row(self, cx: _SiteCtx, state: SiteState, t: datetime, p_known, p_exp, hp, units, gplans,
             total, limit, in_force, shortfall, pause_cost, reasons) -> DecisionRow:
        fleets, gpus, _, dr, mining_rev, gpu_value, _, _, penalty, _ = self._expected(
            cx, state, t, p_exp, hp, units, gplans, total, limit, in_force, shortfall, pause_cost, reasons)
        site = cx.site
        return DecisionRow(t, p_known, p_exp, hp, site.interval_minutes, total,
                           max(cx.hedge_q - total, 0.0) if site.hedge else 0.0, fleets, gpus, dr.limit_mw,
                           dr.shortfall_mw, mining_rev, gpu_value, cx.dr_payment, penalty, "; ".join(reasons))

    def _action(self, cx: _SiteCtx, state: SiteState, t: datetime, p_known, p_exp, hp, units, gplans,
                total, limit, in_force, shortfall, pause_cost, reasons) -> DispatchAction:
        site = cx.site
        fleets, gpus, paused_jobs, dr, mining_rev, gpu_value, energy, hedge, penalty, net = self._expected(
            cx, state, t, p_exp, hp, units, gplans, total, limit, in_force, shortfall, pause_cost, reasons)
        terms = trusted(PnlTerms, {
            "schema_version": 1, "mining_revenue_usd": mining_rev, "gpu_value_usd": gpu_value,
            "energy_cost_usd": energy, "hedge_pnl_usd": hedge, "dr_payment_usd": cx.dr_payment,
            "dr_penalty_usd": penalty, "net_usd": net})
        return trusted(DispatchAction, {
            "schema_version": 1, "site_id": site.site_id, "interval_start": t,
            "interval_minutes": site.interval_minutes, "engine": self.name,
            "price_known_usd_mwh": p_known, "price_expected_usd_mwh": p_exp,
            "hashprice_usd_per_ph_day": hp, "fleets": fleets, "gpus": gpus,
            "paused_job_ids": list(paused_jobs), "load_mw": total,
            "sold_back_mw": max(cx.hedge_q - total, 0.0) if site.hedge else 0.0,
            "dr": dr, "expected": terms, "reasons": reasons, "watchdog": False})


# ---------------------------------------------------------------------------------------
# baselines of DESIGN.md


class AlwaysOnPolicy(PlanningCore):
    """No flexibility: every miner and GPU runs (DR limits and the interconnect still hold)."""

    name = "always-on"
    flex_mining = False
    flex_gpus = False


class FixedStrikePolicy(PlanningCore):
    """Curtail all mining while the last known RT price is above a fixed strike; GPUs run."""

    flex_gpus = False

    def __init__(self, strike_usd_mwh: float = 100.0) -> None:
        super().__init__()
        self.strike = strike_usd_mwh
        self.name = f"fixed-strike-{strike_usd_mwh:g}"

    def mining_on(self, fleet, be, prices, p_known) -> bool:
        return p_known <= self.strike


class MyopicPolicy(PlanningCore):
    """Myopic breakeven: the last known RT price is the price of every coming interval
    (the merit order of DESIGN.md)."""

    name = "myopic-breakeven"

    def price_path(self, inp, p_known):
        return [p_known]


class PerfectForesightPolicy(PlanningCore):
    """The upper bound: plans with the REALIZED prices of the coming intervals.

    This is the only policy allowed to peek, through the ``oracle`` it is given (interval
    start -> realized RT price); it exists to score the others and must never be used live.
    Same economics and constraints as every other policy (same core, same accounting).
    """

    name = "perfect-foresight"

    def __init__(self, oracle: dict[datetime, float], horizon: int = DEFAULT_HORIZON) -> None:
        super().__init__()
        self.oracle = oracle
        self.horizon = horizon

    def price_path(self, inp, p_known):
        return [self.oracle.get(inp.interval_start, p_known)]

    def full_path(self, inp, p_known, prices):
        if len(prices) > 1:
            return prices
        t = inp.interval_start
        step = self.ctx(inp.site).step
        out = []
        last = p_known
        for k in range(self.horizon):
            last = self.oracle.get(t + step * k, last)
            out.append(last)
        return out


class RollingHorizonPolicy(PlanningCore):
    """The engine: rolling-horizon DP over the online-learned price forecast."""

    # /2: body hierarchy + online spike-probability tail; /3: + in-spike decay of the horizon
    # path learned online (forecast.py)
    name = "rolling-horizon/3"

    def __init__(self, horizon: int = DEFAULT_HORIZON, forecaster=None) -> None:
        super().__init__()
        from dispatch.forecast import OnlineForecaster

        self.horizon = horizon
        self.forecaster = forecaster or OnlineForecaster()

    def price_path(self, inp, p_known):
        return self.forecaster.path(inp.site, inp.state, inp.interval_start, 1)

    def full_path(self, inp, p_known, prices):
        if len(prices) > 1:
            return prices
        return self.forecaster.extend(inp.site, inp.state, inp.interval_start, prices[0], self.horizon)
