"""Batch delivery for Faust: whole fetches go to one handler, acks are marked per offset range.

Why: profiled on this machine (bench/README.md), a plain Faust agent that does nothing reads
~5k msg/s because every message pays, in ``Consumer._drain_messages``, a ``wait_first`` (two
futures and an ``asyncio.wait``), then the conductor's ``Event`` + channel queue put, the
stream's processor coroutine, sensors, and one ``stream.ack`` (a ``WeakSet``, a set and a list
update under a lock). That is ~190 us per message before any work; ``noack_take`` batches what
the agent *sees*, not what Faust does per message.

Faust keeps doing what it is good at: the consumer group, partition assignment and
rebalances, the commit timer, commit on revoke and on stop, flow control, the producer. Only
the per-message path is replaced: :class:`BatchConsumer` hands every fetch (``{TP: [records]}``,
aiokafka ``ConsumerRecord`` objects, no copies) to a handler, which calls
:meth:`BatchConsumer.ack_ranges` once the batch is durable. ``ack_ranges`` feeds the same
bookkeeping ``Consumer.ack`` feeds (``_acked`` / ``_acked_index`` / ``_n_acked``), so Faust's own
commit logic decides what to commit: still only offsets acked, contiguous from the last commit.

Acking "only the highest offset per partition" is not enough with Faust: ``_new_offset`` commits
the first run of *consecutive* acked offsets and refuses one whose start is past the committed
offset, so the whole range must be marked (here: ``list.extend(range)`` + ``set.update``, in C).
Offsets absent from a fetch (compacted records, transaction markers) are covered by the range.

A fetch is handed over in steps of at most ``step_max`` records (:func:`split_steps`), smallest
partitions first: a real-time price (one record) is not queued behind thousands of telemetry
samples, and the merge can decide a boundary as soon as the step that carries the first
sample past it is folded, instead of after the whole fetch (up to ``batch_max`` records).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP
from faust.types.tuples import ack_lock

#: handler(records by partition, consumer generation id)
BatchHandler = Callable[[Mapping[TP, Sequence[Any]], int], Awaitable[None]]


class BatchConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    """Faust hard-codes ``fetch_max_wait_ms=1500``; the app's ``fetch_max_wait_s`` replaces it."""

    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        wait_s = getattr(self.app, "wattmix_fetch_max_wait_s", None)
        if wait_s is not None:
            consumer._fetch_max_wait_ms = int(wait_s * 1000)
        return consumer


class BatchConsumer(faust_aiokafka.Consumer):
    """Faust's aiokafka consumer, with the per-message drain loop replaced by batch delivery
    when a handler is set (:attr:`batch_handler`, or ``app.wattmix_batch_handler`` set by
    :func:`install_batch_transport`); otherwise it behaves exactly like Faust's."""

    batch_handler: BatchHandler | None = None

    @property
    def step_max(self) -> int | None:
        """Records per handler call at most (``app.wattmix_step_max``); None: the whole fetch."""
        return getattr(self.app, "wattmix_step_max", None)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._acked_next: dict[TP, int] = {}
        self._acked_generation: int | None = None
        self._commit_task: asyncio.Future[bool] | None = None
        #: the first offset of each topic-partition with records fetched (the consumer's
        #: position already past them) and not yet handed to the handler: where its delivery
        #: starts, which its position no longer says
        self.in_hand_firsts: dict[TP, int] = {}

    @property
    def in_hand(self) -> frozenset[int]:
        """Partitions with records fetched and not yet handed to the handler."""
        return frozenset(tp.partition for tp in self.in_hand_firsts)

    def _new_consumer_thread(self) -> BatchConsumerThread:
        return BatchConsumerThread(self, loop=self.loop, beacon=self.beacon)

    async def _drain_messages(self, fetcher: Any) -> None:  # pragma: no cover - needs a broker
        handler = self.batch_handler or getattr(self.app, "wattmix_batch_handler", None)
        if handler is None:
            return await super()._drain_messages(fetcher)
        consumer_should_stop = self._stopped.is_set
        fetcher_should_stop = fetcher._stopped.is_set
        try:
            while not (consumer_should_stop() or fetcher_should_stop()):
                records, active = await self._wait_next_records(1.0)
                self.in_hand_firsts = {tp: recs[0].offset for tp, recs in records.items() if recs} if records else {}
                try:
                    await self._handle_fetch(handler, records, active)
                finally:
                    self.in_hand_firsts = {}
        except self.consumer_stopped_errors:
            if self.transport.app.should_stop:
                self.log.info("Broker stopped consumer, shutting down...")
                return
            raise
        except asyncio.CancelledError:
            if self.transport.app.should_stop:
                self.log.info("Consumer shutting down for user cancel.")
                return
            raise
        except Exception as exc:
            self.log.exception("Drain messages raised: %r", exc)
            raise

    async def _handle_fetch(self, handler: BatchHandler, records: Mapping[TP, Sequence[Any]],
                            active: Any) -> None:  # pragma: no cover - needs a broker
        """One fetch's records to the handler, in steps of at most ``step_max`` records."""
        await asyncio.sleep(0)
        if not records or self.should_stop:
            return
        if not self.flow_active:
            # a rebalance started while we fetched: drop the records (Faust does the
            # same) and let the consumer seek back to the committed offsets
            await self._seek_back()
            return
        buffered = self._buffered_partitions
        batch = {tp: recs for tp, recs in records.items()
                 if recs and (active is None or tp in active or tp in buffered)}
        if not batch:
            return
        generation_id = self.app.consumer_generation_id
        for n, step in enumerate(split_steps(batch, self.step_max)):
            if n:
                await asyncio.sleep(0)  # let the producer and the timers run between steps
                if not self.flow_active or self.app.consumer_generation_id != generation_id:
                    # a rebalance started mid-fetch: drop the rest and seek back (as above)
                    await self._seek_back()
                    break
            await handler(step, generation_id)
        commit_every = self._commit_every
        if commit_every is not None and self._n_acked >= commit_every and not self._committing():
            # in the background: an OffsetCommit round trip (10-50 ms under load) awaited
            # here held up every record fetched meanwhile, a price included
            self._n_acked = 0
            self._commit_task = asyncio.ensure_future(self.commit())
            self._commit_task.add_done_callback(self._commit_done)

    async def _seek_back(self) -> None:  # pragma: no cover - needs a broker
        """Seek back to the committed offsets after dropping records fetched across a rebalance."""
        try:
            await self.perform_seek()
        except Exception as exc:
            self.log.warning(f"exception performing seek when flow not active {exc}")

    def _committing(self) -> bool:
        return self._commit_task is not None and not self._commit_task.done()

    def _commit_done(self, task: "asyncio.Future[bool]") -> None:
        if not task.cancelled() and task.exception() is not None:
            # as if it had been awaited in the fetch loop: the consumer (and the worker) stop
            self.log.error("Commit every %s acked offsets failed: %r", self._commit_every, task.exception())
            asyncio.ensure_future(self.crash(task.exception()))

    def ack_ranges(self, ranges: Mapping[TP, tuple[int, int]], generation_id: int) -> int:
        """Mark offsets ``first..last`` (inclusive) of each partition acknowledged, so Faust may
        commit them. Call only once the records are durable. Partitions no longer assigned,
        or records fetched before a rebalance, are skipped: they will be delivered again.
        Returns how many offsets were marked."""
        if generation_id != self.app.consumer_generation_id:
            return 0
        n = 0
        with ack_lock:
            if self._acked_generation != generation_id:
                self._acked_next.clear()
                self._acked_generation = generation_id
            assignment = self.assignment()
            for tp, (first, last) in ranges.items():
                if tp not in assignment:
                    continue
                start = self._acked_next.get(tp)
                committed = self._committed_offset[tp]
                if start is None:
                    # the first batch after an assignment: cover from the committed offset so
                    # records missing from the fetch (compacted, markers) leave no gap
                    start = committed if committed is not None and committed < first else first
                if committed is not None and start < committed:
                    start = committed
                if last < start:
                    continue
                rng = range(start, last + 1)
                self._acked[tp].extend(rng)
                self._acked_index[tp].update(rng)
                self._acked_next[tp] = last + 1
                n += len(rng)
            self._n_acked += n
        return n


def split_steps(records: Mapping[TP, Sequence[Any]], step_max: int | None) -> list[dict[TP, Sequence[Any]]]:
    """Cut one fetch into steps of about ``step_max`` records, smallest partitions first.

    The first step holds the start of *every* partition of the fetch (small partitions whole,
    the room left shared evenly by the large ones): ownership checks look at a partition's
    first records in the step where it first appears. Each partition's records keep their
    order in contiguous runs (one ack range per step); the order *across* partitions is free,
    since the event-time merge orders the feeds by event time, not by arrival."""
    if not step_max or sum(len(recs) for recs in records.values()) <= step_max:
        return [dict(records)]
    by_size = sorted(records.items(), key=lambda item: len(item[1]))
    first: dict[TP, Sequence[Any]] = {}
    room = step_max
    for i, (tp, recs) in enumerate(by_size):
        first[tp] = recs[:min(len(recs), max(1, room // (len(by_size) - i)))]
        room -= len(first[tp])
    steps = [first]
    step: dict[TP, Sequence[Any]] = {}
    room = step_max
    for tp, recs in by_size:
        start = len(first[tp])
        while start < len(recs):
            step[tp] = recs[start:start + room]
            start += len(step[tp])
            room -= len(step[tp])
            if room <= 0:
                steps.append(step)
                step, room = {}, step_max
    if step:
        steps.append(step)
    return steps


class BatchTransport(faust_aiokafka.Transport):
    Consumer = BatchConsumer


def install_batch_transport(app: Any, handler: BatchHandler, fetch_max_wait_s: float | None = None,
                            step_max: int | None = None) -> None:
    """Make ``app`` use :class:`BatchConsumer`, delivering every fetch to ``handler`` in steps
    of at most ``step_max`` records (call before the app starts)."""
    app.wattmix_batch_handler = handler
    app.wattmix_fetch_max_wait_s = fetch_max_wait_s
    app.wattmix_step_max = step_max
    app.transport = BatchTransport(app.conf.broker_consumer, app)
