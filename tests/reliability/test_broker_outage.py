"""The broker goes away (SIGSTOP: connections stay open, nothing answers, like a hung or
partitioned broker) while events flow, then comes back (SIGCONT): the worker reconnects by
itself, nothing is lost or duplicated, decisions are identical to the in-process engine, and
the outage shows in the worker's log.

The outage lasts ``$WATTMIX_OUTAGE_S`` seconds (default 30 s, the issue's figure, three times
the worker's session timeout; the test takes ~50 s, ``WATTMIX_OUTAGE_S=8`` for a quick run).
The test runs its own tansu broker so the pause never touches the session broker other tests use.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time

import pytest

from dispatch.processor import run_in_process
from schemas.site import load_sample_site
from schemas.topics import DEFAULT_PARTITIONS
from tests.reliability.helpers import check_exactly_once, committed, merge_last, start_worker_env
from tests.streams.harness import read_topic, stop_worker, wait_committed, wait_for_actions
from tests.streams.test_worker_integration import scenario
from wattmix.broker import EmbeddedBroker, ensure_topics
from wattmix.demo import publish_events

pytestmark = pytest.mark.integration

OUTAGE_S = float(os.environ.get("WATTMIX_OUTAGE_S", "30"))


@pytest.fixture
def own_broker():
    broker = EmbeddedBroker()
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


def test_broker_outage_while_events_flow(own_broker, tmp_path):
    from streams.app import TopicNames

    bootstrap = own_broker.bootstrap
    suffix = ".outage"
    names = TopicNames(suffix)
    topics = {**names.inputs, "actions": names.actions, "dead_letters": names.dead_letters}
    asyncio.run(ensure_topics(bootstrap, names.all, DEFAULT_PARTITIONS))
    db, log = tmp_path / "a.duckdb", tmp_path / "worker.log"
    group = "g-outage"
    named = scenario()
    first, rest = named[: len(named) // 3], named[len(named) // 3:]
    chunks = [rest[k * len(rest) // 8:(k + 1) * len(rest) // 8] for k in range(8)]

    proc = start_worker_env(bootstrap, db, group, suffix, log)
    try:
        last = asyncio.run(publish_events(bootstrap, first, topics))
        wait_committed(bootstrap, group, last, proc, log)
        before = committed(bootstrap, group, last)

        # events keep flowing: a producer publishes the rest in chunks, before, during and after
        published: list[dict] = []
        errors: list[BaseException] = []

        def produce() -> None:
            try:
                for c in chunks:
                    published.append(asyncio.run(publish_events(bootstrap, c, topics)))
                    time.sleep(0.4)
            except BaseException as exc:  # surfaced below
                errors.append(exc)

        producer = threading.Thread(target=produce, daemon=True)
        producer.start()
        time.sleep(0.9)  # a couple of chunks go through
        mark = log.stat().st_size
        own_broker.pause()
        t_down = time.monotonic()
        time.sleep(OUTAGE_S)
        own_broker.resume()
        t_up = time.monotonic()
        # recovery: from the broker back to the first commit beyond what was committed before
        recovery_s = None
        while time.monotonic() - t_up < 120:
            assert proc.poll() is None, log.read_text()[-3000:]
            got = committed(bootstrap, group, last)
            if any(got.get(tp, -1) > before.get(tp, -1) for tp in got) and len(published) > 2:
                recovery_s = time.monotonic() - t_up
                break
            time.sleep(0.1)
        assert recovery_s is not None, log.read_text()[-3000:]
        producer.join(120)
        assert not producer.is_alive() and not errors, errors
        for p in published:
            last = merge_last(last, p)
        wait_committed(bootstrap, group, last, proc, log, timeout=120)
        expected = run_in_process(load_sample_site(), [r for _, r in named])
        actions = wait_for_actions(bootstrap, topics["actions"], len(expected))
        time.sleep(0.5)
        actions = read_topic(bootstrap, topics["actions"])
    finally:
        own_broker.resume()
        rc = stop_worker(proc)
    assert rc == 0, log.read_text()[-3000:]

    during = log.read_bytes()[mark:].decode("utf-8", "replace")
    assert "outage: no answer to Metadata" in during, during[-3000:]
    assert "answering again after a" in during, during[-3000:]
    figures = check_exactly_once(db, named, expected, actions)
    assert figures["dead_lettered"] == 0
    print(f"\nFIGURES broker-outage {OUTAGE_S:.0f} s: {figures}, recovery (broker back -> first new commit) "
          f"{recovery_s:.2f} s, paused {t_up - t_down:.1f} s")
    print("worker log during/after the outage:\n" + "\n".join(during.splitlines()[:40]))
