"""``wattmix export --db FILE --out DIR``: the archive as hive-partitioned Parquet, so it can
outgrow one DuckDB file (and be read by Spark, Polars, pandas, DuckDB itself...).

Layout: ``DIR/<table>/date=YYYY-MM-DD/data_0.parquet``, one directory per table and UTC day::

    grid_prices, dr_events, hashprice, gpu_telemetry   by event_time (the fact's event time)
    actions                                            by interval_start
    dead_letters                                       by received_at
    decisions (backtest), if present                   by interval_start

Written with DuckDB's ``COPY (SELECT *, <day> AS date FROM t) TO 'DIR/t' (FORMAT PARQUET,
PARTITION_BY (date))`` on a READ-ONLY connection (the worker may keep writing). Read back::

    SELECT * FROM read_parquet('DIR/actions/*/*.parquet', hive_partitioning = true)
    WHERE date >= '2024-06-01'          -- partition pruning: only those directories are read

An existing ``DIR/<table>`` is refused unless ``--overwrite`` (which replaces it).
"""

from __future__ import annotations

import time
from pathlib import Path

import duckdb

from sinks.query import open_read_only
from wattmix.errors import SinkError

PARTITION_COLUMN = {
    "grid_prices": "event_time", "dr_events": "event_time", "hashprice": "event_time",
    "gpu_telemetry": "event_time", "actions": "interval_start", "dead_letters": "received_at",
    "decisions": "interval_start",
}


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def export(db: str | Path, out: str | Path, tables: list[str] | None = None, overwrite: bool = False,
           compression: str = "zstd") -> dict[str, tuple[int, int]]:
    """Export; return ``{table: (rows, partitions)}`` for every table written."""
    p = Path(db)
    out = Path(out)
    con = open_read_only(p)
    result: dict[str, tuple[int, int]] = {}
    try:
        con.execute("SET TimeZone = 'UTC'")
        present = {r[0] for r in con.execute(
            "SELECT table_name FROM duckdb_tables() WHERE schema_name = 'main'").fetchall()}
        wanted = tables or [t for t in PARTITION_COLUMN if t in present]
        unknown = [t for t in wanted if t not in PARTITION_COLUMN or t not in present]
        if unknown:
            raise SinkError(f"cannot export {unknown}: not archive tables of {p} "
                            f"(exportable: {', '.join(t for t in PARTITION_COLUMN if t in present)})")
        out.mkdir(parents=True, exist_ok=True)
        for t in wanted:
            target = out / t
            if target.exists() and any(target.iterdir()) and not overwrite:
                raise SinkError(f"{target} exists: use --overwrite to replace it")
            (n,) = con.execute(f"SELECT count(*) FROM {_q(t)}").fetchone()
            if n == 0:
                continue
            col = PARTITION_COLUMN[t]
            mode = ", OVERWRITE" if overwrite else ""
            path = str(target).replace("'", "''")
            con.execute(
                f"COPY (SELECT *, CAST(timezone('UTC', {_q(col)}) AS DATE) AS date FROM {_q(t)} ORDER BY {_q(col)}) "
                f"TO '{path}' (FORMAT PARQUET, PARTITION_BY (date), COMPRESSION {compression}{mode})")
            parts = sum(1 for d in target.iterdir() if d.is_dir() and d.name.startswith("date="))
            result[t] = (int(n), parts)
    except duckdb.Error as exc:
        raise SinkError(f"export of {p} failed: {exc}") from exc
    finally:
        con.close()
    return result


def run_export_cli(args) -> int:
    tables = [t.strip() for t in args.tables.split(",") if t.strip()] if args.tables else None
    t0 = time.perf_counter()
    res = export(args.db, args.out, tables, overwrite=args.overwrite)
    for t, (rows, parts) in res.items():
        print(f"  {t:<16} {rows:>12,} rows  {parts:>5} day partitions  -> {Path(args.out) / t}")
    print(f"exported {sum(r for r, _ in res.values()):,} rows in {time.perf_counter() - t0:.1f} s; read back with "
          f"read_parquet('{Path(args.out)}/<table>/*/*.parquet', hive_partitioning = true)")
    return 0
