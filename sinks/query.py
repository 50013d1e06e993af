"""``wattmix sql``: ad-hoc SQL on the archive through a READ-ONLY DuckDB connection.

The file path goes to ``duckdb.connect(path, read_only=True)``, never into SQL text; a
statement that tries to write fails with DuckDB's own read-only error.
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path
from typing import TextIO

import duckdb
import orjson

from wattmix.errors import SinkError


def open_read_only(db: str | Path) -> duckdb.DuckDBPyConnection:
    """The archive through a read-only connection, or a SinkError saying why not."""
    p = Path(db)
    if not p.exists():
        raise SinkError(f"no archive at {p} (run `wattmix demo` or a worker first)")
    try:
        return duckdb.connect(str(p), read_only=True)
    except duckdb.Error as exc:
        raise SinkError(f"cannot open {p} read-only: {exc}") from exc


def query(db: str | Path, sql: str) -> tuple[list[str], list[tuple]]:
    con = open_read_only(db)
    try:
        cur = con.execute(sql)
        cols = [d[0] for d in cur.description or []]
        return cols, cur.fetchall()
    except duckdb.Error as exc:
        raise SinkError(f"query failed: {exc}") from exc
    finally:
        con.close()


def _cell(v: object) -> str:
    if v is None:
        return "NULL"
    if isinstance(v, float):
        return f"{v:,.4g}" if abs(v) < 1e-3 and v else f"{v:,.2f}"
    return str(v)


def print_table(cols: list[str], rows: list[tuple], out: TextIO = sys.stdout, max_width: int = 60) -> None:
    cells = [[_cell(v)[:max_width] for v in r] for r in rows]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(cols)]
    out.write("  ".join(c.ljust(w) for c, w in zip(cols, widths)) + "\n")
    out.write("  ".join("-" * w for w in widths) + "\n")
    for r in cells:
        out.write("  ".join(v.rjust(w) if _numeric(v) else v.ljust(w) for v, w in zip(r, widths)) + "\n")
    out.write(f"({len(rows)} row{'s' if len(rows) != 1 else ''})\n")


def _numeric(s: str) -> bool:
    return s.replace(",", "").replace(".", "", 1).lstrip("-").isdigit()


def run_sql_cli(db: str, sql: str, fmt: str = "table", out: TextIO = sys.stdout) -> int:
    cols, rows = query(db, sql)
    if fmt == "csv":
        w = csv.writer(out)
        w.writerow(cols)
        w.writerows(rows)
    elif fmt == "json":
        out.write(orjson.dumps([dict(zip(cols, r)) for r in rows], default=str,
                               option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        print_table(cols, rows, out)
    return 0
