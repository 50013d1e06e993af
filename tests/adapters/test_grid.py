"""ERCOT price poller against a local server answering in the ERCOT Public API's JSON shape,
built from the real Feb 2020 RTM/DAM rows of ../shared/data (HB_HUBAVG, incl. the >$1,000
prices). Checks: paging, auth headers, only-new publishing across polls and restarts, DA
not before 13:30 CPT the day before, and identical records to the CSV file readers."""

from __future__ import annotations

import asyncio
import csv
from datetime import date, datetime, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from adapters.common import MemoryPublisher
from adapters.grid import RT_ENDPOINT, ErcotApiClient, ErcotPricePoller
from tests.adapters.util import free_port

ERCOT = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "ercot"
RTM = ERCOT / "ercot_rtm_spp_lz_hub_2020-02_raw.csv"
DAM = ERCOT / "ercot_dam_spp_lz_hub_2020-02_raw.csv"
CPT = ZoneInfo("America/Chicago")
pytestmark = pytest.mark.skipif(not RTM.exists(), reason="../shared/data is not present")

RT_FIELDS = ["deliveryDate", "deliveryHour", "deliveryInterval", "settlementPoint", "settlementPointType",
             "settlementPointPrice", "DSTFlag"]
DA_FIELDS = ["deliveryDate", "hourEnding", "settlementPoint", "settlementPointPrice", "DSTFlag"]


def _iso(d: str) -> str:
    m, dd, y = d.split("/")
    return f"{y}-{m}-{dd}"


def _recorded():
    """The CSV rows as the API returns them (typed values, ISO dates), for a few hubs."""
    hubs = {"HB_HUBAVG", "HB_HOUSTON"}
    rt = [[_iso(r["Delivery Date"]), int(r["Delivery Hour"]), int(r["Delivery Interval"]), r["Settlement Point Name"],
           r["Settlement Point Type"], float(r["Settlement Point Price"].replace(",", "")), r["Repeated Hour Flag"] == "Y"]
          for r in csv.DictReader(open(RTM)) if r["Settlement Point Name"] in hubs]
    da = [[_iso(r["Delivery Date"]), r["Hour Ending"], r["Settlement Point"],
           float(r["Settlement Point Price"].replace(",", "")), r["Repeated Hour Flag"] == "Y"]
          for r in csv.DictReader(open(DAM)) if r["Settlement Point"] in hubs]
    return rt, da


class FakeErcot:
    """ERCOT Public API shape on loopback; serves only what was published by ``self.now``."""

    def __init__(self):
        from readers.timeutil import cpt_to_utc, da_published_at

        self.rt, self.da = _recorded()
        self.now = datetime(2020, 2, 1, tzinfo=timezone.utc)
        self.requests: list[tuple[str, dict, dict]] = []
        self._rt_end = lambda r: cpt_to_utc(date.fromisoformat(r[0]), (r[1] - 1) * 60 + r[2] * 15, r[6])
        self._da_pub = lambda r: da_published_at(date.fromisoformat(r[0]))

    async def handle(self, request):
        from aiohttp import web

        q = dict(request.query)
        self.requests.append((request.path, q, dict(request.headers)))
        if request.headers.get("Ocp-Apim-Subscription-Key") != "sub-key" or \
                request.headers.get("Authorization") != "Bearer id-token":
            return web.json_response({"statusCode": 401, "message": "Access denied"}, status=401)
        d0, d1, sp = q["deliveryDateFrom"], q["deliveryDateTo"], q["settlementPoint"]
        if request.path.endswith(RT_ENDPOINT):
            fields = RT_FIELDS
            rows = [r for r in self.rt if d0 <= r[0] <= d1 and r[3] == sp and self._rt_end(r) <= self.now]
        else:
            fields = DA_FIELDS
            rows = [r for r in self.da if d0 <= r[0] <= d1 and r[2] == sp and self._da_pub(r) <= self.now]
        size, page = int(q.get("size", 1000)), int(q.get("page", 1))
        pages = max(1, -(-len(rows) // size))
        return web.json_response({
            "_meta": {"totalRecords": len(rows), "pageSize": size, "totalPages": pages, "currentPage": page},
            "report": {"reportEMILID": "NP6-905-CD" if fields is RT_FIELDS else "NP4-190-CD"},
            "fields": [{"name": f, "label": f, "dataType": "STRING"} for f in fields],
            "data": rows[(page - 1) * size: page * size]})


def test_poller_publishes_only_new_intervals_and_matches_the_file_readers(tmp_path):
    from aiohttp import web

    from readers.ercot import read_ercot_dam, read_ercot_rtm

    fake = FakeErcot()
    state = tmp_path / "ercot-state.json"

    async def main():
        app = web.Application()
        app.router.add_get("/api/public-reports/{tail:.*}", fake.handle)
        runner = web.AppRunner(app)
        await runner.setup()
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        base = f"http://127.0.0.1:{port}/api/public-reports"
        try:
            client = ErcotApiClient(base, subscription_key="sub-key", id_token=lambda: "id-token", page_size=50,
                                    timeout_s=5)
            pub = MemoryPublisher()
            clock = {"now": datetime(2020, 2, 10, 8, 7, tzinfo=CPT).astimezone(timezone.utc)}
            poller = ErcotPricePoller(client, site_id="sample", settlement_point="HB_HUBAVG", publisher=pub,
                                      clock=lambda: clock["now"], state_path=state)
            fake.now = clock["now"]
            first = await poller.poll_once()
            again = await poller.poll_once()
            clock["now"] = fake.now = datetime(2020, 2, 10, 14, 0, tzinfo=CPT).astimezone(timezone.utc)
            later = await poller.poll_once()
            # a restart with the saved state publishes nothing twice
            restarted = ErcotPricePoller(client, site_id="sample", settlement_point="HB_HUBAVG", publisher=pub,
                                         clock=lambda: clock["now"], state_path=state)
            after_restart = await restarted.poll_once()
            bad_client = ErcotApiClient(base, subscription_key="wrong", timeout_s=5)
            with pytest.raises(Exception, match="HTTP 401"):
                await bad_client.rt_prices(date(2020, 2, 10), date(2020, 2, 10), "HB_HUBAVG", "sample")
            return first, again, later, after_restart, pub, client
        finally:
            await runner.cleanup()

    first, again, later, after_restart, pub, client = asyncio.run(asyncio.wait_for(main(), 30))
    rt1 = [p for p in first if p.market == "RT"]
    da1 = [p for p in first if p.market == "DA"]
    assert (len(rt1), len(da1)) == (96 + 32, 24)      # yesterday + today to 08:00 CPT; DA of today only
    assert again == [] and after_restart == []
    # 08:00..14:00 CPT of RT; tomorrow's DA, published at 13:30 CPT
    assert (sum(p.market == "RT" for p in later), sum(p.market == "DA" for p in later)) == (24, 24)
    assert client.requests > 4, "pages of 50 rows were followed"
    assert all(a.published_at <= b.published_at for a, b in zip(first, first[1:]))
    assert len(pub.records) == len({p.identity() for p in pub.records}) == 96 + 32 + 24 + 48

    # the API path and the CSV file path give identical records
    files = {p.identity(): p for p in read_ercot_rtm(RTM, "sample", "HB_HUBAVG")}
    files.update({p.identity(): p for p in read_ercot_dam(DAM, "sample", "HB_HUBAVG")})
    assert all(files[p.identity()] == p for p in pub.records)
    assert all(p.settlement_point == "HB_HUBAVG" for p in pub.records)
    assert fake.requests[0][1]["settlementPoint"] == "HB_HUBAVG"


def test_price_strings_with_thousands_separators():
    """Rows carrying the price as a string with a separator ("1,899.35") parse too."""
    from adapters.grid import rt_price_from_row

    p = rt_price_from_row({"deliveryDate": "2020-02-03", "deliveryHour": 18, "deliveryInterval": 2,
                           "settlementPoint": "HB_HUBAVG", "settlementPointPrice": "1,899.35", "DSTFlag": False}, "sample")
    assert p.price_usd_mwh == 1899.35
    assert p.interval_start == datetime(2020, 2, 3, 17, 15, tzinfo=CPT).astimezone(timezone.utc)
