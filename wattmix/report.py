"""``wattmix report --db FILE --out report.html``: one self-contained HTML file of what happened.

Everything is inline: the charts are SVG drawn here (no chart library, no fonts, no network),
styled by an inline stylesheet; a few lines of inline JavaScript add a hover read-out and
record any script error into the page (``data-errors`` on ``<body>``, which the headless
Chromium test checks). It opens from disk in any browser, offline.

Charts (from the views of :mod:`sinks.views`, on a READ-ONLY connection; the views are
created as temporary views if the archive predates them):

1. **Price and mix**: the realized real-time price (mean and max per bucket), and under it,
   on the same time axis, the load stacked by miner fleet and GPU class, with the power sold
   back on top (up to the hedge).
2. **P&L waterfall**: the six terms of the accounting identity, realized, down to net.
3. **DR events against load**: each demand-response event's window with the required
   maximum load and the load decided around it, plus the compliance table.
4. **Breakeven**: each fleet's daily breakeven against the daily realized price.
5. **Net P&L by day**.

Long archives are bucketed so that no chart draws more than ~1,500 points.
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import duckdb

from schemas.site import SiteConfig
from sinks.query import open_read_only
from wattmix.errors import SinkError

UTC = timezone.utc
PALETTE = ["#3b6ea8", "#e08a2c", "#4f9d69", "#c2504f", "#8a6bb8", "#8c6d46", "#d47fb4", "#6f7f8f", "#b5b534"]
TERM_LABEL = {"mining_revenue": "Mining revenue", "gpu_value": "GPU value", "energy_cost": "Energy cost",
              "hedge_pnl": "Hedge P&L", "dr_payment": "DR payment", "dr_penalty": "DR penalty", "net": "Net"}
MAX_POINTS = 1500


# ---------------------------------------------------------------------------------------
# SVG helpers


def _nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    if not math.isfinite(lo) or not math.isfinite(hi):
        return [0.0]
    if hi - lo < 1e-12:
        hi = lo + 1.0
    raw = (hi - lo) / max(n, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    start = math.ceil(lo / step) * step
    out, v = [], start
    while v <= hi + step * 1e-9:
        out.append(round(v, 10))
        v += step
    return out


def _fmt(v: float, money: bool = False) -> str:
    a = abs(v)
    s = f"{a / 1e6:.1f}M" if a >= 1e6 else f"{a / 1e3:.0f}k" if a >= 1e4 else f"{a / 1e3:.1f}k" if a >= 1e3 else (
        f"{a:.0f}" if a >= 10 or a == 0 else f"{a:.1f}")
    return ("-" if v < 0 else "") + ("$" if money else "") + s


def _money(v: float | None) -> str:
    return "n/a" if v is None else ("-" if v < 0 else "") + f"${abs(v):,.0f}"


@dataclass
class Frame:
    """A plot area inside an SVG: x in [x0, x1] (data), y in [y0, y1] (data)."""

    width: int
    height: int
    x0: float
    x1: float
    y0: float
    y1: float
    left: int = 64
    right: int = 16
    top: int = 12
    bottom: int = 26

    def x(self, v: float) -> float:
        span = (self.x1 - self.x0) or 1.0
        return self.left + (v - self.x0) / span * (self.width - self.left - self.right)

    def y(self, v: float) -> float:
        span = (self.y1 - self.y0) or 1.0
        return self.top + (1 - (v - self.y0) / span) * (self.height - self.top - self.bottom)


def _svg_open(width: int, height: int, label: str, cls: str) -> str:
    return (f'<svg class="chart {cls}" viewBox="0 0 {width} {height}" width="100%" role="img" '
            f'aria-label="{html.escape(label)}" xmlns="http://www.w3.org/2000/svg">')


def _y_axis(f: Frame, label: str, money: bool = False, ticks: list[float] | None = None) -> str:
    out = []
    for t in ticks or _nice_ticks(f.y0, f.y1):
        if f.y0 - 1e-9 <= t <= f.y1 + 1e-9:
            y = f.y(t)
            out.append(f'<line class="grid" x1="{f.left}" x2="{f.width - f.right}" y1="{y:.1f}" y2="{y:.1f}"/>'
                       f'<text class="tick" x="{f.left - 6}" y="{y + 3.5:.1f}" text-anchor="end">{_fmt(t, money)}</text>')
    out.append(f'<text class="axis-label" transform="translate(12,{(f.top + f.height - f.bottom) / 2:.0f}) rotate(-90)" '
               f'text-anchor="middle">{html.escape(label)}</text>')
    return "".join(out)


def _time_axis(f: Frame, t0: datetime, t1: datetime, show_labels: bool = True) -> str:
    span = (t1 - t0).total_seconds()
    room = max(2, int((f.width - f.left - f.right) / 95))  # at most one label per ~95 px
    steps = [(timedelta(hours=h), "%d %b %H:%M") for h in (1, 3, 6, 12)] + [
        (timedelta(days=d), "%d %b") for d in (1, 2, 7, 14)]
    step, fmt = next(((st, fm) for st, fm in steps if span / st.total_seconds() <= room), (None, "%b %Y"))
    ticks: list[datetime] = []
    if step is None:
        months = max(1, math.ceil(span / (30.4 * 86400) / room))
        d = datetime(t0.year, t0.month, 1, tzinfo=UTC)
        while d <= t1:
            if d >= t0 and (d.month - 1) % months == 0:
                ticks.append(d)
            d = datetime(d.year + (d.month == 12), d.month % 12 + 1, 1, tzinfo=UTC)
    else:
        d = t0.replace(hour=0, minute=0, second=0, microsecond=0)
        while d <= t1:
            if d >= t0:
                ticks.append(d)
            d += step
    out = [f'<line class="axis" x1="{f.left}" x2="{f.width - f.right}" y1="{f.height - f.bottom}" '
           f'y2="{f.height - f.bottom}"/>']
    for d in ticks:
        x = f.x(d.timestamp())
        out.append(f'<line class="grid v" x1="{x:.1f}" x2="{x:.1f}" y1="{f.top}" y2="{f.height - f.bottom}"/>')
        if show_labels and f.left + 25 <= x <= f.width - f.right - 25:
            out.append(f'<text class="tick" x="{x:.1f}" y="{f.height - f.bottom + 15}" text-anchor="middle">'
                       f'{d.strftime(fmt)}</text>')
    return "".join(out)


def _path(points: list[tuple[float, float]]) -> str:
    return "M" + "L".join(f"{x:.1f},{y:.1f}" for x, y in points) if points else ""


def _legend(items: list[tuple[str, str]], kind: str = "box") -> str:
    out = ['<div class="legend">']
    for label, color in items:
        sw = f'<span class="sw {kind}" style="background:{color}"></span>'
        out.append(f"<span>{sw}{html.escape(label)}</span>")
    out.append("</div>")
    return "".join(out)


# ---------------------------------------------------------------------------------------
# data


def _bucket_minutes(con, site_id: str) -> tuple[int, int]:
    n, step = con.execute("SELECT count(*), coalesce(min(interval_minutes), 15) FROM actions WHERE site_id = ?",
                          [site_id]).fetchone()
    k = max(1, math.ceil(n / MAX_POINTS))
    return int(step) * k, n


def _price_mix(con, site_id: str):
    bucket, _ = _bucket_minutes(con, site_id)
    rows = con.execute(f"""
        SELECT time_bucket(INTERVAL '{bucket} minutes', interval_start, TIMESTAMPTZ '2000-01-01 00:00:00+00') AS b,
               avg(price_realized_usd_mwh), max(price_realized_usd_mwh), avg(load_mw), avg(sold_back_mw)
        FROM settled_actions WHERE site_id = ? GROUP BY 1 ORDER BY 1""", [site_id]).fetchall()
    mix = con.execute(f"""
        SELECT time_bucket(INTERVAL '{bucket} minutes', interval_start, TIMESTAMPTZ '2000-01-01 00:00:00+00') AS b,
               component, kind, avg(power_mw)
        FROM interval_mix WHERE site_id = ? GROUP BY ALL ORDER BY 1""", [site_id]).fetchall()
    return bucket, rows, mix


def _chart_price_mix(con, site_id: str) -> str:
    bucket, rows, mix = _price_mix(con, site_id)
    if not rows:
        return '<p class="empty">No decisions archived for this site.</p>'
    times = [r[0] for r in rows]
    t0, t1 = times[0], times[-1] + timedelta(minutes=bucket)
    xs = [t.timestamp() for t in times]
    W = 1100
    prices = [r[1] for r in rows]
    pmax = [r[2] for r in rows]
    have = [p for p in pmax if p is not None]
    lo = min(0.0, min([p for p in prices if p is not None], default=0.0))
    hi = max(have, default=1.0)
    f = Frame(W, 240, t0.timestamp(), t1.timestamp(), lo, hi * 1.05 if hi > 0 else 1.0)
    out = [_svg_open(W, 240, "real-time price", "price-chart"), _y_axis(f, "$/MWh", money=True),
           _time_axis(f, t0, t1, show_labels=False)]
    for series, cls in ((pmax, "price-max"), (prices, "price")):
        pts, segs = [], []
        for x, p in zip(xs, series):
            if p is None:
                if pts:
                    segs.append(pts)
                pts = []
                continue
            pts.append((f.x(x), f.y(p)))
        if pts:
            segs.append(pts)
        for s in segs:
            out.append(f'<path class="{cls}" d="{_path(s)}"/>')
    out.append("</svg>")
    # stacked mix
    comps: list[str] = []
    for _, c, _, _ in mix:
        if c not in comps:
            comps.append(c)
    comps.sort(key=lambda c: (c.startswith("gpu:"), c))
    val = {(b, c): mw or 0.0 for b, c, _, mw in mix}
    index = {t: i for i, t in enumerate(times)}
    stack = [[0.0] * len(times)]
    for c in comps:
        prev = stack[-1]
        stack.append([prev[i] + val.get((t, c), 0.0) for i, t in enumerate(times)])
    sold = [r[4] or 0.0 for r in rows]
    top = [stack[-1][i] + sold[i] for i in range(len(times))]
    g = Frame(W, 260, t0.timestamp(), t1.timestamp(), 0.0, max(top + [1.0]) * 1.05)
    out2 = [_svg_open(W, 260, "load by component, stacked", "mix-chart"), _y_axis(g, "MW"), _time_axis(g, t0, t1)]
    colors = {}
    for k, c in enumerate(comps):
        colors[c] = PALETTE[k % len(PALETTE)]
        upper = [(g.x(xs[i]), g.y(stack[k + 1][i])) for i in range(len(times))]
        lower = [(g.x(xs[i]), g.y(stack[k][i])) for i in reversed(range(len(times)))]
        out2.append(f'<path class="area" data-series="{html.escape(c)}" fill="{colors[c]}" '
                    f'd="{_path(upper + lower)}Z"><title>{html.escape(c)}</title></path>')
    upper = [(g.x(xs[i]), g.y(top[i])) for i in range(len(times))]
    lower = [(g.x(xs[i]), g.y(stack[-1][i])) for i in reversed(range(len(times)))]
    out2.append(f'<path class="area sold" data-series="sold back" fill="#cfd8e3" d="{_path(upper + lower)}Z">'
                f'<title>sold back</title></path>')
    out2.append("</svg>")
    del index
    legend = _legend([("realized price (mean)", "#222"), ("max in bucket", "#d9534f")], "line")
    legend2 = _legend([(c, colors[c]) for c in comps] + [("sold back (hedge MW not consumed)", "#cfd8e3")])
    note = f'<p class="note">{bucket} min buckets; hover the lower chart for the mix.</p>'
    return legend + "".join(out) + legend2 + "".join(out2) + note


def _chart_waterfall(con, site_id: str) -> str:
    rows = con.execute("SELECT term, contribution_usd FROM pnl_by_term WHERE site_id = ? ORDER BY position",
                       [site_id]).fetchall()
    if not rows or rows[-1][1] is None:
        return '<p class="empty">No settled intervals (or the site is not registered in site_params).</p>'
    W, H = 1100, 320
    levels, run = [], 0.0
    for term, c in rows:
        c = c or 0.0
        if term == "net":
            levels.append((term, 0.0, c))
        else:
            levels.append((term, run, run + c))
            run += c
    lo = min(0.0, *(min(a, b) for _, a, b in levels))
    hi = max(0.0, *(max(a, b) for _, a, b in levels))
    f = Frame(W, H, 0, len(levels), lo - (hi - lo) * 0.02, hi + (hi - lo) * 0.08)
    out = [_svg_open(W, H, "P&L waterfall", "waterfall"), _y_axis(f, "USD", money=True)]
    bw = (f.x(1) - f.x(0)) * 0.62
    for i, (term, a, b) in enumerate(levels):
        x = f.x(i + 0.5) - bw / 2
        y, h = f.y(max(a, b)), abs(f.y(a) - f.y(b))
        cls = "net" if term == "net" else "up" if b >= a else "down"
        out.append(f'<rect class="bar {cls}" data-term="{term}" x="{x:.1f}" y="{y:.1f}" width="{bw:.1f}" '
                   f'height="{max(h, 1):.1f}"><title>{TERM_LABEL.get(term, term)}: {_money(b - a)}</title></rect>')
        if i + 1 < len(levels) and term != "net":
            out.append(f'<line class="conn" x1="{x + bw:.1f}" x2="{f.x(i + 1.5) - bw / 2:.1f}" y1="{f.y(b):.1f}" '
                       f'y2="{f.y(b):.1f}"/>')
        out.append(f'<text class="val" x="{x + bw / 2:.1f}" y="{y - 5:.1f}" text-anchor="middle">'
                   f'{_fmt(b - a, True)}</text>')
        out.append(f'<text class="tick" x="{x + bw / 2:.1f}" y="{H - 8}" text-anchor="middle">'
                   f'{TERM_LABEL.get(term, term)}</text>')
    out.append(f'<line class="axis" x1="{f.left}" x2="{W - f.right}" y1="{f.y(0):.1f}" y2="{f.y(0):.1f}"/>')
    out.append("</svg>")
    return "".join(out)


def _chart_dr(con, site_id: str) -> str:
    events = con.execute("""SELECT event_id, program, "start", "end", required_max_load_mw, intervals_required,
                                   intervals_decided, avg_load_mw, max_load_mw, baseline_mw, delivered_reduction_mw,
                                   shortfall_mwh, penalty_usd, met
                            FROM dr_compliance WHERE site_id = ? ORDER BY "start" """, [site_id]).fetchall()
    if not events:
        return '<p class="empty">No demand-response events with an obligation in the archive.</p>'
    parts = []
    shown = events[:6]
    for ev in shown:
        eid, prog, start, end, limit, *_ = ev
        a, b = start - timedelta(hours=3), end + timedelta(hours=3)
        rows = con.execute("SELECT interval_start, interval_minutes, load_mw FROM actions WHERE site_id = ? AND "
                           "interval_start >= ? AND interval_start < ? ORDER BY 1", [site_id, a, b]).fetchall()
        W, H = 540, 220
        ymax = max([r[2] for r in rows] + [limit or 0, 1.0]) * 1.1
        f = Frame(W, H, a.timestamp(), b.timestamp(), 0.0, ymax, left=52)
        out = [_svg_open(W, H, f"DR event {eid}", "dr-chart"), _y_axis(f, "MW"), _time_axis(f, a, b)]
        out.append(f'<rect class="dr-window" x="{f.x(start.timestamp()):.1f}" y="{f.top}" '
                   f'width="{f.x(end.timestamp()) - f.x(start.timestamp()):.1f}" height="{H - f.top - f.bottom}">'
                   f'<title>{html.escape(prog)} {html.escape(eid)}: {start:%H:%M}-{end:%H:%M} UTC</title></rect>')
        pts = []
        for t, m, load in rows:  # a step line: the load holds for its interval
            pts += [(f.x(t.timestamp()), f.y(load)), (f.x((t + timedelta(minutes=m)).timestamp()), f.y(load))]
        if pts:
            out.append(f'<path class="load" d="{_path(pts)}"/>')
        if limit is not None:
            out.append(f'<line class="limit" x1="{f.x(start.timestamp()):.1f}" x2="{f.x(end.timestamp()):.1f}" '
                       f'y1="{f.y(limit):.1f}" y2="{f.y(limit):.1f}"><title>required max load {limit:.1f} MW</title></line>')
        out.append("</svg>")
        parts.append(f'<figure class="dr"><figcaption>{html.escape(prog)} <b>{html.escape(eid)}</b> '
                     f'{start:%Y-%m-%d %H:%M}-{end:%H:%M} UTC</figcaption>{"".join(out)}</figure>')
    table = ['<table class="dr-table"><thead><tr><th>event</th><th>program</th><th>window (UTC)</th>'
             '<th>max load allowed</th><th>baseline</th><th>delivered reduction</th><th>avg / max load</th>'
             '<th>intervals</th><th>shortfall</th><th>penalty</th><th>met</th></tr></thead><tbody>']
    for (eid, prog, start, end, limit, req, dec, avg, mx, base, deliv, short, pen, met) in events:
        table.append(
            f"<tr><td>{html.escape(eid)}</td><td>{html.escape(prog)}</td><td>{start:%Y-%m-%d %H:%M}-{end:%H:%M}</td>"
            f"<td>{limit:.1f} MW</td><td>{_num(base)} MW</td><td>{_num(deliv)} MW</td>"
            f"<td>{_num(avg)} / {_num(mx)} MW</td><td>{dec}/{req}</td><td>{short:.2f} MWh</td>"
            f"<td>{_money(pen)}</td><td class=\"{'ok' if met else 'bad'}\">{'yes' if met else 'NO'}</td></tr>")
    table.append("</tbody></table>")
    more = f'<p class="note">{len(events) - len(shown)} more events in the table.</p>' if len(events) > len(shown) else ""
    legend = _legend([("load decided", "#3b6ea8"), ("required max load", "#c2504f"), ("event window", "#f4d7a1")])
    return legend + '<div class="dr-grid">' + "".join(parts) + "</div>" + more + "".join(table)


def _num(v: float | None) -> str:
    return "n/a" if v is None else f"{v:,.1f}"


def _chart_breakeven(con, site_id: str) -> str:
    rows = con.execute("SELECT day, fleet, avg_breakeven_usd_mwh, avg_price_usd_mwh, hours_off FROM breakeven_by_day "
                       "WHERE site_id = ? ORDER BY day, fleet", [site_id]).fetchall()
    if not rows:
        return '<p class="empty">No miner fleets in the actions.</p>'
    days = sorted({r[0] for r in rows})
    fleets = sorted({r[1] for r in rows})
    W, H = 1100, 280
    t0 = datetime.combine(days[0], datetime.min.time(), tzinfo=UTC)
    t1 = datetime.combine(days[-1], datetime.min.time(), tzinfo=UTC) + timedelta(days=1)
    vals = [v for r in rows for v in (r[2], r[3]) if v is not None]
    # daily means: cap the axis at the 99th percentile so one scarcity day does not flatten the rest
    srt = sorted(vals)
    cap = srt[min(len(srt) - 1, int(len(srt) * 0.99))] if srt else 1.0
    f = Frame(W, H, t0.timestamp(), t1.timestamp(), min(0.0, min(vals, default=0)), max(cap * 1.1, 1.0))
    out = [_svg_open(W, H, "breakeven vs price", "breakeven-chart"), _y_axis(f, "$/MWh", money=True),
           _time_axis(f, t0, t1)]
    x_of = {d: f.x(datetime.combine(d, datetime.min.time(), tzinfo=UTC).timestamp() + 43200) for d in days}
    price = {}
    for d, fl, be, p, off in rows:
        price[d] = p
    pts = [(x_of[d], f.y(min(price[d], f.y1))) for d in days if price[d] is not None]
    out.append(f'<path class="price" d="{_path(pts)}"><title>daily mean realized price</title></path>')
    items = [("daily mean realized price", "#222")]
    for k, fl in enumerate(fleets):
        color = PALETTE[k % len(PALETTE)]
        pts = [(x_of[d], f.y(min(be, f.y1))) for d, fl2, be, _, _ in rows if fl2 == fl and be is not None]
        out.append(f'<path class="breakeven" data-fleet="{html.escape(fl)}" stroke="{color}" d="{_path(pts)}">'
                   f'<title>{html.escape(fl)} breakeven</title></path>')
        items.append((f"{fl} breakeven", color))
    out.append("</svg>")
    off = con.execute("SELECT fleet, hours, hours_off, hours_curtailed, mwh_curtailed, hours_off_below_breakeven, "
                      "hours_on_above_breakeven FROM fleet_off_hours WHERE site_id = ? ORDER BY fleet",
                      [site_id]).fetchall()
    table = ['<table><thead><tr><th>fleet</th><th>hours</th><th>hours fully off</th><th>hours curtailed</th>'
             '<th>MWh curtailed</th><th>curtailed below breakeven (h)</th><th>ran above breakeven (h)</th></tr>'
             '</thead><tbody>']
    for fl, h, ho, hc, mwh, regret_off, regret_on in off:
        table.append(f"<tr><td>{html.escape(fl)}</td><td>{h:,.1f}</td><td>{ho:,.1f}</td><td>{hc:,.1f}</td>"
                     f"<td>{mwh:,.0f}</td><td>{regret_off:,.2f}</td><td>{regret_on:,.2f}</td></tr>")
    table.append("</tbody></table>")
    note = f'<p class="note">Axis capped at ${cap:,.0f}/MWh (99th percentile of the daily values).</p>'
    return _legend(items, "line") + "".join(out) + note + "".join(table)


def _chart_daily(con, site_id: str) -> str:
    rows = con.execute("SELECT day, net_usd FROM pnl_by_day WHERE site_id = ? AND net_usd IS NOT NULL ORDER BY day",
                       [site_id]).fetchall()
    if not rows:
        return '<p class="empty">No settled days.</p>'
    W, H = 1100, 220
    t0 = datetime.combine(rows[0][0], datetime.min.time(), tzinfo=UTC)
    t1 = datetime.combine(rows[-1][0], datetime.min.time(), tzinfo=UTC) + timedelta(days=1)
    vals = [v for _, v in rows]
    f = Frame(W, H, t0.timestamp(), t1.timestamp(), min(0.0, min(vals)), max(0.0, max(vals)) * 1.05 or 1.0)
    out = [_svg_open(W, H, "net P&L by day", "daily-chart"), _y_axis(f, "USD / day", money=True),
           _time_axis(f, t0, t1)]
    bw = max(1.0, (f.x(86400) - f.x(0)) * 0.8)
    for d, v in rows:
        x = f.x(datetime.combine(d, datetime.min.time(), tzinfo=UTC).timestamp()) + bw * 0.1
        y, h = f.y(max(v, 0)), abs(f.y(v) - f.y(0))
        out.append(f'<rect class="bar {"up" if v >= 0 else "down"}" x="{x:.1f}" y="{y:.1f}" width="{bw:.1f}" '
                   f'height="{max(h, 0.5):.1f}"><title>{d}: {_money(v)}</title></rect>')
    out.append("</svg>")
    return "".join(out)


def _kpis(con, site_id: str) -> str:
    r = con.execute("""SELECT min(interval_start), max(interval_start), count(*), count(*) FILTER (WHERE settled),
                              sum(net_usd), sum(energy_mwh), sum(sold_back_mwh), avg(price_realized_usd_mwh)
                       FROM settled_actions WHERE site_id = ?""", [site_id]).fetchone()
    first, last, n, settled, net, energy, sold, avgp = r
    cur = con.execute("SELECT coalesce(sum(mining_curtailed_mwh), 0), coalesce(sum(gpu_hours_paused), 0) "
                      "FROM energy_by_day WHERE site_id = ?", [site_id]).fetchone()
    dr = con.execute("SELECT count(*), count(*) FILTER (WHERE met) FROM dr_compliance WHERE site_id = ?",
                     [site_id]).fetchone()
    tiles = [("Net P&L (realized)", _money(net)), ("Intervals settled", f"{settled:,} / {n:,}"),
             ("Energy consumed", f"{(energy or 0):,.0f} MWh"), ("Mining curtailed", f"{cur[0]:,.0f} MWh"),
             ("Sold back", f"{(sold or 0):,.0f} MWh"), ("GPU-hours paused", f"{cur[1]:,.0f}"),
             ("Mean RT price", "n/a" if avgp is None else f"${avgp:,.2f}/MWh"),
             ("DR events met", f"{dr[1]} / {dr[0]}")]
    span = f"{first:%Y-%m-%d %H:%M} to {last:%Y-%m-%d %H:%M} UTC" if first else "no decisions"
    return (f'<p class="span">{span}</p><div class="kpis">'
            + "".join(f'<div class="kpi"><div class="k">{k}</div><div class="v">{v}</div></div>' for k, v in tiles)
            + "</div>")


CSS = """
body{font:14px/1.4 system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;margin:0;color:#222;background:#f6f7f9}
header{background:#1f2a37;color:#fff;padding:18px 28px}header h1{margin:0;font-size:22px}header p{margin:4px 0 0;color:#c9d3de}
main{max-width:1180px;margin:0 auto;padding:12px 24px 40px}
section{background:#fff;border:1px solid #e3e6ea;border-radius:8px;padding:14px 18px;margin:16px 0}
h2{font-size:17px;margin:0 0 8px}.span{color:#555;margin:6px 0}
.kpis{display:grid;grid-template-columns:repeat(4,1fr);gap:10px}.kpi{background:#fff;border:1px solid #e3e6ea;border-radius:8px;padding:10px 12px}
.kpi .k{color:#667;font-size:12px;text-transform:uppercase;letter-spacing:.03em}.kpi .v{font-size:20px;font-weight:600;margin-top:2px}
svg.chart{display:block;max-width:100%;height:auto}svg text{font:11px system-ui,sans-serif;fill:#555}
.grid{stroke:#eceff3;stroke-width:1}.grid.v{stroke:#f2f4f6}.axis{stroke:#99a;stroke-width:1}
.axis-label{font-size:11px;fill:#667}.price{fill:none;stroke:#222;stroke-width:1.2}.price-max{fill:none;stroke:#d9534f;stroke-width:.8;opacity:.55}
.area{stroke:none;opacity:.92}.area:hover{opacity:1;stroke:#222;stroke-width:.6}
.bar.up{fill:#4f9d69}.bar.down{fill:#c2504f}.bar.net{fill:#3b6ea8}.conn{stroke:#99a;stroke-dasharray:3 3}.val{font-weight:600;fill:#333}
.load{fill:none;stroke:#3b6ea8;stroke-width:1.6}.limit{stroke:#c2504f;stroke-width:2;stroke-dasharray:6 3}.dr-window{fill:#f4d7a1;opacity:.55}
.breakeven{fill:none;stroke-width:1.5}
.legend{display:flex;flex-wrap:wrap;gap:14px;font-size:12px;color:#444;margin:4px 0 2px}.legend .sw{display:inline-block;width:12px;height:12px;margin-right:5px;vertical-align:-1px;border-radius:2px}
.legend .sw.line{height:3px;vertical-align:3px}
.dr-grid{display:grid;grid-template-columns:1fr 1fr;gap:10px}figure.dr{margin:0}figcaption{font-size:12px;color:#444}
table{border-collapse:collapse;width:100%;margin-top:10px;font-size:12.5px}th,td{border-bottom:1px solid #eceff3;padding:4px 6px;text-align:right}
th:first-child,td:first-child{text-align:left}th{color:#556;font-weight:600}td.ok{color:#2e7d32;font-weight:600}td.bad{color:#c62828;font-weight:700}
.note{color:#778;font-size:12px;margin:4px 0 0}.empty{color:#889}#readout{position:fixed;pointer-events:none;background:#1f2a37;color:#fff;font-size:12px;padding:3px 7px;border-radius:4px;display:none}
footer{color:#889;font-size:12px;text-align:center;padding:10px}
"""

SCRIPT = """
(function(){
  var errors = [];
  function record(msg){ errors.push(String(msg)); document.body.setAttribute('data-errors', String(errors.length));
    var ul = document.getElementById('js-errors'); if (ul){ var li = document.createElement('li'); li.textContent = String(msg); ul.appendChild(li); } }
  window.onerror = function(msg, src, line){ record(msg + ' @' + line); };
  window.addEventListener('unhandledrejection', function(e){ record('unhandled rejection: ' + e.reason); });
  var origError = console.error; console.error = function(){ record([].join.call(arguments, ' ')); origError.apply(console, arguments); };
  document.addEventListener('DOMContentLoaded', function(){
    var box = document.getElementById('readout');
    document.querySelectorAll('svg.chart [data-series], svg.chart rect.bar, svg.chart [data-fleet]').forEach(function(el){
      var t = el.querySelector('title'); if (!t) return;
      el.addEventListener('mousemove', function(ev){ box.textContent = t.textContent; box.style.display = 'block';
        box.style.left = (ev.clientX + 12) + 'px'; box.style.top = (ev.clientY + 12) + 'px'; });
      el.addEventListener('mouseleave', function(){ box.style.display = 'none'; });
    });
    document.body.setAttribute('data-charts', String(document.querySelectorAll('svg.chart').length));
    if (!document.body.hasAttribute('data-errors')) document.body.setAttribute('data-errors', '0');
    document.body.setAttribute('data-ready', '1');
  });
})();
"""


def render(con: duckdb.DuckDBPyConnection, site: SiteConfig, title: str | None = None) -> str:
    """The report's HTML for ``site`` (the views must exist on ``con``)."""
    sid = site.site_id
    sections = [
        ("Price and mix", "Realized real-time price (top) and the load stacked by fleet and GPU class, "
                          "with the power sold back on top (bottom).", _chart_price_mix(con, sid)),
        ("P&L waterfall", "The accounting identity, each interval settled at its own real-time price.",
         _chart_waterfall(con, sid)),
        ("Demand response against load", "Each event's window, the maximum load it allows and the load decided.",
         _chart_dr(con, sid)),
        ("Breakeven vs realized price", "Each fleet's breakeven (it moves with hashprice) against the price; "
                                        "and the hours each fleet was off.", _chart_breakeven(con, sid)),
        ("Net P&L by day", "", _chart_daily(con, sid)),
    ]
    now = datetime.now(UTC)
    body = "".join(f'<section id="s{i}"><h2>{html.escape(h)}</h2><p class="note">{html.escape(sub)}</p>{content}</section>'
                   for i, (h, sub, content) in enumerate(sections))
    title = title or f"wattmix report: {sid}"
    return (
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
        f"<title>{html.escape(title)}</title><style>{CSS}</style><script>{SCRIPT}</script></head><body>"
        f"<header><h1>{html.escape(title)}</h1><p>site <b>{html.escape(sid)}</b> at {html.escape(site.settlement_point)}"
        f" &middot; generated {now:%Y-%m-%d %H:%M} UTC</p></header><main>{_kpis(con, sid)}{body}"
        "<ul id=\"js-errors\" hidden></ul></main><div id=\"readout\"></div>"
        "<footer>wattmix &middot; self-contained report: no network needed</footer></body></html>"
    )


def write_report(db: str | Path, out: str | Path, site: SiteConfig) -> Path:
    from sinks.views import create_views

    p = Path(db)
    con = open_read_only(p)
    try:
        con.execute("SET TimeZone = 'UTC'")
        # temporary views (and site_params) for this connection: works on any archive version
        create_views(con, [site], temp=True)
        doc = render(con, site)
    except duckdb.Error as exc:
        raise SinkError(f"report query failed on {p}: {exc}") from exc
    finally:
        con.close()
    o = Path(out)
    o.parent.mkdir(parents=True, exist_ok=True)
    o.write_text(doc, encoding="utf-8")
    return o


def run_report_cli(args) -> int:
    from schemas.site import load_sample_site, load_site

    site = load_site(args.site) if args.site else load_sample_site()
    out = write_report(args.db, args.out, site)
    print(f"wrote {out} ({out.stat().st_size / 1024:,.0f} kB)")
    return 0
