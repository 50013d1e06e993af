"""``wattmix replay``: merge order, window, encoding (no broker); then on the real broker:
Kafka timestamps and keys, idempotent double replay through a real worker, and resume after
the replay process is killed."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from datetime import datetime, timedelta, timezone
from pathlib import Path

import duckdb
import orjson
import pytest

from readers import BadRows, read_prices
from schemas.codec import encode
from schemas.site import load_sample_site
from schemas.topics import INPUT_FEEDS
from tests.readers.test_readers import DAM20, DATA, HP, RTM20
from wattmix.replay import (FEED_NAMES, Checkpoint, Source, fingerprint, load_events, publish_loaded)

UTC = timezone.utc
SITE = load_sample_site()
PODS = DATA / "gpu" / "alibaba_gpu2023_openb_pod_list_default.csv"
SMI = DATA / "gpu" / "h100x8_nvidia_smi_power_trace_2025-07-26.csv"
ROOT = Path(__file__).resolve().parents[2]
W0, W1 = datetime(2020, 2, 3, tzinfo=UTC), datetime(2020, 2, 4, tzinfo=UTC)
# day 130 of the pod trace (a busy one) lands on the window
POD_START = W0 - timedelta(days=130)


def need(*paths):
    for p in paths:
        if not p.exists():
            pytest.skip(f"{p} not available")


def sources():
    return [Source("prices", str(RTM20)), Source("prices", str(DAM20)), Source("hashprice", str(HP)),
            Source("alibaba", str(PODS), (("start", POD_START), ("sample_minutes", 15))),
            Source("nvidia_smi", str(SMI), (("start", W0 + timedelta(hours=12)),))]


def _decoded(loaded):
    return [(FEED_NAMES[f], orjson.loads(v)) for f, v in zip(loaded.feeds, loaded.values)]


# -- no broker -----------------------------------------------------------------------------

def test_merge_window_and_carry_in():
    need(RTM20, DAM20, HP, PODS, SMI)
    loaded = load_events(SITE, sources(), start=W0, end=W1)
    times = loaded.times_us
    assert times == sorted(times)
    keys = list(zip(loaded.times_us, loaded.feeds))
    assert keys == sorted(keys)  # ties broken by feed rank (grid_prices, dr_events, hashprice, gpu_telemetry)
    feeds = Counter(FEED_NAMES[f] for f in loaded.feeds)
    # 96 RT published in the window; DA (CPT operating days, published 13:30 CPT the day before):
    # carried in: the last 6 hours of 02-02 and all 24 of 02-03; published in the window: 24 of 02-04
    assert feeds["grid_prices"] == 96 + 6 + 24 + 24
    assert feeds["hashprice"] == 1 + 1   # the latest before the window (carried in) and the one of 02-03
    assert feeds["gpu_telemetry"] > 3000 and loaded.carried_in > 24
    first_in = next(i for i, t in enumerate(times) if t >= int(W0.timestamp() * 1e6))
    assert first_in == loaded.carried_in  # carried-in facts come first, with their own (earlier) times
    assert all(t < int(W1.timestamp() * 1e6) for t in times)
    rt = [v for n, v in _decoded(loaded) if n == "grid_prices" and v["market"] == "RT"]
    assert rt[0]["interval_start"] == "2020-02-02T23:45:00+00:00"  # published at 02-03 00:00
    # carried-in GPU samples are the latest of jobs still queued/running at W0
    carried = [v for n, v in _decoded(loaded)[: loaded.carried_in] if n == "gpu_telemetry"]
    assert carried and all(v["state"] != "completed" for v in carried)
    assert len({v["job_id"] for v in carried}) == len(carried)
    assert len(loaded.bad) == 0


def test_encoding_is_the_wire_encoding():
    need(RTM20)
    loaded = load_events(SITE, [Source("prices", str(RTM20))], end=datetime(2020, 2, 2, tzinfo=UTC))
    recs = [r for r in read_prices(RTM20, "sample") if r.published_at < datetime(2020, 2, 2, tzinfo=UTC)]
    assert loaded.values == [encode(r) for r in sorted(recs, key=lambda r: r.published_at)]


def test_dst_repeated_hour_and_bad_rows(tmp_path):
    head = ("Delivery Date,Delivery Hour,Delivery Interval,Repeated Hour Flag,Settlement Point Name,"
            "Settlement Point Type,Settlement Point Price\n")
    rows = [f"11/03/2024,2,{i},Y,HB_HUBAVG,SH,\"1,00{i}.50\"\n" for i in range(1, 5)]
    rows += [f"11/03/2024,2,{i},N,HB_HUBAVG,SH,2{i}.00\n" for i in range(1, 5)]  # file order: repeat first
    rows += ["11/03/2024,2,9,N,HB_HUBAVG,SH,1.00\n", "11/03/2024,3,1,N,HB_HUBAVG,SH,oops\n"]
    p = tmp_path / "rtm.csv"
    p.write_text(head + "".join(rows))
    bad = BadRows()
    loaded = load_events(SITE, [Source("prices", str(p))], bad=bad)
    got = [(v["interval_start"], v["price_usd_mwh"]) for _, v in _decoded(loaded)]
    # 01:00-02:00 CDT (06:00-07:00 UTC) comes before the repeated 01:00-02:00 CST (07:00-08:00 UTC)
    assert got == [("2024-11-03T06:00:00+00:00", 21.0), ("2024-11-03T06:15:00+00:00", 22.0),
                   ("2024-11-03T06:30:00+00:00", 23.0), ("2024-11-03T06:45:00+00:00", 24.0),
                   ("2024-11-03T07:00:00+00:00", 1001.5), ("2024-11-03T07:15:00+00:00", 1002.5),
                   ("2024-11-03T07:30:00+00:00", 1003.5), ("2024-11-03T07:45:00+00:00", 1004.5)]
    assert bad.count == 2 and [b.line for b in bad.rows] == [10, 11] and bad.rows[0].file == str(p)


# -- real broker ---------------------------------------------------------------------------

def _read_topic(bootstrap, topic):
    from tests.streams.harness import _read_all

    return asyncio.run(_read_all(bootstrap, topic, idle_ms=800))


@pytest.mark.integration
def test_replay_publishes_in_event_time_with_timestamps_and_keys(kafka_bootstrap, fresh_topics, tmp_path):
    need(RTM20, DAM20, HP, PODS, SMI)
    topics = fresh_topics()
    loaded = load_events(SITE, sources(), start=W0, end=W1)
    ck = tmp_path / "ck.json"
    cp = Checkpoint(fingerprint(SITE, sources(), "HB_HUBAVG", W0, W1, dict(topics)), len(loaded))
    res = asyncio.run(publish_loaded(kafka_bootstrap, loaded, {n: topics[n] for n in FEED_NAMES},
                                     checkpoint=cp, checkpoint_path=ck, checkpoint_every=1000))
    assert res.published == len(loaded) and res.rate > 0
    want = Counter(topics[FEED_NAMES[f]] for f in loaded.feeds)
    assert {t: n for t, n in res.per_topic.items() if n} == dict(want)
    saved = json.loads(ck.read_text())
    assert saved["complete"] and saved["acknowledged"] == len(loaded)
    for name in ("grid_prices", "gpu_telemetry"):
        msgs = _read_topic(kafka_bootstrap, topics[name])
        assert len(msgs) == want[topics[name]]
        assert {m.key for m in msgs} == {b"sample"} and len({m.partition for m in msgs}) == 1
        for m in msgs[:50]:
            d = orjson.loads(m.value)
            et = d["published_at"] if name == "grid_prices" else d["observed_at"]
            assert m.timestamp == int(datetime.fromisoformat(et).timestamp() * 1000)
        ts = [m.timestamp for m in msgs]
        assert ts == sorted(ts)
        assert res.last_offsets[(topics[name], msgs[0].partition)] == msgs[-1].offset


@pytest.mark.integration
@pytest.mark.slow
def test_double_replay_leaves_the_archive_unchanged(kafka_bootstrap, fresh_topics, tmp_path):
    """Replay the same window twice into the topics a real worker reads: the archive holds every
    event once, and exactly what one replay published."""
    from tests.streams.harness import start_worker, stop_worker, wait_committed

    need(RTM20, DAM20, HP, PODS)
    topics = fresh_topics()
    srcs = sources()[:4]
    db, log, group = tmp_path / "a.duckdb", tmp_path / "worker.log", f"g-{topics.suffix}"
    loaded = load_events(SITE, srcs, start=W0, end=W1 - timedelta(hours=12))
    feed_topics = {n: topics[n] for n in FEED_NAMES}
    proc = start_worker(kafka_bootstrap, db, group, "." + topics.suffix, log)
    try:
        first = asyncio.run(publish_loaded(kafka_bootstrap, loaded, feed_topics))
        wait_committed(kafka_bootstrap, group, first.last_offsets, proc, log, timeout=120)
        second = asyncio.run(publish_loaded(kafka_bootstrap, loaded, feed_topics))
        assert all(second.last_offsets[k] > v for k, v in first.last_offsets.items())
        wait_committed(kafka_bootstrap, group, second.last_offsets, proc, log, timeout=120)
    finally:
        rc = stop_worker(proc)
    assert rc == 0, log.read_text()[-3000:]
    con = duckdb.connect(str(db), read_only=True)
    try:
        counts = {f.name: con.execute(f"SELECT count(*) FROM {f.name}").fetchone()[0] for f in INPUT_FEEDS}
        per_feed = Counter(FEED_NAMES[f] for f in loaded.feeds)
        assert counts == {n: per_feed.get(n, 0) for n in FEED_NAMES}  # each event once, not twice
        dup = con.execute("SELECT count(*) FROM (SELECT identity, event_time FROM gpu_telemetry "
                          "GROUP BY ALL HAVING count(*) > 1)").fetchone()[0]
        assert dup == 0
        n_actions, distinct = con.execute("SELECT count(*), count(DISTINCT interval_start) FROM actions").fetchone()
        assert n_actions == distinct >= 40  # one action per interval decided, none twice
        assert con.execute("SELECT count(*) FROM dead_letters").fetchone()[0] == 0
    finally:
        con.close()


@pytest.mark.integration
def test_resume_after_the_replay_process_is_killed(kafka_bootstrap, fresh_topics, tmp_path):
    need(RTM20, DAM20)
    topics = fresh_topics()
    ck = tmp_path / "ck.json"
    # Feb 2020 (29 days of RT + DA, ~3.5k events) at 600,000 x real time: ~4 s
    cmd = [sys.executable, "-m", "wattmix", "replay", "--kafka", kafka_bootstrap, "--prices", str(RTM20),
           "--prices", str(DAM20), "--topic-suffix", "." + topics.suffix, "--checkpoint", str(ck),
           "--checkpoint-every", "200"]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(cmd + ["--speed", "600000"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if ck.exists() and json.loads(ck.read_text())["acknowledged"] >= 1000:
                break
            assert proc.poll() is None, proc.stdout.read().decode()
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGKILL)  # a crash: no clean shutdown, no final checkpoint
        proc.wait()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    state = json.loads(ck.read_text())
    assert not state["complete"] and 1000 <= state["acknowledged"] < state["events_total"]
    out = subprocess.run(cmd + ["--resume"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"skipping {state['acknowledged']:,} acknowledged events" in out.stdout
    final = json.loads(ck.read_text())
    assert final["complete"] and final["acknowledged"] == final["events_total"] == 29 * 96 + 29 * 24
    msgs = _read_topic(kafka_bootstrap, topics["grid_prices"])
    values = [m.value for m in msgs]
    assert len(set(values)) == final["events_total"]           # every event made it
    assert len(values) - len(set(values)) < 200 + 1             # re-sent: at most one checkpoint interval
    assert final["per_topic"][topics["grid_prices"]] == final["events_total"]
    # a checkpoint of other inputs is refused; a completed one makes --resume a no-op
    again = subprocess.run(cmd + ["--resume"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert again.returncode == 0 and "nothing to do" in again.stdout
    other = subprocess.run(cmd[:-4] + ["--from", "2020-02-10", "--checkpoint", str(ck), "--resume"], cwd=ROOT,
                           env=env, capture_output=True, text=True, timeout=60)
    assert other.returncode == 2 and "fingerprint differs" in other.stderr
