"""Hashprice, demand-response events and GPU telemetry files.

Hashprice, daily CSV: a ``date`` column (UTC day) and a hashprice column in USD per PH/s per
day: ``usd_per_ph_day``, else the first column named ``hashprice_usd_per_ph_day*`` (e.g.
``hashprice_usd_per_ph_day_subsidy_only``), else the first containing ``hashprice``.
Optional ``btc_usd*`` and ``difficulty`` columns are carried along. The value of day D is
computed from D's daily close, so it is stamped ``as_of`` = D 00:00 UTC and ``published_at``
= D+1 00:00 UTC: a decision on day D uses the hashprice of D-1 (never the one it cannot know
yet). A file with ``as_of``/``published_at`` columns is read in wattmix's layout instead.

DR events and GPU telemetry: wattmix's layout (the fields of ``DemandResponseEvent`` /
``GpuTelemetry``) in JSONL, CSV or Parquet.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date
from pathlib import Path

from pydantic import ValidationError

from readers.errors import BadRows, one_line, report
from readers.tables import header_of, iter_rows, read_models
from readers.timeutil import hashprice_published_at
from schemas.feeds import DemandResponseEvent, GpuTelemetry, Hashprice
from datetime import datetime, time, timezone


def hashprice_column(columns: list[str]) -> str | None:
    if "usd_per_ph_day" in columns:
        return "usd_per_ph_day"
    for c in columns:
        if c.lower().startswith("hashprice_usd_per_ph_day"):
            return c
    for c in columns:
        if "hashprice" in c.lower():
            return c
    return None


def read_hashprice(path: str | Path, site_id: str, bad: BadRows | None = None) -> Iterator[Hashprice]:
    path = Path(path)
    cols = header_of(path)
    if "as_of" in cols:
        yield from read_models(path, Hashprice, site_id, bad)
        return
    hcol = hashprice_column(cols)
    if "date" not in cols or hcol is None:
        report(bad, path, 1, f"a daily hashprice file needs 'date' and a hashprice column, got {cols}")
        return
    btc_col = next((c for c in cols if c.lower().startswith("btc_usd")), None)
    diff_col = "difficulty" if "difficulty" in cols else None
    for lineno, row in iter_rows(path, bad):
        try:
            dv = row.get("date")
            if dv is None:
                raise ValueError("empty date")
            day = dv.date() if isinstance(dv, datetime) else dv if isinstance(dv, date) else date.fromisoformat(str(dv).strip()[:10])
            if hcol not in row:
                raise ValueError(f"empty {hcol}")
            value = float(str(row[hcol]).replace(",", ""))
            btc = float(row[btc_col]) if btc_col and btc_col in row else None
            diff = float(row[diff_col]) if diff_col and diff_col in row else None
        except (ValueError, TypeError) as exc:
            report(bad, path, lineno, str(exc))
            continue
        try:
            yield Hashprice(
                site_id=site_id, usd_per_ph_day=value, btc_usd=btc, difficulty=diff,
                as_of=datetime.combine(day, time(), tzinfo=timezone.utc),
                published_at=hashprice_published_at(day),
            )
        except ValidationError as exc:
            report(bad, path, lineno, one_line(exc))


def read_dr_events(path: str | Path, site_id: str, bad: BadRows | None = None) -> Iterator[DemandResponseEvent]:
    yield from read_models(path, DemandResponseEvent, site_id, bad)


def read_gpu_telemetry(path: str | Path, site_id: str, bad: BadRows | None = None) -> Iterator[GpuTelemetry]:
    yield from read_models(path, GpuTelemetry, site_id, bad)
