"""``kill -9`` in the middle of a stream of more than 100,000 events, then a restart: the
archive holds every produced event exactly once, the actions topic and the archive hold one
decision per interval (a re-published one is byte-identical, so consumers de-duplicate by key),
and the restarted worker's decisions are exactly the uninterrupted in-process engine's.

The worker's state is not in a Faust changelog table (its recovery needs ListOffsets "latest",
which tansu answers too low): it comes back from the worker's own archive (streams/worker.py
``_restore``), and records the group delivers again below what the archive covers are skipped
(streams/takeover.py ``Coverage``), so nothing is folded twice.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import threading
import time

import pytest

from dispatch.processor import run_in_process
from schemas.site import load_sample_site
from tests.reliability.helpers import check_exactly_once, committed, start_worker_env
from tests.streams.harness import stop_worker, wait_committed, wait_for_actions
from wattmix.demo import publish_events
from wattmix.scenario import build_demo_scenario

pytestmark = pytest.mark.integration

DAYS = 4  # the demo scenario's 1,000 concurrent GPU jobs: ~105k events in 4 days


def test_kill_9_mid_stream_of_100k_events_and_restart(kafka_bootstrap, fresh_topics, tmp_path):
    topics = fresh_topics()
    db, log = tmp_path / "a.duckdb", tmp_path / "worker.log"
    group, suffix = f"g-{topics.suffix}", "." + topics.suffix
    named = build_demo_scenario(days=DAYS).events_in_order()
    assert len(named) >= 100_000

    published: dict = {}

    def publisher(part: list) -> threading.Thread:
        th = threading.Thread(target=lambda: published.update(asyncio.run(publish_events(kafka_bootstrap, part, topics))))
        th.start()
        return th

    # the stream in two parts: the plug is pulled while the second one flows in. (One part and
    # a poll of the committed offsets was not enough once the worker caught up at ~30k msg/s:
    # it had committed 97% between two polls.) The first part is in the log whole before the
    # worker starts: a live worker caught up with the price feed may decide a boundary before a
    # price still in flight (``idle_grace_s``, as documented), and the check below compares
    # every decision with the in-process engine that saw complete inputs. The plug is pulled
    # while the second part flows in and the worker still works through the first (one run:
    # 51k telemetry offsets committed and 58k events archived at the kill, of the first 63k).
    cut = int(len(named) * 0.6)
    first = publisher(named[:cut])
    first.join()
    second = None
    proc = start_worker_env(kafka_bootstrap, db, group, suffix, log)
    try:
        telemetry = topics["gpu_telemetry"]
        tps = [(telemetry, p) for p in range(topics.partitions)]
        deadline = time.monotonic() + 180
        while sum(max(v, 0) for v in committed(kafka_bootstrap, group, tps).values()) < 0.4 * len(named):
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.05)
        second = publisher(named[cut:])
        time.sleep(0.2)  # the second part flows in while the worker reads: pull the plug mid-stream
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        at_kill = sum(max(v, 0) for v in committed(kafka_bootstrap, group, tps).values())
        second.join()
        assert 0.4 * len(named) <= at_kill < len(named) * 0.95, f"committed at the kill: {at_kill}"

        proc = start_worker_env(kafka_bootstrap, db, group, suffix, log)
        wait_committed(kafka_bootstrap, group, published, proc, log, timeout=240)
        expected = run_in_process(load_sample_site(), [r for _, r in named])
        actions = wait_for_actions(kafka_bootstrap, topics["actions"], len(expected), timeout=120)
    finally:
        if second is not None:
            second.join()
        assert stop_worker(proc) == 0, log.read_text()[-3000:]

    figures = check_exactly_once(db, named, expected, actions)
    assert figures["dead_lettered"] == 0
    text = log.read_text()
    restored = re.search(r"restored sample: (\d+) archived events, \d+ actions re-derived \((\d+) mismatched\)", text)
    assert restored and int(restored.group(1)) > 0 and int(restored.group(2)) == 0, text[-3000:]
    print(f"\nFIGURES kill-9 100k: {figures}; telemetry committed at the kill: {at_kill:,}; "
          f"restored from the archive: {int(restored.group(1)):,} events")
