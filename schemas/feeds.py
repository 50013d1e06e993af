"""The four input feeds: grid prices, demand-response events, hashprice, GPU job telemetry.

Each record has an *event time* (:meth:`event_time`): the instant the fact became known to
the world. The no-peeking rule (DESIGN.md) is enforced on it: a decision for ``[t, t+d)``
sees only events stamped at or before ``t``. A real-time price for ``[s, s+d)`` is stamped at
its interval's end ``s+d`` (it cannot be known earlier), so the decision for ``[t, t+d)`` can
use the price of ``[t-d, t)`` but never its own.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Literal

from pydantic import Field, model_validator

from schemas.base import (
    PRICE_CAP_USD_MWH,
    PRICE_FLOOR_USD_MWH,
    GpuClass,
    IntervalMinutes,
    Market,
    UtcDatetime,
    WireModel,
)

SiteId = str


class GridPrice(WireModel):
    """An energy price for one settlement point and interval, real-time (RT) or day-ahead (DA)."""

    site_id: SiteId = Field(min_length=1, max_length=64)
    settlement_point: str = Field(min_length=1, max_length=64)
    market: Market
    interval_start: UtcDatetime
    interval_minutes: IntervalMinutes
    price_usd_mwh: float = Field(ge=PRICE_FLOOR_USD_MWH, le=PRICE_CAP_USD_MWH)
    published_at: UtcDatetime = Field(description="event time: when this price became known")

    @model_validator(mode="after")
    def _check(self) -> "GridPrice":
        if self.interval_start.second or self.interval_start.microsecond or (
            self.interval_start.minute % min(self.interval_minutes, 60)
        ):
            raise ValueError(
                f"interval_start {self.interval_start.isoformat()} is not aligned to "
                f"{self.interval_minutes}-minute intervals"
            )
        if self.market == "RT" and self.published_at < self.interval_end:
            raise ValueError(
                "a real-time price cannot be published before its interval ends "
                f"({self.published_at.isoformat()} < {self.interval_end.isoformat()})"
            )
        return self

    @property
    def interval_end(self) -> datetime:
        return self.interval_start + timedelta(minutes=self.interval_minutes)

    def event_time(self) -> datetime:
        return self.published_at

    def identity(self) -> str:
        return f"{self.site_id}|{self.market}|{self.settlement_point}|{self.interval_start.isoformat()}"


ObligationKind = Literal["firm_service_level", "reduction", "advisory"]
DrStatus = Literal["scheduled", "active", "completed", "cancelled"]


class DemandResponseEvent(WireModel):
    """A demand-response event (ERS, Load Resource deployment, 4CP alert, OpenADR...).

    ``firm_service_level``: the site's load must be at or under ``obligation_mw`` from
    ``start`` to ``end``. ``reduction``: load must be ``obligation_mw`` under
    ``baseline_mw``. ``advisory`` (4CP): no obligation, curtailing may save a charge.
    A later ``revision`` of the same ``event_id`` replaces the earlier one.
    """

    site_id: SiteId = Field(min_length=1, max_length=64)
    event_id: str = Field(min_length=1, max_length=128)
    program: str = Field(min_length=1, max_length=64)
    revision: int = Field(ge=0)
    status: DrStatus
    notice_at: UtcDatetime
    start: UtcDatetime
    end: UtcDatetime
    obligation_kind: ObligationKind
    obligation_mw: float = Field(ge=0, le=10_000)
    baseline_mw: float | None = Field(default=None, ge=0, le=10_000)
    capacity_payment_usd_mw_h: float = Field(default=0.0, ge=0, le=100_000)
    energy_payment_usd_mwh: float = Field(default=0.0, ge=0, le=100_000)
    penalty_usd_mwh: float = Field(default=0.0, ge=0, le=1_000_000)
    issued_at: UtcDatetime = Field(description="event time: when this revision was issued")

    @model_validator(mode="after")
    def _check(self) -> "DemandResponseEvent":
        if self.end <= self.start:
            raise ValueError(f"DR event ends ({self.end.isoformat()}) before it starts ({self.start.isoformat()})")
        if self.notice_at > self.start:
            raise ValueError("DR notice comes after the event start")
        if self.issued_at < self.notice_at and self.revision == 0:
            raise ValueError("first revision issued before its notice time")
        if self.obligation_kind == "reduction" and self.baseline_mw is None:
            raise ValueError("a 'reduction' obligation needs baseline_mw")
        return self

    def event_time(self) -> datetime:
        return self.issued_at

    def identity(self) -> str:
        return f"{self.site_id}|{self.event_id}|{self.revision}"


class Hashprice(WireModel):
    """Mining revenue per unit of hashrate: USD per PH/s per day (after block subsidy + fees)."""

    site_id: SiteId = Field(min_length=1, max_length=64)
    usd_per_ph_day: float = Field(gt=0, le=100_000)
    btc_usd: float | None = Field(default=None, gt=0)
    difficulty: float | None = Field(default=None, gt=0)
    fees_btc_per_block: float | None = Field(default=None, ge=0)
    as_of: UtcDatetime = Field(description="start of the period this hashprice describes")
    published_at: UtcDatetime = Field(description="event time")

    def event_time(self) -> datetime:
        return self.published_at

    def identity(self) -> str:
        return f"{self.site_id}|{self.as_of.isoformat()}"


GpuJobState = Literal["running", "paused", "queued", "completed"]

#: Samples per :class:`GpuTelemetryBatch` message at most (~190 B each: ~760 kB, under the
#: codec's 1 MB message limit).
MAX_BATCH_SAMPLES = 4_000


class GpuTelemetry(WireModel):
    """One sample of a GPU job: its class, size and power draw (IT power, before PUE)."""

    site_id: SiteId = Field(min_length=1, max_length=64)
    job_id: str = Field(min_length=1, max_length=128)
    gpu_class: GpuClass
    gpus: int = Field(ge=0, le=1_000_000)
    power_kw: float = Field(ge=0, le=10_000_000)
    utilization: float = Field(ge=0, le=1)
    state: GpuJobState
    observed_at: UtcDatetime

    def event_time(self) -> datetime:
        return self.observed_at

    def identity(self) -> str:
        return f"{self.site_id}|{self.job_id}|{self.observed_at.isoformat()}"


class GpuTelemetryBatch(WireModel):
    """Many GPU samples in one message, as exporters send them (one scrape of a cluster).

    Carried on the GPU telemetry topic next to single :class:`GpuTelemetry` messages (both
    forms are accepted there). Every sample is a complete ``GpuTelemetry``, validated exactly
    as a single-sample message would be; one invalid sample rejects the whole message (it is
    dead-lettered with the sample's index in the reason). Samples are archived and folded
    one by one, in list order, as if each had been sent alone; each is merged at its own
    event time.
    """

    site_id: SiteId = Field(min_length=1, max_length=64)
    samples: list[GpuTelemetry] = Field(min_length=1, max_length=MAX_BATCH_SAMPLES)

    @model_validator(mode="after")
    def _check(self) -> "GpuTelemetryBatch":
        for i, s in enumerate(self.samples):
            if s.site_id != self.site_id:
                raise ValueError(f"samples.{i}.site_id {s.site_id!r} differs from the batch's site_id {self.site_id!r}")
        return self

    def event_time(self) -> datetime:
        """The newest sample's time (what a producer orders and stamps the message by)."""
        return max(s.observed_at for s in self.samples)

    def identity(self) -> str:
        return f"{self.site_id}|batch|{self.samples[0].identity()}|{len(self.samples)}"


FeedRecord = GridPrice | DemandResponseEvent | Hashprice | GpuTelemetry
