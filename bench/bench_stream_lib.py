"""Shared pieces of the streaming benchmarks (bench_stream.py, bench_latency.py, bench_soak.py).

Sites: copies of the sample site whose ``site_id`` keys land on distinct partitions (Kafka's
murmur2 partitioner, as aiokafka's default), so N sites spread over N partitions.
Workers: ``bench/bench_stream_worker.py`` subprocesses (the real :class:`DispatchWorker`),
each reporting progress in a small JSON status file.
"""

from __future__ import annotations

import asyncio
import os
import platform
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def add_worker_args(ap) -> None:
    """The options passed through to every ``bench_stream_worker.py`` (see :func:`worker_args`)."""
    ap.add_argument("--set", action="append", default=[], help="WorkerSettings field=value for the workers")
    ap.add_argument("--gc", choices=("tuned", "default"), default="tuned",
                    help="workers' GC thresholds: wattmix worker's (tuned) or Python's (default), for A/B")
    ap.add_argument("--worker-loglevel", default="WARNING", help="workers' log level (INFO: takeovers, late timers)")


def worker_args(args) -> list[str]:
    """``bench_stream_worker.py`` options from :func:`add_worker_args`'s."""
    return [x for s in args.set for x in ("--set", s)] + ["--gc", args.gc, "--loglevel", args.worker_loglevel]


def machine_line() -> str:
    load = os.getloadavg()
    return (f"machine: nproc={os.cpu_count()} {platform.machine()} load1={load[0]:.2f} load5={load[1]:.2f} "
            f"python {platform.python_version()}")


def site_ids(n: int, partitions: int = 4) -> list[str]:
    """``n`` site ids on distinct partitions (n <= partitions), deterministic."""
    from aiokafka.partitioner import murmur2

    out, used = [], set()
    i = 0
    while len(out) < n:
        sid = f"site-{i:02d}"
        p = (murmur2(sid.encode()) & 0x7FFFFFFF) % partitions
        if p not in used or n > partitions:
            used.add(p)
            out.append(sid)
        i += 1
    return out


def site_config(site_id: str):
    from schemas.site import load_sample_site

    return load_sample_site().model_copy(update={"site_id": site_id})


def scenario_events(sites: list[str], days: int, jobs: int, seed: int = 7) -> list[tuple[str, object]]:
    """The demo week for each site (GPU telemetry dominates: ~99% of the events), each site's
    events in event-time order, sites one after the other."""
    from wattmix.scenario import build_demo_scenario

    out: list[tuple[str, object]] = []
    for k, sid in enumerate(sites):
        out.extend(build_demo_scenario(seed=seed + k, days=days, jobs=jobs, site=site_config(sid)).events_in_order())
    return out


def batch_telemetry(named: list[tuple[str, object]], per_message: int, form: str = "rows") -> list[tuple[str, object]]:
    """Group a site's GPU samples into messages of ``per_message`` samples, each sent where its
    last sample was (other feeds' events keep their places): ``GpuTelemetryBatch`` (form
    "rows") or ``GpuTelemetryColumns`` (form "columns")."""
    from schemas.feeds import GPU_SAMPLE_FIELDS, GpuColumns, GpuTelemetryBatch, GpuTelemetryColumns

    def message(samples: list):
        site = samples[0].site_id
        if form == "rows":
            return GpuTelemetryBatch.model_construct(site_id=site, samples=samples, schema_version=1)
        cols = GpuColumns.model_construct(**{n: [getattr(g, n) for g in samples] for n in GPU_SAMPLE_FIELDS})
        return GpuTelemetryColumns.model_construct(site_id=site, columns=cols, schema_version=1)

    out: list[tuple[str, object]] = []
    buf: list = []
    for name, rec in named:
        if name != "gpu_telemetry":
            out.append((name, rec))
            continue
        if buf and buf[0].site_id != rec.site_id:
            out.append(("gpu_telemetry", message(buf)))
            buf = []
        buf.append(rec)
        if len(buf) == per_message:
            out.append(("gpu_telemetry", message(buf)))
            buf = []
    if buf:
        out.append(("gpu_telemetry", message(buf)))
    return out


def scrape_telemetry(named: list[tuple[str, object]], every_s: float, days: float | None = None
                     ) -> list[tuple[str, object]]:
    """A site's GPU telemetry as an exporter sends it: every ``every_s`` seconds of event time,
    one ``GpuTelemetryColumns`` message with a sample of every job the site knows (its latest
    report, stamped with the scrape instant), a job that completed since the last scrape once
    more as ``completed``, then no longer. Other feeds' events keep their places; ``days``
    keeps only the first days after the first GPU sample. One site's events in event-time order."""
    from datetime import timedelta

    from schemas.feeds import GPU_SAMPLE_FIELDS, GpuColumns, GpuTelemetryColumns

    step = timedelta(seconds=every_s)
    first = next(r.event_time() for n, r in named if n == "gpu_telemetry")
    end = None if days is None else first + timedelta(days=days)
    latest: dict[str, object] = {}
    out: list[tuple[str, object]] = []
    scrape = first

    def emit(t) -> None:
        cols: dict[str, list] = {n: [] for n in GPU_SAMPLE_FIELDS if n != "observed_at"}
        site = None
        for job_id, g in list(latest.items()):
            site = g.site_id
            for n, col in cols.items():
                col.append(getattr(g, n))
            if g.state == "completed":
                del latest[job_id]
        if site is not None:
            c = GpuColumns.model_construct(**cols, observed_at=[t] * len(cols["job_id"]))
            out.append(("gpu_telemetry", GpuTelemetryColumns.model_construct(site_id=site, columns=c,
                                                                              schema_version=1)))

    for name, rec in named:
        t = rec.event_time()
        if end is not None and t > end:
            break
        while scrape < t:
            emit(scrape)
            scrape += step
        if name == "gpu_telemetry":
            latest[rec.job_id] = rec
        else:
            out.append((name, rec))
    return out


def topics_for(suffix: str) -> dict[str, str]:
    from schemas.topics import ACTIONS, DEAD_LETTERS, INPUT_FEEDS

    t = {f.name: f.topic + suffix for f in INPUT_FEEDS}
    t["actions"] = ACTIONS.topic + suffix
    t["dead_letters"] = DEAD_LETTERS.topic + suffix
    return t


def create_topics(bootstrap: str, topics, partitions: int = 4) -> None:
    from wattmix.broker import ensure_topics

    asyncio.run(ensure_topics(bootstrap, list(topics), partitions))


def publish(bootstrap: str, named, topics: dict[str, str]) -> dict:
    from wattmix.demo import publish_events

    return asyncio.run(publish_events(bootstrap, named, topics))


class WorkerProc:
    """A ``bench_stream_worker.py`` subprocess and its status file."""

    def __init__(self, bootstrap: str, db: Path, group: str, suffix: str, sites: list[str], status: Path,
                 log: Path, extra: list[str] | None = None, profile: str | None = None) -> None:
        self.status = status
        status.unlink(missing_ok=True)
        for p in (db, Path(str(db) + ".wal")):
            p.unlink(missing_ok=True)
        cmd = [sys.executable, str(ROOT / "bench" / "bench_stream_worker.py"), "--kafka", bootstrap, "--db", str(db),
               "--group", group, "--suffix", suffix, "--sites", ",".join(sites), "--status", str(status),
               *(extra or [])]
        if profile:
            cmd = [str(Path(sys.executable).parent / "py-spy"), "record", "-o", profile, "-f", "speedscope",
                   "-r", "200", "--nonblocking", "--", *cmd]
        self.proc = subprocess.Popen(cmd, stdout=open(log, "wb"), stderr=subprocess.STDOUT, cwd=str(ROOT),
                                     env=dict(os.environ, PYTHONUNBUFFERED="1"), start_new_session=True)

    def read(self) -> dict:
        try:
            return orjson.loads(self.status.read_bytes())
        except (FileNotFoundError, orjson.JSONDecodeError):
            return {}

    def stop(self, timeout: float = 30.0) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT if self.is_profiled else signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        return self.proc.returncode

    @property
    def is_profiled(self) -> bool:
        return "py-spy" in str(self.proc.args[0])


class CpuMeter:
    """CPU seconds used by named processes, and the machine's busy time, between two marks."""

    def __init__(self, pids: dict[str, int | None]) -> None:
        self.pids = {name: pid for name, pid in pids.items() if pid}
        self.hz = os.sysconf("SC_CLK_TCK")
        self.start = self._read()

    def seconds(self, name: str) -> float:
        """CPU seconds used so far by the process ``name`` (0 once it is gone)."""
        try:
            with open(f"/proc/{self.pids[name]}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / self.hz  # utime + stime
        except OSError:
            return 0.0

    def _read(self) -> tuple[float, dict[str, float], float]:
        used = {name: self.seconds(name) for name in self.pids}
        with open("/proc/stat") as f:
            cpu = [int(x) for x in f.readline().split()[1:]]
        busy = (sum(cpu) - cpu[3] - cpu[4]) / self.hz  # everything but idle and iowait
        return time.time(), used, busy

    def delta(self) -> tuple[float, dict[str, float], float]:
        """Since the start mark: wall seconds, CPU seconds per process, the machine's busy seconds."""
        t1, used1, busy1 = self._read()
        t0, used0, busy0 = self.start
        return max(t1 - t0, 1e-9), {name: used1[name] - used0[name] for name in self.pids}, busy1 - busy0

    def line(self) -> str:
        wall, used, busy = self.delta()
        parts = [f"{name} {cpu / wall:.2f}" for name, cpu in used.items()]
        return (f"cpu over {wall:.0f} s, in cores: {', '.join(parts)}; machine busy "
                f"{busy / wall:.2f} of {os.cpu_count()} (others' jobs included)")


def wait_events(workers: list[WorkerProc], total: int, timeout: float, broker_pid: int | None = None) -> dict:
    """Until the workers together made ``total`` events durable; returns the aggregate:
    events, seconds from the first batch any worker received to the last durable one, and
    ``cpu``: CPU seconds of the workers and the broker from the first durable batch seen (polled
    every 0.1 s) to the end, with the events made durable in that span."""
    deadline = time.monotonic() + timeout
    st: list[dict] = []
    meter, events0 = None, 0
    while time.monotonic() < deadline:
        st = [w.read() for w in workers]
        done = sum(s.get("events", 0) for s in st)
        if meter is None and done:  # the pid each worker reports (not py-spy's when profiled)
            meter, events0 = CpuMeter({**{f"worker{i}": s.get("pid") for i, s in enumerate(st)},
                                       "broker": broker_pid}), done
        if done >= total:
            break
        for w in workers:
            if w.proc.poll() is not None:
                raise RuntimeError(f"worker exited with {w.proc.returncode}")
        time.sleep(0.1)
    events = sum(s.get("events", 0) for s in st)
    firsts = [s["first"] for s in st if s.get("first")]
    lasts = [s["last"] for s in st if s.get("last")]
    secs = (max(lasts) - min(firsts)) if firsts and lasts else float("nan")
    cpu = None
    if meter is not None:
        wall, used, busy = meter.delta()
        cpu = {"span_s": wall, "events": events - events0, "machine_busy_s": busy,
               "workers_s": sum(s for n, s in used.items() if n.startswith("worker")),
               "broker_s": used.get("broker", 0.0)}
    return {"events": events, "seconds": secs, "rate": events / secs if secs else float("nan"),
            "per_worker": st, "complete": events >= total, "cpu": cpu}


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def fmt_rate(x: float) -> str:
    return f"{x:>12,.0f}"


def dumps(obj) -> str:
    return orjson.dumps(obj, default=str).decode()
