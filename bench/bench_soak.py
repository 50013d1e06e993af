"""Soak: resident memory of the worker over a long run at a steady rate (the latency bench's
set-up: background GPU telemetry + a real-time price every interval, decisions, archive).

    python bench/bench_soak.py --minutes 10 [--rate 10000] [--per-message 1] [--interval-s 0.5]
    python bench/bench_soak.py --minutes 10 --tick-s 0.1   # one produce request per 100 ms
    python bench/bench_soak.py --minutes 10 --rate 25000 --per-message 250   # exporter-style batches
    python bench/bench_soak.py --minutes 0.5            # CI-sized smoke run

The embedded broker (tansu, in-memory, no retention) keeps every produce request and its CPU
grows with their number: at the default one request per 10 ms it saturates a core after ~6
minutes; ``--tick-s 0.1`` (a producer lingering 100 ms) keeps it at ~0.3 cores for 10 minutes.

RSS (``/proc/PID/status`` VmRSS) is sampled every ``--every`` seconds. Reported: RSS after the
warm-up (the first 20% of the run: DuckDB's buffer pool, Python's allocator arenas and the
1,000-job state fill up), at the end, and the growth between them (goal: within 10%).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_latency import add_rig_args, latency_line, latency_rig, load_line, measure  # noqa: E402
from bench_stream_lib import machine_line, rss_kb  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_rig_args(ap)
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--every", type=float, default=5.0, help="RSS sampling period, seconds")
    args = ap.parse_args()
    args.site, args.warmup = "sample", 4
    args.boundaries = max(4, int(args.minutes * 60 / args.interval_s))

    print(machine_line(), flush=True)
    seconds = 8 + (args.boundaries + args.warmup + 6) * args.interval_s
    with latency_rig(args, "soak", seconds) as rig:
        worker = rig.worker
        samples: list[tuple[float, int, int, float]] = []  # seconds, RSS kB, events, broker CPU s
        done = threading.Event()

        def sampler() -> None:
            t0 = time.time()
            while not done.is_set():
                try:
                    samples.append((time.time() - t0, rss_kb(worker.proc.pid), worker.read().get("events", 0),
                                    rig.cpu.seconds("broker")))
                except OSError:
                    return
                done.wait(args.every)

        th = threading.Thread(target=sampler, daemon=True)
        try:
            th.start()
            lat = asyncio.run(measure(args, rig.bootstrap, rig.topics, rig.wall0, worker))
            cpu = rig.cpu.line()
        finally:
            done.set()
            th.join()
    if len(samples) < 3 or not lat:
        print("not enough samples")
        return
    warm = [s for s in samples if s[0] >= samples[-1][0] * 0.2]
    base, end = warm[0], samples[-1]
    peak = max(s[1] for s in warm)
    rate = (end[2] - base[2]) / max(end[0] - base[0], 1e-9)
    print(f"soak {samples[-1][0] / 60:.1f} min, load {load_line(args)}: worker {rate:,.0f} msg/s, {end[2]:,} "
          f"messages, {len(lat)} decisions")
    print(latency_line(lat))
    print(cpu)
    print(f"RSS after warm-up {base[1] / 1024:.0f} MB, end {end[1] / 1024:.0f} MB, peak {peak / 1024:.0f} MB: "
          f"growth {100 * (end[1] - base[1]) / base[1]:+.1f}% (goal within 10%)")
    shown = samples[:: max(1, len(samples) // 12)]
    print("RSS MB over time: " + " ".join(f"{s[0]:.0f}s:{s[1] / 1024:.0f}" for s in shown))
    print("worker msg/s (broker cores) over time: " + " ".join(
        f"{b[0]:.0f}s:{(b[2] - a[2]) / max(b[0] - a[0], 1e-9):,.0f} ({(b[3] - a[3]) / max(b[0] - a[0], 1e-9):.2f})"
        for a, b in zip(shown, shown[1:])))
    print(machine_line().replace("machine:", "after:  "))


if __name__ == "__main__":
    main()
