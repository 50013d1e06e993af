"""The backtest: the dispatch engine in process over historical files, with the baselines.

    wattmix backtest --site SITE.toml --prices RT_FILE --prices DA_FILE --hashprice FILE \\
        [--dr-events FILE] [--gpu-telemetry FILE] --db OUT.duckdb [--json] [--strike 100]
        [--settlement-point HB_HUBAVG] [--from 2024-01-01] [--to 2025-01-01] [--policy rolling]

Every input record is merged into one event-time order (ties broken by feed, in the order of
``schemas.topics.INPUT_FEEDS``, then by file order: the same rule as ``FeedMerger``) and fed to
a ``SiteProcessor`` per policy: the policy under test and the baselines of DESIGN.md
(always-on, fixed strike, myopic breakeven, perfect foresight). Every decision is then settled
at the realized RT price of its interval with :func:`dispatch.accounting.settle`, the one
accounting code of the project. Perfect foresight is given the realized prices as an oracle:
it is the only policy allowed to peek (it is the upper bound, not a dispatcher).

Writes a DuckDB table ``decisions`` (one row per policy and interval) and ``backtest_summary``
(one row per policy), and prints the totals and the captured flexibility value
``(policy - always-on) / (perfect foresight - always-on)``.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from dispatch.accounting import settle_values
from dispatch.engine import DecisionInput, Policy
from dispatch.processor import SiteProcessor
from schemas.action import DispatchAction
from schemas.feeds import DemandResponseEvent, GpuTelemetry, GridPrice, Hashprice
from schemas.site import SiteConfig, load_site
from schemas.topics import INPUT_FEEDS
from wattmix.errors import ConfigError

UTC = timezone.utc
FEED_RANK = {f.model: i for i, f in enumerate(INPUT_FEEDS)}
TERMS = ("mining_revenue_usd", "gpu_value_usd", "energy_cost_usd", "hedge_pnl_usd",
         "dr_payment_usd", "dr_penalty_usd", "net_usd")


# ---------------------------------------------------------------------------------------
# inputs


@dataclass
class Inputs:
    records: list[Any]                 # event-time ordered
    realized: dict[datetime, float]    # RT interval start -> realized price
    bad: Any = None
    counts: dict[str, int] = field(default_factory=dict)


def merge_event_time(*feeds: list[Any]) -> list[Any]:
    """One event-time order for several record lists; ties by feed rank, then input order."""
    keyed = []
    for recs in feeds:
        for seq, r in enumerate(recs):
            keyed.append((r.event_time(), FEED_RANK[type(r)], seq, r))
    keyed.sort(key=lambda x: x[:3])
    return [k[3] for k in keyed]


def _parse_when(text: str | None) -> datetime | None:
    if not text:
        return None
    s = text.strip().replace("Z", "+00:00")
    dt = datetime.fromisoformat(s)
    return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)


def load_inputs(
    site: SiteConfig,
    prices: list[str | Path],
    hashprice: list[str | Path] | str | Path | None = None,
    dr_events: list[str | Path] | str | Path | None = None,
    gpu_telemetry: list[str | Path] | str | Path | None = None,
    settlement_point: str | None = None,
    start: datetime | None = None,
    end: datetime | None = None,
    strict: bool = False,
) -> Inputs:
    from readers import BadRows, read_dr_events, read_gpu_telemetry, read_hashprice, read_prices

    def _list(x):
        return [] if x is None else [x] if isinstance(x, (str, Path)) else list(x)

    bad = None if strict else BadRows()
    sp = settlement_point or site.settlement_point
    sid = site.site_id
    price_recs: list[GridPrice] = []
    for f in _list(prices):
        for r in read_prices(f, sid, sp, bad):
            if (start is None or r.interval_start >= start) and (end is None or r.interval_start < end):
                price_recs.append(r)
    if not any(r.market == "RT" for r in price_recs):
        raise ConfigError(f"no real-time {sp} prices in {[str(p) for p in _list(prices)]} (within --from/--to)")
    first = min(r.published_at for r in price_recs if r.market == "RT")
    hp_recs: list[Hashprice] = []
    for f in _list(hashprice):
        recs = [r for r in read_hashprice(f, sid, bad) if end is None or r.published_at <= end]
        # only the latest one published before the first decision matters, plus what follows
        before = [r for r in recs if r.published_at <= first]
        hp_recs.extend(before[-1:] + [r for r in recs if r.published_at > first])
    dr_recs: list[DemandResponseEvent] = []
    for f in _list(dr_events):
        dr_recs.extend(read_dr_events(f, sid, bad))
    gpu_recs: list[GpuTelemetry] = []
    for f in _list(gpu_telemetry):
        gpu_recs.extend(r for r in read_gpu_telemetry(f, sid, bad) if end is None or r.observed_at <= end)
    realized = {r.interval_start: r.price_usd_mwh for r in price_recs if r.market == "RT"}
    # nothing after the last RT price can be settled: stop the event stream there
    last = max(r.published_at for r in price_recs if r.market == "RT")
    hp_recs = [r for r in hp_recs if r.published_at <= last]
    gpu_recs = [r for r in gpu_recs if r.observed_at <= last]
    dr_recs = [r for r in dr_recs if r.issued_at <= last]
    records = merge_event_time(price_recs, dr_recs, hp_recs, gpu_recs)
    gc.freeze()  # the loaded records live for the whole run: keep them out of GC scans
    counts = {"rt_prices": len(realized), "da_prices": sum(r.market == "DA" for r in price_recs),
              "hashprice": len(hp_recs), "dr_events": len(dr_recs), "gpu_telemetry": len(gpu_recs)}
    return Inputs(records, realized, bad, counts)


# ---------------------------------------------------------------------------------------
# running policies


class _Timed:
    """Wraps a policy to time each decision (the engine's own latency, fold excluded)."""

    def __init__(self, inner: Policy) -> None:
        self.inner = inner
        self.name = inner.name
        self.ns: list[int] = []

    def decide(self, inp: DecisionInput) -> DispatchAction:
        t0 = time.perf_counter_ns()
        a = self.inner.decide(inp)
        self.ns.append(time.perf_counter_ns() - t0)
        return a


@dataclass
class PolicyRun:
    name: str
    columns: dict[str, list]
    totals: dict[str, float]
    latency_ns: list[int]
    seconds: float
    unsettled: int = 0
    engine: str = ""


def run_policy(site: SiteConfig, policy: Policy, records: list[Any], realized: dict[datetime, float],
               label: str | None = None) -> PolicyRun:
    """Feed the records through a SiteProcessor and settle each decision at its realized price."""
    timed = _Timed(policy)
    proc = SiteProcessor(site, timed)
    fleets = [f.name for f in site.miner_fleets]
    classes = list(site.gpu_classes())
    cols: dict[str, list] = {k: [] for k in (
        "interval_start", "price_known_usd_mwh", "price_expected_usd_mwh", "price_realized_usd_mwh",
        "hashprice_usd_per_ph_day")}
    for f in fleets:
        cols[f"mw_{f}"] = []
    for c in classes:
        cols[f"mw_{c}"] = []
        cols[f"gpus_running_{c}"] = []
        cols[f"tier_{c}"] = []
    for k in ("load_mw", "sold_back_mw", "sold_back_mwh") + TERMS + ("dr_limit_mw", "shortfall_mw", "shortfall_mwh", "reasons"):
        cols[k] = []
    unsettled = 0
    h = site.interval_minutes / 60.0
    t0 = time.perf_counter()
    process = proc.process
    get = realized.get
    # the run allocates many small objects and frees few: cyclic GC passes over them are pure
    # overhead (nothing here makes reference cycles that outlive the run)
    gc_was = gc.isenabled()
    gc.disable()
    try:
        acts: list[DispatchAction] = []
        real: list[float] = []
        for r in records:
            out = process(r)
            if out.actions:
                for a in out.actions:
                    p = get(a.interval_start)
                    if p is None:
                        unsettled += 1
                        continue
                    acts.append(a)
                    real.append(p)
        # settled and flattened into plain columns once the run is done (list comprehensions)
        vals = [settle_values(a, p, site) for a, p in zip(acts, real)]
    finally:
        if gc_was:
            gc.enable()
    cols["interval_start"] = [a.interval_start for a in acts]
    cols["price_known_usd_mwh"] = [a.price_known_usd_mwh for a in acts]
    cols["price_expected_usd_mwh"] = [a.price_expected_usd_mwh for a in acts]
    cols["price_realized_usd_mwh"] = real
    cols["hashprice_usd_per_ph_day"] = [a.hashprice_usd_per_ph_day for a in acts]
    for i, f in enumerate(fleets):
        cols[f"mw_{f}"] = [a.fleets[i].power_mw for a in acts]
    for c in classes:
        i = [g.gpu_class for g in acts[0].gpus].index(c) if acts else 0
        gs = [a.gpus[i] if a.gpus[i].gpu_class == c else next(g for g in a.gpus if g.gpu_class == c) for a in acts]
        cols[f"mw_{c}"] = [g.power_mw for g in gs]
        cols[f"gpus_running_{c}"] = [g.gpus_running for g in gs]
        cols[f"tier_{c}"] = [g.power_cap_tier for g in gs]
    cols["load_mw"] = [a.load_mw for a in acts]
    cols["sold_back_mw"] = sb = [a.sold_back_mw for a in acts]
    cols["sold_back_mwh"] = [x * h for x in sb]
    for j, k in enumerate(TERMS):
        cols[k] = [v[j] for v in vals]
    drs = [a.dr for a in acts]
    cols["dr_limit_mw"] = [d.limit_mw for d in drs]
    cols["shortfall_mw"] = sf = [d.shortfall_mw for d in drs]
    cols["shortfall_mwh"] = [x * h for x in sf]
    cols["reasons"] = ["; ".join(a.reasons) for a in acts]
    del acts, vals, drs
    seconds = time.perf_counter() - t0
    totals = {k: math.fsum(cols[k]) for k in TERMS}
    totals["intervals"] = len(cols["interval_start"])
    totals["energy_mwh"] = math.fsum(x * (site.interval_minutes / 60.0) for x in cols["load_mw"])
    totals["sold_back_mwh"] = math.fsum(cols["sold_back_mwh"])
    totals["shortfall_mwh"] = math.fsum(cols["shortfall_mwh"])
    return PolicyRun(label or policy.name, cols, totals, timed.ns, seconds, unsettled, policy.name)


def make_policies(site: SiteConfig, realized: dict[datetime, float], strike: float = 100.0,
                  policy: str = "rolling") -> list[tuple[str, Policy]]:
    """The policy under test (first) and the baselines, as (label, Policy)."""
    from dispatch.policies import (AlwaysOnPolicy, FixedStrikePolicy, MyopicPolicy,
                                   PerfectForesightPolicy, RollingHorizonPolicy)

    main: Policy
    if policy == "rolling":
        main = RollingHorizonPolicy()
    elif policy == "myopic":
        main = MyopicPolicy()
    else:
        raise ConfigError(f"unknown policy {policy!r}")
    return [
        ("policy", main),
        ("always_on", AlwaysOnPolicy()),
        ("fixed_strike", FixedStrikePolicy(strike)),
        ("myopic_breakeven", MyopicPolicy()),
        ("perfect_foresight", PerfectForesightPolicy(realized)),
    ]


_FORK_STATE: dict[str, Any] = {}


def _run_forked(i: int) -> PolicyRun:
    st = _FORK_STATE
    label, pol = st["policies"][i]
    return run_policy(st["site"], pol, st["records"], st["realized"], label)


def run_all(site: SiteConfig, inputs: Inputs, policies: list[tuple[str, Policy]], jobs: int | None = None) -> list[PolicyRun]:
    """Run every policy; with ``jobs`` > 1 (default: the CPU count, max 2 here) in forked
    worker processes, which see the already loaded records without copying them."""
    jobs = jobs if jobs is not None else min(len(policies), os.cpu_count() or 1)
    if jobs > 1 and sys.platform.startswith("linux"):
        import multiprocessing as mp

        _FORK_STATE.update(site=site, records=inputs.records, realized=inputs.realized, policies=policies)
        try:
            ctx = mp.get_context("fork")
            with ctx.Pool(jobs) as pool:
                return pool.map(_run_forked, range(len(policies)), chunksize=1)
        finally:
            _FORK_STATE.clear()
    return [run_policy(site, pol, inputs.records, inputs.realized, label) for label, pol in policies]


def captured(runs: dict[str, PolicyRun], name: str) -> float | None:
    base = runs["always_on"].totals["net_usd"]
    pf = runs["perfect_foresight"].totals["net_usd"]
    if pf - base <= 1e-9:
        return None
    return (runs[name].totals["net_usd"] - base) / (pf - base)


def latency_stats(ns: list[int]) -> dict[str, float]:
    if not ns:
        return {"p50_us": 0.0, "p99_us": 0.0, "max_us": 0.0}
    s = sorted(ns)
    q = lambda f: s[min(len(s) - 1, int(f * len(s)))] / 1000.0  # noqa: E731
    return {"p50_us": q(0.50), "p99_us": q(0.99), "max_us": s[-1] / 1000.0}


def write_db(db: str | Path, runs: list[PolicyRun], summary: list[dict[str, Any]]) -> None:
    """(Re)create ``decisions`` and ``backtest_summary`` from Arrow tables (no executemany)."""
    import duckdb
    import pyarrow as pa

    tables = []
    for r in runs:
        n = len(r.columns["interval_start"])
        cols = {"policy": pa.array([r.name] * n, pa.string())}
        for k, v in r.columns.items():
            if k == "interval_start":
                cols[k] = pa.array(v, pa.timestamp("us", tz="UTC"))
            elif k == "reasons":
                cols[k] = pa.array(v, pa.string())
            elif k.startswith(("gpus_running_", "tier_")):
                cols[k] = pa.array(v, pa.int32())
            else:
                cols[k] = pa.array(v, pa.float64())
        tables.append(pa.table(cols))
    decisions = pa.concat_tables(tables, promote_options="default") if tables else pa.table({})
    summ = pa.Table.from_pylist(summary)
    Path(db).parent.mkdir(parents=True, exist_ok=True)
    con = duckdb.connect(str(db))
    try:
        con.register("decisions_arrow", decisions)
        con.register("summary_arrow", summ)
        con.execute("CREATE OR REPLACE TABLE decisions AS SELECT * FROM decisions_arrow")
        con.execute("CREATE OR REPLACE TABLE backtest_summary AS SELECT * FROM summary_arrow")
        con.unregister("decisions_arrow")
        con.unregister("summary_arrow")
    finally:
        con.close()


def backtest(site: SiteConfig, inputs: Inputs, strike: float = 100.0, policy: str = "rolling",
             jobs: int | None = None) -> dict[str, Any]:
    """Run the policy and the baselines; return the report (and the runs under '_runs')."""
    t0 = time.perf_counter()
    runs = run_all(site, inputs, make_policies(site, inputs.realized, strike, policy), jobs)
    wall = time.perf_counter() - t0
    by = {r.name: r for r in runs}
    report: dict[str, Any] = {"site": site.site_id, "settlement_point": site.settlement_point}
    first = runs[0].columns["interval_start"]
    report["from"] = first[0].isoformat() if first else None
    report["to"] = first[-1].isoformat() if first else None
    report["intervals"] = runs[0].totals["intervals"]
    report["inputs"] = inputs.counts
    report["policies"] = {}
    for r in runs:
        d = {k: round(v, 2) if isinstance(v, float) else v for k, v in r.totals.items()}
        d["engine"] = r.engine
        d["captured_flexibility"] = captured(by, r.name)
        d["unsettled_decisions"] = r.unsettled
        d["latency"] = latency_stats(r.latency_ns)
        d["seconds"] = round(r.seconds, 3)
        report["policies"][r.name] = d
    decisions = sum(len(r.latency_ns) for r in runs)
    report["timing"] = {"wall_seconds": round(wall, 3), "decisions": decisions,
                        "decisions_per_second": round(decisions / wall) if wall > 0 else None,
                        "policy_latency": latency_stats(runs[0].latency_ns)}
    report["bad_rows"] = len(inputs.bad) if inputs.bad is not None else 0
    report["_runs"] = runs
    return report


def add_backtest_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--site", required=True, help="site TOML file")
    p.add_argument("--prices", action="append", required=True, help="price file (repeatable): ERCOT RTM/DAM native CSV or wattmix CSV/Parquet/JSONL")
    p.add_argument("--hashprice", action="append", default=[], help="daily hashprice CSV or wattmix layout (repeatable)")
    p.add_argument("--dr-events", action="append", default=[], help="DR events JSONL/CSV (repeatable)")
    p.add_argument("--gpu-telemetry", action="append", default=[], help="GPU telemetry JSONL/CSV/Parquet (repeatable)")
    p.add_argument("--db", required=True, help="DuckDB file to write (tables decisions, backtest_summary)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--strike", type=float, default=100.0, help="fixed strike baseline, $/MWh (default 100)")
    p.add_argument("--settlement-point", default=None, help="settlement point (default: the site's)")
    p.add_argument("--from", dest="start", default=None, help="first interval (ISO date/time, UTC)")
    p.add_argument("--to", dest="end", default=None, help="end of the last interval, exclusive (ISO, UTC)")
    p.add_argument("--policy", default="rolling", choices=["rolling", "myopic"],
                   help="policy under test (default: rolling horizon with the online forecast)")
    p.add_argument("--jobs", type=int, default=None, help="worker processes for the policies (default: CPUs)")
    p.add_argument("--strict", action="store_true", help="stop at the first bad input row instead of skipping it")


def run_backtest_cli(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    site = load_site(args.site)
    if args.settlement_point and args.settlement_point.upper() != site.settlement_point.upper():
        site = site.model_copy(update={"settlement_point": args.settlement_point.upper()})
    try:
        start, end = _parse_when(args.start), _parse_when(args.end)
    except ValueError as exc:
        raise ConfigError(f"--from/--to: {exc}") from exc
    inputs = load_inputs(site, args.prices, args.hashprice, args.dr_events, args.gpu_telemetry,
                         site.settlement_point, start, end, strict=args.strict)
    t_load = time.perf_counter() - t0
    rep = backtest(site, inputs, args.strike, args.policy, args.jobs)
    runs = rep.pop("_runs")
    summary = [{"policy": name, **{k: v for k, v in d.items() if not isinstance(v, dict)}}
               for name, d in rep["policies"].items()]
    write_db(args.db, runs, summary)
    rep["timing"]["load_seconds"] = round(t_load, 3)
    rep["timing"]["total_seconds"] = round(time.perf_counter() - t0, 3)
    rep["db"] = str(args.db)
    if args.json:
        print(json.dumps(rep, indent=2, default=str))
    else:
        print(format_report(rep))
        if inputs.bad is not None and len(inputs.bad):
            print(inputs.bad.summary(), file=sys.stderr)
    return 0


def format_report(rep: dict[str, Any]) -> str:
    lines = [f"backtest {rep['site']} @ {rep['settlement_point']}: {rep['intervals']} intervals "
             f"{rep['from']} .. {rep['to']}"]
    lines.append(f"{'policy':<20}{'net $':>16}{'mining $':>14}{'gpu $':>14}{'energy $':>14}"
                 f"{'hedge $':>14}{'shortfall MWh':>15}{'captured':>10}")
    for name, d in rep["policies"].items():
        cap = d["captured_flexibility"]
        lines.append(f"{name:<20}{d['net_usd']:>16,.0f}{d['mining_revenue_usd']:>14,.0f}{d['gpu_value_usd']:>14,.0f}"
                     f"{d['energy_cost_usd']:>14,.0f}{d['hedge_pnl_usd']:>14,.0f}{d['shortfall_mwh']:>15,.2f}"
                     f"{'' if cap is None else f'{cap:.1%}':>10}")
    t = rep["timing"]
    lat = t["policy_latency"]
    lines.append(f"{t['decisions']} decisions in {t['wall_seconds']:.2f} s ({t['decisions_per_second']:,}/s); "
                 f"policy latency p50 {lat['p50_us']:.0f} us, p99 {lat['p99_us']:.0f} us; "
                 f"load {t.get('load_seconds', 0):.2f} s, total {t.get('total_seconds', 0):.2f} s")
    if rep.get("bad_rows"):
        lines.append(f"{rep['bad_rows']} bad input rows skipped")
    lines.append(f"decisions written to {rep.get('db')}")
    return "\n".join(lines)
