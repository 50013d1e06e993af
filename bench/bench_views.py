"""Analytics views benchmark (a script, not a test): how fast the views of sinks/views.py
answer over a full-year archive.

    /tmp/wmvenv/bin/python bench/bench_views.py [--db /tmp/year.duckdb] [--keep] [--repeat 7]

Builds (unless ``--db`` exists and ``--keep``) a full-year archive of the sample site: the
2024 ERCOT HB_HUBAVG real-time and day-ahead prices and the daily hashprice of
../shared/data, decided interval by interval by the engine in process (myopic-breakeven
policy: the fast one; the views do not care who decided), archived with ``Archive.write_batch``
(35,135 actions, ~46k input events), plus one DR event a month. Then opens it READ-ONLY, as
``wattmix sql`` and ``wattmix report`` do, and times each view: the first (cold) query and
the median of ``--repeat`` warm ones. Goal: ``pnl_by_day`` < 200 ms.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import duckdb  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
RT = DATA / "ercot" / "ercot_rt_15min_hb_hubavg_2024.parquet"
DA = DATA / "ercot" / "ercot_da_hourly_hb_hubavg_2024.parquet"
HP = DATA / "btc" / "btc_hashprice_daily_derived_2018-01-01_2025-01-12.csv"

QUERIES = {
    "pnl_by_day": "SELECT * FROM pnl_by_day",
    "pnl_by_term": "SELECT * FROM pnl_by_term",
    "energy_by_day": "SELECT * FROM energy_by_day",
    "fleet_off_hours": "SELECT * FROM fleet_off_hours",
    "breakeven_by_day": "SELECT * FROM breakeven_by_day",
    "dr_compliance": "SELECT * FROM dr_compliance",
    "settled_actions (count)": "SELECT count(*), sum(net_usd) FROM settled_actions",
}


def build(db: Path) -> dict:
    from dispatch.backtest import load_inputs
    from dispatch.policies import MyopicPolicy
    from dispatch.processor import run_in_process
    from schemas.feeds import DemandResponseEvent
    from schemas.site import load_sample_site
    from sinks.archive import Archive, ArchiveBatch
    from sinks.views import create_views

    for p in (db, Path(str(db) + ".wal")):
        p.unlink(missing_ok=True)
    site = load_sample_site()
    t0 = time.perf_counter()
    inp = load_inputs(site, [RT, DA], HP)
    # one 2-hour ERS event a month (mid-month, 21:00 UTC), 30 min notice
    dr = []
    for m in range(1, 13):
        first = next(r for r in inp.records if getattr(r, "market", None) == "RT"
                     and r.interval_start.month == m and r.interval_start.day == 15)
        start = first.interval_start.replace(hour=21, minute=0)
        dr.append(DemandResponseEvent(
            site_id=site.site_id, event_id=f"ers-2024-{m:02d}", program="ERS-30", revision=0, status="scheduled",
            notice_at=start - timedelta(minutes=30), start=start, end=start + timedelta(hours=2),
            obligation_kind="firm_service_level", obligation_mw=20, capacity_payment_usd_mw_h=8,
            penalty_usd_mwh=1000, issued_at=start - timedelta(minutes=30)))
    records = sorted(inp.records + dr, key=lambda r: r.event_time())
    t1 = time.perf_counter()
    actions = run_in_process(site, records, MyopicPolicy())
    t2 = time.perf_counter()
    ar = Archive(db)
    b = ArchiveBatch()
    names = {"GridPrice": "grid_prices", "Hashprice": "hashprice", "DemandResponseEvent": "dr_events"}
    for r in records:
        b.add_input(names[type(r).__name__], r)
    for a in actions:
        b.add_action(a)
    ar.write_batch(b)
    create_views(ar.connection(), [site])
    ar.checkpoint()
    ar.close()
    t3 = time.perf_counter()
    return {"inputs": len(records), "actions": len(actions), "load_s": t1 - t0, "engine_s": t2 - t1,
            "archive_s": t3 - t2, "mb": db.stat().st_size / 1e6}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--db", default="/tmp/wattmix-bench-views-year.duckdb")
    ap.add_argument("--keep", action="store_true", help="reuse --db if it exists")
    ap.add_argument("--repeat", type=int, default=7)
    args = ap.parse_args()
    if not RT.exists():
        print(f"needs {RT}", file=sys.stderr)
        return 2
    db = Path(args.db)
    print(f"python {platform.python_version()}, duckdb {duckdb.__version__}, {os.cpu_count()} cores, "
          f"load {os.getloadavg()[0]:.1f}")
    if not (args.keep and db.exists()):
        info = build(db)
        print(f"built {db}: {info['inputs']:,} input events, {info['actions']:,} actions "
              f"(load {info['load_s']:.1f} s, engine {info['engine_s']:.1f} s, archive {info['archive_s']:.1f} s), "
              f"{info['mb']:.1f} MB")
    con = duckdb.connect(str(db), read_only=True)
    con.execute("SET TimeZone = 'UTC'")
    print(f"{'view':<26} {'rows':>6} {'cold ms':>9} {'warm median ms':>15} {'warm min ms':>12}")
    result = {}
    for name, sql in QUERIES.items():
        t = time.perf_counter()
        rows = con.execute(sql).fetchall()
        cold = (time.perf_counter() - t) * 1000
        warm = []
        for _ in range(args.repeat):
            t = time.perf_counter()
            con.execute(sql).fetchall()
            warm.append((time.perf_counter() - t) * 1000)
        result[name] = statistics.median(warm)
        print(f"{name:<26} {len(rows):>6} {cold:>9.1f} {statistics.median(warm):>15.1f} {min(warm):>12.1f}")
    con.close()
    ok = result["pnl_by_day"] < 200
    print(f"pnl_by_day over a full year: {result['pnl_by_day']:.1f} ms (goal < 200 ms): {'OK' if ok else 'MISSED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
