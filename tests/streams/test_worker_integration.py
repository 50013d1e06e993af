"""The whole pipeline on the real broker: feeds in, one action per interval out, every event
archived once, bad messages dead-lettered with their reason while the worker goes on."""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import timedelta

import duckdb
import orjson
import pytest

from dispatch.processor import run_in_process
from schemas.codec import encode
from schemas.site import load_sample_site
from tests import factories as f
from tests.streams.harness import read_topic, start_worker, stop_worker, wait_committed, wait_for_actions
from wattmix.demo import publish_events

pytestmark = pytest.mark.integration

SITE = load_sample_site()
# 8 hours: cheap night, an evening ramp, a 1-hour spike near the cap, a DR event while cheap
PRICES = [22.0] * 8 + [60, 85, 95, 110, 130, 150] + [4200, 4800, 4900, 4500] + [70, 40] + [25.0] * 12
SPIKE_PRICE_INTERVALS = range(14, 18)  # intervals whose price is > $4,000 (decided at i+1)
DR_START_MIN, DR_MINUTES = 6 * 60, 60  # event 06:00-07:00, notice 05:30


def scenario():
    ev = [f.hashprice(54.3)]
    ev += [f.rt_price(i, p) for i, p in enumerate(PRICES)]
    ev += [f.da_price(h, 40.0 + h) for h in range(9)]
    ev.append(f.dr_event(DR_START_MIN, DR_MINUTES))
    for j in range(12):  # 12 training/batch/inference jobs reporting every 5 minutes
        cls = ("inference", "training", "batch")[j % 3]
        for m in range(0, len(PRICES) * 15, 5):
            ev.append(f.gpu_sample(f"{cls[:3]}-{j:02d}", cls, gpus=8, minute=m))
    ev.sort(key=lambda e: e.event_time())
    names = {"GridPrice": "grid_prices", "Hashprice": "hashprice", "DemandResponseEvent": "dr_events",
             "GpuTelemetry": "gpu_telemetry"}
    return [(names[type(e).__name__], e) for e in ev]


BAD_MESSAGES = [
    (b"{this is not json", "not valid JSON"),
    (orjson.dumps({k: v for k, v in orjson.loads(encode(f.rt_price(3, 30))).items() if k != "price_usd_mwh"}),
     "price_usd_mwh: required field missing"),
    (encode(f.rt_price(4, 30)).replace(b'"interval_minutes":15', b'"interval_minutes":-15'), "does not divide the hour"),
    (encode(f.rt_price(5, 30)).replace(b'"2024-08-05T01:15:00+00:00"', b'"2024-08-05T01:15:00"'), "timezone"),
]


@pytest.fixture
def run(kafka_bootstrap, fresh_topics, tmp_path):
    topics = fresh_topics()
    db = tmp_path / "archive.duckdb"
    log = tmp_path / "worker.log"
    group = f"g-{topics.suffix}"
    named = scenario()
    # the bad messages go in the middle of the price feed: the worker must go on after them
    half = len(named) // 2
    proc = start_worker(kafka_bootstrap, db, group, "." + topics.suffix, log)
    try:
        last = asyncio.run(publish_events(kafka_bootstrap, named[:half], topics))
        last.update(asyncio.run(_publish_raw(kafka_bootstrap, topics["grid_prices"], [m for m, _ in BAD_MESSAGES])))
        more = asyncio.run(publish_events(kafka_bootstrap, named[half:], topics))
        for k, v in more.items():
            last[k] = max(v, last.get(k, -1))
        wait_committed(kafka_bootstrap, group, last, proc, log)
        expected = run_in_process(SITE, [r for _, r in named])
        actions = wait_for_actions(kafka_bootstrap, topics["actions"], len(expected))
    finally:
        rc = stop_worker(proc)
    assert rc == 0, log.read_text()[-3000:]
    return {"topics": topics, "db": db, "named": named, "expected": expected, "actions": actions, "log": log}


async def _publish_raw(bootstrap, topic, values):
    from aiokafka import AIOKafkaProducer

    p = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await p.start()
    last = {}
    try:
        for v in values:
            md = await p.send_and_wait(topic, v, key=b"sample")
            last[(md.topic, md.partition)] = md.offset
    finally:
        await p.stop()
    return last


def _diff(a, b, path=""):
    """Paths where two JSON values differ (for a readable parity failure)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in sorted(set(a) | set(b)) for d in _diff(a.get(k), b.get(k), f"{path}.{k}")]
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in _diff(x, y, f"{path}[{i}]")]
    return [] if a == b else [f"{path}: {a!r} != {b!r}"]


def test_end_to_end_on_the_real_broker(run, kafka_bootstrap):
    actions, expected = run["actions"], run["expected"]
    keys = [(a["site_id"], a["interval_start"]) for a in actions]
    assert len(keys) == len(set(keys)), "exactly one action per site per interval"
    assert len(actions) == len(expected)

    # identical decisions to the in-process engine on the same events (the parity contract)
    live = sorted(actions, key=lambda a: a["interval_start"])
    diffs = [_diff(orjson.loads(encode(e)), a) for e, a in zip(expected, live)]
    assert not any(diffs), [d for d in diffs if d][:3]

    by_t = {a["interval_start"]: a for a in actions}
    t0 = f.T0
    # mining is curtailed during the spike (decided on the price of the interval before)
    for i in SPIKE_PRICE_INTERVALS:
        a = by_t[(t0 + timedelta(minutes=15 * (i + 1))).isoformat()]
        assert all(fl["units_online"] == 0 for fl in a["fleets"]), a["reasons"]
    # the DR obligation is met for the whole event, mining shed first
    for k in range(DR_MINUTES // 15):
        a = by_t[(t0 + timedelta(minutes=DR_START_MIN + 15 * k)).isoformat()]
        assert a["dr"]["active_event_ids"] == ["ers-1"]
        assert a["load_mw"] <= 20.0 + 1e-9 and a["dr"]["shortfall_mw"] == 0

    # DuckDB holds every event exactly once
    con = duckdb.connect(str(run["db"]), read_only=True)
    want = Counter(name for name, _ in run["named"])
    for table, n in want.items():
        assert con.execute(f"SELECT count(*) FROM {table}").fetchone()[0] == n, table
    assert con.execute("SELECT count(*), count(DISTINCT interval_start) FROM actions").fetchone() == (len(expected),) * 2


def test_bad_messages_are_dead_lettered_with_reasons(run, kafka_bootstrap):
    dls = read_topic(kafka_bootstrap, run["topics"]["dead_letters"])
    assert len(dls) == len(BAD_MESSAGES)
    import base64

    by_raw = {base64.b64decode(d["raw_base64"]): d for d in dls}
    for raw, needle in BAD_MESSAGES:
        assert needle in by_raw[raw]["reason"]
        assert by_raw[raw]["source_topic"] == run["topics"]["grid_prices"]
    con = duckdb.connect(str(run["db"]), read_only=True)
    rows = con.execute("SELECT raw, reason FROM dead_letters").fetchall()
    assert sorted(bytes(r[0]) for r in rows) == sorted(m for m, _ in BAD_MESSAGES)
    assert all(r[1] for r in rows)
    # the worker went on: actions were decided on events published after the bad messages
    assert len(run["actions"]) == len(run["expected"])
