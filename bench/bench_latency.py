"""Price event -> published action latency, end to end through the broker, under background
GPU telemetry load.

    python bench/bench_latency.py [--rate 10000] [--boundaries 120] [--interval-s 0.5]
                                  [--tick-s 0.01] [--set boundary_fast_path=false] [--trace]

Event time runs ``900 / interval_s`` times faster than the wall clock, so a 15-minute interval
passes every ``interval_s`` seconds (everything else is real: broker, worker, DuckDB).

* a telemetry subprocess publishes ``--rate`` GPU samples/s (1,000 jobs), stamped "now", in
  one produce request per ``--tick-s`` (the embedded broker's CPU grows with the number of
  requests it holds: 10 ms ticks double it against 30 ms, and its tail is the latency's);
* at each interval boundary B this process publishes the real-time price of the interval
  ending at B (``published_at = B``), noting the wall time of the send;
* a consumer on the actions topic notes when the action for B arrives.

Latency = action received - price sent, both in this process: broker in, worker (fetch,
decode, event-time merge, decision), broker out, the bench consumer's fetch.

Also printed: the CPU each process used during the run (worker, load generator, broker, this
process) and the machine's busy cores, to tell the worker's share from the harness's on a
shared 2-core box. ``--trace`` follows each price through the worker (bench/latency_trace.py).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_stream_lib import (ROOT, CpuMeter, WorkerProc, add_worker_args, create_topics, machine_line, topics_for,  # noqa: E402
                              worker_args)

T0 = datetime(2025, 1, 6, tzinfo=timezone.utc)
STEP = timedelta(minutes=15)
# The bench's own actions consumer: tansu answers a waiting fetch within a few ms of new data
# for waits up to ~50 ms (measured: 20 ms wait -> 6.8 ms p50 idle latency, 5 ms -> 4.0 ms), so
# a short wait keeps the harness's share small.
BENCH_FETCH_WAIT_MS = 5


class EventClock:
    def __init__(self, interval_s: float, wall0: float) -> None:
        self.speed = STEP.total_seconds() / interval_s
        self.wall0 = wall0

    def at(self, wall: float) -> datetime:
        return T0 + timedelta(seconds=(wall - self.wall0) * self.speed)

    def wall_of(self, t: datetime) -> float:
        return self.wall0 + (t - T0).total_seconds() / self.speed


def telemetry_main(args: argparse.Namespace) -> None:
    """Subprocess: ``--rate`` GPU samples/s for 1,000 jobs, stamped with the event clock, one
    sample per message or, with ``--per-message N``, N per GpuTelemetryColumns message (the
    exporters' form).

    One record batch per ``--tick-s`` (10 ms; ``create_batch``/``send_batch``): the load
    generator shares the 2 cores with the worker it loads, and per-message ``send`` cost it ~3x
    the CPU. A longer tick is a producer lingering longer: fewer, larger produce requests."""
    import orjson
    from aiokafka import AIOKafkaProducer
    from aiokafka.partitioner import DefaultPartitioner

    clock = EventClock(args.interval_s, args.wall0)
    classes = ("inference", "training", "batch")
    tmpl = [('{"schema_version":1,"site_id":"%s","job_id":"job-%04d","gpu_class":"%s","gpus":8,"power_kw":10.2,'
             '"utilization":0.9,"state":"running","observed_at":"' % (args.site, j, classes[j % 3])).encode()
            for j in range(1000)]

    per_message = max(1, args.per_message)

    def columns_message(jobs: list[int], ts: str) -> bytes:
        n = len(jobs)
        return orjson.dumps({"schema_version": 1, "site_id": args.site, "columns": {
            "job_id": [f"job-{j:04d}" for j in jobs], "gpu_class": [classes[j % 3] for j in jobs],
            "gpus": [8] * n, "power_kw": [10.2] * n, "utilization": [0.9] * n, "state": ["running"] * n,
            "observed_at": [ts] * n}})

    async def run() -> None:
        p = AIOKafkaProducer(bootstrap_servers=args.kafka, acks="all", max_batch_size=1024 * 1024,
                             enable_idempotence=False)
        await p.start()
        key = args.site.encode()
        # the site's partition, as the price producer's default partitioner picks it
        partition = DefaultPartitioner()(key, sorted(await p.partitions_for(args.topic)), None)
        tick = args.tick_s
        per_tick = max(1, int(args.rate * tick))
        j = 0
        next_t = time.time()
        try:
            while time.time() < args.until:
                ts = clock.at(time.time()).isoformat().encode()
                batch = p.create_batch()
                if per_message == 1:
                    for _ in range(per_tick):
                        batch.append(key=key, value=tmpl[j] + ts + b'"}', timestamp=None)
                        j = (j + 1) % 1000
                else:
                    for lo in range(0, per_tick, per_message):
                        jobs = [(j + i) % 1000 for i in range(min(per_message, per_tick - lo))]
                        j = (j + len(jobs)) % 1000
                        batch.append(key=key, value=columns_message(jobs, ts.decode()), timestamp=None)
                await p.send_batch(batch, args.topic, partition=partition)
                next_t += tick
                delay = next_t - time.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                elif delay < -1.0:
                    next_t = time.time()  # fell behind: do not burst
        finally:
            await p.stop()

    asyncio.run(run())


@dataclass
class Rig:
    """Broker, topics, a worker that has joined its group, and the background telemetry."""

    bootstrap: str
    topics: dict[str, str]
    wall0: float
    worker: WorkerProc
    work: Path
    cpu: CpuMeter


@contextlib.contextmanager
def latency_rig(args: argparse.Namespace, name: str, seconds: float, trace: Path | None = None) -> Iterator[Rig]:
    """Everything the latency and soak benches share; the telemetry load runs ``seconds``."""
    from wattmix.broker import EmbeddedBroker

    with tempfile.TemporaryDirectory(prefix=f"wm-bench-{name}-") as tmp, EmbeddedBroker() as broker:
        work, bs = Path(tmp), broker.bootstrap
        suffix = f".{name}-{uuid.uuid4().hex[:6]}"
        topics = topics_for(suffix)
        create_topics(bs, topics.values())
        wall0 = time.time()
        extra = worker_args(args)
        # the worker first joins its group and reads one hashprice; the load starts after that
        asyncio.run(_send_hashprice(bs, topics["hashprice"], args.site, EventClock(args.interval_s, wall0)))
        env_before = dict(os.environ)
        if trace is not None:
            import latency_trace

            latency_trace.write_sitecustomize(tmp)
            os.environ.update(WM_TRACE=str(trace), WM_TRACE_PRICES=topics["grid_prices"],
                              PYTHONPATH=os.pathsep.join(filter(None, [tmp, os.environ.get("PYTHONPATH")])))
        try:
            worker = WorkerProc(bs, work / f"{name}.duckdb", f"{name}-{uuid.uuid4().hex[:6]}", suffix, [args.site],
                                work / f"{name}.json", work / f"{name}.log", extra)
        finally:
            os.environ.clear()
            os.environ.update(env_before)
        deadline = time.time() + 60
        while not worker.read().get("events") and time.time() < deadline:
            time.sleep(0.2)
        until = time.time() + seconds
        tele = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--telemetry", "--kafka", bs,
                                 "--topic", topics["gpu_telemetry"], "--site", args.site, "--rate", str(args.rate),
                                 "--per-message", str(args.per_message), "--tick-s", str(args.tick_s),
                                 "--interval-s", str(args.interval_s), "--wall0", str(wall0),
                                 "--until", str(until)], cwd=str(ROOT))
        try:
            cpu = CpuMeter({"worker": worker.proc.pid, "load generator": tele.pid, "broker": broker.pid,
                            "bench": os.getpid()})
            yield Rig(bs, topics, wall0, worker, work, cpu)
        finally:
            tele.terminate()
            tele.wait()
            worker.stop()


async def measure(args: argparse.Namespace, bootstrap: str, topics: dict[str, str], wall0: float,
                  worker: WorkerProc, sent: dict[str, float] | None = None,
                  got: dict[str, float] | None = None) -> list[float]:
    """Send ``args.warmup + args.boundaries`` prices on their boundaries; the latency of each
    measured one in ms. ``sent``/``got`` (boundary -> wall time) are filled if given."""
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

    import orjson

    from schemas.codec import encode
    from schemas.feeds import GridPrice

    clock = EventClock(args.interval_s, wall0)
    site = args.site
    prod = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=0, enable_idempotence=False)
    cons = AIOKafkaConsumer(topics["actions"], bootstrap_servers=bootstrap, group_id=None,
                            auto_offset_reset="earliest", enable_auto_commit=False,
                            fetch_max_wait_ms=BENCH_FETCH_WAIT_MS)
    await prod.start()
    await cons.start()
    sent = {} if sent is None else sent
    got = {} if got is None else got
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


def latency_line(lat: list[float]) -> str:
    return (f"price -> action latency over {len(lat)} boundaries: p50 {pct(lat, 50):.1f} ms  p90 {pct(lat, 90):.1f} ms  "
            f"p99 {pct(lat, 99):.1f} ms  max {max(lat):.1f} ms  mean {statistics.fmean(lat):.1f} ms")


def load_line(args: argparse.Namespace) -> str:
    """The background load asked for, in words."""
    every = f", one produce request per {args.tick_s * 1000:g} ms"
    if args.per_message <= 1:
        return f"{args.rate:,} samples/s requested (one per message{every})"
    return (f"{args.rate:,} samples/s requested as {args.per_message}-sample column messages "
            f"({args.rate / args.per_message:,.0f} msg/s{every})")


def add_rig_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--rate", type=int, default=10_000, help="background GPU telemetry samples/s")
    ap.add_argument("--per-message", type=int, default=1,
                    help="GPU samples per telemetry message (1: GpuTelemetry; N > 1: GpuTelemetryColumns of N)")
    ap.add_argument("--interval-s", type=float, default=0.5, help="wall seconds per 15-min interval")
    ap.add_argument("--tick-s", type=float, default=0.01,
                    help="the telemetry producer sends one record batch this often (its linger)")
    add_worker_args(ap)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_rig_args(ap)
    ap.add_argument("--boundaries", type=int, default=120, help="measured price events")
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--trace", action="store_true", help="follow each price through the worker (latency_trace.py)")
    ap.add_argument("--telemetry", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--kafka", help=argparse.SUPPRESS)
    ap.add_argument("--topic", help=argparse.SUPPRESS)
    ap.add_argument("--site", default="sample", help=argparse.SUPPRESS)
    ap.add_argument("--wall0", type=float, help=argparse.SUPPRESS)
    ap.add_argument("--until", type=float, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.telemetry:
        return telemetry_main(args)

    print(machine_line(), flush=True)
    seconds = 8 + (args.boundaries + args.warmup + 6) * args.interval_s
    with tempfile.TemporaryDirectory(prefix="wm-bench-lat-trace-") as trace_dir:
        trace = Path(trace_dir) / "trace.jsonl" if args.trace else None
        sent: dict[str, float] = {}
        got: dict[str, float] = {}
        with latency_rig(args, "lat", seconds, trace) as rig:
            time.sleep(2.0)
            t_start = time.time()
            e_start = rig.worker.read().get("events", 0)
            lat = asyncio.run(measure(args, rig.bootstrap, rig.topics, rig.wall0, rig.worker, sent, got))
            st = rig.worker.read()
            rate = (st.get("events", 0) - e_start) / max(st.get("last", t_start) - t_start, 1e-9)
            cpu = rig.cpu.line()
            log_tail = (rig.work / "lat.log").read_text()[-3000:]
        if not lat:
            print("no latency samples; worker log tail:\n" + log_tail)
            return
        print(f"settings: {' '.join(args.set) or 'defaults'}; background telemetry {load_line(args)}, "
              f"worker consumed {rate:,.0f} msg/s during the run")
        print(latency_line(lat))
        print(cpu)
        if trace is not None:
            import latency_trace

            print(latency_trace.report(str(trace), sent, got))
    print(machine_line().replace("machine:", "after:  "))


if __name__ == "__main__":
    main()
