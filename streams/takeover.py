"""Partition ownership: which input offsets a worker's state already covers, and how a worker
rebuilds the state of sites whose partition it takes over from another worker.

Every worker of a group keeps its own DuckDB archive, so a worker that is assigned a partition
another worker was processing (a rebalance, or a worker killed) has neither that site's history
nor its engine memory. The input topics are the source of truth (as Kafka Streams reuses a
source topic as a table's changelog): the new owner reads the partition's input records from
the start of the log up to the group's committed offsets, the site's published actions
from the actions topic and the dead letters of those records (what the previous owner
rejected is rejected again, whatever the clock says now), then rebuilds the site exactly as a restart rebuilds it from the archive
(:meth:`streams.pipeline.Pipeline.restore`): history up to the last *published* decision is
re-processed without publishing anything, later events wait in the event-time merge. A
published action is a fact (an actuator may have acted on it): it is never decided again, so
the actions topic keeps exactly one decision per site and interval.

The history is read up to the partitions' high watermarks, not only to the committed offsets:
the previous owner publishes decisions up to a commit interval before it commits their inputs
(measured in tests/reliability/test_takeover.py: a killed worker had published every decision
of its sites while its committed offsets covered ~65% of their events). Reading to the end
gives the rebuild every input those decisions used, so they re-derive identically and the
engine memory is exact; the group then re-delivers from the committed offsets and the worker
skips what the rebuild already covered (:class:`Coverage`).

Every end is known without ListOffsets "latest" (tansu answers it too low): it is the high
watermark the broker returns with every Fetch response.

A log with retention shorter than the sites' history bounds what can be rebuilt this way; a
state snapshot topic (compacted, keyed by site) would bound the read too, and is not built yet.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.partitioner import murmur2

from schemas.action import DispatchAction
from schemas.codec import decode, decode_samples
from schemas.dead_letter import DeadLetter
from sinks.archive import DEAD_LETTERS_TABLE, FEED_TABLES, ArchiveBatch
from streams.pipeline import FEED_ORDER, Incoming, Pipeline, RestoreReport
from wattmix.errors import DecodeError

log = logging.getLogger("wattmix.takeover")

#: Give up reading a partition's history when the broker sends nothing for this long while
#: records are still missing (the end offset is known, so silence means trouble, not the end).
READ_STALL_S = 30.0


def key_partition(key: bytes, partitions: int) -> int:
    """The partition the Java client and aiokafka's default partitioner pick for ``key``."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


@dataclass
class Coverage:
    """For every input partition, the next offset this worker's state does not cover yet.

    State covers offset ``o`` of a partition when the record at ``o`` was folded into a site's
    lane (or dead-lettered) by this process, or restored from this worker's archive. A record
    below that mark is already in the state and must not be folded twice (Faust seeks back to
    the committed offset after every rebalance, and commits lag acks by up to the commit
    interval); a first record above it means another worker processed the records between.
    """

    next_offset: dict[tuple[str, int], int] = field(default_factory=dict)

    def gap(self, topic: str, partition: int, first_offset: int) -> bool:
        """True when records before ``first_offset`` were processed elsewhere."""
        have = self.next_offset.get((topic, partition))
        return first_offset > (0 if have is None else have)

    def covered(self, topic: str, partition: int) -> int:
        return self.next_offset.get((topic, partition), 0)

    def advance(self, topic: str, partition: int, next_offset: int) -> None:
        if next_offset > self.next_offset.get((topic, partition), -1):
            self.next_offset[(topic, partition)] = next_offset

    def forget(self, partition: int) -> None:
        for key in [k for k in self.next_offset if k[1] == partition]:
            del self.next_offset[key]

    @classmethod
    def from_archive(cls, conn: Any) -> "Coverage":
        """What this worker's archive holds: its rows are a prefix of each partition (groups
        are written in offset order, inputs and dead letters of a group in one transaction)."""
        parts = [f"SELECT topic, kafka_partition, max(kafka_offset) FROM {t} "
                 f"WHERE kafka_offset IS NOT NULL GROUP BY ALL" for t in FEED_TABLES]
        parts.append(f"SELECT source_topic, source_partition, max(source_offset) FROM {DEAD_LETTERS_TABLE} GROUP BY ALL")
        cov = cls()
        for topic, partition, last in conn.execute(" UNION ALL ".join(parts)).fetchall():
            cov.advance(topic, partition, last + 1)
        return cov


async def read_until(bootstrap: str, ends: Mapping[tuple[str, int], int | None], client_kwargs: Mapping[str, Any],
                     ) -> tuple[dict[tuple[str, int], list[Incoming]], dict[tuple[str, int], int]]:
    """Read each ``(topic, partition)`` from the start of its log up to (not including) its end
    offset; an end of ``None`` means "up to the high watermark the first Fetch reports".
    Returns the records and the end offset each read stopped at."""
    out: dict[tuple[str, int], list[Incoming]] = {k: [] for k in ends}
    todo = {k: e for k, e in ends.items() if e is None or e > 0}
    if not todo:
        return out, {k: 0 for k in ends}
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                                auto_offset_reset="earliest", max_partition_fetch_bytes=4 * 1024 * 1024,
                                fetch_max_wait_ms=50, **client_kwargs)
    await consumer.start()
    try:
        tps = {TopicPartition(t, p): (t, p) for t, p in todo}
        consumer.assign(list(tps))
        await consumer.seek_to_beginning(*tps)
        last_progress = time.monotonic()
        while tps:
            batch = await consumer.getmany(*tps, timeout_ms=200, max_records=10_000)
            if batch:
                last_progress = time.monotonic()
            for tp, recs in batch.items():
                key = tps.get(tp)
                if key is None:
                    continue
                end = todo[key]
                out[key].extend(Incoming(tp.topic, tp.partition, r.offset, r.key, r.value)
                                for r in recs if end is None or r.offset < end)
            for tp, key in list(tps.items()):
                end = todo[key]
                if end is None:
                    end = consumer.highwater(tp)  # from the Fetch responses; None before the first
                    if end is None:
                        continue
                    todo[key] = end
                    out[key] = [m for m in out[key] if m.offset < end]
                if await consumer.position(tp) >= end:
                    del tps[tp]
            if tps and time.monotonic() - last_progress > READ_STALL_S:
                missing = {f"{t}[{p}]": todo[(t, p)] for t, p in tps.values()}
                raise TimeoutError(f"reading partition history stalled for {READ_STALL_S:.0f} s; "
                                   f"still missing records up to {missing}")
            await asyncio.sleep(0)
    finally:
        await consumer.stop()
    return out, {k: todo.get(k) or 0 for k in ends}


async def read_keyed(bootstrap: str, topic: str, keys: Iterable[bytes], client_kwargs: Mapping[str, Any],
                     ) -> list[Incoming]:
    """Every record so far in the partitions of ``topic`` that hold ``keys`` (the default
    partitioner puts each key in one partition), in log order per partition; other keys that
    share those partitions come too. Nothing when the topic does not exist."""
    probe = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, **client_kwargs)
    await probe.start()
    try:
        await probe.topics()  # a Metadata request for every topic: the partition count below
        partitions = len(probe.partitions_for_topic(topic) or ())
    finally:
        await probe.stop()
    if not partitions:
        return []
    by_partition: dict[tuple[str, int], None] = {(topic, key_partition(k, partitions)): None for k in keys}
    got, _ = await read_until(bootstrap, by_partition, client_kwargs)
    return [m for msgs in got.values() for m in msgs]


async def read_published_actions(bootstrap: str, actions_topic: str, site_ids: Iterable[str],
                                 client_kwargs: Mapping[str, Any]) -> dict[str, list[Incoming]]:
    """Every action published so far for ``site_ids`` (keyed by site id, so each site's actions
    are in one partition of ``actions_topic``), in publication order."""
    sites = {s.encode(): s for s in site_ids}
    out: dict[str, list[Incoming]] = {s: [] for s in sites.values()}
    for m in await read_keyed(bootstrap, actions_topic, sites, client_kwargs):
        site = sites.get(m.key or b"")
        if site is not None:
            out[site].append(m)
    return out


def dead_lettered(letters: Iterable[Incoming], partition: int, input_topics: Collection[str]) -> set[tuple[str, int]]:
    """(topic, offset) of every record of ``partition``'s input topics that a worker rejected,
    from the dead-letter topic (each letter names its source record)."""
    out = set()
    for m in letters:
        try:
            dl = decode(DeadLetter, m.value)
        except DecodeError as exc:  # not ours to judge: say so and go on without it
            log.warning("%s[%d]@%d is not a DeadLetter, ignored: %s", m.topic, m.partition, m.offset, exc)
            continue
        if dl.source_partition == partition and dl.source_topic in input_topics:
            out.add((dl.source_topic, dl.source_offset))
    return out


def rebuild_partition(pipeline: Pipeline, partition: int, history: Iterable[Incoming],
                      published: Mapping[str, list[Incoming]], batch: ArchiveBatch,
                      dead: Collection[tuple[str, int]] = ()) -> list[RestoreReport]:
    """Rebuild every site on ``partition`` from the records before the group's committed
    offsets (``history``, all input topics) and the actions already published for those sites.

    The valid history records are archived (idempotently: rows another run of this worker
    already wrote are skipped by the archive); dead letters among them were published and
    archived by the worker that read them first, so they are only skipped here: those in
    ``dead`` ((topic, offset) from the dead-letter topic, see :func:`dead_lettered`), and the
    records that do not decode or are stamped ahead of this worker's clock (they were ahead of
    the first reader's clock too, so rejected then; ``dead`` also covers a record whose time the
    clock has passed since: judged again now, it would be folded here and not by the first
    reader). A keyless record's dead letter is in no partition known from the keys, so for
    those the clock check is all there is.
    """
    by_site: dict[str, list[tuple[Any, int, int, str, Any]]] = {}
    rank = {name: i for i, name in enumerate(FEED_ORDER)}
    horizon = pipeline.future_horizon()
    for m in history:
        feed = pipeline.feed_by_topic.get(m.topic)
        if feed is None or (m.topic, m.offset) in dead:
            continue
        try:
            recs = ((decode(feed.model, m.value),) if feed.batch_model is None
                    else decode_samples(feed.model, feed.batch_model, m.value))
        except DecodeError:
            continue
        if recs[0].site_id not in pipeline.lanes:
            continue
        if horizon is not None and max(r.event_time() for r in recs) > horizon:
            continue  # ahead of the clock now, so it was when first read: a FutureEvent (Pipeline._accept)
        for rec in recs:
            batch.add_input(feed.name, rec, topic=m.topic, partition=m.partition, offset=m.offset, late=False)
            # the archive's restore order: event time, feed order, offset (sinks.archive)
            by_site.setdefault(rec.site_id, []).append((rec.event_time(), rank[feed.name], m.offset, feed.name, rec))
    reports = []
    for site_id in sorted(set(pipeline.sites_on(partition)) | set(by_site)):
        pipeline.reset_site(site_id)
        events = sorted(by_site.get(site_id, ()), key=lambda e: e[:3])
        actions = []
        for m in published.get(site_id, ()):
            try:
                actions.append(decode(DispatchAction, m.value))
            except DecodeError as exc:  # not ours to judge: say so and go on without it
                log.warning("%s[%d]@%d is not a DispatchAction, ignored: %s", m.topic, m.partition, m.offset, exc)
        # one decision per interval: the newest publication of an interval counts
        latest = {a.interval_start: a for a in actions}
        kept = [latest[k] for k in sorted(latest)]
        for a in kept:  # this worker's archive gets the site's whole decision history too
            batch.add_action(a, topic=pipeline.topics.actions)
        rep = pipeline.restore(site_id, ((e[3], e[4]) for e in events), kept, partition)
        reports.append(rep)
    return reports
