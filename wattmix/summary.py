"""What happened, read back from the DuckDB archive: realized P&L by term, energy curtailed
and sold back, and whether each DR obligation was met.

Realized P&L settles every archived action at the real-time price of its own interval (also
in the archive) with :func:`dispatch.accounting.settle`, the same code the backtest uses.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

import duckdb

from dispatch.accounting import settle
from schemas.action import DispatchAction
from schemas.site import SiteConfig
from sinks.archive import read_actions
from sinks.query import open_read_only

TERMS = ("mining_revenue_usd", "gpu_value_usd", "energy_cost_usd", "hedge_pnl_usd", "dr_payment_usd", "dr_penalty_usd")


@dataclass
class DrCompliance:
    event_id: str
    program: str
    start: datetime
    end: datetime
    limit_mw: float
    intervals_required: int
    intervals_decided: int
    max_load_mw: float
    shortfall_mwh: float

    @property
    def met(self) -> bool:
        return self.intervals_decided == self.intervals_required and self.shortfall_mwh <= 1e-9


@dataclass
class Summary:
    site_id: str
    intervals: int = 0
    settled: int = 0
    first: datetime | None = None
    last: datetime | None = None
    terms: dict[str, float] = field(default_factory=lambda: {t: 0.0 for t in TERMS})
    net_usd: float = 0.0
    energy_mwh: float = 0.0
    mining_curtailed_mwh: float = 0.0
    gpu_hours_paused: float = 0.0
    sold_back_mwh: float = 0.0
    dr: list[DrCompliance] = field(default_factory=list)
    events_archived: int = 0
    dead_letters: int = 0
    by_table: dict[str, int] = field(default_factory=dict)


def _rt_prices(con, site_id: str) -> dict[datetime, float]:
    rows = con.execute(
        "SELECT interval_start, price_usd_mwh FROM grid_prices WHERE site_id = ? AND market = 'RT'", [site_id]
    ).fetchall()
    return {r[0]: r[1] for r in rows}


def _dr_events(con, site_id: str) -> list[tuple]:
    """Latest revision of every DR event of the site (the history stays in the table)."""
    return con.execute(
        """
        SELECT event_id, program, status, "start", "end", obligation_kind, obligation_mw, baseline_mw
        FROM dr_events WHERE site_id = ?
        QUALIFY row_number() OVER (PARTITION BY event_id ORDER BY revision DESC) = 1
        ORDER BY "start"
        """,
        [site_id],
    ).fetchall()


def summarize(db: str, site: SiteConfig) -> Summary:
    con = open_read_only(db)
    try:
        return summarize_connection(con, site)
    finally:
        con.close()


def summarize_connection(con: duckdb.DuckDBPyConnection, site: SiteConfig) -> Summary:
    s = Summary(site_id=site.site_id)
    for table in ("grid_prices", "dr_events", "hashprice", "gpu_telemetry", "actions", "dead_letters"):
        s.by_table[table] = con.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
    s.events_archived = sum(s.by_table[t] for t in ("grid_prices", "dr_events", "hashprice", "gpu_telemetry"))
    s.dead_letters = s.by_table["dead_letters"]

    actions: list[DispatchAction] = sorted(read_actions(con, site.site_id), key=lambda a: a.interval_start)
    prices = _rt_prices(con, site.site_id)
    by_t = {a.interval_start: a for a in actions}
    max_mining = site.max_mining_mw
    for a in actions:
        h = a.interval_minutes / 60.0
        s.intervals += 1
        s.first = s.first or a.interval_start
        s.last = a.interval_start
        s.energy_mwh += a.load_mw * h
        s.sold_back_mwh += a.sold_back_mw * h
        s.mining_curtailed_mwh += (max_mining - sum(fl.power_mw for fl in a.fleets)) * h
        s.gpu_hours_paused += sum(g.gpus_demand - g.gpus_running for g in a.gpus) * h
        p = prices.get(a.interval_start)
        if p is None:
            continue  # its real-time price is not archived yet: not settled
        r = settle(a, p, site)
        s.settled += 1
        for t in TERMS:
            s.terms[t] += getattr(r, t)
        s.net_usd += r.net_usd

    step = site.interval_minutes
    for event_id, program, status, start, end, kind, mw, baseline in _dr_events(con, site.site_id):
        if status == "cancelled" or kind == "advisory":
            continue
        limit = mw if kind == "firm_service_level" else (baseline or 0.0) - mw
        n_req = int((end - start).total_seconds() // 60 // step)
        covered = [by_t[t] for t in by_t if start <= t < end]
        s.dr.append(
            DrCompliance(
                event_id=event_id, program=program, start=start, end=end, limit_mw=limit,
                intervals_required=n_req, intervals_decided=len(covered),
                max_load_mw=max((a.load_mw for a in covered), default=0.0),
                shortfall_mwh=sum(max(a.load_mw - limit, 0.0) * a.interval_minutes / 60.0 for a in covered),
            )
        )
    return s


def print_summary(s: Summary) -> None:
    print()
    if s.first is None:
        print(f"site {s.site_id}: no decisions archived")
        return
    print(f"site {s.site_id}: {s.intervals} intervals decided, {s.first:%Y-%m-%d %H:%M} .. {s.last:%Y-%m-%d %H:%M} UTC "
          f"({s.settled} settled at their real-time price)")
    print(f"archive: {s.events_archived:,} input events "
          f"({', '.join(f'{k} {v:,}' for k, v in s.by_table.items() if k not in ('actions', 'dead_letters'))}), "
          f"{s.by_table.get('actions', 0):,} actions, {s.dead_letters} dead letters")
    print("realized P&L by term (USD):")
    sign = {"energy_cost_usd": -1, "dr_penalty_usd": -1}
    for t in TERMS:
        print(f"  {t[:-4]:<16} {sign.get(t, 1) * s.terms[t]:>16,.0f}")
    print(f"  {'net':<16} {s.net_usd:>16,.0f}")
    print(f"energy: {s.energy_mwh:,.0f} MWh consumed, {s.mining_curtailed_mwh:,.0f} MWh of mining curtailed, "
          f"{s.gpu_hours_paused:,.0f} GPU-hours paused, {s.sold_back_mwh:,.0f} MWh sold back")
    for d in s.dr:
        verdict = "MET" if d.met else "NOT MET"
        print(f"DR {d.program} {d.event_id} {d.start:%a %H:%M}-{d.end:%H:%M} UTC: limit {d.limit_mw:.1f} MW, "
              f"max load {d.max_load_mw:.2f} MW over {d.intervals_decided}/{d.intervals_required} intervals, "
              f"shortfall {d.shortfall_mwh:.2f} MWh: {verdict}")
