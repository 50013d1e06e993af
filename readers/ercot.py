"""ERCOT's native market reports: RTM 15-min and DAM hourly settlement point prices.

RTM SPP (NP6-785-ER): ``Delivery Date, Delivery Hour, Delivery Interval, Repeated Hour Flag,
Settlement Point Name, Settlement Point Type, Settlement Point Price``; hour 1 interval 1 is
[00:00, 00:15) CPT. A real-time price is known when its interval ends: ``published_at`` =
interval end.

DAM SPP (NP4-180-ER): ``Delivery Date, Hour Ending, Repeated Hour Flag, Settlement Point,
Settlement Point Price``; ``Hour Ending`` is ``01:00`` .. ``24:00``. Published 13:30 CPT the
day before the operating day (:data:`readers.timeutil.DA_PUBLISH_LOCAL`).

Prices of $1,000 and more carry a thousands separator (``"1,899.35"``): the csv module
handles the quotes, :func:`parse_price` the comma.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from datetime import date, datetime, timedelta
from pathlib import Path

from pydantic import ValidationError

from readers.errors import BadRows, one_line, report
from readers.timeutil import cpt_to_utc, da_published_at
from schemas.feeds import GridPrice

RTM_COLUMNS = ("Delivery Date", "Delivery Hour", "Delivery Interval", "Repeated Hour Flag",
               "Settlement Point Name", "Settlement Point Price")
DAM_COLUMNS = ("Delivery Date", "Hour Ending", "Repeated Hour Flag", "Settlement Point", "Settlement Point Price")


def parse_price(text: str) -> float:
    s = text.strip().replace(",", "")
    if not s:
        raise ValueError("empty price")
    v = float(s)
    if v != v or v in (float("inf"), float("-inf")):
        raise ValueError(f"price {text!r} is not a number")
    return v


def _parse_date(text: str) -> date:
    s = text.strip()
    try:
        return datetime.strptime(s, "%m/%d/%Y").date()
    except ValueError:
        return date.fromisoformat(s)


def _flag(text: str) -> bool:
    s = text.strip().upper()
    if s in ("Y", "N", ""):
        return s == "Y"
    raise ValueError(f"Repeated Hour Flag {text!r} is neither Y nor N")


def sniff_layout(path: str | Path) -> str | None:
    """'ercot_rtm', 'ercot_dam' or None from a CSV header."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            header = next(csv.reader(fh), [])
    except (UnicodeDecodeError, OSError):
        return None
    cols = {c.strip() for c in header}
    if set(RTM_COLUMNS) <= cols:
        return "ercot_rtm"
    if set(DAM_COLUMNS) <= cols:
        return "ercot_dam"
    return None


def _rows(path: Path, required: tuple[str, ...]) -> Iterator[tuple[int, dict[str, str]]]:
    with open(path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.reader(fh)
        header = [c.strip() for c in next(reader, [])]
        missing = [c for c in required if c not in header]
        if missing:
            from readers.errors import BadRow, BadRowError

            raise BadRowError(BadRow(str(path), 1, f"not this ERCOT layout: missing columns {missing}"))
        idx = {c: header.index(c) for c in required}
        for lineno, row in enumerate(reader, start=2):
            if not row or all(not c.strip() for c in row):
                continue
            yield lineno, {c: (row[i] if i < len(row) else "") for c, i in idx.items()}


def read_ercot_rtm(
    path: str | Path,
    site_id: str,
    settlement_point: str = "HB_HUBAVG",
    bad: BadRows | None = None,
    settlement_point_type: str | None = None,
) -> Iterator[GridPrice]:
    """RT prices of one settlement point from a native RTM SPP CSV (15-min, CPT, hour ending).

    A load zone appears under two ``Settlement Point Type`` values (``LZ`` and the
    energy-weighted ``LZEW``): ``settlement_point_type`` picks one; by default the first type
    seen for the point is kept (one price per interval).
    """
    path = Path(path)
    sp = settlement_point.strip().upper()
    want_type = settlement_point_type.strip().upper() if settlement_point_type else None
    for lineno, r in _rows(path, RTM_COLUMNS + ("Settlement Point Type",)):
        if r["Settlement Point Name"].strip().upper() != sp:
            continue
        typ = r["Settlement Point Type"].strip().upper()
        if want_type is None:
            want_type = typ
        if typ != want_type:
            continue
        try:
            d = _parse_date(r["Delivery Date"])
            hour = int(r["Delivery Hour"])
            interval = int(r["Delivery Interval"])
            if not 1 <= hour <= 24 or not 1 <= interval <= 4:
                raise ValueError(f"hour {hour} / interval {interval} out of range (1..24 / 1..4)")
            start = cpt_to_utc(d, (hour - 1) * 60 + (interval - 1) * 15, _flag(r["Repeated Hour Flag"]))
            price = parse_price(r["Settlement Point Price"])
            yield GridPrice(
                site_id=site_id, settlement_point=sp, market="RT", interval_start=start,
                interval_minutes=15, price_usd_mwh=price, published_at=start + timedelta(minutes=15),
            )
        except ValidationError as exc:
            report(bad, path, lineno, one_line(exc))
        except ValueError as exc:
            report(bad, path, lineno, str(exc))


def read_ercot_dam(
    path: str | Path,
    site_id: str,
    settlement_point: str = "HB_HUBAVG",
    bad: BadRows | None = None,
) -> Iterator[GridPrice]:
    """DA prices of one settlement point from a native DAM SPP CSV (hourly, CPT, hour ending)."""
    path = Path(path)
    sp = settlement_point.strip().upper()
    for lineno, r in _rows(path, DAM_COLUMNS):
        if r["Settlement Point"].strip().upper() != sp:
            continue
        try:
            d = _parse_date(r["Delivery Date"])
            he = r["Hour Ending"].strip()
            hh, _, mm = he.partition(":")
            hour = int(hh)
            if not 1 <= hour <= 24 or (mm and int(mm) != 0):
                raise ValueError(f"Hour Ending {he!r} is not 01:00..24:00")
            start = cpt_to_utc(d, (hour - 1) * 60, _flag(r["Repeated Hour Flag"]))
            price = parse_price(r["Settlement Point Price"])
            yield GridPrice(
                site_id=site_id, settlement_point=sp, market="DA", interval_start=start,
                interval_minutes=60, price_usd_mwh=price, published_at=da_published_at(d),
            )
        except ValidationError as exc:
            report(bad, path, lineno, one_line(exc))
        except ValueError as exc:
            report(bad, path, lineno, str(exc))
