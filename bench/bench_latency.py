"""Price event -> published action latency, end to end through the broker, under background
GPU telemetry load.

    python bench/bench_latency.py [--rate 10000] [--boundaries 120] [--interval-s 0.5]
                                  [--set boundary_fast_path=false]

Event time runs ``900 / interval_s`` times faster than the wall clock, so a 15-minute interval
passes every ``interval_s`` seconds (everything else is real: broker, worker, DuckDB).

* a telemetry subprocess publishes ``--rate`` GPU samples/s (1,000 jobs), stamped "now";
* at each interval boundary B this process publishes the real-time price of the interval
  ending at B (``published_at = B``), noting the wall time of the send;
* a consumer on the actions topic notes when the action for B arrives.

Latency = action received - price sent, both in this process: broker in, worker (fetch,
decode, event-time merge, decision, archive of the batch in flight), broker out, fetch.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_stream_lib import ROOT, WorkerProc, create_topics, machine_line, topics_for  # noqa: E402

T0 = datetime(2025, 1, 6, tzinfo=timezone.utc)
STEP = timedelta(minutes=15)


class EventClock:
    def __init__(self, interval_s: float, wall0: float) -> None:
        self.speed = STEP.total_seconds() / interval_s
        self.wall0 = wall0

    def at(self, wall: float) -> datetime:
        return T0 + timedelta(seconds=(wall - self.wall0) * self.speed)

    def wall_of(self, t: datetime) -> float:
        return self.wall0 + (t - T0).total_seconds() / self.speed


def telemetry_main(args: argparse.Namespace) -> None:
    """Subprocess: ``--rate`` GPU samples/s for 1,000 jobs, stamped with the event clock."""
    from aiokafka import AIOKafkaProducer

    clock = EventClock(args.interval_s, args.wall0)
    classes = ("inference", "training", "batch")
    tmpl = [('{"schema_version":1,"site_id":"%s","job_id":"job-%04d","gpu_class":"%s","gpus":8,"power_kw":10.2,'
             '"utilization":0.9,"state":"running","observed_at":"' % (args.site, j, classes[j % 3])).encode()
            for j in range(1000)]

    async def run() -> None:
        p = AIOKafkaProducer(bootstrap_servers=args.kafka, acks="all", linger_ms=5, max_batch_size=256 * 1024,
                             enable_idempotence=False)
        await p.start()
        key = args.site.encode()
        tick = 0.01
        per_tick = max(1, int(args.rate * tick))
        j = 0
        next_t = time.time()
        try:
            while time.time() < args.until:
                now = time.time()
                ts = clock.at(now).isoformat().encode()
                futs = []
                for _ in range(per_tick):
                    futs.append(await p.send(args.topic, tmpl[j] + ts + b'"}', key=key))
                    j = (j + 1) % 1000
                next_t += tick
                delay = next_t - time.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                elif delay < -1.0:
                    next_t = time.time()  # fell behind: do not burst
        finally:
            await p.stop()

    asyncio.run(run())


async def measure(args: argparse.Namespace, bootstrap: str, topics: dict[str, str], wall0: float,
                  worker: WorkerProc) -> list[float]:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

    import orjson

    from schemas.codec import encode
    from schemas.feeds import GridPrice

    clock = EventClock(args.interval_s, wall0)
    site = args.site
    prod = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=0, enable_idempotence=False)
    cons = AIOKafkaConsumer(topics["actions"], bootstrap_servers=bootstrap, group_id=None,
                            auto_offset_reset="earliest", enable_auto_commit=False, fetch_max_wait_ms=20)
    await prod.start()
    await cons.start()
    sent: dict[str, float] = {}
    got: dict[str, float] = {}
    stop = asyncio.Event()

    async def consume() -> None:
        while not stop.is_set():
            batch = await cons.getmany(timeout_ms=50)
            now = time.time()
            for recs in batch.values():
                for r in recs:
                    got.setdefault(orjson.loads(r.value)["interval_start"], now)

    ctask = asyncio.create_task(consume())
    key = site.encode()
    try:
        # boundaries start a few intervals after now (the worker needs its consumer group first)
        b = T0 + STEP * (int((clock.at(time.time()) - T0) / STEP) + 2)
        n_sent = 0
        while n_sent < args.boundaries + args.warmup:
            wall = clock.wall_of(b)
            delay = wall - time.time()
            if delay > 0:
                await asyncio.sleep(delay)
            price = GridPrice(site_id=site, settlement_point="HB_HUBAVG", market="RT", interval_start=b - STEP,
                              interval_minutes=15, price_usd_mwh=30.0 + (n_sent % 7) * 10, published_at=b)
            t_send = time.time()
            await prod.send(topics["grid_prices"], encode(price), key=key)
            if n_sent >= args.warmup:
                sent[b.isoformat()] = t_send
            n_sent += 1
            b += STEP
            if worker.proc.poll() is not None:
                raise RuntimeError("worker exited")
        await asyncio.sleep(max(2.0, args.interval_s * 4))
    finally:
        stop.set()
        await ctask
        await cons.stop()
        await prod.stop()
    lat = [(got[k] - v) * 1000 for k, v in sent.items() if k in got]
    missing = [k for k in sent if k not in got]
    if missing:
        print(f"  {len(missing)} boundaries without an action (e.g. {missing[:3]})")
    return lat


async def _send_hashprice(bootstrap: str, topic: str, site: str, clock: EventClock) -> None:
    from aiokafka import AIOKafkaProducer

    from schemas.codec import encode
    from schemas.feeds import Hashprice

    p = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=False)
    await p.start()
    try:
        hp = Hashprice(site_id=site, usd_per_ph_day=50.0, as_of=T0 - timedelta(days=1), published_at=clock.at(time.time()))
        await p.send_and_wait(topic, encode(hp), key=site.encode())
    finally:
        await p.stop()


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q / 100 * (len(xs) - 1))))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rate", type=int, default=10_000, help="background GPU telemetry msg/s")
    ap.add_argument("--boundaries", type=int, default=120, help="measured price events")
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--interval-s", type=float, default=0.5, help="wall seconds per 15-min interval")
    ap.add_argument("--set", action="append", default=[], help="WorkerSettings field=value")
    ap.add_argument("--telemetry", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--kafka", help=argparse.SUPPRESS)
    ap.add_argument("--topic", help=argparse.SUPPRESS)
    ap.add_argument("--site", default="sample", help=argparse.SUPPRESS)
    ap.add_argument("--wall0", type=float, help=argparse.SUPPRESS)
    ap.add_argument("--until", type=float, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.telemetry:
        return telemetry_main(args)

    from wattmix.broker import EmbeddedBroker

    print(machine_line(), flush=True)
    with tempfile.TemporaryDirectory(prefix="wm-bench-lat-") as tmp, EmbeddedBroker() as broker:
        work, bs = Path(tmp), broker.bootstrap
        suffix = f".lat-{uuid.uuid4().hex[:6]}"
        topics = topics_for(suffix)
        create_topics(bs, topics.values())
        wall0 = time.time()
        extra = [x for s in args.set for x in ("--set", s)]
        # the worker first joins its group and reads one hashprice; the load starts after that
        asyncio.run(_send_hashprice(bs, topics["hashprice"], args.site, EventClock(args.interval_s, wall0)))
        worker = WorkerProc(bs, work / "lat.duckdb", f"lat-{uuid.uuid4().hex[:6]}", suffix, [args.site],
                            work / "lat.json", work / "lat.log", extra)
        deadline = time.time() + 60
        while not worker.read().get("events") and time.time() < deadline:
            time.sleep(0.2)
        total_s = time.time() - wall0 + 6 + (args.boundaries + args.warmup + 6) * args.interval_s
        tele = subprocess.Popen([sys.executable, __file__, "--telemetry", "--kafka", bs, "--topic",
                                 topics["gpu_telemetry"], "--site", args.site, "--rate", str(args.rate),
                                 "--interval-s", str(args.interval_s), "--wall0", str(wall0),
                                 "--until", str(wall0 + total_s)], cwd=str(ROOT))
        try:
            time.sleep(2.0)
            t_start = time.time()
            e_start = worker.read().get("events", 0)
            lat = asyncio.run(measure(args, bs, topics, wall0, worker))
            st = worker.read()
            rate = (st.get("events", 0) - e_start) / max(st.get("last", t_start) - t_start, 1e-9)
        finally:
            tele.terminate()
            tele.wait()
            worker.stop()
        if not lat:
            print("no latency samples; worker log tail:\n" + (work / "lat.log").read_text()[-3000:])
            return
        print(f"settings: {' '.join(args.set) or 'defaults'}; background telemetry {args.rate:,} msg/s requested, "
              f"worker consumed {rate:,.0f} msg/s during the run")
        print(f"price -> action latency over {len(lat)} boundaries: p50 {pct(lat, 50):.1f} ms  p90 {pct(lat, 90):.1f} ms  "
              f"p99 {pct(lat, 99):.1f} ms  max {max(lat):.1f} ms  mean {statistics.fmean(lat):.1f} ms")
        print(machine_line().replace("machine:", "after:  "))


if __name__ == "__main__":
    main()
