"""Soak: resident memory of the worker over a long run at a steady rate (the latency bench's
set-up: background GPU telemetry + a real-time price every interval, decisions, archive).

    python bench/bench_soak.py --minutes 10 [--rate 10000] [--interval-s 0.5]
    python bench/bench_soak.py --minutes 0.5            # CI-sized smoke run

RSS (``/proc/PID/status`` VmRSS) is sampled every ``--every`` seconds. Reported: RSS after the
warm-up (the first 20% of the run: DuckDB's buffer pool, Python's allocator arenas and the
1,000-job state fill up), at the end, and the growth between them (goal: within 10%).
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_latency import EventClock, _send_hashprice, measure, pct  # noqa: E402
from bench_stream_lib import ROOT, WorkerProc, create_topics, machine_line, rss_kb, topics_for  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--rate", type=int, default=10_000, help="background GPU telemetry msg/s")
    ap.add_argument("--interval-s", type=float, default=0.5, help="wall seconds per 15-min interval")
    ap.add_argument("--every", type=float, default=5.0, help="RSS sampling period, seconds")
    ap.add_argument("--set", action="append", default=[], help="WorkerSettings field=value")
    args = ap.parse_args()
    args.site, args.warmup = "sample", 4
    args.boundaries = max(4, int(args.minutes * 60 / args.interval_s))

    from wattmix.broker import EmbeddedBroker

    print(machine_line(), flush=True)
    with tempfile.TemporaryDirectory(prefix="wm-bench-soak-") as tmp, EmbeddedBroker() as broker:
        work, bs = Path(tmp), broker.bootstrap
        suffix = f".soak-{uuid.uuid4().hex[:6]}"
        topics = topics_for(suffix)
        create_topics(bs, topics.values())
        wall0 = time.time()
        asyncio.run(_send_hashprice(bs, topics["hashprice"], args.site, EventClock(args.interval_s, wall0)))
        extra = [x for s in args.set for x in ("--set", s)]
        worker = WorkerProc(bs, work / "soak.duckdb", f"soak-{uuid.uuid4().hex[:6]}", suffix, [args.site],
                            work / "soak.json", work / "soak.log", extra)
        deadline = time.time() + 60
        while not worker.read().get("events") and time.time() < deadline:
            time.sleep(0.2)
        total_s = time.time() - wall0 + 6 + (args.boundaries + args.warmup + 6) * args.interval_s
        tele = subprocess.Popen([sys.executable, str(ROOT / "bench" / "bench_latency.py"), "--telemetry", "--kafka", bs,
                                 "--topic", topics["gpu_telemetry"], "--site", args.site, "--rate", str(args.rate),
                                 "--interval-s", str(args.interval_s), "--wall0", str(wall0),
                                 "--until", str(wall0 + total_s)], cwd=str(ROOT))
        samples: list[tuple[float, int, int]] = []
        done = threading.Event()

        def sampler() -> None:
            t0 = time.time()
            while not done.is_set():
                try:
                    samples.append((time.time() - t0, rss_kb(worker.proc.pid), worker.read().get("events", 0)))
                except OSError:
                    return
                done.wait(args.every)

        th = threading.Thread(target=sampler, daemon=True)
        try:
            th.start()
            lat = asyncio.run(measure(args, bs, topics, wall0, worker))
        finally:
            done.set()
            th.join()
            tele.terminate()
            tele.wait()
            worker.stop()
    if len(samples) < 3:
        print("not enough samples")
        return
    warm = [s for s in samples if s[0] >= samples[-1][0] * 0.2]
    base, end = warm[0], samples[-1]
    peak = max(s[1] for s in warm)
    rate = (end[2] - base[2]) / max(end[0] - base[0], 1e-9)
    print(f"soak {samples[-1][0] / 60:.1f} min, worker {rate:,.0f} msg/s, {end[2]:,} events, {len(lat)} decisions "
          f"(latency p50 {pct(lat, 50):.0f} ms, p99 {pct(lat, 99):.0f} ms)")
    print(f"RSS after warm-up {base[1] / 1024:.0f} MB, end {end[1] / 1024:.0f} MB, peak {peak / 1024:.0f} MB: "
          f"growth {100 * (end[1] - base[1]) / base[1]:+.1f}% (goal within 10%)")
    print("RSS MB over time: " + " ".join(f"{s[0]:.0f}s:{s[1] / 1024:.0f}" for s in samples[:: max(1, len(samples) // 12)]))
    print(machine_line().replace("machine:", "after:  "))


if __name__ == "__main__":
    main()
