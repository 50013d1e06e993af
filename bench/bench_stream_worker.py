"""The real wattmix worker (:class:`streams.worker.DispatchWorker`) as a benchmark subprocess.

    python bench/bench_stream_worker.py --kafka H:P --db F --group G --suffix S --sites a,b
        --status FILE [--set batch_max=20000 --set idle_grace_s=0.1 ...]

Same code path as ``wattmix worker``; additionally writes ``FILE`` (JSON) after every durable
batch: ``first`` (wall time the first fetch reached the worker), ``last`` (wall time the latest
batch was durable and acked), ``events`` (durable so far), ``rss_kb`` (and ``peak_rss_kb``, the highest seen at those
moments), ``gc_s`` (seconds spent
in cyclic garbage collection so far). ``--gc default`` keeps Python's GC thresholds instead of
``wattmix worker``'s (``streams.worker.tune_gc``): the A/B of that setting.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import orjson  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--kafka", required=True)
    ap.add_argument("--db", required=True)
    ap.add_argument("--group", required=True)
    ap.add_argument("--suffix", default="")
    ap.add_argument("--sites", required=True, help="comma-separated site ids (copies of the sample site)")
    ap.add_argument("--status", required=True)
    ap.add_argument("--set", action="append", default=[], help="WorkerSettings field=value")
    ap.add_argument("--gc", choices=("tuned", "default"), default="tuned")
    ap.add_argument("--loglevel", default="WARNING", help="the worker's log level (INFO shows takeovers, timers)")
    args = ap.parse_args()

    from bench_stream_lib import rss_kb, site_config

    from streams.app import TopicNames, WorkerSettings
    from streams.worker import DispatchWorker, serve

    kw = {}
    fields = {f.name: f for f in dataclasses.fields(WorkerSettings)}
    for item in args.set:
        k, v = item.split("=", 1)
        typ = fields[k].type
        kw[k] = (v.lower() in ("1", "true", "yes")) if typ in ("bool", bool) else (
            int(v) if typ in ("int", int) else float(v) if typ in ("float", float) else v)
    settings = WorkerSettings(kafka=args.kafka, db=args.db, sites=tuple(site_config(s) for s in args.sites.split(",")),
                              app_id=args.group, topics=TopicNames(args.suffix), **kw)
    worker = DispatchWorker(settings)
    status = Path(args.status)
    tmp = status.with_suffix(".tmp")
    st = {"first": 0.0, "last": 0.0, "events": 0, "rss_kb": 0, "peak_rss_kb": 0, "gc_s": 0.0, "pid": os.getpid()}
    pid = os.getpid()

    def on_durable(n: int) -> None:
        now = time.time()
        if not st["first"]:
            st["first"] = now - (time.monotonic() - worker.stats["first_batch_at"])
        st["last"] = now
        st["events"] += n
        st["rss_kb"] = rss_kb(pid)
        st["peak_rss_kb"] = max(st["peak_rss_kb"], st["rss_kb"])
        tmp.write_bytes(orjson.dumps(st))
        os.replace(tmp, status)

    worker.on_durable = on_durable
    gc_started = [0.0]

    def gc_timer(phase: str, info: dict) -> None:
        if phase == "start":
            gc_started[0] = time.perf_counter()
        else:
            st["gc_s"] += time.perf_counter() - gc_started[0]

    gc.callbacks.append(gc_timer)
    serve(worker, args.loglevel, gc_tuned=args.gc == "tuned")  # as `wattmix worker` runs it


if __name__ == "__main__":
    main()
