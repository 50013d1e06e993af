"""The backtest: the dispatch engine in process over historical files, with the baselines.

    wattmix backtest --site SITE.toml --prices RT_FILE --prices DA_FILE --hashprice FILE \\
        [--dr-events FILE] [--gpu-telemetry FILE] --db OUT.duckdb [--json] [--strike 100]
        [--settlement-point HB_HUBAVG] [--from 2024-01-01] [--to 2025-01-01] [--policy rolling]

Every input record is merged into one event-time order (ties broken by feed, in the order of
``schemas.topics.INPUT_FEEDS``, then by file order: the same rule as ``FeedMerger``) and fed,
once per process, to a ``dispatch.processor.SharedPass`` of the policy under test and the
baselines of DESIGN.md (always-on, fixed strike, myopic breakeven, perfect foresight): one
state fold, each policy with its own engine memory, the same decisions as a ``SiteProcessor``
per policy. With 2 CPUs the policies run in 2 forked processes (``policy_groups``). Every
decision is then settled at the realized RT price of its interval with
:func:`dispatch.accounting.settle_terms` on whole columns, the one accounting code of the
project. Perfect foresight is given the realized prices as an oracle: it is the only policy
allowed to peek (it is the upper bound, not a dispatcher).

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
import pickle
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from operator import itemgetter
from pathlib import Path
from typing import Any

from dispatch.accounting import settle_terms
from dispatch.engine import DecisionInput, DecisionRow, Policy
from dispatch.processor import SharedPass
from schemas.action import DispatchAction
from schemas.feeds import DemandResponseEvent, GpuTelemetry, GridPrice, Hashprice
from schemas.site import SiteConfig, load_site
from schemas.topics import INPUT_FEEDS
from wattmix.errors import ConfigError, EngineError

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
    # (time, rank, seq, list) is unique, so the plain tuple sort never compares two records
    keyed = [(r.event_time(), FEED_RANK[type(r)], seq, i, r) for i, recs in enumerate(feeds) for seq, r in enumerate(recs)]
    keyed.sort()
    return [k[4] for k in keyed]


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
    from readers import (
        BadRows,
        read_dr_events,
        read_gpu_telemetry,
        read_hashprice,
        read_prices,
    )

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
    rt_recs = [r for r in price_recs if r.market == "RT"]
    if not rt_recs:
        raise ConfigError(f"no real-time {sp} prices in {[str(p) for p in _list(prices)]} (within --from/--to)")
    first = min(r.published_at for r in rt_recs)
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
    realized = {r.interval_start: r.price_usd_mwh for r in rt_recs}
    # nothing after the last RT price can be settled: stop the event stream there
    last = max(r.published_at for r in rt_recs)
    hp_recs = [r for r in hp_recs if r.published_at <= last]
    gpu_recs = [r for r in gpu_recs if r.observed_at <= last]
    dr_recs = [r for r in dr_recs if r.issued_at <= last]
    records = merge_event_time(price_recs, dr_recs, hp_recs, gpu_recs)
    gc.freeze()  # the loaded records live for the whole run: keep them out of GC scans
    counts = {"rt_prices": len(realized), "da_prices": len(price_recs) - len(rt_recs),
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

        if hasattr(inner, "decide_row"):
            self.decide_row = self._decide_row

    def decide(self, inp: DecisionInput) -> DispatchAction:
        t0 = time.perf_counter_ns()
        a = self.inner.decide(inp)
        self.ns.append(time.perf_counter_ns() - t0)
        return a

    def _decide_row(self, inp: DecisionInput) -> DecisionRow:
        t0 = time.perf_counter_ns()
        row = self.inner.decide_row(inp)  # type: ignore[attr-defined]
        self.ns.append(time.perf_counter_ns() - t0)
        return row


@dataclass
class PolicyRun:
    name: str
    table: Any                 # pyarrow.Table: this policy's rows of ``decisions`` (no policy column)
    totals: dict[str, float]
    latency_ns: list[int]      # the engine's time per decision (fold, watchdog, settlement excluded)
    unsettled: int = 0
    engine: str = ""
    # the shared pass this run was part of: its policies, wall and CPU seconds (decisions, fold, settlement)
    pass_policies: tuple[str, ...] = ()
    pass_seconds: float = 0.0
    pass_cpu_seconds: float = 0.0

    def column(self, name: str) -> list:
        return self.table.column(name).to_pylist()


#: what ``decisions`` keeps of an action (see :class:`dispatch.engine.DecisionRow`)
decision_row = DecisionRow.of
ROW = DecisionRow._fields


def _per_distinct(objs: Sequence[Any], fields: Callable[[Any], tuple], width: int) -> list[tuple]:
    """``fields(obj)`` (``width`` values) of every object as columns, one tuple per field,
    computed once per distinct object (by identity); the loops over all objects run in C."""
    if not objs:
        return [()] * width
    ids = list(map(id, objs))
    by_id = {k: fields(o) for k, o in dict(zip(ids, objs)).items()}
    return list(zip(*map(by_id.__getitem__, ids)))


def settled_table(site: SiteConfig, rows: list[tuple], realized: dict[datetime, float]):
    """(decisions table, totals, unsettled) from ``decision_row``s: every decision settled at the
    realized price of its interval with :func:`dispatch.accounting.settle_terms` on whole
    columns (numpy), and laid out as the columns of ``decisions``. Decisions without a
    realized price are dropped (and counted)."""
    import numpy as np
    import pyarrow as pa

    real = list(map(realized.get, map(itemgetter(0), rows)))
    settled = [row for row, p in zip(rows, real) if p is not None] if None in real else rows
    real = [p for p in real if p is not None]
    c = dict(zip(ROW, zip(*settled) if settled else [()] * len(ROW)))
    h = site.interval_minutes / 60.0
    f64, i32 = pa.float64(), pa.int32()

    def floats(values: Sequence[float]) -> Any:
        return np.array(values, dtype=np.float64)

    load, sold, short = floats(c["load_mw"]), floats(c["sold_back_mw"]), floats(c["shortfall_mw"])
    terms = settle_terms(site, floats(real), load, floats(c["interval_minutes"]) / 60.0, floats(c["mining"]),
                         floats(c["gpu_value"]), floats(c["dr_payment"]), floats(c["dr_penalty"]))
    terms = [t if np.ndim(t) else np.full(len(real), t) for t in terms]  # without a hedge its term is 0.0
    bad = np.flatnonzero(~np.isfinite(terms[-1]))
    if len(bad):
        i = int(bad[0])
        raise ValueError(f"P&L terms are not finite at {c['interval_start'][i]}: price {real[i]!r}")
    cols: dict[str, Any] = {
        "interval_start": pa.array(c["interval_start"], pa.timestamp("us", tz="UTC")),
        "price_known_usd_mwh": pa.array(c["price_known"], f64),
        "price_expected_usd_mwh": pa.array(c["price_expected"], f64),
        "price_realized_usd_mwh": pa.array(real, f64),
        "hashprice_usd_per_ph_day": pa.array(c["hashprice"], f64),
    }
    # fleets and GPU classes: the same few list objects recur (the engine caches them), so each
    # distinct list is read once (~0.1 s per policy-year saved over reading every row's objects)
    names = [f.name for f in site.miner_fleets]
    mw_fleets = _per_distinct(c["fleets"], lambda fl: tuple({x.fleet: x.power_mw for x in fl}[n] for n in names),
                              len(names))
    for n, mw in zip(names, mw_fleets):
        cols[f"mw_{n}"] = pa.array(mw, f64)
    classes = site.gpu_classes()

    def gpu_fields(gl: list) -> tuple:
        by = {g.gpu_class: g for g in gl}
        return tuple(x for cls in classes for x in (by[cls].power_mw, by[cls].gpus_running, by[cls].power_cap_tier))

    per_gpu = _per_distinct(c["gpus"], gpu_fields, 3 * len(classes))
    for k, cls in enumerate(classes):
        cols[f"mw_{cls}"] = pa.array(per_gpu[3 * k], f64)
        cols[f"gpus_running_{cls}"] = pa.array(per_gpu[3 * k + 1], i32)
        cols[f"tier_{cls}"] = pa.array(per_gpu[3 * k + 2], i32)
    cols["load_mw"] = pa.array(load)
    cols["sold_back_mw"] = pa.array(sold)
    cols["sold_back_mwh"] = pa.array(sold * h)
    for k, v in zip(TERMS, terms):
        cols[k] = pa.array(v)
    cols["dr_limit_mw"] = pa.array(c["dr_limit_mw"], f64)
    cols["shortfall_mw"] = pa.array(short)
    cols["shortfall_mwh"] = pa.array(short * h)
    cols["reasons"] = pa.array(c["reasons"], pa.string())
    totals = {k: math.fsum(v.tolist()) for k, v in zip(TERMS, terms)}
    totals["intervals"] = len(real)
    totals["energy_mwh"] = math.fsum((load * h).tolist())
    totals["sold_back_mwh"] = math.fsum((sold * h).tolist())
    totals["shortfall_mwh"] = math.fsum((short * h).tolist())
    return pa.table(cols), totals, len(rows) - len(real)


def run_policies(site: SiteConfig, policies: list[tuple[str, Policy]], records: list[Any],
                 realized: dict[datetime, float]) -> list[PolicyRun]:
    """All ``policies`` in one pass over the records (one fold, an engine memory each), every
    decision settled at its realized price."""
    t0, c0 = time.perf_counter(), time.process_time()
    timed = [_Timed(p) for _, p in policies]
    # the run allocates many small objects and frees few: cyclic GC passes over them are pure
    # overhead (nothing here makes reference cycles that outlive the run)
    gc_was = gc.isenabled()
    gc.disable()
    try:
        per_policy = SharedPass(site, timed).run(records, rows=True)  # type: ignore[arg-type]
        runs = []
        for (label, pol), tp, rows in zip(policies, timed, per_policy):
            table, totals, unsettled = settled_table(site, rows, realized)
            runs.append(PolicyRun(label, table, totals, tp.ns, unsettled, pol.name))
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        for r in runs:
            r.pass_policies, r.pass_seconds, r.pass_cpu_seconds = tuple(x.name for x in runs), wall, cpu
        return runs
    finally:
        if gc_was:
            gc.enable()


def run_policy(site: SiteConfig, policy: Policy, records: list[Any], realized: dict[datetime, float],
               label: str | None = None) -> PolicyRun:
    """One policy over the records, settled (see :func:`run_policies`)."""
    return run_policies(site, [(label or policy.name, policy)], records, realized)[0]


def make_policies(site: SiteConfig, realized: dict[datetime, float], strike: float = 100.0,
                  policy: str = "rolling") -> list[tuple[str, Policy]]:
    """The policy under test (first) and the baselines, as (label, Policy)."""
    from dispatch.policies import (
        AlwaysOnPolicy,
        FixedStrikePolicy,
        MyopicPolicy,
        PerfectForesightPolicy,
        RollingHorizonPolicy,
    )

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


#: mean engine time per decision relative to always-on's (2024, sample site, measured at load1
#: ~1.3: policy ~135 us with its forecast, perfect foresight ~61 us, the other baselines ~44 us)
RELATIVE_COST = {"policy": 3.0, "perfect_foresight": 1.4}


def policy_groups(labels: list[str], jobs: int) -> list[list[int]]:
    """Which policies (indices into ``labels``) each process runs, one shared pass per group:
    the costliest first, each into the group with the least work so far (``RELATIVE_COST``).
    With 2 processes: the policy and one baseline (~4 units) against the other three (~3.4)."""
    n = len(labels)
    if jobs <= 1 or n <= 1:
        return [list(range(n))]
    groups: list[list[int]] = [[] for _ in range(min(jobs, n))]
    work = [0.0] * len(groups)
    for i in sorted(range(n), key=lambda i: -RELATIVE_COST.get(labels[i], 1.0)):
        g = work.index(min(work))
        groups[g].append(i)
        work[g] += RELATIVE_COST.get(labels[i], 1.0)
    return [sorted(g) for g in groups]


_FORK_STATE: dict[str, Any] = {}


def _run_forked(group: list[int]) -> list[PolicyRun]:
    st = _FORK_STATE
    return run_policies(st["site"], [st["policies"][i] for i in group], st["records"], st["realized"])


def _forked_main(group: list[int], conn: Any) -> None:
    """A forked process: run ``group`` and send back (True, runs) or (False, the exception)."""
    try:
        conn.send((True, _run_forked(group)))
    except BaseException as exc:  # noqa: BLE001 - every failure goes back to the parent
        try:
            conn.send((False, exc))
        except (pickle.PicklingError, TypeError, AttributeError):  # it does not pickle: its text
            import traceback

            conn.send((False, EngineError("".join(traceback.format_exception(exc)))))
    finally:
        conn.close()


def run_all(site: SiteConfig, inputs: Inputs, policies: list[tuple[str, Policy]], jobs: int | None = None,
            on_runs: Callable[[list[PolicyRun]], None] | None = None) -> list[PolicyRun]:
    """Run every policy, in ``policy_groups`` (default: one per CPU, at most 2 here): the first
    groups in forked processes, which see the already loaded records without copying them, the
    last one in this process meanwhile. Runs come back in the order of ``policies``;
    ``on_runs`` is called with each group's runs as soon as they are done (this process's
    group first: it is the lightest, so its runs are written while the others still run).

    Plain processes and pipes, not a ``multiprocessing.Pool``: closing a pool joins its handler
    threads, which poll every 0.1 s (measured: ~0.2 s of a ~6 s backtest)."""
    jobs = jobs if jobs is not None else min(len(policies), os.cpu_count() or 1)
    groups = policy_groups([label for label, _ in policies], jobs if sys.platform.startswith("linux") else 1)
    if len(groups) == 1:
        runs = run_policies(site, policies, inputs.records, inputs.realized)
        if on_runs is not None:
            on_runs(runs)
        return runs
    import multiprocessing as mp

    ctx = mp.get_context("fork")
    _FORK_STATE.update(site=site, records=inputs.records, realized=inputs.realized, policies=policies)
    children = []
    try:
        for group in groups[:-1]:
            recv, send = ctx.Pipe(duplex=False)
            proc = ctx.Process(target=_forked_main, args=(group, send), daemon=True)
            proc.start()
            send.close()
            children.append((proc, recv))
        here = _run_forked(groups[-1])
        if on_runs is not None:
            on_runs(here)
        done = []
        for proc, recv in children:
            try:
                ok, got = recv.recv()
            except EOFError:
                proc.join()
                raise EngineError(f"a backtest process died (exit code {proc.exitcode})") from None
            proc.join()
            if not ok:
                raise got
            if on_runs is not None:
                on_runs(got)
            done.append(got)
        done.append(here)
    finally:
        _FORK_STATE.clear()
        for proc, recv in children:
            recv.close()
            if proc.is_alive():
                proc.kill()
                proc.join()
    by_index = {i: run for group, runs in zip(groups, done) for i, run in zip(group, runs)}
    return [by_index[i] for i in range(len(policies))]


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


class DecisionsWriter:
    """Writes the backtest's DuckDB tables from Arrow (no executemany): ``decisions``, recreated
    by the first :meth:`add` and appended to by the next ones (runs can be written as their
    process finishes), then ``backtest_summary`` and close with :meth:`finish`."""

    def __init__(self, db: str | Path) -> None:
        import duckdb

        Path(db).parent.mkdir(parents=True, exist_ok=True)
        self.con = duckdb.connect(str(db))
        self.created = False
        self.seconds = 0.0  # time spent writing

    def add(self, runs: list[PolicyRun]) -> None:
        import pyarrow as pa

        if not runs and self.created:
            return
        t0 = time.perf_counter()
        tables = [r.table.add_column(0, "policy", pa.array([r.name] * r.table.num_rows, pa.string())) for r in runs]
        decisions = pa.concat_tables(tables, promote_options="default") if tables else pa.table({})
        self.con.register("decisions_arrow", decisions)
        if self.created:
            self.con.execute("INSERT INTO decisions BY NAME SELECT * FROM decisions_arrow")
        else:
            self.con.execute("CREATE OR REPLACE TABLE decisions AS SELECT * FROM decisions_arrow")
            self.created = True
        self.con.unregister("decisions_arrow")
        self.seconds += time.perf_counter() - t0

    def finish(self, summary: list[dict[str, Any]]) -> None:
        import pyarrow as pa

        t0 = time.perf_counter()
        try:
            self.con.register("summary_arrow", pa.Table.from_pylist(summary))
            self.con.execute("CREATE OR REPLACE TABLE backtest_summary AS SELECT * FROM summary_arrow")
            self.con.unregister("summary_arrow")
        finally:
            self.close()
        self.seconds += time.perf_counter() - t0

    def close(self) -> None:
        self.con.close()


def write_db(db: str | Path, runs: list[PolicyRun], summary: list[dict[str, Any]]) -> None:
    """(Re)create ``decisions`` and ``backtest_summary`` (see :class:`DecisionsWriter`)."""
    w = DecisionsWriter(db)
    try:
        w.add(runs)
    except BaseException:
        w.close()
        raise
    w.finish(summary)


def backtest(site: SiteConfig, inputs: Inputs, strike: float = 100.0, policy: str = "rolling",
             jobs: int | None = None, db: str | Path | None = None) -> dict[str, Any]:
    """Run the policy and the baselines; return the report (and the runs under '_runs').
    With ``db``, also write the DuckDB tables: each process's decisions as soon as they are
    done (this process's while the other still runs), the summary last."""
    t0 = time.perf_counter()
    writer = DecisionsWriter(db) if db is not None else None
    try:
        runs = run_all(site, inputs, make_policies(site, inputs.realized, strike, policy), jobs,
                       writer.add if writer is not None else None)
    except BaseException:
        if writer is not None:
            writer.close()
        raise
    wall = time.perf_counter() - t0
    by = {r.name: r for r in runs}
    report: dict[str, Any] = {"site": site.site_id, "settlement_point": site.settlement_point}
    first = runs[0].table.column("interval_start")
    report["from"] = first[0].as_py().isoformat() if len(first) else None
    report["to"] = first[-1].as_py().isoformat() if len(first) else None
    report["intervals"] = runs[0].totals["intervals"]
    report["inputs"] = inputs.counts
    report["policies"] = {}
    for r in runs:
        d = {k: round(v, 2) if isinstance(v, float) else v for k, v in r.totals.items()}
        d["engine"] = r.engine
        d["captured_flexibility"] = captured(by, r.name)
        d["unsettled_decisions"] = r.unsettled
        d["latency"] = latency_stats(r.latency_ns)
        d["engine_seconds"] = round(sum(r.latency_ns) / 1e9, 3)
        report["policies"][r.name] = d
    decisions = sum(len(r.latency_ns) for r in runs)
    # wall_seconds: every policy's pass (decisions, fold, settlement) over the loaded records,
    # in jobs processes, and with ``db`` the decisions' write (write_seconds of it, partly
    # overlapped); reading the files is load_seconds, everything total_seconds
    report["timing"] = {"wall_seconds": round(wall, 3), "decisions": decisions,
                        "decisions_per_second": round(decisions / wall) if wall > 0 else None,
                        "policy_latency": latency_stats(runs[0].latency_ns),
                        "passes": [{"policies": list(r.pass_policies), "seconds": round(r.pass_seconds, 3),
                                    "cpu_seconds": round(r.pass_cpu_seconds, 3)}
                                   for r in runs if r.name == r.pass_policies[0]]}
    report["bad_rows"] = len(inputs.bad) if inputs.bad is not None else 0
    report["_runs"] = runs
    if writer is not None:
        writer.finish(summary_rows(report))
        report["db"] = str(db)
        report["timing"]["write_seconds"] = round(writer.seconds, 3)
    return report


def summary_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The rows of ``backtest_summary``: one per policy, its report's scalar entries."""
    return [{"policy": name, **{k: v for k, v in d.items() if not isinstance(v, dict)}}
            for name, d in report["policies"].items()]


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
    rep = backtest(site, inputs, args.strike, args.policy, args.jobs, db=args.db)
    rep.pop("_runs")
    rep["timing"]["load_seconds"] = round(t_load, 3)
    rep["timing"]["total_seconds"] = round(time.perf_counter() - t0, 3)
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
    lines.append(f"{t['decisions']} decisions ({len(rep['policies'])} policies, {len(t['passes'])} processes) in "
                 f"{t['wall_seconds']:.2f} s ({t['decisions_per_second']:,}/s); policy latency p50 {lat['p50_us']:.0f} us,"
                 f" p99 {lat['p99_us']:.0f} us; reading files {t.get('load_seconds', 0):.2f} s, total with the DuckDB"
                 f" write {t.get('total_seconds', 0):.2f} s")
    if rep.get("bad_rows"):
        lines.append(f"{rep['bad_rows']} bad input rows skipped")
    lines.append(f"decisions written to {rep.get('db')}")
    return "\n".join(lines)
