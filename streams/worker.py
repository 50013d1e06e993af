"""The Faust worker: a thin adapter from Kafka to :class:`streams.pipeline.Pipeline`.

One agent (``concurrency=1``: faust-streaming issue #606 commits offsets past in-flight
events otherwise) reads the four feed topics in batches with ``noack_take``. Each batch is
made durable in this order, and only then acknowledged:

1. actions and dead letters are published and their delivery awaited;
2. inputs, actions and dead letters are written to DuckDB in one transaction;
3. the events are acked, so Faust may commit their offsets.

A crash between any two steps loses nothing: un-acked events are delivered again, the archive
ignores rows it already has, and a re-published action carries the same key (``site_id``)
and ``action_id`` so consumers de-duplicate it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence

import faust
from faust.types import TP

from sinks.archive import Archive
from streams.app import WorkerSettings, create_app
from streams.pipeline import Incoming, Pipeline, StepResult
from wattmix.errors import SinkError

log = logging.getLogger("wattmix.worker")

#: Archive retry backoff: 0.5 s doubling to 30 s; the worker never gives up (and never acks)
#: on its own: an operator fixes the disk, the worker carries on where it stopped.
BACKOFF_START_S = 0.5
BACKOFF_MAX_S = 30.0


class DispatchWorker:
    def __init__(self, settings: WorkerSettings, archive: Archive | None = None) -> None:
        self.settings = settings
        self.app = create_app(settings)
        self.pipeline = Pipeline(settings.sites, settings.topics)
        self.archive = archive or Archive(settings.db)
        self._lock = asyncio.Lock()
        self._received_next: dict[TP, int] = {}
        self._hw_unknown_since: dict[TP, float] = {}
        self._caught_up_since: dict[TP, tuple[int, float]] = {}
        self.stats = {"batches": 0, "events": 0, "archive_retries": 0}

        self.restored = self._restore()
        topic = self.app.topic(*settings.topics.inputs.values(), value_type=bytes, key_type=bytes)
        self.app.agent(topic, name="wattmix-dispatch", concurrency=1)(self._agent)
        self.app.task(self._log_restore)
        self.app.timer(max(settings.idle_grace_s / 2, 0.05), name="wattmix-idle-flush")(self._tick)

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

    async def _log_restore(self) -> None:
        # a task, not __init__: Faust configures logging when the worker starts
        for rep in self.restored:
            if rep.inputs:
                log.info("restored %s: %d archived events, %d actions re-derived (%d mismatched), "
                         "resuming after %s, %d events pending", rep.site_id, rep.inputs, rep.actions,
                         rep.mismatched, rep.resumed_after, rep.pending)
            if rep.mismatched:
                log.error("restored %s: %d re-derived actions differ from the archived ones: the engine "
                          "is not deterministic on this history", rep.site_id, rep.mismatched)

    # -- the agent ------------------------------------------------------------------------
    async def _agent(self, stream: faust.StreamT) -> None:
        async for events in stream.noack_take(self.settings.batch_max, within=self.settings.batch_within_s):
            msgs = []
            for ev in events:
                m = ev.message
                msgs.append(Incoming(m.topic, m.partition, m.offset, m.key, m.value))
                nxt = m.offset + 1
                if nxt > self._received_next.get(m.tp, -1):
                    self._received_next[m.tp] = nxt
            async with self._lock:
                idle = await self._idle_snapshot()
                result = self.pipeline.ingest(msgs, idle)
                await self._make_durable(result)
            for ev in events:
                await stream.ack(ev)
            self.stats["batches"] += 1
            self.stats["events"] += len(events)

    async def _tick(self) -> None:
        """Release events held back by the event-time merge once their partitions idle."""
        if not self.pipeline.pending() or self._lock.locked():
            return
        async with self._lock:
            idle = await self._idle_snapshot()
            result = self.pipeline.flush(idle)
            if result.actions or len(result.batch):
                await self._make_durable(result)

    # -- event-time merge support -----------------------------------------------------------
    async def _idle_snapshot(self):
        """Which of our input partitions have nothing more to read right now.

        Uses the high watermark carried by Fetch responses (right on tansu too), never
        ListOffsets "latest" (tansu answers it too low).
        """
        consumer = self.app.consumer
        now = time.monotonic()
        snapshot: dict[tuple[str, int], bool] = {}
        for p in self.pipeline.partitions_in_use():
            for topic in self.settings.topics.inputs.values():
                tp = TP(topic, p)
                try:
                    hw = consumer.highwater(tp)
                except Exception:  # not assigned (yet): it cannot block us
                    hw = None
                nxt = self._received_next.get(tp)
                if nxt is None:
                    try:
                        nxt = await consumer.position(tp)
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
                        snapshot[(topic, p)] = now - since >= self.settings.idle_grace_s
        return lambda topic, partition: snapshot.get((topic, partition), True)

    # -- durability -------------------------------------------------------------------------
    async def _make_durable(self, result: StepResult) -> None:
        if result.outgoing:
            producer = self.app.producer
            futs = [
                await producer.send(o.topic, o.key, o.value, None, (o.timestamp_ms / 1000) if o.timestamp_ms else None, None)
                for o in result.outgoing
            ]
            await asyncio.gather(*futs)
        if len(result.batch):
            await self._write_with_retry(result)

    async def _write_with_retry(self, result: StepResult) -> None:
        delay = BACKOFF_START_S
        loop = asyncio.get_running_loop()
        while True:
            try:
                await loop.run_in_executor(None, self.archive.write_batch, result.batch)
                return
            except SinkError as exc:
                self.stats["archive_retries"] += 1
                log.error("archive write failed, offsets held back, retrying in %.1f s: %s", delay, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, BACKOFF_MAX_S)


def run_worker(kafka: str, db: str, site_files: Sequence[str] | None = None, partitions: int | None = None,
               group: str = "wattmix-worker", topic_suffix: str = "") -> int:
    """``wattmix worker``: ensure topics exist, then run until SIGINT/SIGTERM."""
    from wattmix.broker import ensure_topics

    kw = {"partitions": partitions} if partitions else {}
    settings = WorkerSettings.from_args(kafka=kafka, db=db, site_files=list(site_files or []),
                                        topic_suffix=topic_suffix, app_id=group, **kw)
    asyncio.run(ensure_topics(settings.kafka, settings.topics.all, settings.partitions))
    worker = DispatchWorker(settings)
    log.info("wattmix worker: sites %s, archive %s", [s.site_id for s in settings.sites], settings.db)
    try:
        faust.Worker(worker.app, loglevel="INFO").execute_from_commandline()
    finally:
        worker.archive.close()
    return 0
