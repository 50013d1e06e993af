"""Readers on the real files of ../shared/data (skipped where absent) and on small fixtures."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import pytest

from readers import (BadRowError, BadRows, read_dr_events, read_ercot_dam, read_ercot_rtm, read_hashprice,
                     read_prices)
from readers.timeutil import da_published_at

UTC = timezone.utc
DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
RT24 = DATA / "ercot" / "ercot_rt_15min_hb_hubavg_2024.parquet"
DA24 = DATA / "ercot" / "ercot_da_hourly_hb_hubavg_2024.parquet"
RTM20 = DATA / "ercot" / "ercot_rtm_spp_lz_hub_2020-02_raw.csv"
DAM20 = DATA / "ercot" / "ercot_dam_spp_lz_hub_2020-02_raw.csv"
HP = DATA / "btc" / "btc_hashprice_daily_derived_2018-01-01_2025-01-12.csv"


def need(p: Path):
    if not p.exists():
        pytest.skip(f"{p} not available")


def test_rt_2024_parquet():
    need(RT24)
    rows = list(read_prices(RT24, "sample"))
    assert len(rows) == 35136
    assert rows[0].interval_start == datetime(2024, 1, 1, tzinfo=UTC)
    assert rows[-1].interval_start == datetime(2024, 12, 31, 23, 45, tzinfo=UTC)
    assert all(r.market == "RT" and r.interval_minutes == 15 for r in rows)
    assert all((r.published_at - r.interval_start).total_seconds() == 900 for r in rows)
    top = max(rows, key=lambda r: r.price_usd_mwh)
    assert top.price_usd_mwh == pytest.approx(4964.84)
    assert top.interval_start.date().isoformat() == "2024-05-09"
    # data/README says "78 intervals above $500"; the file has 59 above $500 (79 above $400)
    assert sum(r.price_usd_mwh > 500 for r in rows) == 59
    assert sum(r.price_usd_mwh for r in rows) / len(rows) == pytest.approx(26.8, abs=0.1)


def test_da_2024_parquet_published_day_before():
    need(DA24)
    rows = list(read_prices(DA24, "sample"))
    assert len(rows) == 8784
    assert all(r.market == "DA" and r.interval_minutes == 60 for r in rows)
    # 2024-01-01 00:00Z is 2023-12-31 18:00 CST: operating day Dec 31, results Dec 30 13:30 CST
    assert rows[0].published_at == datetime(2023, 12, 30, 19, 30, tzinfo=UTC)
    assert all(r.published_at < r.interval_start for r in rows)


def test_fast_parquet_path_equals_validated_records():
    need(RT24)
    from schemas.feeds import GridPrice

    rows = list(read_prices(RT24, "sample"))
    for r in rows[:20] + rows[-20:]:
        assert GridPrice.model_validate(r.model_dump()) == r


def test_feb_2020_native_rtm():
    need(RTM20)
    rows = list(read_ercot_rtm(RTM20, "sample", "HB_HUBAVG"))
    assert len(rows) == 29 * 96
    assert rows[0].interval_start == datetime(2020, 2, 1, 6, tzinfo=UTC)  # 00:00 CST
    assert rows[-1].interval_start == datetime(2020, 3, 1, 5, 45, tzinfo=UTC)
    assert max(r.price_usd_mwh for r in rows) == pytest.approx(1691.63)
    # LZ_WEST has two types (LZ and LZEW): the first type seen is kept unless one is asked for
    west = [r for r in read_ercot_rtm(RTM20, "s", "LZ_WEST") if r.interval_start == datetime(2020, 2, 3, 13, 45, tzinfo=UTC)]
    assert len(west) == 1
    lz = [r for r in read_ercot_rtm(RTM20, "s", "LZ_WEST", settlement_point_type="LZ")
          if r.interval_start == datetime(2020, 2, 3, 13, 45, tzinfo=UTC)]
    assert lz[0].price_usd_mwh == pytest.approx(1847.32)  # "1,847.32" in the file
    ew = [r for r in read_ercot_rtm(RTM20, "s", "LZ_WEST", settlement_point_type="LZEW")
          if r.interval_start == datetime(2020, 2, 3, 13, 30, tzinfo=UTC)]
    assert len(ew) == 1 and ew[0].price_usd_mwh == pytest.approx(1207.70)


def test_feb_2020_native_dam():
    need(DAM20)
    rows = list(read_prices(DAM20, "sample"))
    assert len(rows) == 29 * 24
    assert rows[0].interval_start == datetime(2020, 2, 1, 6, tzinfo=UTC)
    assert rows[0].published_at == datetime(2020, 1, 31, 19, 30, tzinfo=UTC)


def _write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_rtm_dst_repeated_hour_and_spring_gap(tmp_path):
    head = "Delivery Date,Delivery Hour,Delivery Interval,Repeated Hour Flag,Settlement Point Name,Settlement Point Type,Settlement Point Price\n"
    p = _write(tmp_path, "rtm.csv", head
               + "11/03/2024,2,1,N,HB_HUBAVG,SH,10.00\n"
               + "11/03/2024,2,1,Y,HB_HUBAVG,SH,\"1,234.50\"\n"
               + "03/10/2024,3,1,N,HB_HUBAVG,SH,20.00\n"
               + "03/10/2024,4,1,N,HB_HUBAVG,SH,abc\n")
    bad = BadRows()
    rows = list(read_prices(p, "s", "HB_HUBAVG", bad))
    assert [r.interval_start for r in rows] == [datetime(2024, 11, 3, 6, tzinfo=UTC), datetime(2024, 11, 3, 7, tzinfo=UTC)]
    assert rows[1].price_usd_mwh == 1234.5
    assert [b.line for b in bad.rows] == [4, 5]
    assert "does not exist" in bad.rows[0].reason and bad.rows[0].file == str(p)
    with pytest.raises(BadRowError):
        list(read_prices(p, "s", "HB_HUBAVG"))


def test_dam_hour_ending_24(tmp_path):
    p = _write(tmp_path, "dam.csv", "Delivery Date,Hour Ending,Repeated Hour Flag,Settlement Point,Settlement Point Price\n"
               "02/01/2020,24:00,N,HB_HUBAVG,12.50\n02/01/2020,01:00,N,HB_NORTH,99\n")
    rows = list(read_ercot_dam(p, "s"))
    assert len(rows) == 1 and rows[0].interval_start == datetime(2020, 2, 2, 5, tzinfo=UTC)
    assert rows[0].published_at == da_published_at(datetime(2020, 2, 1).date())


def test_wattmix_layout_csv_and_jsonl(tmp_path):
    p = _write(tmp_path, "prices.csv", "site_id,settlement_point,market,interval_start,interval_minutes,price_usd_mwh,published_at\n"
               "s,HB_HUBAVG,RT,2024-01-01T00:00:00Z,15,20.5,2024-01-01T00:15:00Z\n"
               "s,HB_HUBAVG,RT,2024-01-01T00:15:00,15,21,2024-01-01T00:30:00Z\n"      # naive: bad
               "other,HB_HUBAVG,RT,2024-01-01T00:00:00Z,15,99,2024-01-01T00:15:00Z\n"
               "s,HB_HUBAVG,RT,2024-01-01T00:30:00Z,15,21,2024-01-01T00:40:00Z\n")    # published early: bad
    bad = BadRows()
    rows = list(read_prices(p, "s", "HB_HUBAVG", bad))
    assert len(rows) == 1 and rows[0].price_usd_mwh == 20.5
    assert len(bad) == 2 and {b.line for b in bad.rows} == {3, 5}
    j = tmp_path / "p_da.jsonl"
    j.write_text(json.dumps({"interval_start": "2024-01-02T00:00:00Z", "price_usd_mwh": 30}) + "\n"
                 + json.dumps({"interval_start": "2024-01-02T01:00:00Z", "price_usd_mwh": 31}) + "\n")
    rows = list(read_prices(j, "s"))
    assert [r.market for r in rows] == ["DA", "DA"] and rows[0].interval_minutes == 60


def test_hashprice_daily_csv():
    need(HP)
    rows = list(read_hashprice(HP, "sample"))
    by = {r.as_of.date().isoformat(): r for r in rows}
    assert by["2024-04-25"].usd_per_ph_day == pytest.approx(46, abs=1)
    assert by["2022-11-25"].usd_per_ph_day == pytest.approx(56, abs=1)
    r = by["2024-01-01"]
    assert r.published_at == datetime(2024, 1, 2, tzinfo=UTC)  # the daily close: known at day end
    y24 = [x.usd_per_ph_day for x in rows if x.as_of.year == 2024]
    assert sum(y24) / len(y24) == pytest.approx(60, abs=8)


def test_dr_events_jsonl(tmp_path):
    ev = {"event_id": "e1", "program": "ERS-30", "revision": 0, "status": "scheduled",
          "notice_at": "2024-07-01T20:30:00Z", "start": "2024-07-01T21:00:00Z", "end": "2024-07-01T23:00:00Z",
          "obligation_kind": "firm_service_level", "obligation_mw": 20, "penalty_usd_mwh": 1000,
          "issued_at": "2024-07-01T20:30:00Z"}
    p = tmp_path / "dr.jsonl"
    p.write_text(json.dumps(ev) + "\n" + json.dumps({**ev, "end": "2024-07-01T20:00:00Z", "event_id": "bad"}) + "\n")
    bad = BadRows()
    rows = list(read_dr_events(p, "sample", bad))
    assert len(rows) == 1 and rows[0].site_id == "sample" and len(bad) == 1 and bad.rows[0].line == 2
