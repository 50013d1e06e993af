"""The worker's optional web endpoint (``wattmix worker --web-port N``): metrics, state, dashboard.

A small aiohttp server on ``--web-bind`` (default 127.0.0.1), started as a Faust app task (Faust's
own web server stays off: its extra views are not needed). Off the hot path: the worker calls
:meth:`WebState.observe` once per batch / tick with the step's result; lag and broker figures
are read when scraped. At start the dashboard's history (the last :data:`HISTORY` actions per
site and the P&L of the newest action's UTC day) is read back from the archive, so a restart
does not blank it; the metrics start from zero, as Prometheus expects of a new process.

* ``GET /metrics``   Prometheus text (adapters/metrics.py + lag, broker outages, events in)
* ``GET /api/state`` JSON: latest action per site, recent mix history, P&L today, DR status
* ``GET /``          a self-contained live dashboard polling ``/api/state`` every second
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

import orjson

from adapters.metrics import CONTENT_TYPE, Registry, observe_action, wattmix_metrics

if TYPE_CHECKING:  # pragma: no cover
    from streams.pipeline import StepResult
    from streams.worker import DispatchWorker

log = logging.getLogger("wattmix.web")

#: intervals of history kept per site for the dashboard's chart (one day of 15-min intervals)
HISTORY = 96


class WebState:
    def __init__(self, worker: "DispatchWorker") -> None:
        self.worker = worker
        self.registry = Registry()
        self.m = wattmix_metrics(self.registry)
        reg = self.registry
        self.m["broker_outages"] = reg.counter("wattmix_broker_outages_total", "Broker outages seen by the probe")
        self.m["broker_outage_s"] = reg.counter("wattmix_broker_outage_seconds_total", "Broker outage time")
        self.m["takeovers"] = reg.counter("wattmix_partition_takeovers_total",
                                          "Partitions rebuilt from the input log after another worker had them")
        self.m["takeover_s"] = reg.counter("wattmix_partition_takeover_seconds_total", "Time spent rebuilding them")
        self.m["watchdog"].set(1)
        self.latest: dict[str, dict] = {}
        self.history: dict[str, deque] = {}
        self.pnl_today: dict[str, tuple[str, float]] = {}   # site -> (UTC day, sum of expected net)
        self._last_interval: dict[str, datetime] = {}
        try:
            self.seed_from_archive(worker.archive.connection())
        except Exception:   # a dashboard without history is better than a worker that does not start
            log.exception("dashboard history not restored from the archive")

    def seed_from_archive(self, con) -> None:
        """The last HISTORY actions per configured site, and its P&L today, from the archive.

        Two bounded queries per site on the ``actions`` primary key (site_id, interval_start):
        the newest HISTORY rows, and the sum of ``net_usd`` over the newest action's UTC day.
        """
        from schemas.action import DispatchAction

        for site in self.worker.settings.sites:
            rows = con.execute("SELECT payload FROM actions WHERE site_id = ? ORDER BY interval_start DESC LIMIT ?",
                               [site.site_id, HISTORY]).fetchall()
            if not rows:
                continue
            for (payload,) in reversed(rows):
                self._remember(DispatchAction.model_validate_json(payload))
            day = self._last_interval[site.site_id].astimezone(timezone.utc).replace(hour=0, minute=0, second=0,
                                                                                      microsecond=0)
            (net,) = con.execute("SELECT coalesce(sum(net_usd), 0) FROM actions WHERE site_id = ? "
                                 "AND interval_start >= ? AND interval_start < ?",
                                 [site.site_id, day, day + timedelta(days=1)]).fetchone()
            self.pnl_today[site.site_id] = (day.date().isoformat(), float(net))
            log.info("dashboard: %d archived actions of %s restored, up to %s", len(rows), site.site_id,
                     self._last_interval[site.site_id].isoformat())

    # -- hot path: once per step ------------------------------------------------------------
    def observe_received(self, counts: dict[str, int]) -> None:
        """Records received per input topic (a batch message counts once; dead letters included)."""
        for topic, n in counts.items():
            self.m["events_in"].inc(n, topic=topic)

    def observe(self, result: "StepResult") -> None:
        if result.dead_letters:
            dl_topic = self.worker.settings.topics.dead_letters
            for o in result.outgoing:
                if o.topic == dl_topic:
                    src = orjson.loads(o.value).get("source_topic", "?")
                    self.m["dead_letters"].inc(topic=src)
        if not result.actions:
            return
        for a in result.actions:
            observe_action(self.m, a)
            self._remember(a)
        self.m["watchdog"].set(0 if any(x["watchdog"] for x in self.latest.values()) else 1)

    def _remember(self, a) -> None:
        site = a.site_id
        if site in self._last_interval and a.interval_start <= self._last_interval[site]:
            return   # already shown (seeded from the archive, or re-published after a restart)
        self._last_interval[site] = a.interval_start
        d = a.model_dump(mode="json")
        self.latest[site] = d
        day = a.interval_start.astimezone(timezone.utc).date().isoformat()
        prev_day, total = self.pnl_today.get(site, (day, 0.0))
        self.pnl_today[site] = (day, (total if prev_day == day else 0.0) + a.expected.net_usd)
        mix = {f"mining:{fl.fleet}": fl.power_mw for fl in a.fleets}
        mix.update({f"gpu:{g.gpu_class}": g.power_mw for g in a.gpus})
        self.history.setdefault(site, deque(maxlen=HISTORY)).append({
            "t": d["interval_start"], "mix": mix, "sold_back_mw": a.sold_back_mw,
            "price": a.price_known_usd_mwh, "net_usd": a.expected.net_usd, "dr": bool(a.dr.active_event_ids),
        })

    # -- read side ----------------------------------------------------------------------------
    def _refresh_scraped(self) -> None:
        w = self.worker
        m = self.m
        for k in ("broker_outages", "broker_outage_s", "takeovers", "takeover_s"):
            m[k].values[()] = float(w.stats[k])
        try:
            consumer = w.app.consumer
        except Exception:
            return
        for tp, nxt in list(w._received_next.items()):
            try:
                hw = consumer.highwater(tp)
            except Exception:
                hw = None
            if hw is not None:
                m["lag"].set(max(hw - nxt, 0), topic=tp.topic, partition=str(tp.partition))

    def metrics_text(self) -> str:
        self._refresh_scraped()
        return self.registry.render()

    def state(self) -> dict[str, Any]:
        sites = {}
        for site, a in self.latest.items():
            day, net = self.pnl_today.get(site, ("", 0.0))
            sites[site] = {
                "latest": a,
                "history": list(self.history.get(site, ())),
                "pnl_today": {"day": day, "net_usd": net},
                "dr": a["dr"],
            }
        return {
            "now": datetime.now(timezone.utc).isoformat(),
            "sites": sites,
            "configured_sites": [s.site_id for s in self.worker.settings.sites],
            "events": self.worker.stats["events"],
            "broker_outages": self.worker.stats["broker_outages"],
        }


async def serve(state: WebState, host: str, port: int) -> None:
    """Run the HTTP server until cancelled (a Faust app task: cancelled when the worker stops)."""
    from aiohttp import web

    async def metrics(_request):
        return web.Response(body=state.metrics_text().encode(),
                            headers={"Content-Type": CONTENT_TYPE + "; charset=utf-8"})

    async def api_state(_request):
        return web.Response(body=orjson.dumps(state.state()), content_type="application/json")

    async def index(_request):
        return web.Response(text=DASHBOARD_HTML, content_type="text/html")

    app = web.Application()
    app.add_routes([web.get("/metrics", metrics), web.get("/api/state", api_state), web.get("/", index)])
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    log.info("wattmix web on http://%s:%d/ (/metrics, /api/state)", host, port)
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


DASHBOARD_HTML = r"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>wattmix live</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<script>
window.__errors = [];
window.onerror = function (msg, src, line) {
  window.__errors.push(String(msg) + " @" + line);
  document.body && document.body.setAttribute("data-errors", String(window.__errors.length));
  var e = document.getElementById("errors"); if (e) e.textContent = window.__errors.join("\n");
};
window.addEventListener("unhandledrejection", function (ev) { window.onerror("unhandled: " + ev.reason, "", 0); });
</script>
<style>
body{font:14px system-ui,sans-serif;margin:1.2em 2em;color:#222;background:#fafafa}
h1{font-size:1.3em;margin:.2em 0}.muted{color:#777}
.cards{display:flex;gap:1em;flex-wrap:wrap;margin:.8em 0}
.card{background:#fff;border:1px solid #ddd;border-radius:6px;padding:.6em 1em;min-width:9em}
.card b{display:block;font-size:1.4em}
svg.chart{background:#fff;border:1px solid #ddd;border-radius:6px}
.legend span{display:inline-block;margin-right:1em}.legend i{display:inline-block;width:.8em;height:.8em;margin-right:.3em}
table{border-collapse:collapse}td,th{padding:.2em .8em;border-bottom:1px solid #eee;text-align:left}
#errors{color:#b00;white-space:pre}
</style></head>
<body data-ready="0" data-errors="0" data-interval="">
<h1>wattmix live <span class="muted" id="site"></span></h1>
<div class="muted">latest interval <span id="interval">-</span> &middot; updated <span id="updated">never</span></div>
<div class="cards">
 <div class="card">price (RT known)<b id="price">-</b></div>
 <div class="card">planned price<b id="price-exp">-</b></div>
 <div class="card">load<b id="load">-</b></div>
 <div class="card">sold back<b id="sold">-</b></div>
 <div class="card">P&amp;L today (expected)<b id="pnl">-</b></div>
 <div class="card">watchdog<b id="watchdog">-</b></div>
</div>
<h3>Mix, MW by load</h3>
<svg class="chart mix-chart" id="mix" width="900" height="260" viewBox="0 0 900 260"></svg>
<div class="legend" id="legend"></div>
<h3>Real-time price vs mining breakeven, $/MWh</h3>
<svg class="chart price-chart" id="pricechart" width="900" height="160" viewBox="0 0 900 160"></svg>
<h3>Mining fleets</h3>
<table id="fleets"><tr><th>fleet</th><th>online</th><th>MW</th><th>breakeven $/MWh</th><th>vs price</th></tr></table>
<h3>Demand response</h3>
<div id="dr">-</div>
<div id="errors"></div>
<script>
(function () {
  var COLORS = ["#e69f00", "#d55e00", "#0072b2", "#56b4e9", "#009e73", "#cc79a7", "#999999", "#f0e442"];
  var NS = "http://www.w3.org/2000/svg";
  function $(id) { return document.getElementById(id); }
  function fmt(v, d) { return v === null || v === undefined ? "-" : Number(v).toFixed(d === undefined ? 1 : d); }
  function el(name, attrs) {
    var e = document.createElementNS(NS, name);
    for (var k in attrs) e.setAttribute(k, attrs[k]);
    return e;
  }
  function drawMix(hist) {
    var svg = $("mix"), W = 900, H = 260, L = 48, B = 24, T = 10, R = 10;
    while (svg.firstChild) svg.removeChild(svg.firstChild);
    if (!hist.length) return 0;
    var keys = [];
    hist.forEach(function (h) { Object.keys(h.mix).forEach(function (k) { if (keys.indexOf(k) < 0) keys.push(k); }); });
    keys.sort();
    var tot = hist.map(function (h) { return keys.reduce(function (s, k) { return s + (h.mix[k] || 0); }, 0); });
    var ymax = Math.max.apply(null, tot.concat([1])) * 1.1;
    var n = hist.length, bw = (W - L - R) / Math.max(n, 1);
    function y(v) { return T + (H - T - B) * (1 - v / ymax); }
    for (var g = 0; g <= 4; g++) {
      var v = ymax * g / 4;
      svg.appendChild(el("line", {x1: L, x2: W - R, y1: y(v), y2: y(v), stroke: "#eee"}));
      var t = el("text", {x: L - 4, y: y(v) + 4, "text-anchor": "end", "font-size": 10, fill: "#777"});
      t.textContent = v.toFixed(0); svg.appendChild(t);
    }
    hist.forEach(function (h, i) {  // DR event windows, shaded behind the bars
      if (h.dr) svg.appendChild(el("rect", {"class": "dr-window", x: (L + i * bw).toFixed(1), width: bw.toFixed(1),
        y: T, height: H - T - B, fill: "#fde0dd"}));
    });
    var legend = $("legend"); legend.innerHTML = '<span><i style="background:#fde0dd"></i>DR event</span>';
    keys.forEach(function (k, ki) {
      var g = el("g", {"class": "series", "data-series": k});
      for (var i = 0; i < n; i++) {
        var base = 0;
        for (var j = 0; j < ki; j++) base += hist[i].mix[keys[j]] || 0;
        var v = hist[i].mix[k] || 0;
        if (v <= 0) continue;
        g.appendChild(el("rect", {"class": "bar", x: (L + i * bw).toFixed(1), width: Math.max(bw - 1, 1).toFixed(1),
          y: y(base + v).toFixed(1), height: (y(base) - y(base + v)).toFixed(1), fill: COLORS[ki % COLORS.length]}));
      }
      svg.appendChild(g);
      var s = document.createElement("span");
      s.innerHTML = '<i style="background:' + COLORS[ki % COLORS.length] + '"></i>' + k;
      legend.appendChild(s);
    });
    [0, n - 1].forEach(function (i) {
      var t = el("text", {x: L + i * bw + (i ? bw : 0), y: H - 6, "font-size": 10, fill: "#777",
                          "text-anchor": i ? "end" : "start"});
      t.textContent = hist[i].t.slice(5, 16).replace("T", " "); svg.appendChild(t);
    });
    return keys.length;
  }
  function drawPrice(hist, fleets) {
    var svg = $("pricechart"), W = 900, H = 160, L = 48, B = 8, T = 10, R = 10;
    while (svg.firstChild) svg.removeChild(svg.firstChild);
    var be = fleets.map(function (f) { return f.breakeven_usd_mwh; });
    // spikes would flatten everything: the scale stops at twice the highest breakeven
    var ymax = Math.max(100, 2 * Math.max.apply(null, be.concat([0])));
    var n = hist.length, bw = (W - L - R) / Math.max(n, 1);
    function y(v) { return T + (H - T - B) * (1 - Math.min(v, ymax) / ymax); }
    [0, ymax / 2, ymax].forEach(function (v) {
      svg.appendChild(el("line", {x1: L, x2: W - R, y1: y(v), y2: y(v), stroke: "#eee"}));
      var t = el("text", {x: L - 4, y: y(v) + 4, "text-anchor": "end", "font-size": 10, fill: "#777"});
      t.textContent = v.toFixed(0); svg.appendChild(t);
    });
    fleets.forEach(function (f, i) {
      svg.appendChild(el("line", {"class": "breakeven", "data-fleet": f.fleet, x1: L, x2: W - R,
        y1: y(f.breakeven_usd_mwh), y2: y(f.breakeven_usd_mwh), stroke: COLORS[(i + 3) % COLORS.length],
        "stroke-dasharray": "5,4"}));
      var t = el("text", {x: W - R - 4, y: y(f.breakeven_usd_mwh) - 3, "text-anchor": "end", "font-size": 10,
        fill: "#555"});
      t.textContent = f.fleet + " breakeven " + f.breakeven_usd_mwh.toFixed(0); svg.appendChild(t);
    });
    var d = "";
    hist.forEach(function (h, i) {
      if (h.price === null) return;
      d += (d ? "L" : "M") + (L + (i + 0.5) * bw).toFixed(1) + "," + y(h.price).toFixed(1);
      if (h.price > ymax) {
        var t = el("text", {x: L + (i + 0.5) * bw, y: T + 10, "text-anchor": "middle", "font-size": 9, fill: "#b00"});
        t.textContent = h.price.toFixed(0); svg.appendChild(t);
      }
    });
    if (d) svg.appendChild(el("path", {"class": "price", d: d, fill: "none", stroke: "#222", "stroke-width": 1.5}));
  }
  function render(st) {
    var ids = Object.keys(st.sites);
    if (!ids.length) { $("site").textContent = "(no decision yet)"; return; }
    var s = st.sites[ids[0]], a = s.latest;
    $("site").textContent = a.site_id;
    $("interval").textContent = a.interval_start;
    document.body.setAttribute("data-interval", a.interval_start);
    $("price").textContent = "$" + fmt(a.price_known_usd_mwh, 2);
    $("price-exp").textContent = "$" + fmt(a.price_expected_usd_mwh, 2);
    $("load").textContent = fmt(a.load_mw) + " MW";
    $("sold").textContent = fmt(a.sold_back_mw) + " MW";
    $("pnl").textContent = "$" + fmt(s.pnl_today.net_usd, 0).replace(/\B(?=(\d{3})+(?!\d))/g, ",");
    $("watchdog").textContent = a.watchdog ? "SAFE STATE" : "ok";
    var rows = '<tr><th>fleet</th><th>online</th><th>MW</th><th>breakeven $/MWh</th><th>vs price</th></tr>';
    a.fleets.forEach(function (f) {
      var p = a.price_expected_usd_mwh, ok = p === null || p < f.breakeven_usd_mwh;
      rows += '<tr class="fleet" data-fleet="' + f.fleet + '"><td>' + f.fleet + '</td><td>' + f.units_online + "/" +
        f.units_total + "</td><td>" + fmt(f.power_mw) + '</td><td class="breakeven">' + fmt(f.breakeven_usd_mwh, 2) +
        "</td><td>" + (ok ? "mine" : "curtail") + "</td></tr>";
    });
    $("fleets").innerHTML = rows;
    var dr = a.dr;
    $("dr").innerHTML = dr.active_event_ids.length
      ? '<span class="dr-active">active: ' + dr.active_event_ids.join(", ") + "</span> &middot; limit " +
        fmt(dr.limit_mw) + " MW &middot; shortfall " + fmt(dr.shortfall_mw, 2) + " MW"
      : '<span class="dr-none">no active DR event</span>';
    drawPrice(s.history, a.fleets);
    var n = drawMix(s.history);
    document.body.setAttribute("data-series", String(n));
    document.body.setAttribute("data-points", String(s.history.length));
  }
  function poll() {
    fetch("/api/state", {cache: "no-store"}).then(function (r) { return r.json(); }).then(function (st) {
      render(st);
      $("updated").textContent = new Date().toISOString().slice(11, 19);
      document.body.setAttribute("data-ready", "1");
    }).catch(function (e) { window.onerror("poll failed: " + e, "", 0); })
      .then(function () { setTimeout(poll, 1000); });
  }
  poll();
})();
</script>
</body></html>
"""
