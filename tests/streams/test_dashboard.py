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
        assert _metric(text, "wattmix_partition_takeovers_total") == 0  # one worker: it owns every partition
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


def _archived_decisions(db: Path) -> list:
    """An archive holding 25 h of decisions (inputs and actions) of the sample site; its actions.

    25 h of 15-min prices from 18:00: longer than the 96 intervals the dashboard keeps, and the
    newest 96 span UTC midnight, so the day's P&L is not the history's sum."""
    from dispatch.processor import run_in_process
    from sinks.archive import Archive, ArchiveBatch
    from tests import factories as f

    t0 = T0 + timedelta(hours=18)
    events = [f.hashprice(54.3, at=t0)] + [f.rt_price(i, 20.0 + (i % 7) * 15, t0=t0) for i in range(100)]
    actions = run_in_process(load_sample_site(), sorted(events, key=lambda e: e.event_time()))
    with Archive(db) as ar:
        batch = ArchiveBatch()
        for e in events:
            batch.add_input("hashprice" if e.__class__.__name__ == "Hashprice" else "grid_prices", e)
        for a in actions:
            batch.add_action(a)
        ar.write_batch(batch)
    return actions


def _assert_seeded(s: dict, actions: list) -> None:
    """/api/state's site entry shows the newest 96 archived actions and the newest day's P&L."""
    from collections import Counter

    from streams.web import HISTORY

    newest = actions[-HISTORY:]
    assert [h["t"] for h in s["history"]] == [a.model_dump(mode="json")["interval_start"] for a in newest]
    assert [h["net_usd"] for h in s["history"]] == [a.expected.net_usd for a in newest]
    assert s["latest"]["interval_start"] == actions[-1].model_dump(mode="json")["interval_start"]
    last_day = actions[-1].interval_start.date()
    per_day = Counter(a.interval_start.date() for a in actions)
    assert len(per_day) == 2 and per_day[last_day] < HISTORY   # the P&L is the last day's only
    assert s["pnl_today"] == {"day": last_day.isoformat(),
                              "net_usd": pytest.approx(sum(a.expected.net_usd for a in actions
                                                           if a.interval_start.date() == last_day))}


def test_a_restarted_workers_dashboard_starts_from_the_archive(tmp_path):
    """DispatchWorker with a web port on an archive of decisions: the dashboard's history is
    there before any event arrives, and a decision re-published after the restart is shown once."""
    from streams.app import TopicNames, WorkerSettings
    from streams.worker import DispatchWorker

    actions = _archived_decisions(tmp_path / "archive.duckdb")
    settings = WorkerSettings(db=str(tmp_path / "archive.duckdb"), sites=(load_sample_site(),), web_port=free_port(),
                              topics=TopicNames(".restart"))
    worker = DispatchWorker(settings)
    try:
        s = worker.web.state()["sites"][SITE_ID]
        worker.web._remember(actions[-1])
        again = worker.web.state()["sites"][SITE_ID]
    finally:
        worker.close()
    _assert_seeded(s, actions)
    assert again["history"] == s["history"] and again["pnl_today"] == s["pnl_today"]


def test_worker_cli_web_bind_and_history_after_restart(kafka_bootstrap, fresh_topics, tmp_path):
    """``wattmix worker --web-bind 127.0.0.2`` on an existing archive: served there (and not on
    127.0.0.1), with the archived history."""
    topics = fresh_topics()
    db, log = tmp_path / "archive.duckdb", tmp_path / "worker.log"
    actions = _archived_decisions(db)
    port = free_port()
    cmd = [sys.executable, "-m", "wattmix", "worker", "--kafka", kafka_bootstrap, "--db", str(db),
           "--group", f"g-{topics.suffix}", "--topic-suffix", "." + topics.suffix, "--web-port", str(port),
           "--web-bind", "127.0.0.2"]
    proc = subprocess.Popen(cmd, stdout=open(log, "ab"), stderr=subprocess.STDOUT,
                            env=dict(os.environ, PYTHONUNBUFFERED="1"), start_new_session=True)
    try:
        base = f"http://127.0.0.2:{port}"
        _wait_http(base + "/metrics", proc, log)
        s = orjson.loads(_get(base + "/api/state"))["sites"][SITE_ID]
        with pytest.raises(OSError):
            _get(f"http://127.0.0.1:{port}/metrics")
    finally:
        rc = stop_worker(proc)
    assert rc == 0, log.read_text()[-3000:]
    _assert_seeded(s, actions)
