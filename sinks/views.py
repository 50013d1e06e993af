"""Analytics views of the DuckDB archive: what happened and what it was worth.

``create_views(con)`` creates (idempotently: ``CREATE OR REPLACE VIEW``) the views below and
the small ``site_params`` table they need; ``register_sites(con, sites)`` records each site's
hedge (the only site parameter the realized P&L needs that the actions do not carry). On a
read-only connection ``create_views(con, temp=True)`` makes the same views (and a temporary
``site_params``) for that connection only: ``wattmix report`` works on any archive.

Days are UTC days (``CAST(timezone('UTC', interval_start) AS DATE)``), money is USD, power MW,
energy MWh. Every view has a ``site_id`` column.

Realized settlement (the SQL form of :func:`dispatch.accounting.settle`)
-------------------------------------------------------------------------
Each action is settled at the real-time price of its own interval (``rt_realized``). Only
energy and the hedge depend on the price; mining revenue, GPU value, DR payment and penalty
were fixed by the decision and are taken from the action::

    h              = interval_minutes / 60.0
    energy_cost    = p * load_mw * h
    hedge_pnl      = (p - K) * Q * h                      (K, Q from site_params; 0 without a hedge)
    net            = mining_revenue + gpu_value - energy_cost + hedge_pnl + dr_payment - dr_penalty

(``tests/sinks/test_views.py`` checks it against ``settle`` on engine-made actions.) A site
missing from ``site_params`` settles with a NULL hedge and NULL net: register it.

Tables and views
----------------
``site_params`` (table)
    site_id (PK), settlement_point, interval_minutes, hedge_quantity_mw (Q),
    hedge_price_usd_mwh (K), config (the site TOML as JSON), registered_at.
``rt_realized``
    site_id, interval_start, interval_minutes, price_usd_mwh: the latest publication of each
    real-time price (of the site's settlement point when registered).
``settled_actions``
    one row per action: interval, hours, engine, load/sold-back MW and MWh, known / expected /
    realized price, hashprice, the six realized terms and ``net_usd``, ``expected_net_usd``
    (what the engine planned with), DR limit and shortfall (MW, MWh), ``settled`` (a realized
    price exists).
``pnl_by_day``
    site_id, day, intervals, settled_intervals, the six terms, net_usd, expected_net_usd,
    energy_mwh, sold_back_mwh, avg_price_usd_mwh (realized, load-independent mean),
    max_price_usd_mwh. Sums cover settled intervals only.
``pnl_by_term``
    site_id, position, term, amount_usd (as stored: costs positive), contribution_usd (signed:
    what the term adds to net), the last row is ``net``: the P&L waterfall.
``fleet_intervals``
    actions unnested per miner fleet: units online/total, power_mw, hashrate_ph,
    breakeven_usd_mwh, unit_mw (grid MW of one unit, derived from the archive), curtailed_mw,
    price_realized_usd_mwh, ``is_off`` (no unit online), ``above_breakeven`` (realized price >
    breakeven).
``gpu_intervals``
    actions unnested per GPU class: gpus_demand, gpus_running, gpus_paused, power-cap tier,
    power / throughput fraction, power_mw.
``energy_by_day``
    site_id, day, energy_mwh, sold_back_mwh, mining_mwh, mining_curtailed_mwh, gpu_mwh,
    gpu_hours_paused, dr_shortfall_mwh.
``fleet_off_hours``
    per site and fleet: hours, hours_off (no unit online), hours_curtailed (some units off),
    mwh_curtailed, hours_price_above_breakeven, hours_off_below_breakeven (curtailed although
    mining paid: the regret of a causal policy), hours_on_above_breakeven (ran into a price
    above breakeven: the other regret). ``gpu_off_hours`` is the same for GPU classes
    (gpu_hours_paused, hours_capped).
``breakeven_by_day``
    per site, day and fleet: avg/min/max breakeven, avg and max realized price, intervals
    above breakeven, hours off, margin_usd_mwh (avg breakeven - avg price).
``dr_compliance``
    one row per DR event (latest revision, not cancelled, not advisory): program, kind, start,
    end, required_max_load_mw (firm level, or baseline - reduction), obligation_mw,
    baseline_mw (given, else the average load of the hour before the event),
    required_reduction_mw, delivered_reduction_mw (baseline - average load during the event),
    intervals_required, intervals_decided, avg_load_mw, max_load_mw, shortfall_mwh
    (sum of max(load - limit, 0) x h), penalty_usd (the actions' DR penalty), met.
``interval_mix``
    long format for charts: site_id, interval_start, component (fleet name or
    ``gpu:<class>``), kind (mining / gpu), power_mw.
"""

from __future__ import annotations

from collections.abc import Iterable

import duckdb

from schemas.site import SiteConfig

#: the views, in creation order (each may use the ones before it)
VIEWS: tuple[str, ...] = (
    "rt_realized", "settled_actions", "pnl_by_day", "pnl_by_term", "fleet_intervals", "gpu_intervals",
    "energy_by_day", "fleet_off_hours", "gpu_off_hours", "breakeven_by_day", "dr_compliance", "interval_mix",
)

_DAY = "CAST(timezone('UTC', {col}) AS DATE)"

SITE_PARAMS_DDL = """
CREATE {temp}TABLE IF NOT EXISTS site_params (
    site_id VARCHAR PRIMARY KEY,
    settlement_point VARCHAR,
    interval_minutes INTEGER,
    hedge_quantity_mw DOUBLE NOT NULL,
    hedge_price_usd_mwh DOUBLE NOT NULL,
    config JSON,
    registered_at TIMESTAMPTZ NOT NULL DEFAULT now()
)"""

_TERMS = ("mining_revenue_usd", "gpu_value_usd", "energy_cost_usd", "hedge_pnl_usd", "dr_payment_usd", "dr_penalty_usd")
_SIGN = {"energy_cost_usd": -1, "dr_penalty_usd": -1}


def _view_sql() -> dict[str, str]:
    day = _DAY.format(col="interval_start")
    v: dict[str, str] = {}
    v["rt_realized"] = """
        SELECT g.site_id, g.interval_start, g.interval_minutes, g.price_usd_mwh
        FROM grid_prices g LEFT JOIN site_params s ON s.site_id = g.site_id
        WHERE g.market = 'RT' AND (s.settlement_point IS NULL OR g.settlement_point = s.settlement_point)
        QUALIFY row_number() OVER (PARTITION BY g.site_id, g.interval_start
                                   ORDER BY g.published_at DESC, g.kafka_offset DESC NULLS LAST) = 1"""
    v["settled_actions"] = """
        SELECT a.site_id, a.interval_start, a.interval_minutes, a.interval_minutes / 60.0 AS hours, a.engine,
               a.load_mw, a.load_mw * (a.interval_minutes / 60.0) AS energy_mwh,
               a.sold_back_mw, a.sold_back_mw * (a.interval_minutes / 60.0) AS sold_back_mwh,
               a.price_known_usd_mwh, a.price_expected_usd_mwh, r.price_usd_mwh AS price_realized_usd_mwh,
               a.hashprice_usd_per_ph_day,
               r.price_usd_mwh IS NOT NULL AS settled,
               a.mining_revenue_usd, a.gpu_value_usd,
               r.price_usd_mwh * a.load_mw * (a.interval_minutes / 60.0) AS energy_cost_usd,
               (r.price_usd_mwh - s.hedge_price_usd_mwh) * s.hedge_quantity_mw * (a.interval_minutes / 60.0)
                   AS hedge_pnl_usd,
               a.dr_payment_usd, a.dr_penalty_usd,
               a.mining_revenue_usd + a.gpu_value_usd
                   - r.price_usd_mwh * a.load_mw * (a.interval_minutes / 60.0)
                   + (r.price_usd_mwh - s.hedge_price_usd_mwh) * s.hedge_quantity_mw * (a.interval_minutes / 60.0)
                   + a.dr_payment_usd - a.dr_penalty_usd AS net_usd,
               a.net_usd AS expected_net_usd,
               a.dr_limit_mw, a.dr_shortfall_mw, a.dr_shortfall_mw * (a.interval_minutes / 60.0) AS dr_shortfall_mwh,
               a.dr_active_event_ids
        FROM actions a
        LEFT JOIN rt_realized r ON r.site_id = a.site_id AND r.interval_start = a.interval_start
        LEFT JOIN site_params s ON s.site_id = a.site_id"""
    sums = ",\n               ".join(f"sum({t}) FILTER (WHERE settled) AS {t}" for t in _TERMS)
    v["pnl_by_day"] = f"""
        SELECT site_id, {day} AS day, count(*) AS intervals, count(*) FILTER (WHERE settled) AS settled_intervals,
               {sums},
               sum(net_usd) FILTER (WHERE settled) AS net_usd,
               sum(expected_net_usd) FILTER (WHERE settled) AS expected_net_usd,
               sum(energy_mwh) AS energy_mwh, sum(sold_back_mwh) AS sold_back_mwh,
               avg(price_realized_usd_mwh) AS avg_price_usd_mwh, max(price_realized_usd_mwh) AS max_price_usd_mwh
        FROM settled_actions GROUP BY ALL"""
    parts = []
    for i, t in enumerate(_TERMS):
        sign = _SIGN.get(t, 1)
        parts.append(f"SELECT site_id, {i} AS position, '{t[:-4]}' AS term, sum({t}) AS amount_usd, "
                     f"{sign} * sum({t}) AS contribution_usd FROM settled_actions WHERE settled GROUP BY site_id")
    parts.append(f"SELECT site_id, {len(_TERMS)} AS position, 'net' AS term, sum(net_usd) AS amount_usd, "
                 "sum(net_usd) AS contribution_usd FROM settled_actions WHERE settled GROUP BY site_id")
    v["pnl_by_term"] = "\n        UNION ALL ".join(parts)
    v["fleet_intervals"] = """
        WITH f AS (
            SELECT a.site_id, a.interval_start, a.interval_minutes / 60.0 AS hours, u.f.fleet AS fleet,
                   u.f.units_online AS units_online, u.f.units_total AS units_total, u.f.power_mw AS power_mw,
                   u.f.hashrate_ph AS hashrate_ph, u.f.breakeven_usd_mwh AS breakeven_usd_mwh
            FROM actions a, unnest(a.fleets) AS u(f)
        ), unit AS (
            SELECT site_id, fleet, max(power_mw / units_online) AS unit_mw FROM f WHERE units_online > 0 GROUP BY ALL
        )
        SELECT f.*, unit.unit_mw, (f.units_total - f.units_online) * unit.unit_mw AS curtailed_mw,
               r.price_usd_mwh AS price_realized_usd_mwh, f.units_online = 0 AS is_off,
               r.price_usd_mwh > f.breakeven_usd_mwh AS above_breakeven
        FROM f LEFT JOIN unit USING (site_id, fleet)
        LEFT JOIN rt_realized r ON r.site_id = f.site_id AND r.interval_start = f.interval_start"""
    v["gpu_intervals"] = """
        SELECT a.site_id, a.interval_start, a.interval_minutes / 60.0 AS hours, u.g.gpu_class AS gpu_class,
               u.g.gpus_demand AS gpus_demand, u.g.gpus_running AS gpus_running,
               u.g.gpus_demand - u.g.gpus_running AS gpus_paused, u.g.power_cap_tier AS power_cap_tier,
               u.g.power_fraction AS power_fraction, u.g.throughput_fraction AS throughput_fraction,
               u.g.power_mw AS power_mw
        FROM actions a, unnest(a.gpus) AS u(g)"""
    v["energy_by_day"] = f"""
        WITH m AS (SELECT site_id, {day} AS day, sum(power_mw * hours) AS mining_mwh,
                          sum(curtailed_mw * hours) AS mining_curtailed_mwh FROM fleet_intervals GROUP BY ALL),
             g AS (SELECT site_id, {day} AS day, sum(power_mw * hours) AS gpu_mwh,
                          sum(gpus_paused * hours) AS gpu_hours_paused FROM gpu_intervals GROUP BY ALL),
             s AS (SELECT site_id, {day} AS day, sum(energy_mwh) AS energy_mwh, sum(sold_back_mwh) AS sold_back_mwh,
                          sum(dr_shortfall_mwh) AS dr_shortfall_mwh FROM settled_actions GROUP BY ALL)
        SELECT s.site_id, s.day, s.energy_mwh, s.sold_back_mwh, coalesce(m.mining_mwh, 0) AS mining_mwh,
               coalesce(m.mining_curtailed_mwh, 0) AS mining_curtailed_mwh, coalesce(g.gpu_mwh, 0) AS gpu_mwh,
               coalesce(g.gpu_hours_paused, 0) AS gpu_hours_paused, s.dr_shortfall_mwh
        FROM s LEFT JOIN m USING (site_id, day) LEFT JOIN g USING (site_id, day)"""
    v["fleet_off_hours"] = """
        SELECT site_id, fleet, sum(hours) AS hours,
               coalesce(sum(hours) FILTER (WHERE is_off), 0) AS hours_off,
               coalesce(sum(hours) FILTER (WHERE units_online < units_total), 0) AS hours_curtailed,
               coalesce(sum(curtailed_mw * hours), 0) AS mwh_curtailed,
               coalesce(sum(hours) FILTER (WHERE above_breakeven), 0) AS hours_price_above_breakeven,
               coalesce(sum(hours) FILTER (WHERE units_online < units_total AND NOT above_breakeven), 0)
                   AS hours_off_below_breakeven,
               coalesce(sum(hours) FILTER (WHERE units_online > 0 AND above_breakeven), 0) AS hours_on_above_breakeven
        FROM fleet_intervals GROUP BY ALL ORDER BY site_id, fleet"""
    v["gpu_off_hours"] = """
        SELECT site_id, gpu_class, sum(hours) AS hours,
               sum(gpus_paused * hours) AS gpu_hours_paused,
               coalesce(sum(hours) FILTER (WHERE gpus_running = 0 AND gpus_demand > 0), 0) AS hours_off,
               coalesce(sum(hours) FILTER (WHERE power_cap_tier > 0), 0) AS hours_capped
        FROM gpu_intervals GROUP BY ALL ORDER BY site_id, gpu_class"""
    v["breakeven_by_day"] = f"""
        SELECT site_id, {day} AS day, fleet, avg(breakeven_usd_mwh) AS avg_breakeven_usd_mwh,
               min(breakeven_usd_mwh) AS min_breakeven_usd_mwh, max(breakeven_usd_mwh) AS max_breakeven_usd_mwh,
               avg(price_realized_usd_mwh) AS avg_price_usd_mwh, max(price_realized_usd_mwh) AS max_price_usd_mwh,
               count(*) FILTER (WHERE above_breakeven) AS intervals_above_breakeven,
               coalesce(sum(hours) FILTER (WHERE is_off), 0) AS hours_off,
               avg(breakeven_usd_mwh) - avg(price_realized_usd_mwh) AS margin_usd_mwh
        FROM fleet_intervals GROUP BY ALL"""
    v["dr_compliance"] = """
        WITH ev AS (
            SELECT * FROM dr_events
            QUALIFY row_number() OVER (PARTITION BY site_id, event_id ORDER BY revision DESC, issued_at DESC) = 1
        ), e AS (
            SELECT ev.site_id, ev.event_id, ev.program, ev.obligation_kind, ev."start", ev."end", ev.obligation_mw,
                   coalesce(sp.interval_minutes,
                            (SELECT min(interval_minutes) FROM actions x WHERE x.site_id = ev.site_id)) AS step,
                   ev.baseline_mw AS given_baseline_mw
            FROM ev LEFT JOIN site_params sp ON sp.site_id = ev.site_id
            WHERE ev.status <> 'cancelled' AND ev.obligation_kind <> 'advisory'
        ), before AS (
            SELECT e.site_id, e.event_id, avg(a.load_mw) AS load_before_mw
            FROM e JOIN actions a
              ON a.site_id = e.site_id AND a.interval_start >= e."start" - INTERVAL 1 HOUR AND a.interval_start < e."start"
            GROUP BY ALL
        ), lim AS (
            SELECT e.*, coalesce(e.given_baseline_mw, b.load_before_mw) AS baseline_mw,
                   CASE e.obligation_kind WHEN 'firm_service_level' THEN e.obligation_mw
                        ELSE e.given_baseline_mw - e.obligation_mw END AS required_max_load_mw,
                   CAST(floor(epoch(e."end" - e."start") / 60 / e.step) AS BIGINT) AS intervals_required
            FROM e LEFT JOIN before b USING (site_id, event_id)
        ), during AS (
            SELECT l.site_id, l.event_id, count(a.interval_start) AS intervals_decided, avg(a.load_mw) AS avg_load_mw,
                   max(a.load_mw) AS max_load_mw, coalesce(sum(a.dr_penalty_usd), 0) AS penalty_usd,
                   coalesce(sum(greatest(a.load_mw - l.required_max_load_mw, 0) * a.interval_minutes / 60.0), 0)
                       AS shortfall_mwh
            FROM lim l LEFT JOIN actions a
              ON a.site_id = l.site_id AND a.interval_start >= l."start" AND a.interval_start < l."end"
            GROUP BY ALL
        )
        SELECT l.site_id, l.event_id, l.program, l.obligation_kind, l."start", l."end",
               l.required_max_load_mw, l.obligation_mw, l.baseline_mw,
               CASE l.obligation_kind WHEN 'firm_service_level' THEN greatest(l.baseline_mw - l.obligation_mw, 0)
                    ELSE l.obligation_mw END AS required_reduction_mw,
               l.baseline_mw - d.avg_load_mw AS delivered_reduction_mw,
               l.intervals_required, d.intervals_decided, d.avg_load_mw, d.max_load_mw, d.shortfall_mwh,
               d.penalty_usd,
               d.intervals_decided = l.intervals_required AND d.shortfall_mwh <= 1e-9 AS met
        FROM lim l JOIN during d USING (site_id, event_id)
        ORDER BY l.site_id, l."start"
        """
    v["interval_mix"] = """
        SELECT site_id, interval_start, fleet AS component, 'mining' AS kind, power_mw FROM fleet_intervals
        UNION ALL
        SELECT site_id, interval_start, 'gpu:' || gpu_class AS component, 'gpu' AS kind, power_mw FROM gpu_intervals"""
    return v


def create_views(con: duckdb.DuckDBPyConnection, sites: Iterable[SiteConfig] = (), *, temp: bool = False) -> None:
    """Create ``site_params`` (if absent) and every view (replacing older definitions).

    Idempotent; cheap (~ms). ``sites`` are registered with :func:`register_sites`.
    ``temp=True``: temporary objects of this connection only (works read-only).
    """
    tmp = "TEMP " if temp else ""
    con.execute(SITE_PARAMS_DDL.format(temp=tmp))
    for name, sql in _view_sql().items():
        con.execute(f"CREATE OR REPLACE {tmp}VIEW {name} AS {sql}")
    sites = list(sites)
    if sites:
        register_sites(con, sites)


def register_sites(con: duckdb.DuckDBPyConnection, sites: Iterable[SiteConfig]) -> None:
    """Insert or update each site's row in ``site_params`` (hedge Q and K, settlement point)."""
    for s in sites:
        q = s.hedge.quantity_mw if s.hedge else 0.0
        k = s.hedge.price_usd_mwh if s.hedge else 0.0
        con.execute(
            "INSERT OR REPLACE INTO site_params (site_id, settlement_point, interval_minutes, hedge_quantity_mw, "
            "hedge_price_usd_mwh, config) VALUES (?, ?, ?, ?, ?, ?)",
            [s.site_id, s.settlement_point, s.interval_minutes, q, k, s.model_dump_json()],
        )


def has_views(con: duckdb.DuckDBPyConnection) -> bool:
    """True if every view of this module exists (persistent or temporary)."""
    names = {r[0] for r in con.execute("SELECT view_name FROM duckdb_views()").fetchall()}
    return set(VIEWS) <= names
