"""One site's event-time processor: fold events, decide each interval as its boundary passes.

Both the Faust worker and the backtest feed events into a :class:`SiteProcessor` in
event-time order; it is the only place where decisions are triggered, so the two paths
cannot disagree.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from dispatch import watchdog
from dispatch.clock import IntervalClock
from dispatch.engine import (
    DecisionInput,
    DecisionRow,
    EngineMemory,
    Policy,
    remember,
    remember_dispatch,
)
from dispatch.state import SiteState
from schemas.action import DispatchAction
from schemas.feeds import FeedRecord, GridPrice
from schemas.site import SiteConfig
from wattmix.errors import EngineError


@dataclass
class Outcome:
    actions: list[DispatchAction] = field(default_factory=list)
    late: bool = False


class SiteProcessor:
    def __init__(self, site: SiteConfig, policy: Policy | None = None) -> None:
        self.site = site
        if policy is None:
            from dispatch.policies import RollingHorizonPolicy

            policy = RollingHorizonPolicy()
        self.policy = policy
        self.state = SiteState(site_id=site.site_id)
        self.memory = EngineMemory.initial(site)
        self.clock = IntervalClock(site.interval_minutes)

    def process(self, record: FeedRecord) -> Outcome:
        """Decide every interval whose boundary this event's time has passed, then fold it."""
        t = self._event_time(record)
        out = Outcome(late=self.clock.is_late(t))
        for boundary in self.clock.due(t):
            out.actions.append(self.decide(boundary))
        self._fold(record, t)
        return out

    def _event_time(self, record: FeedRecord) -> datetime:
        if record.site_id != self.site.site_id:
            raise EngineError(f"event for site {record.site_id!r} sent to processor of {self.site.site_id!r}")
        return record.event_time()

    def _fold(self, record: FeedRecord, t: datetime) -> None:
        self.state.fold(record)
        # the clock starts with the first real-time price: before it nothing can be decided
        if not self.clock.started and isinstance(record, GridPrice) and record.market == "RT":
            self.clock.start(t)

    def decide_through(self, boundary: datetime) -> list[DispatchAction]:
        """Decide every boundary up to and including ``boundary`` (a restart's last one)."""
        return [self.decide(b) for b in self.clock.due(boundary + timedelta(microseconds=1))]

    def decide(self, boundary: datetime) -> DispatchAction:
        return decide_one(self.site, self.state, self.memory, self.policy, boundary)


def decide_one(site: SiteConfig, state: SiteState, memory: EngineMemory, policy: Policy, boundary: datetime,
               stale: bool = True) -> DispatchAction:
    """One decision: the policy, then the watchdog's safe state, then the engine memory (hold
    times, pauses). ``stale=False`` says the caller has checked that no feed is stale at
    ``boundary`` (the watchdog would return the action unchanged)."""
    action = policy.decide(DecisionInput(site, state, memory, boundary))
    if stale:
        action = watchdog.apply(site, state, action)  # stale feeds: safe state
    remember(memory, action)
    return action


class SharedPass:
    """Several policies over one event stream (the backtest): one state fold, one clock and
    one watchdog check per interval, an engine memory per policy. Policies only read the
    state, so each gets exactly the decisions a ``SiteProcessor`` of its own would give, and
    the fold, the clock and the watchdog check (~0.5 s of a 2024 year) are paid once per pass.
    """

    def __init__(self, site: SiteConfig, policies: list[Policy]) -> None:
        # the first policy's processor folds and keeps the clock for all of them
        self.proc = SiteProcessor(site, policies[0])
        self.policies = list(policies)
        self.memories = [self.proc.memory] + [EngineMemory.initial(site) for _ in self.policies[1:]]

    def run(self, records: Iterable[FeedRecord], rows: bool = False) -> list[list[Any]]:
        """Process event-time-ordered records (``SiteProcessor.process`` for every policy at
        once, without its per-event ``Outcome``); the actions of each policy, in policy order,
        or with ``rows`` their :class:`DecisionRow`s: a policy with ``decide_row`` (the
        planning policies) then gives the row without building the action, except when a feed
        is stale (the watchdog rewrites actions)."""
        proc = self.proc
        site, state, due, event_time, fold = proc.site, proc.state, proc.clock.due, proc._event_time, proc._fold
        lanes = [(pol, mem, [], getattr(pol, "decide_row", None) if rows else None)
                 for pol, mem in zip(self.policies, self.memories)]
        row_of = DecisionRow.of
        for r in records:
            t = event_time(r)
            for boundary in due(t):
                stale = bool(watchdog.stale_reasons(site, state, boundary))
                for pol, mem, out, decide_row in lanes:
                    if decide_row is not None and not stale:
                        row = decide_row(DecisionInput(site, state, mem, boundary))
                        remember_dispatch(mem, boundary, row.fleets, row.gpus)
                        out.append(row)
                        continue
                    action = decide_one(site, state, mem, pol, boundary, stale)
                    out.append(row_of(action) if rows else action)
            fold(r, t)
        return [out for _, _, out, _ in lanes]


def run_in_process(site: SiteConfig, events: list[FeedRecord], policy: Policy | None = None) -> list[DispatchAction]:
    """Process already event-time-ordered events (the backtest / replay path)."""
    proc = SiteProcessor(site, policy)
    actions: list[DispatchAction] = []
    for e in events:
        actions.extend(proc.process(e).actions)
    return actions
