"""The analytics views (sinks/views.py) against the Python accounting on a real archive:
three days of the demo scenario decided by the engine, archived through ArchiveBatch."""

from __future__ import annotations

import math
from collections import defaultdict

import duckdb
import pytest

from dispatch.accounting import settle
from dispatch.processor import run_in_process
from sinks.archive import Archive, ArchiveBatch
from sinks.views import VIEWS, create_views, has_views, register_sites
from wattmix.scenario import build_demo_scenario
from wattmix.summary import TERMS, summarize_connection


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    sc = build_demo_scenario(days=3, jobs=150)
    events = sc.events_in_order()
    actions = run_in_process(sc.site, [r for _, r in events])
    db = tmp_path_factory.mktemp("views") / "a.duckdb"
    ar = Archive(db)
    b = ArchiveBatch()
    for name, r in events:
        b.add_input(name, r)
    for a in actions:
        b.add_action(a)
    ar.write_batch(b)
    create_views(ar.connection(), [sc.site])
    ar.close()
    return {"db": db, "site": sc.site, "actions": actions, "events": events}


@pytest.fixture
def con(archive):
    c = duckdb.connect(str(archive["db"]), read_only=True)
    c.execute("SET TimeZone = 'UTC'")
    yield c
    c.close()


def _rt(events):
    return {r.interval_start: r.price_usd_mwh for name, r in events if name == "grid_prices" and r.market == "RT"}


def test_sql_settlement_equals_python_settle(archive, con):
    prices = _rt(archive["events"])
    rows = con.execute("SELECT interval_start, settled, mining_revenue_usd, gpu_value_usd, energy_cost_usd, "
                       "hedge_pnl_usd, dr_payment_usd, dr_penalty_usd, net_usd FROM settled_actions "
                       "ORDER BY interval_start").fetchall()
    assert len(rows) == len(archive["actions"]) > 250
    by_t = {a.interval_start: a for a in archive["actions"]}
    settled = 0
    for t, ok, *terms in rows:
        a = by_t[t]
        if t not in prices:
            assert not ok and terms[-1] is None
            continue
        settled += 1
        py = settle(a, prices[t], archive["site"])
        for name, got in zip(list(TERMS) + ["net_usd"], terms):
            assert got == pytest.approx(getattr(py, name), rel=1e-12, abs=1e-9), (t, name)
    assert settled >= len(rows) - 1  # the last decision's price is published after the window


def test_pnl_by_day_and_by_term_match_the_python_summary(archive, con):
    s = summarize_connection(con, archive["site"])
    by_term = dict(con.execute("SELECT term, amount_usd FROM pnl_by_term").fetchall())
    for t in TERMS:
        assert by_term[t[:-4]] == pytest.approx(s.terms[t], rel=1e-9, abs=1e-6)
    assert by_term["net"] == pytest.approx(s.net_usd, rel=1e-9)
    (day_total,) = con.execute("SELECT sum(net_usd) FROM pnl_by_day").fetchone()
    assert day_total == pytest.approx(s.net_usd, rel=1e-9)
    # per day, against settle() grouped in Python
    prices = _rt(archive["events"])
    per_day = defaultdict(float)
    for a in archive["actions"]:
        if a.interval_start in prices:
            per_day[a.interval_start.date()] += settle(a, prices[a.interval_start], archive["site"]).net_usd
    got = dict(con.execute("SELECT day, net_usd FROM pnl_by_day").fetchall())
    assert set(got) == set(per_day) and len(got) == 3
    for d, v in per_day.items():
        assert got[d] == pytest.approx(v, rel=1e-9)
    # the waterfall adds up: the signed contributions of the six terms are the net
    contrib = con.execute("SELECT sum(contribution_usd) FILTER (WHERE term <> 'net'), "
                          "max(contribution_usd) FILTER (WHERE term = 'net') FROM pnl_by_term").fetchone()
    assert contrib[0] == pytest.approx(contrib[1], rel=1e-9)


def test_energy_and_off_hours(archive, con):
    s = summarize_connection(con, archive["site"])
    sold, curtailed, energy = con.execute(
        "SELECT sum(sold_back_mwh), sum(mining_curtailed_mwh), sum(energy_mwh) FROM energy_by_day").fetchone()
    assert sold == pytest.approx(s.sold_back_mwh, rel=1e-9)
    assert energy == pytest.approx(s.energy_mwh, rel=1e-9)
    assert curtailed == pytest.approx(s.mining_curtailed_mwh, rel=1e-6, abs=1e-6)
    (paused,) = con.execute("SELECT sum(gpu_hours_paused) FROM gpu_off_hours").fetchone()
    assert paused == pytest.approx(s.gpu_hours_paused, rel=1e-9)
    # hours off per fleet, recomputed from the actions
    h = archive["site"].interval_minutes / 60
    off = defaultdict(float)
    for a in archive["actions"]:
        for f in a.fleets:
            if f.units_online == 0:
                off[f.fleet] += h
    got = dict(con.execute("SELECT fleet, hours_off FROM fleet_off_hours").fetchall())
    assert got == pytest.approx(dict(off))
    assert sum(off.values()) > 0  # the scenario's spike curtails mining


def test_dr_compliance_matches_summary(archive, con):
    s = summarize_connection(con, archive["site"])
    rows = con.execute("SELECT event_id, required_max_load_mw, intervals_required, intervals_decided, max_load_mw, "
                       "shortfall_mwh, met, baseline_mw, delivered_reduction_mw FROM dr_compliance").fetchall()
    assert len(rows) == len(s.dr) == 1
    (eid, limit, req, dec, mx, short, met, baseline, delivered), d = rows[0], s.dr[0]
    assert (eid, req, dec) == (d.event_id, d.intervals_required, d.intervals_decided)
    assert limit == d.limit_mw and mx == pytest.approx(d.max_load_mw) and short == pytest.approx(d.shortfall_mwh)
    assert met == d.met
    assert baseline > limit and delivered > 0  # load before the event was above the firm level


def test_breakeven_view_uses_the_actions_breakevens(archive, con):
    rows = con.execute("SELECT fleet, avg(avg_breakeven_usd_mwh) FROM breakeven_by_day GROUP BY fleet").fetchall()
    be = dict(rows)
    # S21 (17.5 J/TH) breaks even at a higher price than S19j Pro (29.5 J/TH)
    assert be["s21"] > be["s19jpro"] > 0


def test_create_views_is_idempotent_and_works_read_only(archive, tmp_path):
    c = duckdb.connect(str(archive["db"]), read_only=True)
    try:
        assert has_views(c)
        before = c.execute("SELECT * FROM pnl_by_day ORDER BY day").fetchall()
        create_views(c, [archive["site"]], temp=True)  # read-only: temporary copies, same answers
        create_views(c, [archive["site"]], temp=True)
        assert c.execute("SELECT * FROM pnl_by_day ORDER BY day").fetchall() == before
    finally:
        c.close()
    # an unregistered site settles with a NULL net (the hedge is unknown), a registered one does not
    db2 = tmp_path / "b.duckdb"
    ar = Archive(db2)
    b = ArchiveBatch()
    for name, r in archive["events"][:2000]:
        b.add_input(name, r)
    for a in archive["actions"][:10]:
        b.add_action(a)
    ar.write_batch(b)
    con = ar.connection()
    create_views(con)
    create_views(con)
    assert {v for (v,) in con.execute("SELECT view_name FROM duckdb_views() WHERE NOT internal").fetchall()} >= set(VIEWS)
    nets = [n for (n,) in con.execute("SELECT net_usd FROM settled_actions WHERE settled").fetchall()]
    assert nets and all(n is None for n in nets)
    register_sites(con, [archive["site"]])
    nets = [n for (n,) in con.execute("SELECT net_usd FROM settled_actions WHERE settled").fetchall()]
    assert all(n is not None and math.isfinite(n) for n in nets)
    ar.close()


def test_export_hive_partitioned_parquet(archive, tmp_path):
    from wattmix.errors import SinkError
    from wattmix.export import export

    out = tmp_path / "pq"
    res = export(archive["db"], out)
    assert res["actions"] == (len(archive["actions"]), 3) and res["grid_prices"][0] == 360
    assert sorted(d.name for d in (out / "actions").iterdir()) == ["date=2024-08-05", "date=2024-08-06",
                                                                  "date=2024-08-07"]
    c = duckdb.connect()
    n, days = c.execute(f"SELECT count(*), count(DISTINCT date) FROM read_parquet('{out}/actions/*/*.parquet', "
                        "hive_partitioning = true)").fetchone()
    assert (n, days) == (len(archive["actions"]), 3)
    (g,) = c.execute(f"SELECT count(*) FROM read_parquet('{out}/gpu_telemetry/*/*.parquet', hive_partitioning = true) "
                     "WHERE date = DATE '2024-08-06'").fetchone()
    assert g == sum(1 for name, r in archive["events"] if name == "gpu_telemetry"
                    and r.observed_at.date().isoformat() == "2024-08-06")
    with pytest.raises(SinkError, match="--overwrite"):
        export(archive["db"], out)
    assert export(archive["db"], out, ["actions"], overwrite=True)["actions"][0] == len(archive["actions"])
