"""Streaming throughput: wattmix's worker beside its ceiling and its naive baseline, one run,
one local broker (the embedded tansu), so ratios are comparable even on a noisy machine.

    python bench/bench_stream.py                       # everything (~3 min on 2 cores)
    python bench/bench_stream.py --only raw,faust,mixed,batched,scrape,scaleout
    python bench/bench_stream.py --profile /tmp/worker.speedscope.json   # py-spy the mixed run
    python bench/bench_stream.py --only batched --profile /tmp/batched   # py-spy the batched runs

Phases (messages are GPU telemetry samples encoded as on the wire: ~190-byte JSON):

raw       aiokafka produce (acks=all, linger 5 ms, the demo's producer) and consume
          (getmany, 10k records) of the same messages: the ceiling.
faust     a plain Faust agent doing nothing, and one sending one message per event
          (bench_faust.py subprocesses): the naive baseline.
mixed     the demo week (prices, DR, hashprice, GPU telemetry: telemetry ~99%) pre-published,
          then a real worker catches up: consumed, validated, merged in event time, folded
          into state, decided, archived to DuckDB, acked. From its first fetch to its last
          durable batch.
batched   two weeks with the GPU telemetry as batch messages of ``--per-message`` samples,
          row-oriented (GpuTelemetryBatch) then as columns (GpuTelemetryColumns): samples/s,
          and the ratio to the single-sample messages of ``mixed`` (run first if not asked).
scrape    GPU telemetry as an exporter sends it: every ``--scrape-s`` seconds of event time one
          GpuTelemetryColumns message with a sample of every job (~1,000: one instant per
          message), over ``--scrape-days`` of the demo scenario: samples/s. (``batched`` regroups
          the demo's hourly per-job reports, so its messages span ~55 instants each.)
scaleout  4 sites on 4 partitions: 1 worker vs 2 workers in one consumer group (each with
          its own DuckDB file), aggregate events/s.

Under each mixed and batched figure, a ``cpu`` line: CPU seconds of the worker and the broker
(``/proc``) per message or sample over the run, how busy the machine's cores were, and the rate
that CPU cost would allow with every core busy (when it is far above the measured rate, the
limit is parallelism, not CPU).
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_stream_lib import (  # noqa: E402
    ROOT,
    WorkerProc,
    add_worker_args,
    batch_telemetry,
    scrape_telemetry,
    create_topics,
    dumps,
    machine_line,
    publish,
    scenario_events,
    site_ids,
    topics_for,
    wait_events,
    worker_args,
)


async def raw_produce(bootstrap: str, topic: str, values: list[bytes]) -> float:
    from aiokafka import AIOKafkaProducer

    p = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5, max_batch_size=256 * 1024,
                         enable_idempotence=False)
    await p.start()
    try:
        t0 = time.perf_counter()
        futs = []
        for i, v in enumerate(values):
            futs.append(await p.send(topic, v, key=str(i % 64).encode()))
            if len(futs) >= 20000:
                await asyncio.gather(*futs)
                futs.clear()
        await asyncio.gather(*futs)
        return time.perf_counter() - t0
    finally:
        await p.stop()


async def raw_consume(bootstrap: str, topic: str, n: int) -> float:
    from aiokafka import AIOKafkaConsumer

    c = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=None, auto_offset_reset="earliest",
                         enable_auto_commit=False, max_partition_fetch_bytes=4 * 1024 * 1024)
    await c.start()
    try:
        got, t0 = 0, None
        while got < n:
            batch = await c.getmany(timeout_ms=2000, max_records=10000)
            if not batch:
                break
            if t0 is None:
                t0 = time.perf_counter()
                first = sum(len(r) for r in batch.values())
                got += first
                continue
            got += sum(len(r) for r in batch.values())
        return (got - first) / (time.perf_counter() - t0)
    finally:
        await c.stop()


def faust_run(bootstrap: str, topic: str, n: int, mode: str, work: Path) -> dict:
    import orjson

    result = work / f"faust-{mode}.json"
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "bench_faust.py"), "--kafka", bootstrap, "--topic", topic,
                          "--messages", str(n), "--mode", mode, "--out", topic + ".out." + mode,
                          "--result", str(result), "--datadir", str(work / f"faust-{mode}-data")],
                         capture_output=True, timeout=600, cwd=str(ROOT))
    if result.exists():
        return orjson.loads(result.read_bytes())
    raise RuntimeError(f"bench_faust {mode} failed:\n{out.stdout.decode()[-2000:]}\n{out.stderr.decode()[-2000:]}")


def run_workers(bootstrap: str, work: Path, named, sites: list[str], n_workers: int, label: str,
                extra: list[str] | None = None, profile: str | None = None, timeout: float = 600.0,
                total: int | None = None, broker_pid: int | None = None) -> dict:
    suffix = f".{label}-{uuid.uuid4().hex[:6]}"
    topics = topics_for(suffix)
    create_topics(bootstrap, topics.values())
    t0 = time.perf_counter()
    publish(bootstrap, named, topics)
    pub_s = time.perf_counter() - t0
    group = f"bench-{label}-{uuid.uuid4().hex[:6]}"
    workers = [WorkerProc(bootstrap, work / f"{label}-{i}.duckdb", group, suffix, sites, work / f"{label}-{i}.json",
                          work / f"{label}-{i}.log", extra, profile if i == 0 else None) for i in range(n_workers)]
    try:
        res = wait_events(workers, total if total is not None else len(named), timeout, broker_pid)
    finally:
        for w in workers:
            w.stop()
    res["published_s"] = pub_s
    return res


def cpu_cost(res: dict, per_event: float, unit: str) -> str:
    """CPU per ``unit`` of the worker and the broker over the run, and the rate those costs
    allow on this machine's cores (every core busy with nothing else)."""
    cpu = res.get("cpu")
    if not cpu or not cpu["events"]:
        return "cpu: not measured"
    units = cpu["events"] * per_event
    w, b = cpu["workers_s"] / units * 1e6, cpu["broker_s"] / units * 1e6
    return (f"cpu per {unit}: worker {w:.1f} us + broker {b:.1f} us; machine busy "
            f"{cpu['machine_busy_s'] / cpu['span_s']:.2f} of {os.cpu_count()} cores; "
            f"{os.cpu_count()} cores at this cost: {os.cpu_count() / (w + b) * 1e6:,.0f} {unit}s/s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default="raw,faust,mixed,batched,scrape,scaleout")
    ap.add_argument("--raw-messages", type=int, default=200_000)
    ap.add_argument("--faust-messages", type=int, default=30_000)
    ap.add_argument("--days", type=int, default=7, help="scenario days for 'mixed' (7: ~184k events)")
    ap.add_argument("--jobs", type=int, default=1000)
    ap.add_argument("--per-message", type=int, default=1000, help="GPU samples per batched message")
    ap.add_argument("--batched-days", type=int, default=14, help="scenario days for 'batched' (14: ~365k samples)")
    ap.add_argument("--scrape-s", type=float, default=60.0, help="'scrape': seconds of event time between scrapes")
    ap.add_argument("--scrape-days", type=float, default=1.0, help="'scrape': days of the scenario (1: ~1.4M samples)")
    ap.add_argument("--scaleout-days", type=int, default=3, help="days per site (4 sites; >= 3)")
    ap.add_argument("--profile", default=None, help="py-spy speedscope output for the mixed worker (with "
                    "--only batched: of the batched workers, FILE.rows.json and FILE.columns.json)")
    add_worker_args(ap)
    args = ap.parse_args()
    only = set(args.only.split(","))
    extra = worker_args(args)

    from wattmix.broker import EmbeddedBroker

    print(machine_line(), flush=True)
    rows: list[tuple[str, float, str]] = []
    with tempfile.TemporaryDirectory(prefix="wm-bench-stream-") as tmp, EmbeddedBroker() as broker:
        work = Path(tmp)
        bs = broker.bootstrap
        print(f"broker: tansu on {bs}", flush=True)
        sid = site_ids(1)

        if only & {"raw", "faust"}:
            named = scenario_events(sid, days=max(1, -(-args.raw_messages // 26000)), jobs=args.jobs)
            from schemas.codec import encode

            values = [encode(r) for n, r in named if n == "gpu_telemetry"][: args.raw_messages]
            print(f"messages: {len(values):,} GPU telemetry samples, {sum(map(len, values)) / len(values):.0f} B avg",
                  flush=True)
            topic = f"bench.raw.{uuid.uuid4().hex[:6]}"
            create_topics(bs, [topic])
            dt = asyncio.run(raw_produce(bs, topic, values))
            rows.append(("raw aiokafka produce", len(values) / dt, "msg/s"))
            print(f"raw     produce  {len(values) / dt:>12,.0f} msg/s", flush=True)
            if "raw" in only:
                rate = asyncio.run(raw_consume(bs, topic, len(values)))
                rows.append(("raw aiokafka consume", rate, "msg/s"))
                print(f"raw     consume  {rate:>12,.0f} msg/s", flush=True)
            if "faust" in only:
                for mode in ("noop", "send"):
                    r = faust_run(bs, topic, min(args.faust_messages, len(values)), mode, work)
                    rows.append((f"plain Faust agent ({mode})", r["rate"], "msg/s"))
                    print(f"faust   {mode:<7}  {r['rate']:>12,.0f} msg/s ({r['events']:,} in {r['seconds']:.1f} s)",
                          flush=True)

        single_rate = None
        if only & {"mixed", "batched"}:  # batched samples/s is compared with this run's single samples
            named = scenario_events(sid, days=args.days, jobs=args.jobs)
            res = run_workers(bs, work, named, sid, 1, "mixed", extra, args.profile if "mixed" in only else None,
                              broker_pid=broker.pid)
            single_rate = res["rate"]
            rows.append(("wattmix worker, mixed feeds", res["rate"], "msg/s"))
            print(f"mixed   worker   {res['rate']:>12,.0f} msg/s ({res['events']:,} events in {res['seconds']:.1f} s; "
                  f"rss {res['per_worker'][0].get('rss_kb', 0) / 1024:.0f} MB; GC {res['per_worker'][0].get('gc_s', 0):.2f} s; "
                  f"published in {res['published_s']:.1f} s)",
                  flush=True)
            print(f"        {cpu_cost(res, 1, 'message')}", flush=True)

        if "batched" in only:
            named = scenario_events(sid, days=args.batched_days, jobs=args.jobs)
            samples = sum(1 for n, _ in named if n == "gpu_telemetry")
            for form in ("rows", "columns"):
                batched = batch_telemetry(named, args.per_message, form)
                messages = sum(1 for n, _ in batched if n == "gpu_telemetry")
                profile = f"{args.profile}.{form}.json" if args.profile and "mixed" not in only else None
                res = run_workers(bs, work, batched, sid, 1, f"batched-{form}", extra, profile, total=len(batched),
                                  broker_pid=broker.pid)
                # the worker counts messages; samples/s = every sample / the same seconds
                rate = samples / res["seconds"]
                rows.append((f"wattmix worker, batched GPU telemetry, {form} ({args.per_message}/msg)", rate,
                             "samples/s"))
                print(f"batched {form:<7}  {rate:>12,.0f} samples/s ({samples:,} samples in {messages:,} messages "
                      f"+ {len(batched) - messages:,} other events, {res['seconds']:.1f} s); "
                      f"{rate / single_rate:.1f}x single-sample messages (mixed: {single_rate:,.0f} msg/s); "
                      f"GC {res['per_worker'][0].get('gc_s', 0):.2f} s", flush=True)
                print(f"        {cpu_cost(res, samples / len(batched), 'sample')}", flush=True)

        if "scrape" in only:
            named = scrape_telemetry(scenario_events(sid, days=max(3, math.ceil(args.scrape_days)), jobs=args.jobs),
                                     args.scrape_s, args.scrape_days)
            gpu = [r for n, r in named if n == "gpu_telemetry"]
            samples = sum(len(r.columns.job_id) for r in gpu)
            profile = f"{args.profile}.scrape.json" if args.profile and "mixed" not in only else None
            res = run_workers(bs, work, named, sid, 1, "scrape", extra, profile, broker_pid=broker.pid)
            rate = samples / res["seconds"]
            rows.append((f"wattmix worker, exporter scrapes every {args.scrape_s:g} s as columns", rate, "samples/s"))
            ratio = f"; {rate / single_rate:.1f}x single-sample messages" if single_rate else ""
            print(f"scrape  columns  {rate:>12,.0f} samples/s ({samples:,} samples in {len(gpu):,} messages "
                  f"+ {len(named) - len(gpu):,} other events, {res['seconds']:.1f} s){ratio}; "
                  f"GC {res['per_worker'][0].get('gc_s', 0):.2f} s; "
                  f"peak rss {res['per_worker'][0].get('peak_rss_kb', 0) / 1024:.0f} MB", flush=True)
            print(f"        {cpu_cost(res, samples / len(named), 'sample')}", flush=True)

        if "scaleout" in only:
            sites4 = site_ids(4)
            named = scenario_events(sites4, days=args.scaleout_days, jobs=args.jobs)
            r1 = run_workers(bs, work, named, sites4, 1, "scale1", extra)
            print(f"scale   1 worker {r1['rate']:>12,.0f} msg/s ({r1['events']:,} events, 4 sites, 4 partitions)",
                  flush=True)
            r2 = run_workers(bs, work, named, sites4, 2, "scale2", extra)
            split = [w.get("events", 0) for w in r2["per_worker"]]
            print(f"scale   2 workers{r2['rate']:>12,.0f} msg/s (split {split}); ratio {r2['rate'] / r1['rate']:.2f}x",
                  flush=True)
            rows.append(("1 worker, 4 sites / 4 partitions", r1["rate"], "msg/s"))
            rows.append(("2 workers, same group", r2["rate"], "msg/s"))

    print(machine_line().replace("machine:", "after:  "))
    print(dumps({"rows": rows}))


if __name__ == "__main__":
    main()
