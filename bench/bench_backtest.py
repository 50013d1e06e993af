"""Backtest benchmark: capture figures (2024 RT+DA parquet, Feb 2020 native files), timing,
per-decision latency, and a DR check (a dozen 1-4 h ERS-style events with 30 min notice on
high-price afternoons of 2024: every feasible event must be met with zero shortfall MWh).

    /tmp/wmvenv/bin/python bench/bench_backtest.py [--jobs N]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DATA = ROOT.parent / "shared" / "data"

from dispatch.backtest import backtest, load_inputs  # noqa: E402
from schemas.site import load_sample_site  # noqa: E402

RT24 = DATA / "ercot" / "ercot_rt_15min_hb_hubavg_2024.parquet"
DA24 = DATA / "ercot" / "ercot_da_hourly_hb_hubavg_2024.parquet"
RTM20 = DATA / "ercot" / "ercot_rtm_spp_lz_hub_2020-02_raw.csv"
DAM20 = DATA / "ercot" / "ercot_dam_spp_lz_hub_2020-02_raw.csv"
HP = DATA / "btc" / "btc_hashprice_daily_derived_2018-01-01_2025-01-12.csv"


def dr_events_2024(path: Path, n: int = 12) -> list[dict]:
    """n events on the n highest-DA afternoons (distinct days), 1-4 h, 30 min notice, 20 MW firm."""
    from readers import read_prices
    from readers.timeutil import CPT

    da = [r for r in read_prices(DA24, "sample") if 14 <= r.interval_start.astimezone(CPT).hour <= 18]
    best: dict = {}
    for r in da:
        d = r.interval_start.astimezone(CPT).date()
        if d not in best or r.price_usd_mwh > best[d].price_usd_mwh:
            best[d] = r
    days = sorted(best.values(), key=lambda r: -r.price_usd_mwh)[:n]
    out = []
    for i, r in enumerate(sorted(days, key=lambda r: r.interval_start)):
        start = r.interval_start
        dur = timedelta(hours=1 + i % 4)
        out.append({"event_id": f"ers-{i:02d}", "program": "ERS-30", "revision": 0, "status": "scheduled",
                    "notice_at": (start - timedelta(minutes=30)).isoformat(), "start": start.isoformat(),
                    "end": (start + dur).isoformat(), "obligation_kind": "firm_service_level",
                    "obligation_mw": 20, "penalty_usd_mwh": 1000,
                    "issued_at": (start - timedelta(minutes=30)).isoformat()})
    path.write_text("".join(json.dumps(e) + "\n" for e in out))
    return out


def one(label, prices, dr=None, jobs=None):
    site = load_sample_site()
    t0 = time.perf_counter()
    inputs = load_inputs(site, prices, HP, dr)
    t_load = time.perf_counter() - t0
    rep = backtest(site, inputs, 100.0, "rolling", jobs)
    wall = time.perf_counter() - t0
    runs = rep.pop("_runs")
    p = rep["policies"]
    print(f"\n== {label}: {rep['intervals']} intervals ({rep['from']} .. {rep['to']})")
    for name, d in p.items():
        cap = d["captured_flexibility"]
        print(f"  {name:<18} net ${d['net_usd']:>15,.0f}  captured {'' if cap is None else f'{cap:7.1%}'}"
              f"  shortfall {d['shortfall_mwh']:.2f} MWh  ({d['engine']})")
    t = rep["timing"]
    lat = t["policy_latency"]
    print(f"  timing: load {t_load:.2f} s + {t['decisions']} decisions (5 policies) in {t['wall_seconds']:.2f} s"
          f" = {t['decisions_per_second']:,}/s; total {wall:.2f} s; engine latency p50 {lat['p50_us']:.0f} us"
          f" p99 {lat['p99_us']:.0f} us")
    return rep, runs


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=None)
    args = ap.parse_args()
    if not RT24.exists():
        print("shared data not found", file=sys.stderr)
        return 1
    one("2024 HB_HUBAVG RT+DA, daily hashprice, no DR", [RT24, DA24], jobs=args.jobs)
    one("Feb 2020 HB_HUBAVG native RTM+DAM", [RTM20, DAM20], jobs=args.jobs)
    with tempfile.TemporaryDirectory() as tmp:
        drp = Path(tmp) / "dr.jsonl"
        evs = dr_events_2024(drp)
        rep, runs = one(f"2024 with {len(evs)} injected DR events (20 MW firm, 30 min notice)", [RT24, DA24], drp, args.jobs)
        pol = next(r for r in runs if r.name == "policy")
        lim = [x for x in pol.columns["dr_limit_mw"] if x is not None]
        print(f"  DR: {len(lim)} event intervals, policy shortfall {pol.totals['shortfall_mwh']:.3f} MWh,"
              f" max load in events {max((l for l, d in zip(pol.columns['load_mw'], pol.columns['dr_limit_mw']) if d is not None), default=0):.2f} MW")
    return 0


if __name__ == "__main__":
    sys.exit(main())
