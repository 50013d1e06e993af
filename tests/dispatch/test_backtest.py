"""The backtest CLI end to end on a small window of the real 2024 files (and on fixtures)."""

from __future__ import annotations

import json
import math
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


# ---------------------------------------------------------------------------------------
# the shared pass, the vectorized settlement and the process split (no shared data needed)

def _scenario():
    """Two days with evening spikes, a DR event, GPU telemetry, a hashprice change and a 90 min
    hole in the RT feed (the watchdog's safe state); the last RT interval's price is missing
    from ``realized``: 7 decisions stay unsettled (the hole and the last interval)."""
    from datetime import timedelta

    from dispatch.backtest import merge_event_time
    from tests import factories as f

    prices = [25 + 10 * ((i % 96) // 8) + (4000 if i % 96 in (72, 73, 74, 75) else 0) + (900 if i % 96 == 80 else 0)
              for i in range(2 * 96)]
    rt = [f.rt_price(i, p) for i, p in enumerate(prices) if not 100 <= i < 106]
    da = [f.da_price(h, 30 + h % 24) for h in range(48)]
    hp = [f.hashprice(54.3), f.hashprice(48.0, at=f.T0 + timedelta(days=1))]
    dr = [f.dr_event(36 * 60, 90)]
    gpu = [f.gpu_sample("trn-1", minute=5), f.gpu_sample("bat-1", "batch", 16, minute=7),
           f.gpu_sample("inf-1", "inference", 32, minute=9), f.gpu_sample("trn-1", minute=2400, state="completed")]
    realized = {r.interval_start: r.price_usd_mwh for r in rt[:-1]}
    return merge_event_time(rt + da, dr, hp, gpu), realized


def _policies(realized):
    from dispatch.backtest import make_policies
    from schemas.site import load_sample_site

    return make_policies(load_sample_site(), realized, 100.0, "rolling")


def test_shared_pass_gives_every_policy_the_decisions_of_its_own_processor():
    from dispatch.processor import SharedPass, run_in_process
    from schemas.site import load_sample_site

    site = load_sample_site()
    records, realized = _scenario()
    shared = SharedPass(site, [p for _, p in _policies(realized)]).run(records)
    alone = [run_in_process(site, records, p) for _, p in _policies(realized)]
    assert [len(a) for a in shared] == [len(a) for a in alone] == [2 * 96 - 1] * 5
    for s, a in zip(shared, alone):
        assert [x.model_dump() for x in s] == [x.model_dump() for x in a]
    # the scenario exercises what the engine memory and the shared watchdog check carry
    for acts in shared:
        assert any(x.dr.limit_mw is not None for x in acts) and any(x.watchdog for x in acts)
    assert any(x.fleets[0].units_online == 0 for x in shared[4])
    assert any(g.gpus_running < g.gpus_demand for x in shared[4] for g in x.gpus if g.gpu_class == "training")


def test_rows_without_actions_are_the_rows_of_the_actions():
    # the backtest's row mode (decide_row: no action built, except when the watchdog rewrites
    # one) keeps exactly what DecisionRow.of keeps of the actions, for every policy
    from dispatch.engine import DecisionRow
    from dispatch.processor import SharedPass
    from schemas.site import load_sample_site

    site = load_sample_site()
    records, realized = _scenario()
    actions = SharedPass(site, [p for _, p in _policies(realized)]).run(records)
    rows = SharedPass(site, [p for _, p in _policies(realized)]).run(records, rows=True)
    for acts, rs in zip(actions, rows):
        assert all(type(r) is DecisionRow for r in rs)
        assert rs == [DecisionRow.of(a) for a in acts]
    assert any(a.watchdog for a in actions[0]) and any(a.dr.limit_mw is not None for a in actions[0])


def test_settled_table_equals_settle_of_every_action_to_the_bit():
    from dispatch.accounting import settle
    from dispatch.backtest import TERMS, decision_row, settled_table
    from dispatch.processor import run_in_process
    from schemas.site import load_sample_site

    site = load_sample_site()
    records, realized = _scenario()
    actions = run_in_process(site, records, _policies(realized)[4][1])
    table, totals, unsettled = settled_table(site, [decision_row(a) for a in actions], realized)
    assert unsettled == 7 and table.num_rows == len(actions) - 7  # no price: the hole and the last interval
    actions = [a for a in actions if a.interval_start in realized]
    rows = table.to_pylist()
    for a, row in zip(actions, rows):
        assert row["interval_start"] == a.interval_start
        p = realized[a.interval_start]
        assert row["price_realized_usd_mwh"] == p
        terms = settle(a, p, site)
        assert [row[k] for k in TERMS] == [getattr(terms, k) for k in TERMS]  # exact, not approx
        assert row["load_mw"] == a.load_mw and row["reasons"] == "; ".join(a.reasons)
        assert row["mw_s21"] == next(x.power_mw for x in a.fleets if x.fleet == "s21")
        assert row["gpus_running_batch"] == next(g.gpus_running for g in a.gpus if g.gpu_class == "batch")
    assert totals["net_usd"] == math.fsum(r["net_usd"] for r in rows)
    assert totals["intervals"] == len(rows)


def test_settled_table_of_no_decision_is_empty_with_the_columns():
    from dispatch.backtest import settled_table
    from schemas.site import load_sample_site

    table, totals, unsettled = settled_table(load_sample_site(), [], {})
    assert table.num_rows == 0 and unsettled == 0 and totals["net_usd"] == 0.0
    assert {"interval_start", "mw_s19jpro", "tier_training", "net_usd", "reasons"} <= set(table.column_names)


@pytest.mark.parametrize("jobs", [1, 2, 3])
def test_policy_groups_run_every_policy_once_and_balance_the_work(jobs):
    from dispatch.backtest import RELATIVE_COST, policy_groups

    labels = ["policy", "always_on", "fixed_strike", "myopic_breakeven", "perfect_foresight"]
    groups = policy_groups(labels, jobs)
    assert sorted(i for g in groups for i in g) == list(range(5))
    assert len(groups) == jobs
    work = sorted(sum(RELATIVE_COST.get(labels[i], 1.0) for i in g) for g in groups)
    # no move of one policy from the busiest group to the idlest one would shorten the run
    busiest = max(groups, key=lambda g: sum(RELATIVE_COST.get(labels[i], 1.0) for i in g))
    assert all(work[0] + RELATIVE_COST.get(labels[i], 1.0) >= work[-1] for i in busiest) or len(busiest) == 1


def test_forked_processes_give_the_serial_results():
    from dispatch.backtest import Inputs, run_all
    from schemas.site import load_sample_site

    site = load_sample_site()
    records, realized = _scenario()
    serial = run_all(site, Inputs(records, realized), _policies(realized), jobs=1)
    forked = run_all(site, Inputs(records, realized), _policies(realized), jobs=2)
    assert [r.name for r in forked] == [r.name for r in serial] == [n for n, _ in _policies(realized)]
    for a, b in zip(serial, forked):
        assert a.table.equals(b.table) and a.totals == b.totals and a.unsettled == b.unsettled == 7
        assert len(a.latency_ns) == len(b.latency_ns) == 2 * 96 - 1


def test_backtest_writes_each_process_runs_as_they_finish_with_the_tables_of_write_db(tmp_path):
    # backtest(db=...) writes this process's group while the forked one still runs, then the
    # other group and the summary: the same tables as writing everything at the end
    import duckdb

    from dispatch.backtest import Inputs, backtest, summary_rows, write_db
    from schemas.site import load_sample_site

    site = load_sample_site()
    records, realized = _scenario()
    rep = backtest(site, Inputs(records, realized), jobs=2, db=tmp_path / "a.duckdb")
    assert rep["db"] == str(tmp_path / "a.duckdb") and rep["timing"]["write_seconds"] > 0
    write_db(tmp_path / "b.duckdb", rep["_runs"], summary_rows(rep))
    tables = []
    for name in ("a", "b"):
        con = duckdb.connect(str(tmp_path / f"{name}.duckdb"), read_only=True)
        tables.append((con.execute("SELECT * FROM decisions ORDER BY policy, interval_start").fetchall(),
                       con.execute("SELECT * FROM backtest_summary ORDER BY policy").fetchall()))
        con.close()
    assert tables[0] == tables[1]
    assert len(tables[0][0]) == 5 * (2 * 96 - 1 - 7) and len(tables[0][1]) == 5


class _Broken:
    name = "broken"

    def decide(self, inp):
        from wattmix.errors import EngineError

        raise EngineError(f"broken at {inp.interval_start.isoformat()}")


def test_a_failure_in_the_forked_process_is_raised_here():
    from dispatch.backtest import Inputs, run_all
    from schemas.site import load_sample_site
    from wattmix.errors import EngineError

    records, realized = _scenario()
    policies = [("broken", _Broken()), ("always_on", _policies(realized)[1][1])]
    with pytest.raises(EngineError, match="broken at 2024-"):
        run_all(load_sample_site(), Inputs(records, realized), policies, jobs=2)
