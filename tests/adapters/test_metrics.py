"""Metrics registry: Prometheus text that our own parser (and Prometheus' grammar) reads back,
served over aiohttp on loopback, fed by real engine actions."""

from __future__ import annotations

import asyncio
import math

import pytest

from adapters.gpu import parse_prometheus_text
from adapters.metrics import CONTENT_TYPE, Registry, aiohttp_routes, observe_action, wattmix_metrics
from tests import factories as f
from tests.adapters.util import free_port


def test_render_and_parse_back():
    reg = Registry()
    c = reg.counter("x_total", "things", ["topic"])
    g = reg.gauge("y", "level")
    c.inc(topic='a"b')
    c.inc(2, topic='a"b')
    g.set(1.5)
    with pytest.raises(ValueError):
        c.inc(-1, topic="a")
    with pytest.raises(ValueError):
        c.inc(topic="a", extra="no")
    text = reg.render()
    assert "# TYPE x_total counter" in text and "# TYPE y gauge" in text
    samples = {(s.name, tuple(s.labels.items())): s.value for s in parse_prometheus_text(text)}
    assert samples == {("x_total", (("topic", 'a"b'),)): 3.0, ("y", ()): 1.5}


def test_observe_real_actions_and_serve_over_http():
    from aiohttp import ClientSession, web

    from dispatch.processor import run_in_process
    from schemas.site import load_sample_site

    ev = [f.hashprice(54.3)] + [f.rt_price(i, p) for i, p in enumerate([22, 22, 4200, 22])] + [f.dr_event(30, 15)]
    ev.sort(key=lambda e: e.event_time())
    actions = run_in_process(load_sample_site(), ev)
    reg = Registry()
    m = wattmix_metrics(reg)
    for a in actions:
        observe_action(m, a)
    m["watchdog"].set(1)

    async def main():
        app = web.Application()
        app.add_routes(aiohttp_routes(reg))
        runner = web.AppRunner(app)
        await runner.setup()
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        try:
            async with ClientSession() as http:
                async with http.get(f"http://127.0.0.1:{port}/metrics") as r:
                    return r.status, r.headers["Content-Type"], await r.text()
        finally:
            await runner.cleanup()

    status, ctype, text = asyncio.run(asyncio.wait_for(main(), 10))
    assert status == 200 and ctype.startswith(CONTENT_TYPE)
    s = {(x.name, tuple(sorted(x.labels.items()))): x.value for x in parse_prometheus_text(text)}
    assert s[("wattmix_decisions_total", (("site", "sample"),))] == len(actions)
    assert s[("wattmix_net_usd", (("site", "sample"),))] == pytest.approx(sum(a.expected.net_usd for a in actions))
    last = actions[-1]
    assert s[("wattmix_load_mw", (("load", "mining:s21"), ("site", "sample")))] == pytest.approx(
        next(fl.power_mw for fl in last.fleets if fl.fleet == "s21"))
    limit = s[("wattmix_dr_limit_mw", (("site", "sample"),))]
    assert math.isnan(limit) or limit >= 0
    assert s[("wattmix_watchdog_ok", ())] == 1
