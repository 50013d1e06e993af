"""The four input feeds: grid prices, demand-response events, hashprice, GPU job telemetry.

Each record has an *event time* (:meth:`event_time`): the instant the fact became known to
the world. The no-peeking rule (DESIGN.md) is enforced on it: a decision for ``[t, t+d)``
sees only events stamped at or before ``t``. A real-time price for ``[s, s+d)`` is stamped at
its interval's end ``s+d`` (it cannot be known earlier), so the decision for ``[t, t+d)`` can
use the price of ``[t-d, t)`` but never its own.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, model_validator

from schemas.base import (
    PRICE_CAP_USD_MWH,
    PRICE_FLOOR_USD_MWH,
    GpuClass,
    IntervalMinutes,
    Market,
    UtcDatetime,
    WireModel,
    trusted,
)

SiteId = str

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_ONE_US = timedelta(microseconds=1)


def epoch_us(t: datetime) -> int:
    """Microseconds since the Unix epoch of an aware datetime (exact, no float rounding)."""
    return (t - _EPOCH) // _ONE_US


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

    The wire forms of the GPU telemetry topic (both accepted there, told apart by a
    ``"samples"`` key):

    * one :class:`GpuTelemetry` object per message: what the adapters publish today
      (``DcgmExporterCollector``, ``NvmlCollector``, ``replay_nvidia_smi``: one record per job
      per scrape), ``wattmix publish-demo`` and ``wattmix replay``;
    * this batch, row-oriented: ``{"schema_version": 1, "site_id": ..., "samples": [<a
      GpuTelemetry object>, ...]}`` (1..4,000 samples, each also carrying the batch's
      ``site_id``): the natural shape for an exporter bridge that buffers a scrape (a JSON
      array of what it would otherwise send one by one);
    * :class:`GpuTelemetryColumns`, the same samples as columns, ``"columns"`` key: ~2.5x
      smaller (no key repeated per sample) and ~3x cheaper to parse; the form for a high-rate
      exporter (``bench/bench_stream.py --only batched`` measures both batch forms).

    The worker does not build a model per sample: :func:`schemas.codec.decode_gpu` validates
    either batch form as columns into :class:`GpuSamples` (orjson, then checks over whole
    columns: types, ranges, lengths, literals; one pydantic parse per distinct timestamp). It
    accepts exactly what the pydantic model of the form accepts: anything the column checks
    cannot prove valid is validated by the model, so a rejected batch gets the model's reason,
    naming the sample's index and field (``samples.3.utilization: ...``,
    ``columns.utilization.3: ...``); one invalid sample rejects (dead-letters) the whole
    message. Samples are archived and folded as if each had been sent alone, in list order;
    each is merged at its own event time.
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


#: GpuTelemetry's fields in the order of :class:`GpuSamples`' columns (site_id aside).
GPU_SAMPLE_FIELDS = ("job_id", "gpu_class", "gpus", "power_kw", "utilization", "state", "observed_at")


def _column_of(name: str) -> Any:
    """A column of GpuTelemetry's field ``name``: a list of 1..MAX_BATCH_SAMPLES values, each
    under the field's own type and constraints (so the two forms cannot drift apart)."""
    f = GpuTelemetry.model_fields[name]
    value = Annotated[(f.annotation, *f.metadata)] if f.metadata else f.annotation
    return Annotated[list[value], Field(min_length=1, max_length=MAX_BATCH_SAMPLES)]  # type: ignore[valid-type]


JobIdColumn = _column_of("job_id")
GpuClassColumn = _column_of("gpu_class")
GpusColumn = _column_of("gpus")
PowerKwColumn = _column_of("power_kw")
UtilizationColumn = _column_of("utilization")
StateColumn = _column_of("state")
ObservedAtColumn = _column_of("observed_at")


class GpuColumns(BaseModel):
    """The columns of :class:`GpuTelemetryColumns`: value ``i`` of each is sample ``i``."""

    model_config = WireModel.model_config

    job_id: JobIdColumn
    gpu_class: GpuClassColumn
    gpus: GpusColumn
    power_kw: PowerKwColumn
    utilization: UtilizationColumn
    state: StateColumn
    observed_at: ObservedAtColumn

    @model_validator(mode="after")
    def _same_length(self) -> "GpuColumns":
        n = len(self.job_id)
        for name in GPU_SAMPLE_FIELDS[1:]:
            if len(getattr(self, name)) != n:
                raise ValueError(f"column {name} has {len(getattr(self, name))} values, job_id has {n}")
        return self


class GpuTelemetryColumns(WireModel):
    """GPU samples of one site as columns: ``{"schema_version": 1, "site_id": ..., "columns":
    {"job_id": [...], "gpu_class": [...], "gpus": [...], "power_kw": [...],
    "utilization": [...], "state": [...], "observed_at": [...]}}``. Sample ``i`` is
    ``GpuTelemetry(site_id=site_id, job_id=columns.job_id[i], ...)`` under the same rules;
    every column has the same length (1..4,000). See :class:`GpuTelemetryBatch`."""

    site_id: SiteId = Field(min_length=1, max_length=64)
    columns: GpuColumns

    def event_time(self) -> datetime:
        """The newest sample's time (what a producer orders and stamps the message by)."""
        return max(self.columns.observed_at)


@dataclass(frozen=True, eq=False)
class GpuSamples:
    """A validated GPU telemetry batch of one site, as columns (no object per sample).

    Row ``i`` is the sample ``GpuTelemetry(site_id=site_id, job_id=job_id[i], ...)`` with every
    rule of :class:`GpuTelemetry` already checked; floats are floats (a JSON ``5`` in
    ``power_kw`` is ``5.0``, as pydantic makes it), ``observed_at`` holds UTC datetimes (one
    object per distinct instant) and ``observed_us`` the same instants as epoch microseconds
    (a numpy int64 array from the decoder).
    """

    site_id: str
    job_id: Sequence[str]
    gpu_class: Sequence[GpuClass]
    gpus: Sequence[int]
    power_kw: Sequence[float]
    utilization: Sequence[float]
    state: Sequence[GpuJobState]
    observed_at: Sequence[datetime]
    observed_us: Sequence[int]
    #: the observation time of every sample when the decoder saw only one (an exporter's
    #: scrape), else None: readers skip the per-sample time columns then
    instant: datetime | None = None

    def __len__(self) -> int:
        return len(self.job_id)

    def event_time(self) -> datetime:
        return self.instant if self.instant is not None else max(self.observed_at)

    def columns(self) -> dict[str, Any]:
        """``{field: column}`` for every GpuTelemetry field; ``site_id`` is one value for all."""
        out: dict[str, Any] = {"site_id": self.site_id}
        out.update((name, getattr(self, name)) for name in GPU_SAMPLE_FIELDS)
        return out

    def records(self) -> list[GpuTelemetry]:
        """The samples as :class:`GpuTelemetry` records (tests, and readers of one sample)."""
        site = self.site_id
        return [trusted(GpuTelemetry, {"schema_version": 1, "site_id": site, "job_id": j, "gpu_class": c, "gpus": g,
                                       "power_kw": p, "utilization": u, "state": s, "observed_at": t})
                for j, c, g, p, u, s, t in zip(*(getattr(self, n) for n in GPU_SAMPLE_FIELDS))]

    @classmethod
    def of_records(cls, site_id: str, records: Sequence[GpuTelemetry]) -> "GpuSamples":
        """Columns of already validated records (all of ``site_id``)."""
        cols = {n: [getattr(r, n) for r in records] for n in GPU_SAMPLE_FIELDS}
        return cls(site_id=site_id, observed_us=[epoch_us(t) for t in cols["observed_at"]], **cols)


FeedRecord = GridPrice | DemandResponseEvent | Hashprice | GpuTelemetry
