"""The Faust worker: a thin adapter from Kafka to :class:`streams.pipeline.Pipeline`.

Faust runs the consumer group, partition assignment, rebalances, offset commits and the
producer; whole fetches reach :meth:`DispatchWorker._on_batch` through
:class:`streams.batching.BatchConsumer` (Faust's per-message stream path costs ~190 us per
message here, see bench/README.md). Each batch is made durable in this order, and only then
acknowledged:

1. actions and dead letters are handed to the producer as soon as they are decided, and
   their delivery awaited;
2. inputs, actions and dead letters are written to DuckDB in one transaction;
3. the batch's offsets are acked, so Faust may commit them.

Steps 1-3 run as a group commit in the background (:meth:`_durability_loop`): everything
decided since the previous write goes into one DuckDB transaction, while the next fetches are
decoded, merged and decided (the DuckDB write releases the GIL, so it overlaps the Python
work, and an action is published as soon as it is decided, never after someone else's archive
write). Groups become durable, and are acked, strictly in order; at most
``WorkerSettings.max_inflight_events`` messages and ``max_inflight_rows`` archive rows (a
batch message has a row per sample) wait for durability at any time.

A crash between any two steps loses nothing: un-acked events are delivered again, the archive
ignores rows it already has, and a re-published action carries the same key (``site_id``)
and ``action_id`` so consumers de-duplicate it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import gc
import logging
import os
import time
from dataclasses import dataclass, field
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import faust
from faust.types import TP

from sinks.archive import Archive, ArchiveBatch, ArchiveError
from streams.app import MAX_FUTURE_S, WorkerSettings, create_app
from streams.batching import BatchConsumer, install_batch_transport
from streams.pipeline import Pipeline, StepResult
from streams.takeover import (
    Coverage,
    dead_lettered,
    read_keyed,
    read_published_actions,
    read_until,
    rebuild_partition,
)
from wattmix.errors import SinkError

log = logging.getLogger("wattmix.worker")

#: Archive retry backoff: 0.5 s doubling to 30 s; the worker never gives up (and never acks)
#: on its own: an operator fixes the disk, the worker carries on where it stopped.
BACKOFF_START_S = 0.5
BACKOFF_MAX_S = 30.0

#: After handing actions to the producer, the loop is given this long (it runs every ready
#: callback meanwhile) so the produce request leaves before the next step's work.
ACTION_SEND_YIELD_S = 0.001

#: Fault injection for the reliability tests, off by default: ``WATTMIX_FAULT_ARCHIVE_FAILS=N``
#: makes the first N archive writes of this process raise a transient ArchiveError (as a full
#: disk or a locked file would) before touching DuckDB. Never set it in production.
FAULT_ARCHIVE_FAILS_ENV = "WATTMIX_FAULT_ARCHIVE_FAILS"


@dataclass
class _Group:
    """What the next archive transaction makes durable."""

    batch: ArchiveBatch = field(default_factory=ArchiveBatch)
    sent: list = field(default_factory=list)      # delivery futures of actions / dead letters
    acks: list = field(default_factory=list)      # (offset ranges by TP, consumer generation)
    events: int = 0


class DispatchWorker:
    def __init__(self, settings: WorkerSettings, archive: Archive | None = None) -> None:
        self.settings = settings
        self.app = create_app(settings)
        install_batch_transport(self.app, self._on_batch, settings.fetch_max_wait_s, settings.step_max)
        self.pipeline = Pipeline(settings.sites, settings.topics, max_future_s=settings.max_future_s)
        self.archive = archive or Archive(settings.db, memory_limit_mb=settings.archive_memory_mb or None)
        from sinks.views import register_sites  # hedge terms for the archive's P&L views

        register_sites(self.archive.connection(), settings.sites)
        # one thread writes the archive (DuckDB is single-writer); shut down before close()
        self._writer = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="wattmix-archive")
        self._lock = asyncio.Lock()
        self._open = _Group()           # decided, not yet being written
        self._writing_events = 0        # events of the group being written
        self._writing_rows = 0          # its archive rows (a batch message: one per sample)
        self._has_work = asyncio.Event()
        self._written = asyncio.Event()
        self._received_next: dict[TP, int] = {}
        self._hw_unknown_since: dict[TP, float] = {}
        self._caught_up_since: dict[TP, tuple[int, float]] = {}
        self._positions: dict[TP, int | None] = {}  # see _idle_snapshot
        self._positions_generation = -1
        self._feed_of_topic = {t: name for name, t in settings.topics.inputs.items()}
        self.stats = {"batches": 0, "events": 0, "archive_retries": 0, "first_batch_at": 0.0}
        self.stats.update(broker_outages=0, broker_outage_s=0.0)
        self._fault_archive_fails = int(os.environ.get(FAULT_ARCHIVE_FAILS_ENV, "0") or 0)
        #: called with the number of events each time a batch is durable and acked (benchmarks)
        self.on_durable: Callable[[int], None] | None = None

        self.restored = self._restore()
        # which input offsets the state covers; a restored site waits (suspended) until this
        # worker is confirmed as its partition's owner with no records processed elsewhere
        self.coverage = Coverage.from_archive(self.archive.connection())
        self.pipeline.suspended.update(self.pipeline.partitions_in_use())
        self._confirmed: set[int] = set()   # partitions this process owns, checked for gaps
        self.stats.update(takeovers=0, takeover_s=0.0, skipped_covered=0)
        self.app.on_partitions_revoked.connect(self._on_partitions_revoked)
        self.topic = self.app.topic(*settings.topics.inputs.values(), value_type=bytes, key_type=bytes)
        self.app.topics.add(self.topic)  # subscribe: no agent, BatchConsumer delivers to us
        self.app.task(self._start)
        self.app.task(self._durability_loop)
        self.app.task(self._broker_probe)
        self.app.timer(settings.tick_s, name="wattmix-idle-flush")(self._tick)
        self.web = None  # streams.web.WebState when --web-port is given
        if settings.web_port is not None:
            from streams import web

            self.web = web.WebState(self)
            self.app.task(self._serve_web)

    async def _serve_web(self) -> None:
        from streams.web import serve

        await serve(self.web, self.settings.web_bind, self.settings.web_port)

    def _restore(self) -> list:
        """Rebuild every site's state from the archive (see :meth:`Pipeline.restore`)."""
        from sinks.archive import read_actions, read_inputs_in_event_order

        con = self.archive.connection()
        reports = []
        for site in self.settings.sites:
            actions = read_actions(con, site.site_id)
            row = con.execute(
                "SELECT kafka_partition FROM grid_prices WHERE site_id = ? AND kafka_partition IS NOT NULL LIMIT 1",
                [site.site_id],
            ).fetchone()
            rep = self.pipeline.restore(site.site_id, read_inputs_in_event_order(con, site.site_id), actions,
                                        row[0] if row else None)
            reports.append(rep)
        return reports

    async def _start(self) -> None:
        consumer = self.app.consumer
        if not isinstance(consumer, BatchConsumer):  # pragma: no cover - misconfiguration
            raise RuntimeError(f"the wattmix worker needs BatchConsumer, got {type(consumer).__name__}")
        # a task, not __init__: Faust configures logging when the worker starts
        for rep in self.restored:
            if rep.inputs:
                log.info("restored %s: %d archived events, %d actions re-derived (%d mismatched), "
                         "resuming after %s, %d events pending", rep.site_id, rep.inputs, rep.actions,
                         rep.mismatched, rep.resumed_after, rep.pending)
            if rep.mismatched:
                log.error("restored %s: %d re-derived actions differ from the archived ones: the engine "
                          "is not deterministic on this history", rep.site_id, rep.mismatched)

    # -- the batch handler ------------------------------------------------------------------
    async def _on_batch(self, records: Mapping[TP, Sequence[Any]], generation_id: int) -> None:
        """One fetch: ``{TP: [aiokafka ConsumerRecord]}`` (they quack like ``Incoming``)."""
        if not self.stats["first_batch_at"]:
            self.stats["first_batch_at"] = time.monotonic()
        # backpressure: at most max_inflight_events messages and max_inflight_rows archive rows
        # decided but not yet durable (a batch message is one message and a row per sample)
        settings = self.settings
        while (self._open.events + self._writing_events > settings.max_inflight_events
               or len(self._open.batch) + self._writing_rows > settings.max_inflight_rows):
            self._written.clear()
            await self._written.wait()
        ranges: dict[TP, tuple[int, int]] = {}
        for tp, recs in records.items():
            first, last = recs[0].offset, recs[-1].offset
            ranges[tp] = (first, last)
            if last + 1 > self._received_next.get(tp, -1):
                self._received_next[tp] = last + 1
        async with self._lock:
            group = self._open
            for p in {tp.partition for tp in records} - self._confirmed:
                await self._confirm_ownership(p, await self._delivery_starts(p, records), group)
            msgs: list[Any] = []
            coverage = self.coverage
            for tp, recs in records.items():
                covered = coverage.covered(tp.topic, tp.partition)
                if recs[0].offset >= covered:
                    msgs.extend(recs)
                else:  # delivered again after a rebalance or restart: already in the state
                    fresh = [r for r in recs if r.offset >= covered]
                    self.stats["skipped_covered"] += len(recs) - len(fresh)
                    msgs.extend(fresh)
                coverage.advance(tp.topic, tp.partition, recs[-1].offset + 1)
            idle = await self._idle_snapshot()
            result = self.pipeline.ingest(msgs, idle, batch=group.batch)
            group.batch.seal()
            group.sent.extend(await self._send(result))
            group.acks.append((ranges, generation_id))
            group.events += sum(len(recs) for recs in records.values())  # acked, even if skipped
        if self.web is not None:  # per batch, off the lock
            self.web.observe_received({tp.topic: len(recs) for tp, recs in records.items()})
            self.web.observe(result)
        self._has_work.set()

    # -- partition ownership (streams/takeover.py) -------------------------------------------
    async def _on_partitions_revoked(self, app: Any, revoked: Any, **_: Any) -> None:
        """A revoked partition's sites stop deciding at once: its next owner decides them now.
        Their state is kept: if the partition comes back with nothing processed elsewhere in
        between, this worker resumes where it stopped."""
        mine = set(self.settings.topics.inputs.values())
        parts = {tp.partition for tp in revoked if tp.topic in mine}
        if parts:
            self.pipeline.suspended.update(parts)
            self._confirmed -= parts
            log.info("partitions %s revoked: their sites' decisions stop here", sorted(parts))

    async def _check_assigned(self) -> None:
        """A partition assigned to us that delivers nothing (all caught up) is still ours to
        decide: confirm it from the consumer's positions (timer).

        Not a partition with records on their way: the consumer's position is already past
        records fetched and not yet handed to the worker, so it would look like a gap after
        what this worker covers, i.e. a needless takeover (the partition read from the log
        while its records wait: 15 s for a 1.4M-sample backlog, seen in 2 of ~10 benchmark
        runs). Its first batch confirms it from its records' own offsets."""
        consumer = self.app.consumer
        mine = set(self.settings.topics.inputs.values())
        assigned = {tp.partition for tp in consumer.assignment() if tp.topic in mine}
        for p in sorted(assigned - self._confirmed - getattr(consumer, "in_hand", frozenset())):
            firsts: dict[str, int] = {}
            for topic in self.settings.topics.inputs.values():
                tp = TP(topic, p)
                try:
                    pos = await asyncio.wait_for(consumer.position(tp), timeout=1.0)
                except Exception:  # position not known yet (committed offsets being fetched)
                    return
                if pos is None:
                    continue
                try:
                    hw = consumer.highwater(tp)  # known once a fetch response came back
                except Exception:
                    hw = None
                if hw is not None and pos < hw:
                    break  # records on their way
                firsts[topic] = pos
            else:
                if p not in getattr(consumer, "in_hand", frozenset()):  # fetched while we awaited
                    await self._confirm_ownership(p, firsts, self._open)

    async def _delivery_starts(self, partition: int, records: Mapping[TP, Sequence[Any]]) -> dict[str, int]:
        """Where each input topic of ``partition`` starts delivering to this worker: the first
        offset of its records in this step, else in the fetch in hand (a later step), else the
        consumer's position (nothing of it in hand). Every topic, so that a gap on a topic with
        no records in this step is seen too (e.g. prices the previous owner consumed while
        this step brings only telemetry)."""
        consumer = self.app.consumer
        fetched = getattr(consumer, "in_hand_firsts", {})
        out: dict[str, int] = {}
        for topic in self.settings.topics.inputs.values():
            tp = TP(topic, partition)
            recs = records.get(tp)
            if recs:
                out[topic] = recs[0].offset
            elif tp in fetched:
                out[topic] = fetched[tp]
            else:
                try:
                    pos = await asyncio.wait_for(consumer.position(tp), timeout=1.0)
                except Exception:  # not assigned or not known: this step's topics decide alone
                    continue
                if pos is not None:
                    out[topic] = pos
        return out

    def _unconfirmed_assigned(self) -> bool:
        try:
            return any(tp.partition not in self._confirmed for tp in self.app.consumer.assignment()
                       if tp.topic in self._feed_of_topic)
        except Exception:  # no consumer yet
            return False

    async def _confirm_ownership(self, partition: int, firsts: Mapping[str, int], group: "_Group") -> None:
        """Called under the lock for a partition not confirmed yet whose next records start at
        ``firsts`` (by topic): resume its sites, or take them over first when some of the
        records before were processed by another worker (see streams/takeover.py)."""
        coverage, topics = self.coverage, self.settings.topics
        if not any(coverage.gap(t, partition, o) for t, o in firsts.items()):
            self.pipeline.suspended.discard(partition)
            self._confirmed.add(partition)
            return
        t0 = time.monotonic()
        kw = self.settings.security.client_kwargs()
        history, ends = await read_until(self.settings.kafka, {(t, partition): None for t in topics.inputs.values()}, kw)
        msgs = [m for part in history.values() for m in part]
        keys = {m.key for m in msgs if m.key}
        sites = set(self.pipeline.sites_on(partition))  # + sites this worker has not seen yet:
        sites |= {k for k in {key.decode(errors="replace") for key in keys} if k in self.pipeline.lanes}
        published = await read_published_actions(self.settings.kafka, topics.actions, sorted(sites), kw)
        # what the previous owner rejected (a dead letter keeps its source record's key)
        letters = await read_keyed(self.settings.kafka, topics.dead_letters, keys, kw)
        dead = dead_lettered(letters, partition, set(topics.inputs.values()))
        reports = rebuild_partition(self.pipeline, partition, msgs, published, group.batch, dead)
        coverage.forget(partition)
        for (topic, p), end in ends.items():
            coverage.advance(topic, p, end)
        self.pipeline.suspended.discard(partition)
        self._confirmed.add(partition)
        took = time.monotonic() - t0
        self.stats["takeovers"] += 1
        self.stats["takeover_s"] += took
        for rep in reports:
            log.warning("took over %s on partition %d in %.2f s: %d earlier events from the log, resuming after "
                        "its last published decision %s, %d events pending%s", rep.site_id, partition, took,
                        rep.inputs, rep.resumed_after, rep.pending,
                        f"; {rep.mismatched} re-derived decisions differ from the published ones (their inputs "
                        f"were not committed yet): the published ones stand" if rep.mismatched else "")

    async def _tick(self) -> None:
        """Release events held back by the event-time merge once their partitions idle."""
        if self._lock.locked():
            return
        if self._unconfirmed_assigned():
            async with self._lock:
                await self._check_assigned()
        if not self.pipeline.pending():
            return
        async with self._lock:
            idle = await self._idle_snapshot()
            group = self._open
            result = self.pipeline.flush(idle, batch=group.batch)
            group.sent.extend(await self._send(result))
        if self.web is not None and result.actions:
            self.web.observe(result)
        if len(group.batch):
            self._has_work.set()

    async def _durability_loop(self) -> None:
        """Group commit: whatever was decided since the last write becomes durable in one
        transaction (actions delivered, archive written, offsets acked), oldest first. The
        fetch loop never waits for a write unless ``max_inflight_events`` are pending."""
        next_write = 0.0
        while True:
            await self._has_work.wait()
            if time.monotonic() < next_write:  # let the group grow (see archive_interval_s)
                await asyncio.sleep(next_write - time.monotonic())
            next_write = time.monotonic() + self.settings.archive_interval_s
            self._has_work.clear()
            async with self._lock:  # a consistent cut: no step half-way into the group
                group, self._open = self._open, _Group()
            if not group.events and not len(group.batch):
                continue
            self._writing_events, self._writing_rows = group.events, len(group.batch)
            try:
                await self._make_durable(group)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # nothing after this group may be acked: stop the worker
                log.exception("making a batch durable failed: %r", exc)
                await self.app.crash(exc)
                raise
            finally:
                self._writing_events = self._writing_rows = 0
                self._written.set()

    async def _broker_probe(self) -> None:
        """Say when the broker stops answering, and when it is back (logs + ``stats``).

        Every ``broker_probe_s`` a Metadata request goes out on the producer's connection; no
        answer within ``broker_probe_s`` counts as an outage. The Kafka clients reconnect and
        retry on their own: this only makes an outage visible (a hung broker otherwise shows as
        nothing but a stall). Nothing is acked meanwhile, so nothing can be lost.
        """
        every = self.settings.broker_probe_s
        down_since: float | None = None
        last_warned = 0.0
        while True:
            await asyncio.sleep(every)
            try:
                client = self.app.producer._ensure_producer().client  # type: ignore[attr-defined]
                await asyncio.wait_for(client.fetch_all_metadata(), timeout=every)
                ok, why = True, ""
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                ok, why = False, (f"no answer to Metadata within {every:.1f} s"
                                  if isinstance(exc, asyncio.TimeoutError) else repr(exc))
            now = time.monotonic()
            if ok and down_since is not None:
                lasted = now - down_since
                self.stats["broker_outage_s"] += lasted
                log.warning("broker %s answering again after a %.1f s outage; clients reconnected",
                            self.settings.kafka, lasted)
                down_since = None
            elif not ok and down_since is None:
                down_since = last_warned = now - every
                self.stats["broker_outages"] += 1
                log.warning("broker %s outage: %s; offsets held, Kafka clients retrying", self.settings.kafka, why)
            elif not ok and now - last_warned >= 10:
                last_warned = now
                log.warning("broker %s still down after %.0f s: %s", self.settings.kafka, now - down_since, why)

    async def drain(self) -> None:
        """Wait until everything decided so far is durable (tests, shutdown)."""
        while self._open.events or len(self._open.batch) or self._writing_events:
            self._has_work.set()
            self._written.clear()
            await self._written.wait()

    # -- event-time merge support -----------------------------------------------------------
    async def _idle_snapshot(self):
        """Which of our input partitions have nothing more to read right now.

        Uses the high watermark carried by Fetch responses (right on tansu too), never
        ListOffsets "latest" (tansu answers it too low). A caught-up partition is idle after
        ``idle_grace_s``, or at once when its feed's newest event sits exactly on the interval
        boundary the site decides next (see :meth:`Pipeline.at_boundary`), if
        ``boundary_fast_path`` is on.
        """
        consumer = self.app.consumer
        now = time.monotonic()
        grace = self.settings.idle_grace_s
        # Positions of partitions nothing was received from (a quiet DR feed) change only with a
        # seek, i.e. a rebalance: cache them per consumer generation.
        if self._positions_generation != self.app.consumer_generation_id:
            self._positions.clear()
            self._positions_generation = self.app.consumer_generation_id
        positions = self._positions
        snapshot: dict[tuple[str, int], bool] = {}
        caught_up_now: set[tuple[str, int]] = set()
        for p in self.pipeline.partitions_in_use():
            for topic in self.settings.topics.inputs.values():
                tp = TP(topic, p)
                try:
                    hw = consumer.highwater(tp)
                except Exception:  # not assigned (yet): it cannot block us
                    hw = None
                nxt = self._received_next.get(tp)
                if nxt is None:
                    nxt = positions.get(tp)
                if nxt is None:
                    try:  # a round trip to the consumer thread: 1-10 ms under load, so cached
                        nxt = positions[tp] = await consumer.position(tp)
                    except Exception:
                        nxt = None
                if hw is None:
                    since = self._hw_unknown_since.setdefault(tp, now)
                    snapshot[(topic, p)] = now - since >= self.settings.max_idle_s
                else:
                    self._hw_unknown_since.pop(tp, None)
                    caught_up = nxt is not None and nxt >= hw
                    if not caught_up:
                        self._caught_up_since.pop(tp, None)
                        snapshot[(topic, p)] = False
                    else:
                        at_hw, since = self._caught_up_since.get(tp, (hw, now))
                        if at_hw != hw:
                            since = now
                        self._caught_up_since[tp] = (hw, since)
                        snapshot[(topic, p)] = now - since >= grace
                        caught_up_now.add((topic, p))
        fast = self.settings.boundary_fast_path
        feed_of = self._feed_of_topic
        at_boundary = self.pipeline.at_boundary

        def idle(topic: str, partition: int) -> bool:
            key = (topic, partition)
            # A partition first seen in this very batch was not in the snapshot: it blocks
            # until the next tick looks at it (treating it as idle released a whole first
            # fetch of prices before the telemetry behind it: 32 of 671 demo decisions differed).
            v = snapshot.get(key, False)
            if v or not fast or key not in caught_up_now:
                return v
            # evaluated when the merge asks, i.e. after this batch's events were accepted
            return at_boundary(feed_of[topic], partition)

        return idle

    # -- durability -------------------------------------------------------------------------
    async def _send(self, result: StepResult) -> list:
        if not result.outgoing:
            return []
        producer = self.app.producer
        sent = [
            await producer.send(o.topic, o.key, o.value, None, (o.timestamp_ms / 1000) if o.timestamp_ms else None, None)
            for o in result.outgoing
        ]
        if result.actions:
            # aiokafka's sender task needs ~3 loop turns to put a request on the wire (measured);
            # the next step would otherwise run first (~20-50 ms of synchronous work under load)
            await asyncio.sleep(ACTION_SEND_YIELD_S)
        return sent

    async def _make_durable(self, group: "_Group") -> None:
        if group.sent:
            await asyncio.gather(*group.sent)
        if len(group.batch):
            await self._write_with_retry(group.batch)
        consumer = self.app.consumer
        assert isinstance(consumer, BatchConsumer)
        for ranges, generation_id in group.acks:
            consumer.ack_ranges(ranges, generation_id)
        self.stats["batches"] += 1
        self.stats["events"] += group.events
        if self.on_durable is not None and group.events:
            self.on_durable(group.events)

    async def _write_with_retry(self, batch: ArchiveBatch) -> None:
        delay = BACKOFF_START_S
        failures = 0
        loop = asyncio.get_running_loop()
        while True:
            try:
                if self._fault_archive_fails > 0:  # test hook, see FAULT_ARCHIVE_FAILS_ENV
                    self._fault_archive_fails -= 1
                    raise ArchiveError(f"injected fault ({FAULT_ARCHIVE_FAILS_ENV}): simulated disk full, "
                                       f"batch of {len(batch)} rows not written", transient=True)
                await loop.run_in_executor(self._writer, self.archive.write_batch, batch)
                if failures:
                    log.warning("archive write succeeded after %d failed attempts; offsets released", failures)
                return
            except SinkError as exc:
                failures += 1
                self.stats["archive_retries"] += 1
                kind = "transient" if getattr(exc, "transient", True) else "permanent, needs an operator"
                log.error("archive write failed (%s), offsets held back, retrying in %.1f s: %s", kind, delay, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, BACKOFF_MAX_S)

    def close(self) -> None:
        """After the app stopped: let a write still running finish, then close the archive."""
        self._writer.shutdown(wait=True)
        self.archive.close()


#: Cyclic-GC thresholds of a worker process. Python's default (700, 10, 10) starts a young
#: collection every 700 net container allocations; the worker allocates a few per event, at tens
#: of thousands of events a second, and every 10th young pass also walks the middle generation.
#: Measured (bench/bench_stream.py --gc tuned / --gc default, one session): time in GC during
#: the mixed run 0.13 s / 1.51 s (of ~8 s), batched columns 0.11 s / 0.59 s (of ~4 s). Cycles
#: are still collected: a young pass every 100k allocations, a full one at most every 20M
#: (~40 s at 10k msg/s).
GC_THRESHOLDS = (100_000, 20, 10)


def tune_gc() -> None:
    """Once the worker is built: freeze what start-up made (modules, the Faust app, the restored
    state: never garbage, never scanned again) and space the collections out (GC_THRESHOLDS)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def run_worker(kafka: str, db: str, site_files: Sequence[str] | None = None, partitions: int | None = None,
               group: str = "wattmix-worker", topic_suffix: str = "", web_port: int | None = None,
               web_bind: str = "127.0.0.1", max_future_s: float | None = MAX_FUTURE_S,
               archive_memory_mb: int | None = None) -> int:
    """``wattmix worker``: ensure topics exist, then run until SIGINT/SIGTERM."""
    from wattmix.broker import ensure_topics

    kw: dict = {"partitions": partitions} if partitions else {}
    if archive_memory_mb is not None:
        kw["archive_memory_mb"] = archive_memory_mb
    settings = WorkerSettings.from_args(kafka=kafka, db=db, site_files=list(site_files or []),
                                        topic_suffix=topic_suffix, app_id=group, web_port=web_port,
                                        web_bind=web_bind, max_future_s=max_future_s, **kw)
    asyncio.run(ensure_topics(settings.kafka, settings.topics.all, settings.partitions))
    worker = DispatchWorker(settings)
    log.info("wattmix worker: sites %s, archive %s", [s.site_id for s in settings.sites], settings.db)
    serve(worker)
    return 0


def serve(worker: DispatchWorker, loglevel: str = "INFO", gc_tuned: bool = True) -> None:
    """Run a built worker until SIGINT/SIGTERM, then close its archive: with ``gc_tuned`` the
    start-up heap is frozen and the GC thresholds set first (:func:`tune_gc`)."""
    if gc_tuned:
        tune_gc()
    try:
        faust.Worker(worker.app, loglevel=loglevel).execute_from_commandline()
    finally:
        worker.close()
