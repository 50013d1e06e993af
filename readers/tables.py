"""wattmix's own file layouts: CSV, Parquet or JSONL whose columns are the fields of a
record of schemas/feeds.py (``GridPrice``, ``Hashprice``, ``DemandResponseEvent``,
``GpuTelemetry``), plus a few column aliases of common exports.

Rows are validated by the record's pydantic model (lax mode: CSV cells are text). Timestamps
need an explicit offset, except in a column named ``*_utc`` (a naive value there is UTC).
A ``site_id`` column, when present, selects the rows of the requested site; when absent,
every row belongs to it.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from readers.errors import BadRows, one_line, report

UTC = timezone.utc


def file_format(path: str | Path) -> str:
    name = str(path).lower()
    for ext, fmt in ((".parquet", "parquet"), (".pq", "parquet"), (".jsonl", "jsonl"), (".ndjson", "jsonl"),
                     (".json", "jsonl"), (".csv", "csv"), (".csv.gz", "csv")):
        if name.endswith(ext):
            return fmt
    return "csv"


def iter_rows(path: str | Path, bad: BadRows | None = None) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, row dict) of a CSV, JSONL or Parquet file; empty CSV cells are dropped.

    Line numbers are 1-based file lines for CSV (header = 1) and JSONL, row index + 1 for Parquet.
    """
    path = Path(path)
    fmt = file_format(path)
    if fmt == "parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(path)
        cols = {name: table.column(name).to_pylist() for name in table.column_names}
        names = list(cols)
        for i in range(table.num_rows):
            yield i + 1, {n: cols[n][i] for n in names if cols[n][i] is not None}
    elif fmt == "jsonl":
        with open(path, encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, start=1):
                s = line.strip()
                if not s:
                    continue
                try:
                    obj = json.loads(s)
                except json.JSONDecodeError as exc:
                    report(bad, path, lineno, f"not JSON: {exc.msg}")
                    continue
                if not isinstance(obj, dict):
                    report(bad, path, lineno, "a JSON line must be an object")
                    continue
                yield lineno, obj
    else:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.reader(fh)
            header = [c.strip() for c in next(reader, [])]
            for lineno, row in enumerate(reader, start=2):
                if not row or all(not c.strip() for c in row):
                    continue
                if len(row) > len(header):
                    report(bad, path, lineno, f"{len(row)} cells for {len(header)} columns")
                    continue
                yield lineno, {h: v.strip() for h, v in zip(header, row) if v.strip() != ""}


def header_of(path: str | Path) -> list[str]:
    fmt = file_format(path)
    if fmt == "parquet":
        import pyarrow.parquet as pq

        return list(pq.read_schema(path).names)
    if fmt == "jsonl":
        for _, row in iter_rows(path, BadRows()):
            return list(row)
        return []
    with open(path, newline="", encoding="utf-8-sig") as fh:
        return [c.strip() for c in next(csv.reader(fh), [])]


def to_utc(value: Any, column: str) -> datetime:
    """A timestamp cell as an aware UTC datetime; naive only allowed in ``*_utc`` columns."""
    if isinstance(value, datetime):
        dt = value
    elif isinstance(value, str):
        s = value.strip()
        if s.endswith("Z"):
            s = s[:-1] + "+00:00"
        try:
            dt = datetime.fromisoformat(s)
        except ValueError as exc:
            raise ValueError(f"{column}: {value!r} is not an ISO-8601 timestamp") from exc
    else:
        raise ValueError(f"{column}: {value!r} is not a timestamp")
    if dt.tzinfo is None:
        if column.endswith("_utc"):
            return dt.replace(tzinfo=UTC)
        raise ValueError(f"{column}: {value!r} has no UTC offset (ambiguous at DST changes)")
    return dt.astimezone(UTC)


def read_models(
    path: str | Path,
    model: type[BaseModel],
    site_id: str,
    bad: BadRows | None = None,
) -> Iterator[Any]:
    """Records of ``model`` for ``site_id`` from a wattmix-layout CSV/JSONL/Parquet file."""
    path = Path(path)
    fields = model.model_fields
    for lineno, row in iter_rows(path, bad):
        sid = row.get("site_id")
        if sid is not None and sid != site_id:
            continue
        data = {k: v for k, v in row.items() if k in fields}
        data["site_id"] = site_id
        unknown = [k for k in row if k not in fields]
        if unknown:
            report(bad, path, lineno, f"unknown column(s) {unknown} for {model.__name__}")
            continue
        try:
            yield model.model_validate(data, strict=False)
        except ValidationError as exc:
            report(bad, path, lineno, one_line(exc))
