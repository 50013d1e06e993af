"""A small metrics registry with Prometheus text rendering and aiohttp routes to serve it.

No extra needed (no prometheus_client): counters and gauges with labels, rendered in the
Prometheus text exposition format 0.0.4, served at ``/metrics`` by any aiohttp application
(the Faust worker's web server is aiohttp). Thread-safe enough for one event loop (no locks:
updates are plain dict operations on the loop's thread).

Metric names used by wattmix (``WATTMIX_METRICS`` creates them on a registry):

=========================================  =======  ====================================
name                                       type     labels
=========================================  =======  ====================================
wattmix_events_in_total                    counter  topic
wattmix_dead_letters_total                 counter  topic
wattmix_late_events_total                  counter  site
wattmix_consumer_lag                       gauge    topic, partition
wattmix_decisions_total                    counter  site
wattmix_load_mw                            gauge    site, load (mining:<fleet>, gpu:<class>)
wattmix_price_usd_mwh                      gauge    site, kind (known, expected)
wattmix_breakeven_usd_mwh                  gauge    site, fleet
wattmix_dr_active                          gauge    site (number of active DR events)
wattmix_dr_limit_mw / _shortfall_mw        gauge    site
wattmix_net_usd                            gauge    site (expected P&L, sum since start)
wattmix_watchdog_ok                        gauge    (1 = fine, 0 = stalled)
wattmix_actuations_total                   counter  site, target, status
=========================================  =======  ====================================

:func:`observe_action` updates the per-decision metrics from one DispatchAction.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

CONTENT_TYPE = "text/plain; version=0.0.4"


def _escape(v: str) -> str:
    return v.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _fmt(v: float) -> str:
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    return repr(float(v)) if not float(v).is_integer() else str(int(v)) if abs(v) < 1e15 else repr(float(v))


@dataclass
class Metric:
    name: str
    help: str
    kind: str                      # "counter" | "gauge"
    labelnames: tuple[str, ...] = ()
    values: dict[tuple[str, ...], float] = field(default_factory=dict)

    def _key(self, labels: Mapping[str, str]) -> tuple[str, ...]:
        if set(labels) != set(self.labelnames):
            raise ValueError(f"{self.name}: labels {sorted(labels)} != {sorted(self.labelnames)}")
        return tuple(str(labels[n]) for n in self.labelnames)

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        if self.kind == "counter" and amount < 0:
            raise ValueError(f"{self.name}: a counter cannot go down")
        k = self._key(labels)
        self.values[k] = self.values.get(k, 0.0) + amount

    def set(self, value: float, **labels: str) -> None:
        if self.kind != "gauge":
            raise ValueError(f"{self.name}: only gauges can be set")
        self.values[self._key(labels)] = float(value)

    def get(self, **labels: str) -> float:
        return self.values.get(self._key(labels), 0.0)

    def remove(self, **labels: str) -> None:
        self.values.pop(self._key(labels), None)

    def render(self) -> Iterable[str]:
        yield f"# HELP {self.name} {self.help}"
        yield f"# TYPE {self.name} {self.kind}"
        for k in sorted(self.values):
            lab = ",".join(f'{n}="{_escape(v)}"' for n, v in zip(self.labelnames, k))
            yield f"{self.name}{{{lab}}} {_fmt(self.values[k])}" if lab else f"{self.name} {_fmt(self.values[k])}"


class Registry:
    def __init__(self) -> None:
        self.metrics: dict[str, Metric] = {}

    def _add(self, name: str, help: str, kind: str, labels: Iterable[str]) -> Metric:
        if name in self.metrics:
            m = self.metrics[name]
            if m.kind != kind or m.labelnames != tuple(labels):
                raise ValueError(f"metric {name} already registered differently")
            return m
        m = self.metrics[name] = Metric(name, help, kind, tuple(labels))
        return m

    def counter(self, name: str, help: str, labels: Iterable[str] = ()) -> Metric:
        return self._add(name, help, "counter", labels)

    def gauge(self, name: str, help: str, labels: Iterable[str] = ()) -> Metric:
        return self._add(name, help, "gauge", labels)

    def render(self) -> str:
        return "\n".join(line for m in self.metrics.values() for line in m.render()) + "\n"


def wattmix_metrics(reg: Registry) -> dict[str, Metric]:
    """Create (or fetch) the metrics of the table in the module doc."""
    return {
        "events_in": reg.counter("wattmix_events_in_total", "Input events accepted", ["topic"]),
        "dead_letters": reg.counter("wattmix_dead_letters_total", "Messages dead-lettered", ["topic"]),
        "late": reg.counter("wattmix_late_events_total", "Events that arrived after their interval was decided", ["site"]),
        "lag": reg.gauge("wattmix_consumer_lag", "Records behind the partition's high watermark", ["topic", "partition"]),
        "decisions": reg.counter("wattmix_decisions_total", "Intervals decided", ["site"]),
        "load": reg.gauge("wattmix_load_mw", "Grid power by load in the last decision (incl. PUE)", ["site", "load"]),
        "price": reg.gauge("wattmix_price_usd_mwh", "Real-time price known / expected at decision", ["site", "kind"]),
        "breakeven": reg.gauge("wattmix_breakeven_usd_mwh", "Mining breakeven grid price per fleet", ["site", "fleet"]),
        "dr_active": reg.gauge("wattmix_dr_active", "Active DR events", ["site"]),
        "dr_limit": reg.gauge("wattmix_dr_limit_mw", "Load ceiling in force (NaN if none)", ["site"]),
        "dr_shortfall": reg.gauge("wattmix_dr_shortfall_mw", "DR shortfall in the last decision", ["site"]),
        "net": reg.gauge("wattmix_net_usd", "Expected net P&L summed over the intervals decided since start", ["site"]),
        "watchdog": reg.gauge("wattmix_watchdog_ok", "1 when the worker is making progress"),
        "actuations": reg.counter("wattmix_actuations_total", "Actuations reported", ["site", "target", "status"]),
    }


def observe_action(m: Mapping[str, Metric], action) -> None:
    """Update the per-decision metrics from a DispatchAction."""
    site = action.site_id
    m["decisions"].inc(site=site)
    for fl in action.fleets:
        m["load"].set(fl.power_mw, site=site, load=f"mining:{fl.fleet}")
        m["breakeven"].set(fl.breakeven_usd_mwh, site=site, fleet=fl.fleet)
    for g in action.gpus:
        m["load"].set(g.power_mw, site=site, load=f"gpu:{g.gpu_class}")
    if action.price_known_usd_mwh is not None:
        m["price"].set(action.price_known_usd_mwh, site=site, kind="known")
    if action.price_expected_usd_mwh is not None:
        m["price"].set(action.price_expected_usd_mwh, site=site, kind="expected")
    m["dr_active"].set(len(action.dr.active_event_ids), site=site)
    m["dr_limit"].set(action.dr.limit_mw if action.dr.limit_mw is not None else float("nan"), site=site)
    m["dr_shortfall"].set(action.dr.shortfall_mw, site=site)
    m["net"].set(m["net"].get(site=site) + action.expected.net_usd, site=site)   # a gauge: P&L can go down


def aiohttp_routes(registry: Registry, path: str = "/metrics"):
    """``[web.get(path, handler)]`` for ``app.add_routes(...)`` on any aiohttp application."""
    from aiohttp import web

    async def handler(request):
        return web.Response(text=registry.render(), headers={"Content-Type": CONTENT_TYPE + "; charset=utf-8"})

    return [web.get(path, handler)]

