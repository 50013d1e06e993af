"""A DuckDB write fails (simulated disk full, via the WATTMIX_FAULT_ARCHIVE_FAILS hook): while it
fails, no offset is committed past what is durable; the worker says why and retries with
backoff; afterwards every event is archived exactly once and the decisions are unchanged."""

from __future__ import annotations

import asyncio
import time

import pytest

from dispatch.processor import run_in_process
from schemas.site import load_sample_site
from streams.worker import FAULT_ARCHIVE_FAILS_ENV
from tests.reliability.helpers import check_exactly_once, committed, start_worker_env
from tests.streams.harness import stop_worker, wait_committed, wait_for_actions
from tests.streams.test_worker_integration import scenario
from wattmix.demo import publish_events

pytestmark = pytest.mark.integration

FAILS = 4  # backoff 0.5 + 1 + 2 + 4 = 7.5 s of failing writes


def test_archive_write_failure_holds_offsets_then_recovers(kafka_bootstrap, fresh_topics, tmp_path):
    topics = fresh_topics()
    db, log = tmp_path / "a.duckdb", tmp_path / "worker.log"
    group, suffix = f"g-{topics.suffix}", "." + topics.suffix
    named = scenario()

    proc = start_worker_env(kafka_bootstrap, db, group, suffix, log, {FAULT_ARCHIVE_FAILS_ENV: str(FAILS)})
    try:
        last = asyncio.run(publish_events(kafka_bootstrap, named, topics))
        t_published = time.monotonic()
        # while the writes fail (first failure as soon as the first batch is decided), watch
        # the committed offsets: nothing may be committed, since nothing is durable
        while "failed (transient)" not in log.read_text():
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() - t_published < 60, log.read_text()[-3000:]
            time.sleep(0.2)
        t_first_failure = time.monotonic()
        seen_during_failure = []
        while log.read_text().count("failed (transient)") < FAILS:
            got = committed(kafka_bootstrap, group, last)
            seen_during_failure.append(got)
            assert all(v <= 0 for v in got.values()), f"offsets committed while nothing is durable: {got}"
            assert time.monotonic() - t_first_failure < 30, log.read_text()[-3000:]
            time.sleep(0.3)
        assert len(seen_during_failure) >= 5  # we really looked while it was failing
        wait_committed(kafka_bootstrap, group, last, proc, log, timeout=60)
        recovered_s = time.monotonic() - t_first_failure
        expected = run_in_process(load_sample_site(), [r for _, r in named])
        actions = wait_for_actions(kafka_bootstrap, topics["actions"], len(expected))
    finally:
        assert stop_worker(proc) == 0, log.read_text()[-3000:]

    text = log.read_text()
    assert text.count("archive write failed (transient), offsets held back, retrying in") == FAILS
    for delay in ("0.5 s", "1.0 s", "2.0 s", "4.0 s"):  # exponential backoff
        assert f"retrying in {delay}: " in text
    assert "simulated disk full" in text
    assert f"archive write succeeded after {FAILS} failed attempts" in text
    figures = check_exactly_once(db, named, expected, actions)
    assert figures["dead_lettered"] == 0
    print(f"\nFIGURES archive-fault: {figures}, {FAILS} failed writes, committed {recovered_s:.1f} s "
          "after the first failure")
