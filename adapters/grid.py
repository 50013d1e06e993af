"""ERCOT real-time and day-ahead prices from ERCOT's public API, publishing only new intervals.

No extra needed (aiohttp is a core dependency); ``gridstatus`` is not required.

ERCOT Public API (``https://api.ercot.com/api/public-reports``; a free account gives a
subscription key, sent as ``Ocp-Apim-Subscription-Key``, and an ID token, sent as
``Authorization: Bearer ...``):

* RT, 15-min settlement point prices (NP6-905-CD): ``GET /np6-905-cd/spp_node_zone_hub
  ?deliveryDateFrom=YYYY-MM-DD&deliveryDateTo=YYYY-MM-DD&settlementPoint=HB_HUBAVG&page=N``;
  fields ``deliveryDate, deliveryHour, deliveryInterval, settlementPoint, settlementPointType,
  settlementPointPrice, DSTFlag``;
* DA, hourly (NP4-190-CD): ``GET /np4-190-cd/dam_stlmnt_pnt_prices?...``; fields
  ``deliveryDate, hourEnding ("01:00".."24:00"), settlementPoint, settlementPointPrice, DSTFlag``.

A response is ``{"_meta": {"totalPages": n, "currentPage": k, ...}, "fields": [{"name": ...},
...], "data": [[...], ...]}``: rows are arrays in the order of ``fields`` (rows given as
objects are accepted too). Every page is read (bounded by ``max_pages``).

Times are Central Prevailing Time, hour ending; ``DSTFlag`` marks the repeated autumn hour.
The conversion is the file readers' (``readers.timeutil``): an RT price is stamped
``published_at`` = its interval end, a DA price 13:30 CPT the day before its operating day;
so a live poll and a replay of ERCOT's CSV files give identical records.

:class:`ErcotPricePoller` polls today's RT prices (and yesterday's, so late intervals around
midnight are not lost) and today's + tomorrow's DA prices, and publishes each interval once:
the identities already published are kept in memory and, with ``state_path``, in a small JSON
file, so a restart does not publish them again. A later different price for an interval
already published (an ERCOT correction) is logged, not republished: decisions already taken
on the first value stand.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

from schemas.feeds import GridPrice
from schemas.topics import PRICES

from adapters.common import AdapterError, Publisher, poll_forever, utcnow

log = logging.getLogger("wattmix.adapters.grid")

ERCOT_API = "https://api.ercot.com/api/public-reports"
RT_ENDPOINT = "/np6-905-cd/spp_node_zone_hub"
DA_ENDPOINT = "/np4-190-cd/dam_stlmnt_pnt_prices"


def _rows(body: Mapping) -> list[dict[str, Any]]:
    fields = [f["name"] if isinstance(f, Mapping) else str(f) for f in body.get("fields", [])]
    out = []
    for row in body.get("data", []) or []:
        if isinstance(row, Mapping):
            out.append(dict(row))
        else:
            if len(row) != len(fields):
                raise AdapterError(f"ERCOT API row has {len(row)} values for {len(fields)} fields")
            out.append(dict(zip(fields, row)))
    return out


def _flag(v: Any) -> bool:
    if isinstance(v, bool):
        return v
    return str(v).strip().upper() in ("Y", "TRUE", "1")


def rt_price_from_row(row: Mapping[str, Any], site_id: str) -> GridPrice:
    from readers.ercot import parse_price
    from readers.timeutil import cpt_to_utc

    d = date.fromisoformat(str(row["deliveryDate"])[:10])
    hour, interval = int(row["deliveryHour"]), int(row["deliveryInterval"])
    if not 1 <= hour <= 24 or not 1 <= interval <= 4:
        raise ValueError(f"hour {hour} / interval {interval} out of range")
    start = cpt_to_utc(d, (hour - 1) * 60 + (interval - 1) * 15, _flag(row.get("DSTFlag", False)))
    return GridPrice(site_id=site_id, settlement_point=str(row["settlementPoint"]).upper(), market="RT",
                     interval_start=start, interval_minutes=15,
                     price_usd_mwh=parse_price(str(row["settlementPointPrice"])),
                     published_at=start + timedelta(minutes=15))


def da_price_from_row(row: Mapping[str, Any], site_id: str) -> GridPrice:
    from readers.ercot import parse_price
    from readers.timeutil import cpt_to_utc, da_published_at

    d = date.fromisoformat(str(row["deliveryDate"])[:10])
    hh, _, mm = str(row["hourEnding"]).strip().partition(":")
    hour = int(hh)
    if not 1 <= hour <= 24 or (mm and int(mm) != 0):
        raise ValueError(f"hourEnding {row['hourEnding']!r} is not 01:00..24:00")
    start = cpt_to_utc(d, (hour - 1) * 60, _flag(row.get("DSTFlag", False)))
    return GridPrice(site_id=site_id, settlement_point=str(row["settlementPoint"]).upper(), market="DA",
                     interval_start=start, interval_minutes=60,
                     price_usd_mwh=parse_price(str(row["settlementPointPrice"])), published_at=da_published_at(d))


class ErcotApiClient:
    """Read RT and DA settlement point prices from the ERCOT Public API (or a compatible one)."""

    def __init__(self, base_url: str = ERCOT_API, *, subscription_key: str | None = None,
                 id_token: str | Callable[[], str] | None = None, timeout_s: float = 20.0,
                 page_size: int = 1000, max_pages: int = 50) -> None:
        self.base = base_url.rstrip("/")
        self.subscription_key = subscription_key or os.environ.get("ERCOT_SUBSCRIPTION_KEY")
        self.id_token = id_token
        self.timeout_s = timeout_s
        self.page_size = page_size
        self.max_pages = max_pages
        self.requests = 0

    def _headers(self) -> dict[str, str]:
        h = {"Accept": "application/json"}
        if self.subscription_key:
            h["Ocp-Apim-Subscription-Key"] = self.subscription_key
        tok = self.id_token() if callable(self.id_token) else self.id_token
        if tok:
            h["Authorization"] = f"Bearer {tok}"
        return h

    async def _get_all(self, endpoint: str, params: dict[str, str]) -> list[dict[str, Any]]:
        import aiohttp

        rows: list[dict[str, Any]] = []
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout_s)) as http:
            page = 1
            while page <= self.max_pages:
                q = dict(params, page=str(page), size=str(self.page_size))
                url = self.base + endpoint
                try:
                    async with http.get(url, params=q, headers=self._headers()) as resp:
                        self.requests += 1
                        if resp.status != 200:
                            raise AdapterError(f"GET {url}: HTTP {resp.status}: {(await resp.text())[:200]}")
                        body = await resp.json(content_type=None)
                except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                    raise AdapterError(f"GET {url}: {type(exc).__name__}: {exc}") from exc
                rows.extend(_rows(body))
                total = int((body.get("_meta") or {}).get("totalPages") or 1)
                if page >= total:
                    break
                page += 1
            else:
                log.warning("ERCOT API %s: stopped after %d pages", endpoint, self.max_pages)
        return rows

    async def rt_prices(self, day_from: date, day_to: date, settlement_point: str, site_id: str) -> list[GridPrice]:
        rows = await self._get_all(RT_ENDPOINT, {"deliveryDateFrom": day_from.isoformat(),
                                                 "deliveryDateTo": day_to.isoformat(),
                                                 "settlementPoint": settlement_point})
        return _convert(rows, rt_price_from_row, site_id, settlement_point)

    async def da_prices(self, day_from: date, day_to: date, settlement_point: str, site_id: str) -> list[GridPrice]:
        rows = await self._get_all(DA_ENDPOINT, {"deliveryDateFrom": day_from.isoformat(),
                                                 "deliveryDateTo": day_to.isoformat(),
                                                 "settlementPoint": settlement_point})
        return _convert(rows, da_price_from_row, site_id, settlement_point)


def _convert(rows, fn, site_id: str, settlement_point: str) -> list[GridPrice]:
    out = []
    sp = settlement_point.upper()
    for r in rows:
        if str(r.get("settlementPoint", "")).upper() != sp:
            continue
        try:
            out.append(fn(r, site_id))
        except (KeyError, ValueError) as exc:   # one bad row must not lose the others
            log.warning("ERCOT API row skipped (%s): %r", exc, r)
    return out


class ErcotPricePoller:
    """Poll ERCOT prices for one site and settlement point; publish each interval once."""

    def __init__(self, client: ErcotApiClient, *, site_id: str, settlement_point: str, publisher: Publisher,
                 clock: Callable[[], datetime] = utcnow, state_path: str | Path | None = None,
                 keep_days: int = 3) -> None:
        self.client = client
        self.site_id = site_id
        self.settlement_point = settlement_point.upper()
        self.publisher = publisher
        self.clock = clock
        self.state_path = Path(state_path) if state_path else None
        self.keep = timedelta(days=keep_days)
        self.seen: dict[str, float] = {}   # identity -> price published
        self.corrections: list[tuple[str, float, float]] = []
        if self.state_path and self.state_path.exists():
            self.seen = {k: float(v) for k, v in json.loads(self.state_path.read_text()).items()}

    def _save(self) -> None:
        if self.state_path:
            tmp = self.state_path.with_suffix(".tmp")
            tmp.write_text(json.dumps(self.seen))
            tmp.replace(self.state_path)

    def _prune(self, now: datetime) -> None:
        cutoff = now - self.keep
        def start_of(identity: str) -> datetime:
            return datetime.fromisoformat(identity.rsplit("|", 1)[1])
        self.seen = {k: v for k, v in self.seen.items() if start_of(k) >= cutoff}

    async def poll_once(self, days: Sequence[date] | None = None) -> list[GridPrice]:
        """Fetch and publish new intervals; ``days`` (CPT operating days) default to
        yesterday..today for RT and today..tomorrow for DA."""
        from readers.timeutil import operating_day_of

        now = self.clock()
        today = operating_day_of(now)
        if days:
            rt_from, rt_to, da_from, da_to = min(days), max(days), min(days), max(days)
        else:
            rt_from, rt_to, da_from, da_to = today - timedelta(days=1), today, today, today + timedelta(days=1)
        rt, da = await asyncio.gather(
            self.client.rt_prices(rt_from, rt_to, self.settlement_point, self.site_id),
            self.client.da_prices(da_from, da_to, self.settlement_point, self.site_id))
        new: list[GridPrice] = []
        for p in rt + da:
            if p.published_at > now:   # a DA day not yet published, or a clock skew: not known yet
                continue
            k = p.identity()
            if k in self.seen:
                if abs(self.seen[k] - p.price_usd_mwh) > 1e-9:
                    self.corrections.append((k, self.seen[k], p.price_usd_mwh))
                    log.warning("ERCOT price correction ignored for %s: %.2f -> %.2f", k, self.seen[k], p.price_usd_mwh)
                continue
            new.append(p)
        new.sort(key=lambda p: (p.published_at, p.market, p.interval_start))
        for p in new:
            await self.publisher.publish(p, PRICES)
            self.seen[p.identity()] = p.price_usd_mwh
        if days is None:
            self._prune(now)
        self._save()
        return new

    async def run(self, interval: timedelta = timedelta(minutes=5), rounds: int | None = None) -> None:
        await poll_forever(self.poll_once, "ERCOT", interval, rounds)
