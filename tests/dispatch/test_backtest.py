"""The backtest CLI end to end on a small window of the real 2024 files (and on fixtures)."""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import pytest

from wattmix.cli import main

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
RT24 = DATA / "ercot" / "ercot_rt_15min_hb_hubavg_2024.parquet"
DA24 = DATA / "ercot" / "ercot_da_hourly_hb_hubavg_2024.parquet"
HP = DATA / "btc" / "btc_hashprice_daily_derived_2018-01-01_2025-01-12.csv"
SITE = Path(__file__).resolve().parents[2] / "wattmix" / "sites" / "sample.toml"


@pytest.mark.skipif(not RT24.exists(), reason="shared data not available")
def test_backtest_cli_json_and_db(tmp_path, capsys):
    db = tmp_path / "bt.duckdb"
    dr = tmp_path / "dr.jsonl"
    dr.write_text(json.dumps({
        "event_id": "ers-may", "program": "ERS-30", "revision": 0, "status": "scheduled",
        "notice_at": "2024-05-08T20:30:00Z", "start": "2024-05-08T21:00:00Z", "end": "2024-05-09T00:00:00Z",
        "obligation_kind": "firm_service_level", "obligation_mw": 20, "penalty_usd_mwh": 1000,
        "issued_at": "2024-05-08T20:30:00Z"}) + "\n")
    rc = main(["backtest", "--site", str(SITE), "--prices", str(RT24), "--prices", str(DA24), "--hashprice", str(HP),
               "--dr-events", str(dr), "--db", str(db), "--json", "--from", "2024-05-01", "--to", "2024-05-15",
               "--jobs", "1"])
    assert rc == 0
    rep = json.loads(capsys.readouterr().out)
    pol = rep["policies"]
    assert set(pol) == {"policy", "always_on", "fixed_strike", "myopic_breakeven", "perfect_foresight"}
    n = 14 * 96 - 1  # first decision waits for the first price
    assert all(p["intervals"] == n for p in pol.values())
    pf = pol["perfect_foresight"]["net_usd"]
    for name in ("policy", "always_on", "fixed_strike", "myopic_breakeven"):
        assert pf >= pol[name]["net_usd"] - 1e-6
    assert pol["perfect_foresight"]["captured_flexibility"] == pytest.approx(1.0)
    assert all(p["shortfall_mwh"] == 0 for p in pol.values())
    con = duckdb.connect(str(db), read_only=True)
    rows = con.execute("select policy, count(*), sum(net_usd) from decisions group by 1 order by 1").fetchall()
    assert len(rows) == 5 and all(r[1] == n for r in rows)
    by = {r[0]: r[2] for r in rows}
    assert by["policy"] == pytest.approx(pol["policy"]["net_usd"], abs=1)
    # the identity, recomputed from the table
    bad = con.execute("""select count(*) from decisions where abs(net_usd - (mining_revenue_usd + gpu_value_usd
        - energy_cost_usd + hedge_pnl_usd + dr_payment_usd - dr_penalty_usd)) > 1e-6
        or abs(energy_cost_usd - price_realized_usd_mwh * load_mw * 0.25) > 1e-6""").fetchone()[0]
    assert bad == 0
    during = con.execute("""select max(load_mw) from decisions where interval_start >= '2024-05-08 21:00:00+00'
        and interval_start < '2024-05-09 00:00:00+00'""").fetchone()[0]
    assert during <= 20 + 1e-9
    cols = {r[0] for r in con.execute("describe decisions").fetchall()}
    assert {"price_known_usd_mwh", "price_realized_usd_mwh", "mw_s19jpro", "mw_s21", "mw_inference", "load_mw",
            "sold_back_mw", "net_usd", "reasons", "policy"} <= cols
    con.close()


def test_backtest_cli_native_files_text_output(tmp_path, capsys):
    rtm = DATA / "ercot" / "ercot_rtm_spp_lz_hub_2020-02_raw.csv"
    dam = DATA / "ercot" / "ercot_dam_spp_lz_hub_2020-02_raw.csv"
    if not rtm.exists():
        pytest.skip("shared data not available")
    rc = main(["backtest", "--site", str(SITE), "--prices", str(rtm), "--prices", str(dam), "--hashprice", str(HP),
               "--db", str(tmp_path / "f.duckdb"), "--jobs", "2"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "perfect_foresight" in out and "captured" in out
