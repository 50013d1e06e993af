"""``wattmix worker --web-port``: /metrics, /api/state and the live dashboard, on the real broker,
rendered in headless Chromium (skipped, with the reason, where chromium is absent)."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from datetime import timedelta
from pathlib import Path

import orjson
import pytest

from tests.streams.harness import stop_worker, wait_committed
from schemas.site import load_sample_site
from tests.factories import T0
from tests.streams.test_worker_integration import scenario
from wattmix.broker import free_port
from wattmix.demo import publish_events

pytestmark = pytest.mark.integration

SITE_ID = load_sample_site().site_id

CHROMIUM = next((c for c in ("chromium", "chromium-browser", "google-chrome") if shutil.which(c)), None)
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run"]


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=5) as r:
        return r.read()


def _wait_http(url: str, proc: subprocess.Popen, log: Path, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"worker exited with {proc.returncode}:\n{log.read_text()[-3000:]}"
        try:
            _get(url)
            return
        except OSError:
            time.sleep(0.2)
    raise AssertionError(f"{url} did not answer in {timeout}s:\n{log.read_text()[-3000:]}")


def _latest_interval(base: str, after: str | None = None, timeout: float = 30.0) -> dict:
    """The /api/state site entry once it has a decision (newer than ``after`` when given)."""
    deadline = time.monotonic() + timeout
    st: dict = {}
    while time.monotonic() < deadline:
        st = orjson.loads(_get(base + "/api/state"))
        if st["sites"]:
            s = next(iter(st["sites"].values()))
            if after is None or s["latest"]["interval_start"] > after:
                return s
        time.sleep(0.3)
    raise AssertionError(f"no (new) decision in /api/state: {st}")


def _metric(text: str, name: str, **labels: str) -> float:
    lab = ",".join(f'{k}="{v}"' for k, v in labels.items())
    m = re.search(rf"^{re.escape(name)}{re.escape('{' + lab + '}') if lab else ''} (\S+)$", text, re.M)
    assert m, f"{name}{{{lab}}} not in /metrics:\n{text[:3000]}"
    return float(m.group(1))


def _dump_dom(url: str, profile: Path) -> str:
    res = subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", "--virtual-time-budget=3000",
                          "--dump-dom", url], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr[-2000:]
    return res.stdout


def _body(dom: str) -> str:
    return re.search(r"<body([^>]*)>", dom).group(1)


def test_worker_serves_metrics_state_and_a_live_dashboard(kafka_bootstrap, fresh_topics, tmp_path):
    topics = fresh_topics()
    db, log = tmp_path / "archive.duckdb", tmp_path / "worker.log"
    group = f"g-{topics.suffix}"
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    named = scenario()
    # the first ~3 hours, then the rest: the second part decides newer intervals
    cut = next(i for i, (_, e) in enumerate(named) if e.event_time() >= T0 + timedelta(hours=3))
    cmd = [sys.executable, "-m", "wattmix", "worker", "--kafka", kafka_bootstrap, "--db", str(db), "--group", group,
           "--topic-suffix", "." + topics.suffix, "--web-port", str(port)]
    proc = subprocess.Popen(cmd, stdout=open(log, "ab"), stderr=subprocess.STDOUT,
                            env=dict(os.environ, PYTHONUNBUFFERED="1"), start_new_session=True)
    try:
        _wait_http(base + "/metrics", proc, log)
        last = asyncio.run(publish_events(kafka_bootstrap, named[:cut], topics))
        wait_committed(kafka_bootstrap, group, last, proc, log)
        first = _latest_interval(base)

        text = _get(base + "/metrics").decode()
        events_in = sum(_metric(text, "wattmix_events_in_total", topic=t) for t in {t for t, _p in last})
        assert events_in == sum(off + 1 for off in last.values())  # fresh topics: offsets from 0
        decisions = _metric(text, "wattmix_decisions_total", site=SITE_ID)
        assert decisions >= 4 and len(first["history"]) == decisions
        assert _metric(text, "wattmix_watchdog_ok") == 1
        assert _metric(text, "wattmix_broker_outages_total") == 0
        price = _metric(text, "wattmix_price_usd_mwh", site=SITE_ID, kind="known")
        assert price == first["latest"]["price_known_usd_mwh"] and price > 0
        for fl in first["latest"]["fleets"]:
            assert _metric(text, "wattmix_load_mw", site=SITE_ID, load=f"mining:{fl['fleet']}") == fl["power_mw"]
            assert _metric(text, "wattmix_breakeven_usd_mwh", site=SITE_ID, fleet=fl["fleet"]) > 0
        assert _metric(text, "wattmix_load_mw", site=SITE_ID, load="gpu:training") > 0
        lags = re.findall(r"^wattmix_consumer_lag\{[^}]*\} (\S+)$", text, re.M)
        assert lags and all(float(v) == 0 for v in lags)  # caught up
        assert _metric(text, "wattmix_dr_active", site=SITE_ID) == 0
        net = sum(h["net_usd"] for h in first["history"])
        assert first["pnl_today"]["net_usd"] == pytest.approx(net)
        assert _metric(text, "wattmix_net_usd", site=SITE_ID) == pytest.approx(net)  # all on one UTC day

        if CHROMIUM is None:
            pytest.skip("chromium is not installed (apt-get install chromium): the dashboard is not rendered here")
        dom = _dump_dom(base + "/", tmp_path / "profile1")
        body = _body(dom)
        assert 'data-ready="1"' in body and 'data-errors="0"' in body, body + re.search(
            r'<div id="errors">.*?</div>', dom, re.S).group(0)
        assert f'data-interval="{first["latest"]["interval_start"]}"' in body
        mix = re.search(r'<svg class="chart mix-chart".*?</svg>', dom, re.S).group(0)
        series = set(re.findall(r'data-series="([^"]+)"', mix))
        assert {"gpu:inference", "gpu:training", "gpu:batch"} <= series and any(s.startswith("mining:") for s in series)
        assert len(re.findall(r'<rect class="bar"', mix)) >= decisions
        assert f'${first["latest"]["price_known_usd_mwh"]:.2f}' in dom
        pc = re.search(r'<svg class="chart price-chart".*?</svg>', dom, re.S).group(0)
        assert re.search(r'<path class="price" d="M[\d.,L]+', pc)
        assert len(re.findall(r'<line class="breakeven"', pc)) == len(first["latest"]["fleets"])
        for fl in first["latest"]["fleets"]:  # each fleet with its breakeven
            assert re.search(rf'<tr class="fleet" data-fleet="{fl["fleet"]}">.*?<td class="breakeven">'
                             rf'{fl["breakeven_usd_mwh"]:.2f}</td>', dom), fl

        # more events: a newer interval is decided and the page shows it
        more = asyncio.run(publish_events(kafka_bootstrap, named[cut:], topics))
        wait_committed(kafka_bootstrap, group, more, proc, log)
        second = _latest_interval(base, after=first["latest"]["interval_start"])
        dom2 = _dump_dom(base + "/", tmp_path / "profile2")
        body2 = _body(dom2)
        assert 'data-errors="0"' in body2, body2
        assert f'data-interval="{second["latest"]["interval_start"]}"' in body2
        assert f'${second["latest"]["price_known_usd_mwh"]:.2f}' in dom2
        assert 'class="dr-window"' in dom2  # the 06:00-07:00 DR event is in the history now
        assert int(re.search(r'data-points="(\d+)"', body2).group(1)) > int(re.search(r'data-points="(\d+)"', body).group(1))
    finally:
        rc = stop_worker(proc)
    assert rc == 0, log.read_text()[-3000:]


def test_the_dashboards_error_probe_reports_failures(tmp_path):
    """Negative control: opened from a file, the page cannot fetch /api/state; that shows up as an error."""
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (apt-get install chromium): the dashboard is not rendered here")
    from streams.web import DASHBOARD_HTML

    page = tmp_path / "dash.html"
    page.write_text(DASHBOARD_HTML)
    body = _body(_dump_dom(page.as_uri(), tmp_path / "profile"))
    assert 'data-ready="0"' in body and not re.search(r'data-errors="0"', body), body
