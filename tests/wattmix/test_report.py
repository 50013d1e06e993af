"""``wattmix report``: the HTML renders in a real headless Chromium (Debian's ``chromium``), has
its charts, and logs no script errors. Skipped, with the reason, where chromium is absent
(.ci/run installs it)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from dispatch.processor import run_in_process
from sinks.archive import Archive, ArchiveBatch
from wattmix.report import SCRIPT, write_report
from wattmix.scenario import build_demo_scenario

CHROMIUM = next((c for c in ("chromium", "chromium-browser", "google-chrome") if shutil.which(c)), None)
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--enable-logging=stderr", "--v=0"]


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    sc = build_demo_scenario(days=3, jobs=150)
    events = sc.events_in_order()
    actions = run_in_process(sc.site, [r for _, r in events])
    d = tmp_path_factory.mktemp("report")
    ar = Archive(d / "a.duckdb")  # an archive WITHOUT the views: the report makes temporary ones
    b = ArchiveBatch()
    for name, r in events:
        b.add_input(name, r)
    for a in actions:
        b.add_action(a)
    ar.write_batch(b)
    ar.close()
    out = write_report(d / "a.duckdb", d / "report.html", sc.site)
    return out


def chromium(args: list[str], profile: Path, timeout: float = 60) -> subprocess.CompletedProcess:
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (apt-get install chromium): the report is not rendered here")
    return subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", *args], capture_output=True, text=True,
                          timeout=timeout)


def dump_dom(page: Path, profile: Path) -> tuple[str, str]:
    res = chromium(["--virtual-time-budget=3000", "--dump-dom", page.as_uri()], profile)
    assert res.returncode == 0, res.stderr[-2000:]
    return res.stdout, res.stderr


def test_report_is_self_contained(report):
    text = report.read_text()
    assert text.startswith("<!DOCTYPE html>")
    # nothing to fetch: no external scripts, styles, images or fonts
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", text)
    assert "@import" not in text and "url(" not in text
    for cls in ("price-chart", "mix-chart", "waterfall", "dr-chart", "breakeven-chart", "daily-chart"):
        assert f'class="chart {cls}"' in text


def test_report_renders_in_headless_chromium(report, tmp_path):
    dom, log = dump_dom(report, tmp_path / "profile")
    body = re.search(r"<body([^>]*)>", dom).group(1)
    assert 'data-ready="1"' in body, "the page script did not run to the end"
    assert 'data-errors="0"' in body, f"script errors in the page: {body}"
    assert re.search(r'data-charts="(\d+)"', body) and int(re.search(r'data-charts="(\d+)"', body).group(1)) >= 6
    # --enable-logging=stderr: the browser logs console messages as "CONSOLE(line)] ..."
    assert "Uncaught" not in log and not re.search(r"CONSOLE\(\d+\)\].*error", log, re.I), log[-2000:]
    # the charts have their marks: 7 waterfall bars, stacked areas per component, a load line per DR event
    waterfall = re.search(r'<svg class="chart waterfall".*?</svg>', dom, re.S).group(0)
    assert len(re.findall(r'<rect class="bar ', waterfall)) == 7
    mix = re.search(r'<svg class="chart mix-chart".*?</svg>', dom, re.S).group(0)
    series = set(re.findall(r'data-series="([^"]+)"', mix))
    assert {"s19jpro", "s21", "gpu:inference", "gpu:training", "gpu:batch", "sold back"} <= series
    assert re.search(r'<path class="price" d="M[\d.,L]+', dom)
    dr = re.search(r'<svg class="chart dr-chart".*?</svg>', dom, re.S).group(0)
    assert '<path class="load"' in dr and '<line class="limit"' in dr and 'class="dr-window"' in dr
    assert len(re.findall(r'<path class="breakeven"', dom)) == 2
    assert ">yes</td>" in dom  # the DR event was met


def test_the_error_probe_catches_script_errors(tmp_path):
    """Negative control: the same page script reports an error thrown by the page."""
    page = tmp_path / "broken.html"
    page.write_text(f"<!DOCTYPE html><html><head><script>{SCRIPT}</script></head><body><svg class=\"chart\"></svg>"
                    "<script>undefinedFunction();</script></body></html>")
    dom, _ = dump_dom(page, tmp_path / "profile")
    assert 'data-errors="1"' in dom and "undefinedFunction" in dom


def test_screenshot(report, tmp_path):
    png = tmp_path / "report.png"
    res = chromium(["--window-size=1280,2400", "--hide-scrollbars", f"--screenshot={png}", report.as_uri()],
                   tmp_path / "profile")
    assert res.returncode == 0 and png.exists() and png.stat().st_size > 50_000  # a page with charts, not blank
