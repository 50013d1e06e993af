"""``wattmix sql``: read-only, clear errors, paths never pasted into SQL."""

from __future__ import annotations

import io

import duckdb
import pytest

from sinks.query import run_sql_cli
from wattmix.cli import main
from wattmix.errors import SinkError


@pytest.fixture
def db(tmp_path):
    # a name that would break (or inject into) any SQL it was pasted into
    p = tmp_path / "it's; DROP TABLE t; --.duckdb"
    con = duckdb.connect(str(p))
    con.execute("CREATE TABLE t AS SELECT range AS i, range * 1.5 AS x FROM range(3)")
    con.close()
    return p


def test_table_csv_json(db):
    out = io.StringIO()
    run_sql_cli(str(db), "SELECT i, x FROM t ORDER BY i", "csv", out)
    assert out.getvalue().splitlines() == ["i,x", "0,0.0", "1,1.5", "2,3.0"]
    out = io.StringIO()
    run_sql_cli(str(db), "SELECT sum(i) AS s FROM t", "json", out)
    assert '"s": 3' in out.getvalue()
    out = io.StringIO()
    run_sql_cli(str(db), "SELECT i FROM t", "table", out)
    assert "(3 rows)" in out.getvalue()


def test_writes_are_refused_and_file_unchanged(db):
    with pytest.raises(SinkError, match="read-only"):
        run_sql_cli(str(db), "DELETE FROM t")
    assert duckdb.connect(str(db), read_only=True).execute("SELECT count(*) FROM t").fetchone()[0] == 3


def test_cli_reports_errors_with_exit_2(db, tmp_path, capsys):
    assert main(["sql", "--db", str(tmp_path / "missing.duckdb"), "SELECT 1"]) == 2
    assert "no archive" in capsys.readouterr().err
    assert main(["sql", "--db", str(db), "SELECT nope FROM t"]) == 2
