"""The worker's logic without Faust: decode, route, merge in event time, decide, and say what
to archive and publish. The Faust agent (streams/worker.py) only moves bytes in and out.

Per step: every message is either a valid record (archived, merged) or a dead letter
(archived with its reason and original bytes, published to the dead-letter topic). Nothing
is dropped and nothing raises: one bad message must not stop a site's dispatch.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

import numpy as np

from dispatch.clock import FeedMerger
from dispatch.processor import SiteProcessor
from dispatch.state import GpuRow, gpu_row
from schemas.action import DispatchAction
from schemas.codec import decode, decode_gpu, encode
from schemas.dead_letter import DeadLetter
from schemas.feeds import FeedRecord, GpuSamples, GpuTelemetry, epoch_us
from schemas.site import SiteConfig
from schemas.topics import INPUT_FEEDS, Feed
from sinks.archive import ArchiveBatch
from streams.app import MAX_FUTURE_S, TopicNames
from wattmix.errors import DecodeError

FEED_ORDER = tuple(f.name for f in INPUT_FEEDS)
GPU_FEED = next(f.name for f in INPUT_FEEDS if f.batch_model is not None)


@dataclass(frozen=True)
class Incoming:
    """One Kafka message as the pipeline sees it."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


@dataclass(frozen=True)
class Outgoing:
    topic: str
    key: bytes | None
    value: bytes
    timestamp_ms: int | None


@dataclass
class StepResult:
    batch: ArchiveBatch
    outgoing: list[Outgoing] = field(default_factory=list)
    actions: list[DispatchAction] = field(default_factory=list)
    dead_letters: int = 0
    accepted: int = 0
    late: int = 0


@dataclass
class RestoreReport:
    site_id: str
    inputs: int = 0
    pending: int = 0
    actions: int = 0
    mismatched: int = 0
    resumed_after: datetime | None = None


def future_reason(rec: Any, t: datetime, horizon: datetime, max_future_s: float) -> str:
    """The dead letter's reason for ``rec`` stamped ``t``, past ``horizon`` = clock + max_future_s."""
    ahead = t - horizon + timedelta(seconds=max_future_s)
    # a person reads the wire record's name, not the decoder's internal batch type
    what = f"GpuTelemetry batch of {len(rec)} samples, newest" if isinstance(rec, GpuSamples) else type(rec).__name__
    return (f"{what}: event time {t.isoformat()} is {ahead.total_seconds() / 3600:,.1f} h ahead of "
            f"this worker's clock (at most {max_future_s:g} s accepted): a producer clock or unit error")


#: idle(topic, partition) -> True when that partition has nothing left to read right now
IdleFn = Callable[[str, int], bool]


@dataclass(frozen=True, slots=True)
class _GpuRun:
    """GPU samples observed at the same instant ``t``, in arrival order, as one item of the
    event-time merge: a batch message's samples of ``t``, or consecutive single-sample messages
    stamped ``t`` (a scrape). Per sample they would be adjacent in the merge order (same time,
    same feed, consecutive arrivals), so releasing and folding them together changes nothing."""

    t: datetime
    rows: list[GpuRow]


def _runs_by_time(s: GpuSamples, us: np.ndarray | None) -> Iterator[_GpuRun]:
    """The batch's samples grouped by observation time, in time order (stable: samples of one
    instant keep their order in the message); ``us``: their epoch microseconds, not needed for
    a batch of one instant (``s.instant``, a scrape: one run, no pass over its times)."""
    rows = list(zip(s.job_id, s.gpu_class, s.gpus, s.power_kw, s.utilization, s.state))
    if s.instant is not None:
        yield _GpuRun(s.instant, rows)
        return
    assert us is not None
    times = s.observed_at
    if len(us) > 1 and bool((us[1:] < us[:-1]).any()):
        order = np.argsort(us, kind="stable")
        idx = order.tolist()
        rows, times, us = [rows[i] for i in idx], [times[i] for i in idx], us[order]
    lo = 0
    for hi in (np.flatnonzero(us[1:] != us[:-1]) + 1).tolist() + [len(rows)]:
        yield _GpuRun(times[lo], rows[lo:hi])
        lo = hi


@dataclass
class _SiteLane:
    processor: SiteProcessor
    merger: FeedMerger
    partition: int | None = None
    # single-sample GPU telemetry of one instant, accepted one after the other (a scrape: ~1,000
    # messages): merged and folded as one item, as a batch's samples of one instant are (one heap
    # push/pop and one fold call instead of one per message). Pushed before anything else is
    # pushed to this lane, and at the end of every step.
    gpu_run: _GpuRun | None = None

    def push(self, feed_name: str, t: datetime, item: Any) -> None:
        self.flush_run()
        self.merger.push(feed_name, t, item)

    def flush_run(self) -> None:
        run, self.gpu_run = self.gpu_run, None
        if run is not None:
            self.merger.push(GPU_FEED, run.t, run)


class Pipeline:
    def __init__(self, sites: Iterable[SiteConfig], topics: TopicNames,
                 now: Callable[[], datetime] = lambda: datetime.now(timezone.utc),
                 max_future_s: float | None = MAX_FUTURE_S) -> None:
        self.topics = topics
        self.max_future_s = max_future_s
        self._horizon: datetime | None = None  # event times past this are dead-lettered (per ingest)
        self.lanes: dict[str, _SiteLane] = {
            s.site_id: _SiteLane(SiteProcessor(s), FeedMerger(FEED_ORDER)) for s in sites
        }
        self.feed_by_topic: dict[str, Feed] = {topics.feed(f.name): f for f in INPUT_FEEDS}
        self._now = now
        self.counts = {"accepted": 0, "dead_letters": 0, "late": 0, "actions": 0}
        #: partitions this worker does not own right now (revoked, or not yet confirmed after a
        #: restart): their sites' lanes keep their state but release and decide nothing
        self.suspended: set[int] = set()

    # ---------------------------------------------------------------------------------
    def ingest(self, messages: Iterable[Incoming], idle: IdleFn, batch: ArchiveBatch | None = None) -> StepResult:
        """Accept ``messages`` (valid records into the merge, the rest dead-lettered), then
        release and decide what the merge allows. Rows go into ``batch`` if given (a group
        commit collecting several steps), else into a new one."""
        res = StepResult(batch=ArchiveBatch() if batch is None else batch)
        self._horizon = self.future_horizon()
        try:
            for m in messages:
                self._accept(m, res)
        finally:
            for lane in self.lanes.values():
                lane.flush_run()
        self._release(res, idle)
        return res

    def future_horizon(self) -> datetime | None:
        """The latest event time this worker accepts now (see ``MAX_FUTURE_S``)."""
        return None if self.max_future_s is None else self._now() + timedelta(seconds=self.max_future_s)

    def flush(self, idle: IdleFn, batch: ArchiveBatch | None = None) -> StepResult:
        """Release what the merge can release now (called by the worker's timer)."""
        res = StepResult(batch=ArchiveBatch() if batch is None else batch)
        self._release(res, idle)
        return res

    def pending(self) -> int:
        """Items held back by the event-time merge (a GPU run of one instant counts once)."""
        return sum(len(lane.merger) for lane in self.lanes.values())

    def partitions_in_use(self) -> set[int]:
        return {lane.partition for lane in self.lanes.values()
                if lane.partition is not None and lane.partition not in self.suspended}

    def sites_on(self, partition: int) -> list[str]:
        return [s for s, lane in self.lanes.items() if lane.partition == partition]

    def reset_site(self, site_id: str) -> None:
        """Forget a site's state (before rebuilding it from another worker's history)."""
        site = self.lanes[site_id].processor.site
        self.lanes[site_id] = _SiteLane(SiteProcessor(site), FeedMerger(FEED_ORDER))

    def at_boundary(self, feed_name: str, partition: int) -> bool:
        """True when, for every site on ``partition`` with events waiting in the merge, the
        newest ``feed_name`` event is stamped exactly on the boundary that site decides next
        (a real-time price is published at its interval's end). A caught-up feed in that state
        can bring nothing the decision needs unless its producer splits one instant's records
        across produce requests (see ``WorkerSettings.boundary_fast_path``)."""
        found = False
        for lane in self.lanes.values():
            if lane.partition != partition or not len(lane.merger):
                continue
            nb = lane.processor.clock.next_boundary
            if nb is None or lane.merger.newest.get(feed_name) != nb:
                return False
            found = True
        return found

    # ---------------------------------------------------------------------------------
    def restore(self, site_id: str, archived_inputs: Iterable[tuple[str, FeedRecord]],
                archived_actions: list[DispatchAction], partition: int | None) -> RestoreReport:
        """Rebuild a site's state after a restart from what the archive made durable.

        The archive is the state store: every event was archived before its offset was
        committed. Events up to the last published boundary ``B`` are re-processed (the
        decisions they regenerate are checked against the archived ones, then dropped);
        ``B`` itself is re-decided so the engine memory (hold times, pauses) is exact; later
        events go back into the event-time merge, as they were before the restart. Faust
        changelog tables are not used: their recovery depends on ListOffsets "latest".
        """
        lane = self.lanes[site_id]
        lane.partition = partition
        rep = RestoreReport(site_id=site_id)
        last = archived_actions[-1].interval_start if archived_actions else None
        archived = {a.interval_start: a for a in archived_actions}
        regenerated: list[DispatchAction] = []
        decided_last = last is None
        for feed_name, rec in archived_inputs:
            t = rec.event_time()
            rep.inputs += 1
            if last is not None and t <= last:
                regenerated.extend(lane.processor.process(rec).actions)
                continue
            if not decided_last:
                regenerated.extend(lane.processor.decide_through(last))
                decided_last = True
            lane.merger.push(feed_name, t, rec)
            rep.pending += 1
        if not decided_last and lane.processor.clock.started:
            regenerated.extend(lane.processor.decide_through(last))
        for a in regenerated:
            old = archived.get(a.interval_start)
            if old is not None and old != a:
                rep.mismatched += 1
        rep.actions = len(regenerated)
        rep.resumed_after = last
        return rep

    # ---------------------------------------------------------------------------------
    def _accept(self, m: Incoming, res: StepResult) -> None:
        feed = self.feed_by_topic.get(m.topic)
        if feed is None:
            self._dead(m, res, "UnknownTopic", f"topic {m.topic!r} is not an input feed of this worker")
            return
        samples: GpuSamples | None = None
        try:
            # GPU telemetry: one sample, or a batch validated as columns (no model per sample)
            got = decode(feed.model, m.value) if feed.batch_model is None else decode_gpu(m.value)
            if isinstance(got, GpuSamples):
                samples = got
            else:
                rec: FeedRecord = got
            site_id = got.site_id
        except DecodeError as exc:
            self._dead(m, res, "DecodeError", exc.reason)
            return
        horizon = self._horizon
        if horizon is not None and (t_event := got.event_time()) > horizon:
            self._dead(m, res, "FutureEvent", future_reason(got, t_event, horizon, self.max_future_s))
            return
        lane = self.lanes.get(site_id)
        if lane is None:
            known = ", ".join(sorted(self.lanes)) or "none"
            self._dead(m, res, "UnknownSite", f"site_id {site_id!r} is not configured on this worker (configured: {known})")
            return
        lane.partition = m.partition
        if samples is not None:
            n, n_late = len(samples), self._accept_samples(lane, feed.name, m, samples, res.batch)
        else:
            t = rec.event_time()
            n, n_late = 1, int(lane.processor.clock.is_late(t))
            res.batch.add_input(feed.name, rec, topic=m.topic, partition=m.partition, offset=m.offset, late=bool(n_late))
            if rec.__class__ is GpuTelemetry:
                run = lane.gpu_run
                if run is None or run.t != t:
                    lane.flush_run()
                    run = lane.gpu_run = _GpuRun(t, [])
                run.rows.append(gpu_row(rec))
            else:
                lane.push(feed.name, t, rec)
        res.accepted += n
        self.counts["accepted"] += n
        if n_late:
            res.late += n_late
            self.counts["late"] += n_late

    @staticmethod
    def _accept_samples(lane: _SiteLane, feed_name: str, m: Incoming, samples: GpuSamples, batch: ArchiveBatch) -> int:
        """A GPU telemetry batch: archived as columns, merged as one item per distinct observation
        time (a scrape has one), each item released and folded as the per-sample path would
        release and fold its samples one by one. Returns how many samples arrived late."""
        last = lane.processor.clock.last_decided
        t = samples.instant
        us: np.ndarray | None = None
        if t is not None:  # a scrape (one instant): archived as one value, no pass over its times
            observed: Any = t
            n_late = len(samples) if last is not None and t <= last else 0
            late = np.ones(n_late, dtype=bool) if n_late else None
        else:
            observed = us = np.asarray(samples.observed_us, dtype=np.int64)
            late = None if last is None else us <= epoch_us(last)
            n_late = 0 if late is None else int(late.sum())
        batch.add_input_columns(feed_name, {**samples.columns(), "observed_at": observed}, topic=m.topic,
                                partition=m.partition, offset=m.offset, late=late)
        push = lane.push
        for run in _runs_by_time(samples, us):
            push(feed_name, run.t, run)
        return n_late

    def _release(self, res: StepResult, idle: IdleFn) -> None:
        for site_id, lane in self.lanes.items():
            if not len(lane.merger) or lane.partition in self.suspended:
                continue
            p = lane.partition

            def feed_idle(feed_name: str, _p=p) -> bool:
                return _p is None or idle(self.topics.feed(feed_name), _p)

            proc = lane.processor
            clock, fold = proc.clock, proc.state.fold
            for rec in lane.merger.release(feed_idle):
                if rec.__class__ is _GpuRun:  # samples of one instant: decide what is due, fold
                    for boundary in clock.due(rec.t):
                        self._publish_action(proc.decide(boundary), res)
                    proc.state.fold_gpu_rows(rec.t, rec.rows)
                    continue
                # Fast path, same effect as proc.process(rec): once the clock has started, an
                # event not past the next boundary decides nothing and only folds into state.
                nb = clock.next_boundary
                if nb is not None and rec.event_time() <= nb and rec.site_id == proc.site.site_id:
                    fold(rec)
                    continue
                for action in proc.process(rec).actions:
                    self._publish_action(action, res)

    def _publish_action(self, action: DispatchAction, res: StepResult) -> None:
        res.actions.append(action)
        res.batch.add_action(action, topic=self.topics.actions)
        res.outgoing.append(
            Outgoing(
                topic=self.topics.actions,
                key=action.site_id.encode(),
                value=encode(action),
                timestamp_ms=int(action.interval_start.timestamp() * 1000),
            )
        )
        self.counts["actions"] += 1

    def _dead(self, m: Incoming, res: StepResult, error_type: str, reason: str) -> None:
        raw = m.value or b""
        dl = DeadLetter(
            source_topic=m.topic,
            source_partition=m.partition,
            source_offset=m.offset,
            key_base64=base64.b64encode(m.key).decode() if m.key is not None else None,
            raw_base64=base64.b64encode(raw).decode(),
            error_type=error_type,
            reason=reason,
            received_at=self._now(),
        )
        res.batch.add_dead_letter(dl, raw)
        res.outgoing.append(Outgoing(topic=self.topics.dead_letters, key=m.key, value=encode(dl), timestamp_ms=None))
        res.dead_letters += 1
        self.counts["dead_letters"] += 1
