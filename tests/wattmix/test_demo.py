"""`wattmix demo`, the main job, runs to completion: broker, worker, a week of feeds, summary."""

from __future__ import annotations

import subprocess
import sys

import duckdb
import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_demo_runs_end_to_end(tmp_path):
    db = tmp_path / "demo.duckdb"
    r = subprocess.run([sys.executable, "-m", "wattmix", "demo", "--db", str(db)],
                       capture_output=True, text=True, timeout=900)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-4000:]
    assert "worker caught up" in out
    assert "parity: 671/671 live actions identical" in out
    assert "dead letters" in out and "net" in out
    assert ": MET" in out and "NOT MET" not in out
    con = duckdb.connect(str(db), read_only=True)
    assert con.execute("SELECT count(*) FROM actions").fetchone()[0] == 671
    assert con.execute("SELECT count(*) FROM gpu_telemetry").fetchone()[0] > 100_000
    # mining is fully curtailed while the scarcity spike is known
    n = con.execute("""
        SELECT count(*) FROM actions
        WHERE price_known_usd_mwh > 2000
          AND list_sum([f.power_mw FOR f IN fleets]) > 0
    """).fetchone()[0]
    assert n == 0
