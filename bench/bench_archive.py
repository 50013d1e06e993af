"""Archive ingest benchmark (a script, not a test): gpu_telemetry rows/s into DuckDB.

    /tmp/wmvenv/bin/python bench/bench_archive.py [--rows 1000000] [--batch 50000] [--no-pk]

Phases, each into a fresh DuckDB file with the archive's own DDL, one transaction per batch:

1. build      ArchiveBatch.add_input() for every record + to_arrow() (the Python side)
2. plain      INSERT INTO gpu_telemetry SELECT ... FROM arrow (no de-duplication at all)
3. pk         the same table with PRIMARY KEY (site_id, job_id, event_time) + INSERT OR IGNORE
4. archive    Archive.write_batch(): in-batch de-dup + anti-join on the batch's event-time range
(2 and 4 alternate ``--repeat`` times and print the median: this 2-core box is shared; every
DuckDB figure includes the commits, the automatic checkpoints and a final CHECKPOINT.)
5. re-insert  write_batch() of batches already archived (a redelivery / replay: inserts 0)
6. straggler  a batch of new rows plus 1% re-sent rows from the first hour (a wide time range)

Data: one site, 2,000 GPU jobs sampled every 15 s (in event-time order, like a live feed).
Records are created outside the timed regions.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import duckdb  # noqa: E402
import pyarrow as pa  # noqa: E402

from schemas.feeds import GpuTelemetry  # noqa: E402
from sinks.archive import FEED_SPECS, WRITER_THREADS, Archive, ArchiveBatch, ddl  # noqa: E402

T0 = datetime(2025, 1, 6, tzinfo=timezone.utc)
JOBS = 2_000
SAMPLE_S = 15
CLASSES = ("inference", "training", "batch")
TOPIC = "wattmix.gpu-telemetry"


def records(start: int, n: int) -> list[GpuTelemetry]:
    """Rows start..start+n of the synthetic feed (validated pydantic records)."""
    out = []
    for i in range(start, start + n):
        job = i % JOBS
        out.append(GpuTelemetry(
            site_id="site-a", job_id=f"job-{job:05d}", gpu_class=CLASSES[job % 3], gpus=8 * (1 + job % 4),
            power_kw=10.2 * (1 + job % 4), utilization=0.5 + (i % 50) / 100, state="running",
            observed_at=T0 + timedelta(seconds=SAMPLE_S * (i // JOBS)),
        ))
    return out


def build(recs: list[GpuTelemetry], first_offset: int) -> ArchiveBatch:
    b = ArchiveBatch()
    add = b.add_input
    for k, r in enumerate(recs):
        add("gpu_telemetry", r, topic=TOPIC, partition=0, offset=first_offset + k)
    b.to_arrow()
    return b


def fresh(path: Path) -> None:
    for p in (path, Path(str(path) + ".wal")):
        if p.exists():
            p.unlink()


def raw_connection(path: Path, pk: bool) -> duckdb.DuckDBPyConnection:
    fresh(path)
    con = duckdb.connect(str(path))
    con.execute(f"SET threads = {WRITER_THREADS}")  # same setting as the Archive: compare like with like
    con.execute("SET TimeZone = 'UTC'")
    for stmt in ddl():
        if pk and "CREATE TABLE IF NOT EXISTS gpu_telemetry" in stmt:
            stmt = stmt.rstrip().rstrip(")") + ",\n    PRIMARY KEY (site_id, job_id, event_time)\n)"
        con.execute(stmt)
    return con


def timed_inserts(con: duckdb.DuckDBPyConnection, tables: list[pa.Table], verb: str) -> tuple[float, int]:
    cols = ", ".join(f'"{c.name}"' for c in FEED_SPECS["gpu_telemetry"].columns)
    n = 0
    t = time.perf_counter()
    for tbl in tables:
        con.register("stage", tbl)
        con.begin()
        n += con.execute(f"{verb} INTO gpu_telemetry ({cols}) SELECT {cols} FROM stage").fetchall()[0][0]
        con.commit()
        con.unregister("stage")
    con.execute("CHECKPOINT")
    return time.perf_counter() - t, n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--batch", type=int, default=50_000)
    ap.add_argument("--no-pk", action="store_true", help="skip the (slow) PRIMARY KEY phase")
    ap.add_argument("--repeat", type=int, default=3, help="runs of the plain and archive phases")
    ap.add_argument("--dir", default=None, help="where to put the DuckDB files (default: a temp dir)")
    args = ap.parse_args()
    rows, bs = args.rows, args.batch
    nb = rows // bs
    workdir = Path(args.dir or tempfile.mkdtemp(prefix="wm-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)

    print(f"machine: nproc={os.cpu_count()} {platform.machine()} load1={os.getloadavg()[0]:.2f} "
          f"python {platform.python_version()} duckdb {duckdb.__version__} pyarrow {pa.__version__}")
    print(f"data: {nb} batches x {bs:,} gpu_telemetry rows = {nb * bs:,} rows; files in {workdir}")

    # 1. build (records made outside the timed region)
    batches: list[ArchiveBatch] = []
    t_build = 0.0
    for k in range(nb):
        recs = records(k * bs, bs)
        t = time.perf_counter()
        batches.append(build(recs, k * bs))
        t_build += time.perf_counter() - t
    n = nb * bs
    tables = [b.to_arrow()["gpu_telemetry"] for b in batches]
    print(f"build   ArchiveBatch.add_input + to_arrow {n / t_build:>12,.0f} rows/s  ({t_build:.2f} s, Python side)")

    def spread(xs: list[float]) -> str:
        xs = sorted(xs)
        return f"{statistics.median(xs):>12,.0f} rows/s  (median of {len(xs)}; best {xs[-1]:,.0f}, worst {xs[0]:,.0f})"

    # 2. plain insert, 4. the archive: alternated, args.repeat times each (the box is shared)
    plain: list[float] = []
    idem: list[float] = []
    worst = 0.0
    path = workdir / "archive.duckdb"
    for rep in range(args.repeat):
        con = raw_connection(workdir / "plain.duckdb", pk=False)
        el, ins = timed_inserts(con, tables, "INSERT")
        con.close()
        assert ins == n
        plain.append(n / el)

        fresh(path)
        arch = Archive(path)
        ins = 0
        t = time.perf_counter()
        for b in batches:
            s = arch.write_batch(b)
            ins += s.rows_inserted
            worst = max(worst, s.seconds)
        arch.checkpoint()
        el = time.perf_counter() - t
        assert ins == n
        idem.append(n / el)
        if rep < args.repeat - 1:
            arch.close()
    size = path.stat().st_size / 1e6
    print(f"plain   INSERT (no dedup), 1 txn/batch    {spread(plain)}")
    print(f"archive Archive.write_batch (idempotent)  {spread(idem)}; file {size:.0f} MB, "
          f"slowest batch {worst * 1000:.0f} ms")
    print(f"        build + write_batch end to end    {n / (n / statistics.median(idem) + t_build):>12,.0f} rows/s")

    # 3. primary key + INSERT OR IGNORE (once: it is slow)
    if not args.no_pk:
        con = raw_connection(workdir / "pk.duckdb", pk=True)
        el, ins = timed_inserts(con, tables, "INSERT OR IGNORE")
        cols = ", ".join(f'"{c.name}"' for c in FEED_SPECS["gpu_telemetry"].columns)
        t = time.perf_counter()
        re_ins = 0
        for tbl in tables[-4:]:
            con.register("stage", tbl)
            con.begin()
            re_ins += con.execute(f"INSERT OR IGNORE INTO gpu_telemetry ({cols}) SELECT {cols} FROM stage"
                                  ).fetchall()[0][0]
            con.commit()
            con.unregister("stage")
        el_re = time.perf_counter() - t
        con.close()
        size = (workdir / "pk.duckdb").stat().st_size / 1e6
        print(f"pk      PRIMARY KEY + INSERT OR IGNORE    {n / el:>12,.0f} rows/s  (1 run; file {size:.0f} MB; "
              f"re-insert of 4 batches {4 * bs / el_re:,.0f} rows/s, {re_ins} new)")

    # 5. re-insert of already archived batches (redelivery after a crash, or a replay)
    for label, which in (("last", batches[-4:]), ("first", batches[:4])):
        t = time.perf_counter()
        re_ins = sum(arch.write_batch(b).rows_inserted for b in which)
        el = time.perf_counter() - t
        print(f"re-ins  {label} 4 batches again            {len(which) * bs / el:>12,.0f} rows/s  "
              f"({el:.2f} s, {re_ins} new rows)")

    # 6. straggler: new rows + 1% re-sent rows from the first hour (batch spans the whole archive)
    recs = records(nb * bs, bs) + records(0, bs // 100)
    b = build(recs, nb * bs)
    t = time.perf_counter()
    s = arch.write_batch(b)
    el = time.perf_counter() - t
    print(f"late    new batch + 1% re-sent from hour 0{len(recs) / el:>12,.0f} rows/s  "
          f"({el * 1000:.0f} ms, {s.rows_inserted:,} new of {len(recs):,})")
    counts = arch.counts()
    arch.close()
    assert counts["gpu_telemetry"] == n + bs, counts
    print(f"check   gpu_telemetry rows = {counts['gpu_telemetry']:,} (expected {n + bs:,}); "
          f"load1 now {os.getloadavg()[0]:.2f}")
    if args.dir is None:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
