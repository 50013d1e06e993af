"""Replay benchmark (a script, not a test): ``wattmix replay`` into the local broker, against raw
aiokafka producing the same messages, in the same run.

    /tmp/wmvenv/bin/python bench/bench_replay.py [--kafka HOST:PORT] [--only dense|files]

Starts an embedded tansu broker unless ``--kafka`` is given; every run writes to its own fresh
topics. Two data sets:

* ``dense``: the demo week (seed 7: 672 RT + 168 DA prices, 8 hashprices, 2 DR records,
  ~183k GPU samples of ~1,000 concurrent jobs): many events per 15-min interval, the shape of
  a site with live GPU telemetry.
* ``files``: the real files of ../shared/data: 2024 ERCOT RT + DA (hub average), the daily
  hashprice 2018-2025, the Alibaba GPU pod list anchored at 2024-01-01 (15-min heartbeat) and
  the 8 x H100 nvidia-smi log re-anchored into 2024: ~278k events, but only ~17 per interval
  while the pod trace runs and ~1.3 per interval after it.

For each: the read + merge + encode time (``load_events``), then the publish rate of

1. ``replay``         :func:`wattmix.replay.publish_loaded`: record batches, ordering barriers at
                       every 15-min boundary (what ``wattmix replay`` does);
2. ``replay-nobar``   the same without barriers (``--barrier-minutes 0``);
3. ``raw send()``     aiokafka ``send()`` per message, no barriers (linger 5 ms, like the demo);
4. ``raw batch``      aiokafka ``create_batch``/``send_batch``, no barriers, no checkpoints;
5. ``demo publish``   (dense only) :func:`wattmix.demo.publish_events` on the same records.

All acks=all. The 2-core machine is shared: compare the ratios within one run.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import sys
import tempfile
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def fresh(bootstrap: str) -> dict[str, str]:
    from schemas.topics import DEFAULT_PARTITIONS
    from wattmix.broker import ensure_topics
    from wattmix.replay import topic_names

    t = topic_names(".bench-" + uuid.uuid4().hex[:8])
    asyncio.run(ensure_topics(bootstrap, t.values(), DEFAULT_PARTITIONS))
    return t


async def raw_send(bootstrap, topics, loaded) -> float:
    from aiokafka import AIOKafkaProducer

    from wattmix.replay import FEED_NAMES

    names = [topics[n] for n in FEED_NAMES]
    p = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5, max_batch_size=256 * 1024,
                         enable_idempotence=False)
    await p.start()
    t0 = time.perf_counter()
    futs = []
    for t, f, v in zip(loaded.times_us, loaded.feeds, loaded.values):
        futs.append(await p.send(names[f], v, key=loaded.keys[f], timestamp_ms=t // 1000))
        if len(futs) >= 20000:
            await asyncio.gather(*futs)
            futs.clear()
    await asyncio.gather(*futs)
    dt = time.perf_counter() - t0
    await p.stop()
    return dt


async def raw_batch(bootstrap, topics, loaded) -> float:
    from aiokafka import AIOKafkaProducer
    from aiokafka.partitioner import DefaultPartitioner

    from wattmix.replay import FEED_NAMES

    p = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=0, max_batch_size=512 * 1024,
                         enable_idempotence=False)
    await p.start()
    part = DefaultPartitioner()
    tps = []
    for f, n in enumerate(FEED_NAMES):
        ps = sorted(await p.partitions_for(topics[n]))
        tps.append((topics[n], part(loaded.keys[f], ps, ps)))
    t0 = time.perf_counter()
    builders = [p.create_batch() for _ in tps]
    futs = []
    for t, f, v in zip(loaded.times_us, loaded.feeds, loaded.values):
        if builders[f].append(timestamp=t // 1000, key=loaded.keys[f], value=v, headers=[]) is None:
            futs.append(await p.send_batch(builders[f], tps[f][0], partition=tps[f][1]))
            builders[f] = p.create_batch()
            builders[f].append(timestamp=t // 1000, key=loaded.keys[f], value=v, headers=[])
    for f, b in enumerate(builders):
        if b.record_count():
            futs.append(await p.send_batch(b, tps[f][0], partition=tps[f][1]))
    await asyncio.gather(*futs)
    dt = time.perf_counter() - t0
    await p.stop()
    return dt


def dense_loaded():
    """The demo week as a Loaded stream (same order rule as load_events)."""
    import orjson

    from schemas.site import load_sample_site
    from wattmix.replay import FEED_RANK, Loaded
    from readers.errors import BadRows
    from wattmix.scenario import build_demo_scenario

    sc = build_demo_scenario()
    named = sc.events_in_order()
    keyed = []
    for seq, (name, r) in enumerate(named):
        t = r.event_time()
        us = int(t.timestamp()) * 1_000_000 + t.microsecond
        keyed.append((us, FEED_RANK[name], seq, r))
    keyed.sort(key=lambda k: k[:3])
    key = load_sample_site().site_id.encode()
    loaded = Loaded([k[0] for k in keyed], [k[1] for k in keyed], [orjson.dumps(k[3].__dict__) for k in keyed],
                    {i: key for i in range(4)}, BadRows(), {"scenario": len(keyed)})
    return loaded, named


def files_loaded():
    from schemas.site import load_sample_site
    from wattmix.replay import Source, load_events

    d = DATA
    srcs = [Source("prices", str(d / "ercot/ercot_rt_15min_hb_hubavg_2024.parquet")),
            Source("prices", str(d / "ercot/ercot_da_hourly_hb_hubavg_2024.parquet")),
            Source("hashprice", str(d / "btc/btc_hashprice_daily_derived_2018-01-01_2025-01-12.csv")),
            Source("alibaba", str(d / "gpu/alibaba_gpu2023_openb_pod_list_default.csv"),
                   (("start", datetime(2024, 1, 1, tzinfo=timezone.utc)), ("sample_minutes", 15))),
            Source("nvidia_smi", str(d / "gpu/h100x8_nvidia_smi_power_trace_2025-07-26.csv"),
                   (("start", datetime(2024, 2, 1, 12, tzinfo=timezone.utc)),))]
    return load_events(load_sample_site(), srcs)


def run_set(name: str, bootstrap: str, loaded, named=None) -> None:
    from wattmix.replay import Checkpoint, publish_loaded

    n = len(loaded)
    print(f"\n[{name}] {n:,} events; read + merge + encode {loaded.seconds:.2f} s" if loaded.seconds else
          f"\n[{name}] {n:,} events")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        ck = Path(tmp) / "ck.json"
        res = asyncio.run(publish_loaded(bootstrap, loaded, fresh(bootstrap), checkpoint=Checkpoint("bench", n),
                                         checkpoint_path=ck))
        rows.append(("replay (barriers, checkpoints)", res.seconds, f"{res.barriers:,} barriers"))
        res = asyncio.run(publish_loaded(bootstrap, loaded, fresh(bootstrap), barrier_minutes=0))
        rows.append(("replay --barrier-minutes 0", res.seconds, ""))
    rows.append(("raw aiokafka send()", asyncio.run(raw_send(bootstrap, fresh(bootstrap), loaded)), "no barriers"))
    rows.append(("raw aiokafka send_batch()", asyncio.run(raw_batch(bootstrap, fresh(bootstrap), loaded)),
                 "no barriers"))
    if named is not None:
        from wattmix.demo import publish_events

        t = fresh(bootstrap)
        t0 = time.perf_counter()
        asyncio.run(publish_events(bootstrap, named, t))
        rows.append(("demo publish_events()", time.perf_counter() - t0, "per-message send, barriers"))
    base = rows[0][1]
    print(f"  {'publisher':<32} {'seconds':>8} {'events/s':>11} {'vs replay':>10}")
    for label, secs, note in rows:
        print(f"  {label:<32} {secs:>8.2f} {n / secs:>11,.0f} {base / secs:>9.2f}x  {note}")
    total = loaded.seconds + base
    if loaded.seconds:
        print(f"  end to end (read + publish): {total:.2f} s = {n / total:,.0f} events/s")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kafka", default=None, help="use this broker instead of an embedded tansu")
    ap.add_argument("--only", choices=["dense", "files"], default=None)
    args = ap.parse_args()
    import gc

    print(f"python {platform.python_version()}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}")
    broker = None
    if args.kafka:
        bootstrap = args.kafka
    else:
        from wattmix.broker import EmbeddedBroker

        broker = EmbeddedBroker().start()
        bootstrap = broker.bootstrap
        print(f"embedded tansu broker on {bootstrap}")
    try:
        if args.only in (None, "dense"):
            loaded, named = dense_loaded()
            gc.freeze()
            run_set("dense: demo week", bootstrap, loaded, named)
            del loaded, named
        if args.only in (None, "files"):
            if not (DATA / "gpu").exists():
                print(f"no {DATA}: skipping the real files")
            else:
                loaded = files_loaded()
                gc.freeze()
                run_set("files: 2024 ERCOT + hashprice + Alibaba pods + nvidia-smi", bootstrap, loaded)
    finally:
        if broker is not None:
            broker.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
