"""Hashprice: mining revenue in USD per PH/s per day, from chain + market data or an index API.

The formula (derived, not looked up)
------------------------------------
A double-SHA256 hash meets the target with probability ``1 / (D x 2^32)`` at difficulty
``D`` (difficulty 1 = target ``0xFFFF x 2^208`` ~ ``2^224``, i.e. 2^32 hashes per block on
average). One PH/s for one day tries ``1e15 x 86,400`` hashes, so it expects

    blocks/day per PH/s = 1e15 x 86,400 / (D x 2^32)

and earns that many block rewards (subsidy + fees). Hence

    hashprice [$/PH/day] = P_btc x (subsidy + fees per block) x 86,400 x 1e15 / (D x 2^32)

which is the same as ``P_btc x (subsidy + fees) x 144 blocks/day x (1 PH/s / network
hashrate)`` with the network hashrate implied by the difficulty, ``D x 2^32 / 600 s``.
Example: 2024-04-25, P = $64,500, D = 88.1e12, subsidy 3.125 BTC, no fees ->
64,500 x 3.125 x 8.64e19 / (88.1e12 x 4.295e9) = $46.1/PH/day (../shared/data: 46).

Block subsidy: 50 BTC halved every 210,000 blocks, in whole satoshis
(``5_000_000_000 >> (height // 210_000)``): 6.25 BTC from 630,000 (2020-05-11), 3.125 BTC
from 840,000 (2024-04-20). Fees per block are the recent average of total fees per block
(not per vbyte).

Sources:

* :class:`MempoolSource`: a mempool.space-compatible REST API (self-hosted mempool instances
  expose the same): ``GET /api/blocks/tip/height`` (text), ``GET /api/v1/mining/hashrate/3d``
  (``currentDifficulty``), ``GET /api/v1/mining/blocks/fees/24h`` (``avgFees`` in sats per
  block), ``GET /api/v1/prices`` (``USD``). No key.
* :class:`HashpriceIndexClient`: a commercial hashprice index (e.g. Luxor's Hashrate Index)
  with the user's API key in a header. Defaults: ``GET {base}/v1/hashrateindex/hashprice
  ?currency=USD&hashunit=PHS&bucket=1D&span=1M`` with header ``X-Hi-Api-Key``, answering
  ``{"data": [{"timestamp": ISO-8601, "usdHashprice": float}, ...]}``; path, params, header
  and field names are all arguments (providers change them), and a per-TH/s index is scaled
  with ``per_th=True``.
* :class:`HashpricePoller` publishes a :class:`~schemas.feeds.Hashprice` record per new
  ``as_of`` (de-duplicated), stamped ``published_at`` = when it was fetched.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from schemas.feeds import Hashprice
from schemas.topics import HASHPRICE

from adapters.common import AdapterError, Publisher, poll_forever, utcnow

log = logging.getLogger("wattmix.adapters.hashprice")

SECONDS_PER_DAY = 86_400
BLOCKS_PER_DAY = 144            # one block per 600 s target
HASHES_PER_DIFFICULTY = 2 ** 32
HALVING_INTERVAL = 210_000
SATS_PER_BTC = 100_000_000


def block_subsidy_btc(height: int) -> float:
    """The block subsidy at ``height`` (consensus rule, whole satoshis)."""
    if height < 0:
        raise ValueError("negative block height")
    halvings = height // HALVING_INTERVAL
    return (5_000_000_000 >> halvings) / SATS_PER_BTC if halvings < 64 else 0.0


def hashprice_usd_per_ph_day(btc_usd: float, difficulty: float, subsidy_btc: float, fees_btc_per_block: float = 0.0) -> float:
    """USD per PH/s per day: ``P x (subsidy + fees) x 86,400 x 1e15 / (D x 2^32)``."""
    if btc_usd <= 0 or difficulty <= 0:
        raise ValueError("BTC price and difficulty must be positive")
    blocks_per_ph_day = 1e15 * SECONDS_PER_DAY / (difficulty * HASHES_PER_DIFFICULTY)
    return btc_usd * (subsidy_btc + fees_btc_per_block) * blocks_per_ph_day


@dataclass(frozen=True)
class ChainSnapshot:
    btc_usd: float
    difficulty: float
    height: int
    fees_btc_per_block: float
    as_of: datetime

    @property
    def usd_per_ph_day(self) -> float:
        return hashprice_usd_per_ph_day(self.btc_usd, self.difficulty, block_subsidy_btc(self.height),
                                        self.fees_btc_per_block)

    def record(self, site_id: str, published_at: datetime) -> Hashprice:
        return Hashprice(site_id=site_id, usd_per_ph_day=self.usd_per_ph_day, btc_usd=self.btc_usd,
                         difficulty=self.difficulty, fees_btc_per_block=self.fees_btc_per_block, as_of=self.as_of,
                         published_at=max(published_at, self.as_of))


async def _get_json(http, url: str, **kw) -> Any:
    import aiohttp

    try:
        async with http.get(url, **kw) as resp:
            if resp.status != 200:
                body = (await resp.text())[:200]
                raise AdapterError(f"GET {url}: HTTP {resp.status}: {body}")
            return await resp.json(content_type=None)
    except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
        raise AdapterError(f"GET {url}: {type(exc).__name__}: {exc}") from exc


class MempoolSource:
    """Chain + price data from a mempool.space-compatible API (see the module doc)."""

    def __init__(self, base_url: str = "https://mempool.space", timeout_s: float = 10.0,
                 clock: Callable[[], datetime] = utcnow) -> None:
        self.base = base_url.rstrip("/")
        self.timeout_s = timeout_s
        self.clock = clock

    async def snapshot(self) -> ChainSnapshot:
        import aiohttp

        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout_s)) as http:
            height, hr, fees, prices = await asyncio.gather(
                _get_json(http, f"{self.base}/api/blocks/tip/height"),
                _get_json(http, f"{self.base}/api/v1/mining/hashrate/3d"),
                _get_json(http, f"{self.base}/api/v1/mining/blocks/fees/24h"),
                _get_json(http, f"{self.base}/api/v1/prices"))
        try:
            diff = float(hr["currentDifficulty"])
            avg_fees_sats = [float(x["avgFees"]) for x in fees]
            fee_btc = (sum(avg_fees_sats) / len(avg_fees_sats) / SATS_PER_BTC) if avg_fees_sats else 0.0
            price = float(prices["USD"])
            ts = prices.get("time")
        except (KeyError, TypeError, ValueError) as exc:
            raise AdapterError(f"unexpected mempool API response: {type(exc).__name__}: {exc}") from exc
        as_of = datetime.fromtimestamp(int(ts), tz=timezone.utc) if ts else self.clock()
        return ChainSnapshot(btc_usd=price, difficulty=diff, height=int(height), fees_btc_per_block=fee_btc, as_of=as_of)


class HashpriceIndexClient:
    """A hashprice index API with a user key (defaults: Luxor Hashrate Index style)."""

    def __init__(self, api_key: str, base_url: str = "https://api.hashrateindex.com", *,
                 path: str = "/v1/hashrateindex/hashprice",
                 params: Mapping[str, str] | None = None, key_header: str = "X-Hi-Api-Key",
                 data_field: str = "data", time_field: str = "timestamp", value_field: str = "usdHashprice",
                 per_th: bool = False, timeout_s: float = 10.0) -> None:
        if not api_key:
            raise AdapterError("a hashprice index needs an API key")
        self.api_key = api_key
        self.url = base_url.rstrip("/") + path
        self.params = dict(params if params is not None else
                           {"currency": "USD", "hashunit": "PHS", "bucket": "1D", "span": "1M"})
        self.key_header = key_header
        self.fields = (data_field, time_field, value_field)
        self.scale = 1000.0 if per_th else 1.0
        self.timeout_s = timeout_s

    async def fetch(self) -> list[tuple[datetime, float]]:
        """(as_of, USD/PH/day) points, oldest first."""
        import aiohttp

        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout_s)) as http:
            body = await _get_json(http, self.url, params=self.params, headers={self.key_header: self.api_key})
        data_f, t_f, v_f = self.fields
        rows = body.get(data_f) if isinstance(body, Mapping) else body
        if not isinstance(rows, list):
            raise AdapterError(f"hashprice index: no list under {data_f!r} in the response")
        out = []
        for row in rows:
            try:
                t = datetime.fromisoformat(str(row[t_f]).replace("Z", "+00:00"))
                v = float(row[v_f]) * self.scale
            except (KeyError, TypeError, ValueError) as exc:
                raise AdapterError(f"hashprice index: bad row {row!r}: {exc}") from exc
            if t.tzinfo is None:
                t = t.replace(tzinfo=timezone.utc)
            if v > 0:
                out.append((t.astimezone(timezone.utc), v))
        return sorted(out)


class HashpricePoller:
    """Publish new hashprice points from a :class:`HashpriceIndexClient` or :class:`MempoolSource`.

    Only points with an ``as_of`` newer than the last published one go out (state in
    ``last_as_of``; pass it back in after a restart to avoid re-publishing).
    """

    def __init__(self, source: HashpriceIndexClient | MempoolSource, *, site_id: str, publisher: Publisher,
                 clock: Callable[[], datetime] = utcnow, last_as_of: datetime | None = None) -> None:
        self.source = source
        self.site_id = site_id
        self.publisher = publisher
        self.clock = clock
        self.last_as_of = last_as_of

    async def poll_once(self) -> list[Hashprice]:
        now = self.clock()
        if isinstance(self.source, MempoolSource):
            snap = await self.source.snapshot()
            recs = [snap.record(self.site_id, now)]
        else:
            recs = [Hashprice(site_id=self.site_id, usd_per_ph_day=v, as_of=t, published_at=max(now, t))
                    for t, v in await self.source.fetch()]
        new = [r for r in recs if self.last_as_of is None or r.as_of > self.last_as_of]
        for r in new:
            await self.publisher.publish(r, HASHPRICE)
            self.last_as_of = r.as_of
        return new

    async def run(self, interval: timedelta = timedelta(hours=1), rounds: int | None = None,
                  on_error: Callable[[Exception], Awaitable[None] | None] | None = None) -> None:
        await poll_forever(self.poll_once, "hashprice", interval, rounds, on_error)
