"""``wattmix demo``: the whole system on one machine, end to end, in about a minute.

1. start the embedded Kafka-protocol broker (tansu) on a free loopback port, create topics;
2. start a real ``wattmix worker`` process (Faust) archiving to a fresh DuckDB file;
3. publish the built-in one-week scenario (prices, DR, hashprice, GPU telemetry), merged in
   event time with the Kafka timestamp set to the event time;
4. wait until the worker has caught up: its committed offsets reach the offsets our own
   producer was given (never ListOffsets "latest": tansu answers it too low), and the actions
   topic holds one action for every interval the in-process engine decides on the same events;
5. stop the worker, print a summary from DuckDB, leave the file for ``wattmix sql`` / ``duckdb``.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import orjson

from schemas.codec import encode

WORKER_GROUP = "wattmix-worker"


def _say(msg: str, quiet: bool = False) -> None:
    if not quiet:
        print(msg, flush=True)


async def publish_events(bootstrap: str, named_events, topics: dict[str, str], progress=None,
                         barrier_minutes: int = 15) -> dict[tuple[str, int], int]:
    """Publish (feed, record) pairs in order; return the last offset per (topic, partition).

    Keyed by ``site_id`` (one site's feeds meet in one partition), Kafka timestamp = event time.
    Plain producer: tansu does not support the idempotent one.

    Kafka orders a partition, not a set of topics: a record sent later to one topic can be
    written before one sent earlier to another. A worker that sees an event past an interval
    boundary decides that interval, so every record stamped at or before a boundary is
    acknowledged by the broker before the first record past it is sent (a barrier every
    ``barrier_minutes`` of event time: 672 waits for a week of 15-min intervals, ~2 s).
    """
    from aiokafka import AIOKafkaProducer

    from dispatch.clock import ceil_to_interval

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, **_security(), acks="all", linger_ms=5,
                                max_batch_size=256 * 1024, enable_idempotence=False)
    await producer.start()
    last: dict[tuple[str, int], int] = {}
    pending: list = []

    async def drain() -> None:
        for md in await asyncio.gather(*pending):
            k = (md.topic, md.partition)
            if md.offset > last.get(k, -1):
                last[k] = md.offset
        pending.clear()

    try:
        n = len(named_events)
        barrier = None
        for i, (feed, rec) in enumerate(named_events, 1):
            t = rec.event_time()
            if barrier is not None and t > barrier and pending:
                await drain()
            if barrier is None or t > barrier:
                barrier = ceil_to_interval(t, barrier_minutes)
            fut = await producer.send(topics[feed], encode(rec), key=rec.site_id.encode(),
                                      timestamp_ms=int(t.timestamp() * 1000))
            pending.append(fut)
            if len(pending) >= 20000:
                await drain()
            if progress and (i % 20000 == 0 or i == n):
                progress(i, n, t)
        await drain()
    finally:
        await producer.stop()
    return last


async def committed_offsets(bootstrap: str, group: str, tps: list[tuple[str, int]]) -> dict[tuple[str, int], int]:
    """The group's committed offsets, naming every partition (tansu breaks on the unnamed form)."""
    from aiokafka.admin import AIOKafkaAdminClient
    from aiokafka.structs import TopicPartition

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, **_security(), client_id="wattmix-demo")
    await admin.start()
    try:
        res = await admin.list_consumer_group_offsets(group, partitions=[TopicPartition(t, p) for t, p in tps])
        return {(tp.topic, tp.partition): meta.offset for tp, meta in res.items()}
    finally:
        await admin.close()


async def read_action_ids(bootstrap: str, topic: str, timeout_s: float = 2.0) -> dict[str, bytes]:
    """Every action on the topic, by action_id (de-duplicated, as any consumer should)."""
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, **_security(), group_id=None,
                                auto_offset_reset="earliest", enable_auto_commit=False)
    await consumer.start()
    out: dict[str, bytes] = {}
    try:
        while True:
            batch = await consumer.getmany(timeout_ms=int(timeout_s * 1000), max_records=10000)
            if not batch:
                break
            for records in batch.values():
                for r in records:
                    d = orjson.loads(r.value)
                    out[f"{d['site_id']}|{d['interval_start']}"] = r.value
    finally:
        await consumer.stop()
    return out


def _start_worker(bootstrap: str, db: str, log_path: Path) -> subprocess.Popen:
    env = dict(os.environ, WATTMIX_KAFKA=bootstrap, PYTHONUNBUFFERED="1")
    logf = open(log_path, "wb")
    return subprocess.Popen([sys.executable, "-m", "wattmix", "worker", "--kafka", bootstrap, "--db", db],
                            stdout=logf, stderr=subprocess.STDOUT, env=env, start_new_session=True)


def stop_worker(proc: subprocess.Popen, timeout: float = 20.0) -> int:
    """SIGTERM (a clean Faust shutdown), then SIGKILL of its process group after ``timeout``."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return proc.returncode


def run_demo(db: str = "wattmix-demo.duckdb", seed: int = 7, days: int = 7, jobs: int = 1000,
             quiet: bool = False, timeout_s: float = 600.0) -> int:
    from dispatch.processor import run_in_process
    from schemas.topics import ALL_TOPICS, DEFAULT_PARTITIONS, INPUT_FEEDS
    from wattmix.broker import EmbeddedBroker, ensure_topics
    from wattmix.scenario import build_demo_scenario
    from wattmix.summary import print_summary, summarize

    t_start = time.monotonic()
    dbp = Path(db)
    for p in (dbp, Path(str(dbp) + ".wal")):
        p.unlink(missing_ok=True)
    log_path = dbp.with_suffix(".worker.log")

    scenario = build_demo_scenario(seed=seed, days=days, jobs=jobs)
    events = scenario.events_in_order()
    expected = run_in_process(scenario.site, [r for _, r in events])
    counts = defaultdict(int)
    for feed, _ in events:
        counts[feed] += 1
    _say(f"scenario: {scenario.start:%Y-%m-%d} + {days} days, site {scenario.site.site_id!r}, "
         f"{len(events):,} events ({', '.join(f'{k} {v:,}' for k, v in counts.items())})", quiet)

    with EmbeddedBroker() as broker:
        bootstrap = broker.bootstrap
        _say(f"broker: tansu on {bootstrap} (ready in {broker.startup_seconds * 1000:.0f} ms)", quiet)
        asyncio.run(ensure_topics(bootstrap, ALL_TOPICS, DEFAULT_PARTITIONS))
        worker = _start_worker(bootstrap, str(dbp), log_path)
        _say(f"worker: pid {worker.pid}, archive {dbp}, log {log_path}", quiet)
        try:
            topics = {f.name: f.topic for f in INPUT_FEEDS}
            t0 = time.monotonic()

            def progress(i, n, et):
                rate = i / max(time.monotonic() - t0, 1e-9)
                _say(f"  published {i:>8,}/{n:,}  event time {et:%a %d %b %H:%M}  {rate:,.0f} msg/s", quiet)

            last = asyncio.run(publish_events(bootstrap, events, topics, progress))
            _say(f"published {len(events):,} events in {time.monotonic() - t0:.1f} s", quiet)

            want = {k: v + 1 for k, v in last.items()}
            caught_up = asyncio.run(_wait_caught_up(bootstrap, want, len(expected), worker, quiet, timeout_s))
            if not caught_up:
                _say(f"worker did not catch up within {timeout_s:.0f} s; see {log_path}")
                return 1
        finally:
            rc = stop_worker(worker)
            _say(f"worker stopped (exit {rc})", quiet)

        live = asyncio.run(read_action_ids(bootstrap, "wattmix.actions"))

    exp_bytes = {a.action_id: encode(a) for a in expected}
    same = sum(1 for k, v in exp_bytes.items() if k in live and orjson.loads(live[k]) == orjson.loads(v))
    summary = summarize(str(dbp), scenario.site)
    print_summary(summary)
    print(f"parity: {same}/{len(exp_bytes)} live actions identical to the in-process engine on the same events")
    print(f"done in {time.monotonic() - t_start:.0f} s; query it:  wattmix sql --db {dbp} \"SELECT * FROM actions LIMIT 5\"")
    return 0 if same == len(exp_bytes) and summary.events_archived == len(events) else 1


async def _wait_caught_up(bootstrap, want, n_actions, worker, quiet, timeout_s) -> bool:
    tps = sorted(want)
    deadline = time.monotonic() + timeout_s
    total = sum(want.values())
    last_line = 0.0
    while time.monotonic() < deadline:
        if worker.poll() is not None:
            _say(f"worker exited early with code {worker.returncode}")
            return False
        try:
            got = await committed_offsets(bootstrap, WORKER_GROUP, tps)
        except Exception as exc:  # the group may not exist yet
            got = {}
            err = repr(exc)
        else:
            err = ""
        done = sum(min(max(got.get(tp, 0), 0), want[tp]) for tp in tps)
        now = time.monotonic()
        if done >= total:
            actions = await read_action_ids(bootstrap, "wattmix.actions", timeout_s=0.5)
            if len(actions) >= n_actions:
                _say(f"  worker caught up: {done:,}/{total:,} events committed, {len(actions)} actions", quiet)
                return True
        if now - last_line > 2.0:
            _say(f"  worker: {done:,}/{total:,} events archived and committed {err}", quiet)
            last_line = now
        await asyncio.sleep(0.5)
    return False


def publish_demo_cli(kafka: str, seed: int = 7, days: int = 7, jobs: int = 1000) -> int:
    """``wattmix publish-demo``: the docker-compose feed service."""
    from schemas.topics import ALL_TOPICS, DEFAULT_PARTITIONS, INPUT_FEEDS
    from wattmix.broker import ensure_topics
    from wattmix.scenario import build_demo_scenario

    scenario = build_demo_scenario(seed=seed, days=days, jobs=jobs)
    events = scenario.events_in_order()
    asyncio.run(ensure_topics(kafka, ALL_TOPICS, DEFAULT_PARTITIONS))
    t0 = time.monotonic()

    def progress(i, n, et):
        print(f"published {i:,}/{n:,} event time {et:%Y-%m-%d %H:%M}", flush=True)

    asyncio.run(publish_events(kafka, events, {f.name: f.topic for f in INPUT_FEEDS}, progress))
    print(f"published {len(events):,} events in {time.monotonic() - t0:.1f} s")
    return 0


def _security() -> dict:
    """SASL/TLS settings for aiokafka clients, from the environment (see streams/security.py)."""
    from streams.security import client_kwargs

    return client_kwargs()
