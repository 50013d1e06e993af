"""Where a price's latency goes inside the worker: ``bench_latency.py --trace`` (a dev tool).

The latency bench starts its worker with a generated ``sitecustomize`` that calls
:func:`install` (only in the ``bench_stream_worker.py`` process). It wraps, without changing
them, the points a price crosses and appends one JSON line per point to ``WM_TRACE``:

* ``fetched``: a fetch response carrying a price is parsed (the consumer thread);
* ``drained``: the fetch loop (main thread) receives it from the consumer thread;
* ``step``: the price record is handed to ``DispatchWorker._on_batch`` (with the producer's
  timestamp = when the bench sent it, and the size of the step);
* ``decided``: the pipeline decides an interval (``Pipeline._publish_action``), and whether in a
  fetch step or in the idle timer (``_tick``);
* ``handed``: ``DispatchWorker._send`` hands the action to the producer;
* ``on_wire``: the worker's producer writes a produce request to the broker's socket;
* ``write``: an archive transaction (rows, CPU seconds of the writer thread).

:func:`report` joins them with the bench's send / receive times per boundary.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time


def install(path: str, price_topic: str) -> None:
    from aiokafka import conn
    from aiokafka.consumer import fetcher
    from aiokafka.protocol.produce import ProduceRequest

    import streams.batching as batching_mod
    import streams.pipeline as pipeline_mod
    import streams.worker as worker_mod

    out = open(path, "a", buffering=1)
    where = ["step"]

    def log(**kw) -> None:
        kw["t"] = time.time()
        out.write(json.dumps(kw) + "\n")

    import sinks.archive as archive_mod

    write_batch = archive_mod.Archive.write_batch

    def traced_write_batch(self, batch):
        t0 = time.thread_time()
        try:
            return write_batch(self, batch)
        finally:
            log(ev="write", rows=len(batch), cpu=time.thread_time() - t0)

    archive_mod.Archive.write_batch = traced_write_batch
    fetch_result_init = fetcher.FetchResult.__init__

    def traced_fetch_result_init(self, tp, *, partition_records, **kw):
        fetch_result_init(self, tp, partition_records=partition_records, **kw)
        if tp.topic == price_topic:  # consumer thread: a fetch response carried the price
            log(ev="fetched", off=partition_records.next_fetch_offset)

    wait_next_records = batching_mod.BatchConsumer._wait_next_records

    async def traced_wait_next_records(self, timeout):
        records, active = await wait_next_records(self, timeout)
        for tp, recs in (records or {}).items():
            if tp.topic == price_topic:  # main thread: the fetch loop has it
                log(ev="drained", offs=[r.offset for r in recs])
        return records, active

    on_batch = worker_mod.DispatchWorker._on_batch

    async def traced_on_batch(self, records, generation_id):
        n = sum(len(recs) for recs in records.values())
        for tp, recs in records.items():
            if tp.topic == price_topic:
                for r in recs:
                    log(ev="step", off=r.offset, sent=r.timestamp / 1000, n=n)
        await on_batch(self, records, generation_id)

    send_outgoing = worker_mod.DispatchWorker._send

    async def traced_send(self, result):
        for action in result.actions:
            log(ev="handed", b=action.interval_start.isoformat())
        return await send_outgoing(self, result)

    tick = worker_mod.DispatchWorker._tick

    async def traced_tick(self):
        where[0] = "timer"
        try:
            await tick(self)
        finally:
            where[0] = "step"

    publish = pipeline_mod.Pipeline._publish_action

    def traced_publish(self, action, res):
        log(ev="decided", b=action.interval_start.isoformat(), where=where[0])
        return publish(self, action, res)

    conn_send = conn.AIOKafkaConnection.send

    def traced_conn_send(self, request, expect_response=True):
        if isinstance(request, ProduceRequest):
            log(ev="on_wire")
        return conn_send(self, request, expect_response)

    fetcher.FetchResult.__init__ = traced_fetch_result_init
    batching_mod.BatchConsumer._wait_next_records = traced_wait_next_records
    worker_mod.DispatchWorker._on_batch = traced_on_batch
    worker_mod.DispatchWorker._tick = traced_tick
    pipeline_mod.Pipeline._publish_action = traced_publish
    conn.AIOKafkaConnection.send = traced_conn_send
    worker_mod.DispatchWorker._send = traced_send


SITECUSTOMIZE = """\
import os, sys
if os.environ.get("WM_TRACE") and any(a.endswith("bench_stream_worker.py") for a in sys.orig_argv):
    sys.path.insert(0, {bench!r})
    sys.path.insert(0, {root!r})
    import latency_trace
    latency_trace.install(os.environ["WM_TRACE"], os.environ["WM_TRACE_PRICES"])
"""


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q / 100 * (len(xs) - 1))))]


def report(path: str, sent: dict[str, float], got: dict[str, float]) -> str:
    """Per-segment p50/p90/max over the boundaries (ms), from the bench's send to its receive."""
    events = [json.loads(line) for line in open(path)]
    steps = [e for e in events if e["ev"] == "step"]
    fetched = {e["off"]: e["t"] for e in reversed(events) if e["ev"] == "fetched"}
    drained = {off: e["t"] for e in reversed(events) if e["ev"] == "drained" for off in e["offs"]}
    decided = {e["b"]: e for e in reversed(events) if e["ev"] == "decided"}
    handed = {e["b"]: e["t"] for e in reversed(events) if e["ev"] == "handed"}
    wires = sorted(e["t"] for e in events if e["ev"] == "on_wire")
    names = ("price sent -> in a fetch response (broker)", "-> handed to the fetch loop (thread hop)",
             "-> in a worker step", "-> decided (event-time merge)", "-> handed to the producer",
             "-> produce request on the wire",
             "-> bench consumer has it", "total")
    segs: dict[str, list[float]] = {k: [] for k in names}
    timer = sizes = 0
    for b, t_sent in sent.items():
        d = decided.get(b)
        step = min((e for e in steps if abs(e["sent"] - t_sent) < 0.0015), key=lambda e: e["t"], default=None)
        wire = next((w for w in wires if w >= handed.get(b, float("inf"))), None)
        if d is None or step is None or wire is None or b not in got or step["off"] not in drained or b not in handed:
            continue
        timer += d["where"] == "timer"
        sizes += step["n"]
        marks = (t_sent, fetched.get(step["off"], drained[step["off"]]), drained[step["off"]], step["t"], d["t"],
                 handed[b], wire, got[b])
        for name, v in zip(names, [b - a for a, b in zip(marks, marks[1:])] + [got[b] - t_sent]):
            segs[name].append(v * 1000)
    n = len(segs["total"])
    if not n:
        return "trace: no boundary could be followed through the worker"
    writes = [e for e in events if e["ev"] == "write"]
    span = max(writes[-1]["t"] - writes[0]["t"], 1e-9) if len(writes) > 1 else float("inf")
    lines = [f"trace over {n} boundaries (ms; a price's step held {sizes / n:,.0f} records on average; "
             f"{timer} decided by the idle timer, {n - timer} in a fetch step); archive: {len(writes) / span:.1f} "
             f"writes/s of {statistics.fmean(e['rows'] for e in writes or [{'rows': 0}]):,.0f} rows, "
             f"{sum(e['cpu'] for e in writes) / span:.2f} cores in the writer thread"]
    lines += [f"  {k:<44} p50 {pct(v, 50):6.1f}  p90 {pct(v, 90):6.1f}  max {max(v):6.1f}  mean {statistics.fmean(v):6.1f}"
              for k, v in segs.items()]
    return "\n".join(lines)


def write_sitecustomize(directory: str) -> None:
    here = os.path.dirname(os.path.abspath(__file__))
    with open(os.path.join(directory, "sitecustomize.py"), "w") as f:
        f.write(SITECUSTOMIZE.format(bench=here, root=os.path.dirname(here)))


if __name__ == "__main__":  # pragma: no cover
    sys.exit("used by bench_latency.py --trace")
