"""A worker killed mid-stream (SIGKILL) and restarted loses nothing and duplicates nothing:
it rebuilds its state from the archive and goes on with exactly the decisions an
uninterrupted run takes."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections import Counter

import duckdb
import orjson
import pytest

from dispatch.processor import run_in_process
from schemas.codec import encode
from schemas.site import load_sample_site
from tests.streams.harness import read_topic, start_worker, stop_worker, wait_committed, wait_for_actions
from tests.streams.test_worker_integration import scenario
from wattmix.demo import publish_events

pytestmark = pytest.mark.integration


def test_kill_9_and_restart(kafka_bootstrap, fresh_topics, tmp_path):
    topics = fresh_topics()
    db, log = tmp_path / "a.duckdb", tmp_path / "worker.log"
    group, suffix = f"g-{topics.suffix}", "." + topics.suffix
    named = scenario()
    cut = len(named) // 2

    proc = start_worker(kafka_bootstrap, db, group, suffix, log)
    last = asyncio.run(publish_events(kafka_bootstrap, named[:cut], topics))
    wait_committed(kafka_bootstrap, group, last, proc, log)
    more = asyncio.run(publish_events(kafka_bootstrap, named[cut:], topics))
    time.sleep(0.3)  # let it get into the second half, then pull the plug
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()

    proc = start_worker(kafka_bootstrap, db, group, suffix, log)
    try:
        for k, v in more.items():
            last[k] = max(v, last.get(k, -1))
        wait_committed(kafka_bootstrap, group, last, proc, log)
        expected = run_in_process(load_sample_site(), [r for _, r in named])
        wait_for_actions(kafka_bootstrap, topics["actions"], len(expected))
        time.sleep(1.0)
    finally:
        assert stop_worker(proc) == 0, log.read_text()[-3000:]

    actions = read_topic(kafka_bootstrap, topics["actions"])
    by_key: dict[str, list[dict]] = {}
    for a in actions:
        by_key.setdefault(a["interval_start"], []).append(a)
    # a re-published action is byte-for-byte the same decision: consumers de-duplicate by key
    assert all(all(x == v[0] for x in v) for v in by_key.values())
    assert [orjson.loads(encode(e)) for e in expected] == [by_key[k][0] for k in sorted(by_key)]

    con = duckdb.connect(str(db), read_only=True)
    for table, n in Counter(name for name, _ in named).items():
        assert con.execute(f"SELECT count(*) FROM {table}").fetchone()[0] == n, table
    assert con.execute("SELECT count(*) FROM actions").fetchone()[0] == len(expected)
    assert "restored sample" in log.read_text()
