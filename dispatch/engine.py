"""The dispatch engine's contract: one pure function of (site, what is known, engine memory,
interval).

No I/O, no wall clock: the Faust worker and the in-process backtest call the same code with
the same inputs and get the same decision. Policies implement :class:`Policy`; they live in
:mod:`dispatch.policies` (the engine, :class:`~dispatch.policies.RollingHorizonPolicy`, and
the baselines of DESIGN.md, all on one decision core).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import NamedTuple, Protocol

from dispatch.state import SiteState
from schemas.action import DispatchAction
from schemas.base import GPU_CLASSES, GpuClass
from schemas.site import SiteConfig

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
    # the fleets and gpus lists of the action remembered last: the engine hands out the same
    # (immutable) lists while the dispatch does not change, and then there is nothing to carry
    last_fleets: list | None = field(default=None, repr=False, compare=False)
    last_gpus: list | None = field(default=None, repr=False, compare=False)

    @classmethod
    def initial(cls, site: SiteConfig) -> "EngineMemory":
        return cls(
            fleets={f.name: FleetMemory(units_online=f.units) for f in site.miner_fleets},
            classes={c: ClassMemory() for c in GPU_CLASSES},
        )


class DecisionInput(NamedTuple):
    """What a policy decides from (a NamedTuple: built once per policy and interval, ~5x
    cheaper than a frozen dataclass, whose __init__ goes through object.__setattr__)."""

    site: SiteConfig
    state: SiteState
    memory: EngineMemory
    interval_start: datetime


class Policy(Protocol):
    name: str

    def decide(self, inp: DecisionInput) -> DispatchAction: ...


class DecisionRow(NamedTuple):
    """What the backtest keeps of a decision (a row of its ``decisions`` table before
    settlement), read while the action is fresh: read back after the pass, 35k actions'
    fields cost ~4x more (each object is a cache miss). :meth:`of` takes it from an action;
    the planning policies can give it without building the action (``decide_row``)."""

    interval_start: datetime
    price_known: float | None
    price_expected: float | None
    hashprice: float | None
    interval_minutes: int
    load_mw: float
    sold_back_mw: float
    fleets: list
    gpus: list
    dr_limit_mw: float | None
    shortfall_mw: float
    mining: float
    gpu_value: float
    dr_payment: float
    dr_penalty: float
    reasons: str

    @classmethod
    def of(cls, a: DispatchAction) -> DecisionRow:
        e, d = a.expected, a.dr
        return cls(a.interval_start, a.price_known_usd_mwh, a.price_expected_usd_mwh, a.hashprice_usd_per_ph_day,
                   a.interval_minutes, a.load_mw, a.sold_back_mw, a.fleets, a.gpus, d.limit_mw, d.shortfall_mw,
                   e.mining_revenue_usd, e.gpu_value_usd, e.dr_payment_usd, e.dr_penalty_usd, "; ".join(a.reasons))


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
    remember_dispatch(memory, action.interval_start, action.fleets, action.gpus)


def remember_dispatch(memory: EngineMemory, t: datetime, fleets: list, gpus: list) -> None:
    """:func:`remember` from the fleets and GPU classes dispatched for the interval at ``t``."""
    if fleets is memory.last_fleets and gpus is memory.last_gpus:
        return
    memory.last_fleets, memory.last_gpus = fleets, gpus
    for f in fleets:
        fm = memory.fleets[f.fleet]
        if f.units_online != fm.units_online:
            fm.units_online = f.units_online
            fm.changed_at = t
    for g in gpus:
        cm = memory.classes[g.gpu_class]
        paused = g.gpus_demand - g.gpus_running
        if paused > 0 and cm.gpus_paused == 0:
            cm.paused_since = t
        elif paused == 0:
            cm.paused_since = None
        cm.gpus_paused = paused
