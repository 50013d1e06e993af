"""Resident memory of a process writing to a DuckDB file, with and without a memory limit.

    python bench/bench_archive_memory.py [--rows 6000000] [--limits none,64MB,256MB]

Each limit runs in its own subprocess: insert-only Arrow batches of 25,000 GPU-telemetry-like
rows (site, job, timestamp, power, utilization, GPUs) into a fresh file, VmRSS printed every
1M rows. DuckDB keeps the blocks it wrote in its buffer pool up to its memory limit (default:
80% of RAM), so without a limit a long-running writer grows with its archive; this is why the
worker sets ``WorkerSettings.archive_memory_mb``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_stream_lib import rss_kb  # noqa: E402

BATCH = 25_000


def child(limit: str, rows: int) -> None:
    import duckdb
    import numpy as np
    import pyarrow as pa

    with tempfile.TemporaryDirectory() as d:
        con = duckdb.connect(d + "/a.duckdb")
        con.execute("SET threads = 1")
        if limit != "none":
            con.execute(f"SET memory_limit = '{limit}'")
        con.execute("CREATE TABLE t (site_id VARCHAR, job_id VARCHAR, ts TIMESTAMPTZ, power DOUBLE, "
                    "util DOUBLE, gpus INTEGER)")
        jobs = pa.array([f"job-{j % 1000:04d}-{j // 1000}" for j in range(BATCH)])
        t0 = 1_700_000_000_000_000
        rng = np.random.default_rng(7)
        points = []
        for i in range(rows // BATCH):
            tab = pa.table({"site_id": pa.array(["sample"] * BATCH), "job_id": jobs,
                            "ts": pa.array(np.full(BATCH, t0 + i * 1_000_000, dtype=np.int64), pa.timestamp("us", tz="UTC")),
                            "power": rng.random(BATCH), "util": rng.random(BATCH),
                            "gpus": np.full(BATCH, 8, dtype=np.int32)})
            con.register("stage", tab)
            con.execute("INSERT INTO t SELECT * FROM stage")
            con.unregister("stage")
            done = (i + 1) * BATCH
            if done % 1_000_000 == 0 or i == 0:
                points.append(f"{done / 1e6:g}M:{rss_kb(os.getpid()) // 1024}")
        con.close()
    first, last = int(points[0].split(":")[1]), int(points[-1].split(":")[1])
    print(f"memory_limit {limit:>6}: RSS MB after rows {' '.join(points)}  (growth {last - first:+d} MB)", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=6_000_000)
    ap.add_argument("--limits", default="none,64MB,256MB")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args.child, args.rows)
    for limit in args.limits.split(","):
        subprocess.run([sys.executable, __file__, "--child", limit, "--rows", str(args.rows)], check=True)


if __name__ == "__main__":
    main()
