"""One site's event-time processor: fold events, decide each interval as its boundary passes.

Both the Faust worker and the backtest feed events into a :class:`SiteProcessor` in
event-time order; it is the only place where decisions are triggered, so the two paths
cannot disagree.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from dispatch import watchdog
from dispatch.clock import IntervalClock
from dispatch.engine import DecisionInput, EngineMemory, Policy, remember
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
        if record.site_id != self.site.site_id:
            raise EngineError(f"event for site {record.site_id!r} sent to processor of {self.site.site_id!r}")
        t = record.event_time()
        out = Outcome(late=self.clock.is_late(t))
        for boundary in self.clock.due(t):
            out.actions.append(self.decide(boundary))
        self.state.fold(record)
        # the clock starts with the first real-time price: before it nothing can be decided
        if not self.clock.started and isinstance(record, GridPrice) and record.market == "RT":
            self.clock.start(t)
        return out

    def decide_through(self, boundary: datetime) -> list[DispatchAction]:
        """Decide every boundary up to and including ``boundary`` (a restart's last one)."""
        return [self.decide(b) for b in self.clock.due(boundary + timedelta(microseconds=1))]

    def decide(self, boundary: datetime) -> DispatchAction:
        action = self.policy.decide(DecisionInput(self.site, self.state, self.memory, boundary))
        action = watchdog.apply(self.site, self.state, action)  # stale feeds: safe state
        remember(self.memory, action)
        return action


def run_in_process(site: SiteConfig, events: list[FeedRecord], policy: Policy | None = None) -> list[DispatchAction]:
    """Process already event-time-ordered events (the backtest / replay path)."""
    proc = SiteProcessor(site, policy)
    actions: list[DispatchAction] = []
    for e in events:
        actions.extend(proc.process(e).actions)
    return actions
