"""The dispatch engine: one pure function of (site, what is known, engine memory, interval).

No I/O, no wall clock: the Faust worker and the in-process backtest call the same code with
the same inputs and get the same decision. Policies implement :class:`Policy`; the first one
is the myopic merit order of DESIGN.md with demand-response obligations as hard limits.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Protocol

from dispatch.accounting import (
    Terms,
    dr_capacity_payment_usd,
    energy_cost_usd,
    hedge_pnl_usd,
    mining_revenue_usd,
    sold_back_mw,
)
from dispatch.state import SiteState
from schemas.action import DispatchAction, DrStatusInAction, FleetDispatch, GpuClassDispatch
from schemas.base import GPU_CLASSES, GpuClass
from schemas.site import GpuClassConfig, MinerFleet, SiteConfig
from wattmix.errors import EngineError

#: DR shedding order of DESIGN.md: mining first, then batch, training, inference last.
DR_SHED_ORDER: tuple[GpuClass, ...] = ("batch", "training", "inference")


@dataclass
class FleetMemory:
    units_online: int
    changed_at: datetime | None = None


@dataclass
class ClassMemory:
    gpus_paused: int = 0
    paused_since: datetime | None = None


@dataclass
class EngineMemory:
    """What the engine remembers between intervals (hold times, pauses)."""

    fleets: dict[str, FleetMemory] = field(default_factory=dict)
    classes: dict[GpuClass, ClassMemory] = field(default_factory=dict)

    @classmethod
    def initial(cls, site: SiteConfig) -> "EngineMemory":
        return cls(
            fleets={f.name: FleetMemory(units_online=f.units) for f in site.miner_fleets},
            classes={c: ClassMemory() for c in GPU_CLASSES},
        )


@dataclass(frozen=True)
class DecisionInput:
    site: SiteConfig
    state: SiteState
    memory: EngineMemory
    interval_start: datetime


class Policy(Protocol):
    name: str

    def decide(self, inp: DecisionInput) -> DispatchAction: ...


# ---------------------------------------------------------------------------------------
@dataclass
class _GpuPlan:
    cfg: GpuClassConfig
    demand_gpus: int
    mw_per_gpu: float  # grid MW per GPU at full power (IT x PUE)
    running: int
    tier: int
    newly_paused: int = 0


def expected_price(state: SiteState, t: datetime) -> float | None:
    """Myopic expectation: the last real-time price known at t."""
    last = state.last_rt
    return None if last is None else last[1]


class MeritOrderPolicy:
    """Myopic merit order: each block of load runs while its value per MWh beats the last
    known real-time price; DR obligations are hard limits met in DESIGN.md's order."""

    name = "merit-order/1"

    def decide(self, inp: DecisionInput) -> DispatchAction:
        site, state, mem, t = inp.site, inp.state, inp.memory, inp.interval_start
        d = site.interval_minutes
        h = d / 60.0
        p_known = expected_price(state, t)
        if p_known is None:
            raise EngineError("no real-time price known: the clock must not start before the first price")
        p_exp = p_known
        reasons: list[str] = []
        hp = state.hashprice.usd_per_ph_day if state.hashprice else None

        upcoming = state.upcoming_obligations(t)
        in_force = [e for e in upcoming if e.start <= t and e.obligation_kind != "advisory"]

        # -- miners: run a fleet while the expected price is under its breakeven -----------
        units: dict[str, int] = {}
        for f in site.miner_fleets:
            fm = mem.fleets[f.name]
            if hp is None:
                units[f.name] = fm.units_online
                reasons.append(f"{f.name}: hashprice unknown, kept at {fm.units_online} units")
                continue
            be = f.breakeven_grid_usd_mwh(hp)
            want = f.units if p_exp < be else 0
            if want > fm.units_online and self._would_hold_into_event(f, t, upcoming):
                want = fm.units_online
                reasons.append(f"{f.name}: not restarted, min on-time would reach into a DR event")
            want = self._respect_hold(f, fm, want, t, reasons)
            if want != fm.units_online:
                verb = "on" if want > fm.units_online else "off"
                reasons.append(f"{f.name} {verb}: expected ${p_exp:,.2f}/MWh vs breakeven ${be:,.2f}/MWh")
            units[f.name] = want

        # -- GPUs: best power-cap tier, pause when it pays -------------------------------
        gplans = self._gpu_plans(site, state, mem, t, p_exp, reasons)

        # -- demand response and interconnect: hard limits --------------------------------
        limit = site.interconnect_mw
        limit_src = "interconnect"
        for e in in_force:
            if e.obligation_kind == "firm_service_level":
                lim = e.obligation_mw
            else:  # reduction against the program's baseline
                lim = (e.baseline_mw or 0.0) - e.obligation_mw  # < 0: cannot be met
            if lim < limit:
                limit, limit_src = lim, f"DR {e.program} {e.event_id} r{e.revision}"

        def load() -> float:
            mining = sum(units[f.name] * f.grid_mw_per_unit for f in site.miner_fleets)
            gpu = sum(self._gpu_mw(site, g) for g in gplans.values())
            return mining + gpu

        total = load()
        if total > limit + 1e-9:
            reasons.append(f"limit {limit:.2f} MW from {limit_src}: load {total:.2f} MW must come down")
            # 1. mining, least efficient fleet first, unit by unit
            for f in sorted(site.miner_fleets, key=lambda f: -f.j_per_th):
                excess = load() - limit
                if excess <= 1e-9:
                    break
                cut = min(units[f.name], math.ceil(excess / f.grid_mw_per_unit - 1e-9))
                if cut > 0:
                    units[f.name] -= cut
                    reasons.append(f"{f.name}: {cut} units off for {limit_src}")
            # 2. GPUs in DR order: cap to the lowest tier, then pause GPUs
            for c in DR_SHED_ORDER:
                g = gplans.get(c)
                if g is None:
                    continue
                excess = load() - limit
                if excess <= 1e-9:
                    break
                tiers = site.gpus.power_cap_tiers if site.gpus else []
                if len(tiers) > 1 and g.tier < len(tiers) - 1:
                    g.tier = len(tiers) - 1
                    reasons.append(f"{c}: capped to {tiers[g.tier].power_fraction:.0%} power for {limit_src}")
                excess = load() - limit
                if excess <= 1e-9:
                    break
                per = g.mw_per_gpu * (tiers[g.tier].power_fraction if tiers else 1.0)
                n = min(g.running, math.ceil(excess / per - 1e-9)) if per > 0 else 0
                if n > 0:
                    g.running -= n
                    reasons.append(f"{c}: {n} GPUs paused for {limit_src}")

        total = load()
        shortfall = max(total - limit, 0.0) if in_force or total > site.interconnect_mw else 0.0
        if shortfall > 1e-9:
            reasons.append(f"shortfall {shortfall:.2f} MW: load cannot go below {total:.2f} MW")
        else:
            shortfall = 0.0

        # -- pause accounting: newly paused GPUs pay their checkpoint/restart cost --------
        pause_cost = 0.0
        for c, g in gplans.items():
            cm = mem.classes[c]
            paused_now = g.demand_gpus - g.running
            g.newly_paused = max(paused_now - cm.gpus_paused, 0)
            pause_cost += g.newly_paused * g.cfg.value_usd_per_gpu_hour * g.cfg.pause_cost_minutes / 60.0

        return self._action(site, state, t, p_known, p_exp, hp, units, gplans, total, limit, in_force,
                            shortfall, pause_cost, reasons)

    # -- helpers ----------------------------------------------------------------------------
    @staticmethod
    def _would_hold_into_event(f: MinerFleet, t: datetime, upcoming) -> bool:
        if not f.min_on_minutes:
            return False
        hold_end = t + timedelta(minutes=f.min_on_minutes)
        return any(e.obligation_kind != "advisory" and t < e.start < hold_end for e in upcoming)

    @staticmethod
    def _respect_hold(f: MinerFleet, fm: FleetMemory, want: int, t: datetime, reasons: list[str]) -> int:
        if want == fm.units_online or fm.changed_at is None:
            return want
        held = (t - fm.changed_at).total_seconds() / 60.0
        if want < fm.units_online and held < f.min_on_minutes:
            reasons.append(f"{f.name}: kept on, min on-time {f.min_on_minutes} min not reached")
            return fm.units_online
        if want > fm.units_online and held < f.min_off_minutes:
            reasons.append(f"{f.name}: kept off, min off-time {f.min_off_minutes} min not reached")
            return fm.units_online
        return want

    @staticmethod
    def _gpu_mw(site: SiteConfig, g: _GpuPlan) -> float:
        tiers = site.gpus.power_cap_tiers if site.gpus else []
        pf = tiers[g.tier].power_fraction if tiers else 1.0
        return g.running * g.mw_per_gpu * pf

    def _gpu_plans(self, site, state, mem, t, p_exp, reasons) -> dict[GpuClass, _GpuPlan]:
        out: dict[GpuClass, _GpuPlan] = {}
        if site.gpus is None:
            return out
        fleet = site.gpus
        demand = state.gpu_demand()
        have_telemetry = any(d.jobs for d in demand.values())
        tiers = fleet.power_cap_tiers
        for cfg in fleet.classes:
            c = cfg.gpu_class
            if have_telemetry:
                dm = demand[c]
                gpus = dm.gpus
                it_kw_per_gpu = dm.power_kw / dm.gpus if dm.gpus else fleet.power_kw_per_gpu
            else:
                gpus = int(round(fleet.count * cfg.share))
                it_kw_per_gpu = fleet.power_kw_per_gpu
            mw_per_gpu = it_kw_per_gpu * fleet.pue / 1000.0
            g = _GpuPlan(cfg=cfg, demand_gpus=gpus, mw_per_gpu=mw_per_gpu, running=gpus, tier=0)
            out[c] = g
            if gpus == 0:
                continue
            # per-GPU hourly margin at each tier: value x throughput - price x MW
            margins = [
                cfg.value_usd_per_gpu_hour * tr.throughput_fraction - p_exp * mw_per_gpu * tr.power_fraction
                for tr in tiers
            ]
            allowed = range(len(tiers)) if cfg.power_cappable else range(1)
            best = max(allowed, key=lambda k: (margins[k], -k))
            g.tier = best
            if best:
                reasons.append(f"{c}: power-capped to {tiers[best].power_fraction:.0%} at expected ${p_exp:,.2f}/MWh")
            cm = mem.classes[c]
            if not cfg.interruptible:
                continue
            # pause when the margin is negative and the saving over the minimum pause beats its cost
            saving_per_gpu = -margins[best] * max(cfg.min_pause_minutes, site.interval_minutes) / 60.0
            cost_per_gpu = cfg.value_usd_per_gpu_hour * cfg.pause_cost_minutes / 60.0
            paused_for = (t - cm.paused_since).total_seconds() / 60.0 if cm.paused_since else None
            if cm.gpus_paused and paused_for is not None and paused_for < cfg.min_pause_minutes:
                g.running = max(gpus - cm.gpus_paused, 0)
                reasons.append(f"{c}: stays paused, min pause {cfg.min_pause_minutes} min not reached")
            elif margins[best] < 0 and (cm.gpus_paused or saving_per_gpu > cost_per_gpu):
                g.running = 0
                verb = "deferred" if cfg.deferrable else "paused"
                reasons.append(
                    f"{c} {verb}: expected ${p_exp:,.2f}/MWh above its value "
                    f"${cfg.value_usd_per_gpu_hour * tiers[best].throughput_fraction / (mw_per_gpu * tiers[best].power_fraction):,.0f}/MWh"
                )
        return out

    def _action(self, site, state, t, p_known, p_exp, hp, units, gplans, total, limit, in_force,
                shortfall, pause_cost, reasons) -> DispatchAction:
        h = site.interval_minutes / 60.0
        fleets = []
        mining_rev = 0.0
        for f in site.miner_fleets:
            n = units[f.name]
            ph = n * f.hashrate_th / 1000.0
            if hp is not None:
                mining_rev += mining_revenue_usd(ph, hp, f.pool_fee, h)
            fleets.append(
                FleetDispatch(
                    fleet=f.name,
                    units_online=n,
                    units_total=f.units,
                    power_mw=n * f.grid_mw_per_unit,
                    hashrate_ph=ph,
                    breakeven_usd_mwh=f.breakeven_grid_usd_mwh(hp) if hp is not None else 0.0,
                )
            )
        tiers = site.gpus.power_cap_tiers if site.gpus else []
        gpus = []
        gpu_value = -pause_cost
        paused_jobs: list[str] = []
        for c, g in gplans.items():
            tr = tiers[g.tier] if tiers else None
            thr = tr.throughput_fraction if tr else 1.0
            gpu_value += g.running * g.cfg.value_usd_per_gpu_hour * thr * h
            gpus.append(
                GpuClassDispatch(
                    gpu_class=c,
                    gpus_demand=g.demand_gpus,
                    gpus_running=g.running,
                    power_cap_tier=g.tier,
                    power_fraction=tr.power_fraction if tr else 1.0,
                    throughput_fraction=thr,
                    power_mw=self._gpu_mw(site, g),
                )
            )
            if g.running < g.demand_gpus:
                paused_jobs.extend(_jobs_to_pause(state, c, g.demand_gpus - g.running))
        penalty_rate = max((e.penalty_usd_mwh for e in in_force), default=0.0)
        terms = Terms(
            mining_revenue_usd=mining_rev,
            gpu_value_usd=gpu_value,
            energy_cost_usd=energy_cost_usd(p_exp, total, h),
            hedge_pnl_usd=hedge_pnl_usd(site, p_exp, h),
            dr_payment_usd=dr_capacity_payment_usd(site, h),
            dr_penalty_usd=shortfall * h * penalty_rate,
        )
        if not reasons:
            reasons.append(f"all load runs: expected ${p_exp:,.2f}/MWh under every breakeven")
        return DispatchAction(
            site_id=site.site_id,
            interval_start=t,
            interval_minutes=site.interval_minutes,
            engine=self.name,
            price_known_usd_mwh=p_known,
            price_expected_usd_mwh=p_exp,
            hashprice_usd_per_ph_day=hp,
            fleets=fleets,
            gpus=gpus,
            paused_job_ids=paused_jobs,
            load_mw=total,
            sold_back_mw=sold_back_mw(site, total),
            dr={
                "active_event_ids": [e.event_id for e in in_force],
                "limit_mw": limit if in_force else None,
                "shortfall_mw": shortfall,
            },
            expected=terms.model(),
            reasons=reasons,
        )


def _jobs_to_pause(state: SiteState, c: GpuClass, gpus: int) -> list[str]:
    """Whole jobs, in job-id order, until at least ``gpus`` GPUs are covered."""
    out, n = [], 0
    for job in state.jobs_of_class(c):
        if n >= gpus:
            break
        out.append(job.job_id)
        n += job.gpus
    return out


def remember(memory: EngineMemory, action: DispatchAction) -> None:
    """Carry an action's state into the engine memory (hold times, pauses)."""
    t = action.interval_start
    for f in action.fleets:
        fm = memory.fleets[f.fleet]
        if f.units_online != fm.units_online:
            fm.units_online = f.units_online
            fm.changed_at = t
    for g in action.gpus:
        cm = memory.classes[g.gpu_class]
        paused = g.gpus_demand - g.gpus_running
        if paused > 0 and cm.gpus_paused == 0:
            cm.paused_since = t
        elif paused == 0:
            cm.paused_since = None
        cm.gpus_paused = paused
