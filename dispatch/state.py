"""What a site knows: the fold of its input events, in event-time order.

The fold is idempotent and order-tolerant where it can be (keyed by each fact's identity):
re-folding an event after a restart or a redelivery changes nothing.
"""

from __future__ import annotations

from bisect import insort
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

from schemas.base import GPU_CLASSES, GpuClass
from schemas.feeds import DemandResponseEvent, GpuTelemetry, GridPrice, Hashprice

#: RT history kept for the engine's features (7 days of 15-min intervals).
RT_HISTORY = 7 * 96


@dataclass
class GpuDemand:
    """GPUs whose jobs want to run, by class, and their IT power."""

    gpus: int = 0
    power_kw: float = 0.0
    jobs: int = 0


@dataclass
class SiteState:
    site_id: str
    # real-time prices known so far: interval_start -> price, plus their ordered starts
    rt_prices: dict[datetime, float] = field(default_factory=dict)
    rt_order: list[datetime] = field(default_factory=list)
    da_prices: dict[datetime, float] = field(default_factory=dict)
    da_minutes: int = 60
    hashprice: Hashprice | None = None
    dr_events: dict[str, DemandResponseEvent] = field(default_factory=dict)
    gpu_jobs: dict[str, GpuTelemetry] = field(default_factory=dict)
    last_event_time: datetime | None = None
    events_folded: int = 0

    # -- folding -----------------------------------------------------------------------
    def fold(self, record: object) -> None:
        if isinstance(record, GpuTelemetry):
            self._fold_gpu(record)
        elif isinstance(record, GridPrice):
            self._fold_price(record)
        elif isinstance(record, Hashprice):
            if self.hashprice is None or (record.as_of, record.published_at) >= (
                self.hashprice.as_of,
                self.hashprice.published_at,
            ):
                self.hashprice = record
        elif isinstance(record, DemandResponseEvent):
            prev = self.dr_events.get(record.event_id)
            # the latest revision wins; an equal revision re-delivered changes nothing
            if prev is None or record.revision > prev.revision:
                self.dr_events[record.event_id] = record
        else:
            raise TypeError(f"cannot fold {type(record).__name__}")
        t = record.event_time()  # type: ignore[attr-defined]
        if self.last_event_time is None or t > self.last_event_time:
            self.last_event_time = t
        self.events_folded += 1

    def _fold_price(self, p: GridPrice) -> None:
        if p.market == "DA":
            self.da_prices[p.interval_start] = p.price_usd_mwh
            self.da_minutes = p.interval_minutes
            return
        if p.interval_start not in self.rt_prices:
            insort(self.rt_order, p.interval_start)
        self.rt_prices[p.interval_start] = p.price_usd_mwh
        if len(self.rt_order) > RT_HISTORY * 2:
            for old in self.rt_order[: len(self.rt_order) - RT_HISTORY]:
                del self.rt_prices[old]
            del self.rt_order[: len(self.rt_order) - RT_HISTORY]

    def _fold_gpu(self, g: GpuTelemetry) -> None:
        prev = self.gpu_jobs.get(g.job_id)
        if prev is not None and prev.observed_at > g.observed_at:
            return  # an older sample arriving late never overrides a newer one
        if g.state == "completed":
            self.gpu_jobs.pop(g.job_id, None)
        else:
            self.gpu_jobs[g.job_id] = g

    # -- queries -----------------------------------------------------------------------
    @property
    def last_rt(self) -> tuple[datetime, float] | None:
        if not self.rt_order:
            return None
        t = self.rt_order[-1]
        return t, self.rt_prices[t]

    def da_price_at(self, t: datetime) -> float | None:
        minutes = self.da_minutes
        if t.tzinfo is timezone.utc and 60 % minutes == 0:
            # fast path (UTC, periods dividing the hour): the period start by field arithmetic
            return self.da_prices.get(t.replace(minute=t.minute - t.minute % minutes, second=0, microsecond=0))
        epoch_minutes = int(t.timestamp() // 60)
        start = t - timedelta(minutes=epoch_minutes % minutes, seconds=t.second, microseconds=t.microsecond)
        return self.da_prices.get(start)

    def gpu_demand(self) -> dict[GpuClass, GpuDemand]:
        out = {c: GpuDemand() for c in GPU_CLASSES}
        for job in self.gpu_jobs.values():
            if job.state in ("running", "paused"):
                d = out[job.gpu_class]
                d.gpus += job.gpus
                d.power_kw += job.power_kw
                d.jobs += 1
        return out

    def jobs_of_class(self, gpu_class: GpuClass) -> list[GpuTelemetry]:
        return sorted(
            (j for j in self.gpu_jobs.values() if j.gpu_class == gpu_class and j.state in ("running", "paused")),
            key=lambda j: j.job_id,
        )

    def upcoming_obligations(self, t: datetime) -> list[DemandResponseEvent]:
        """Known, not cancelled DR events that have not ended by t (active or in the future)."""
        return sorted(
            (e for e in self.dr_events.values() if e.status != "cancelled" and e.end > t),
            key=lambda e: e.start,
        )
