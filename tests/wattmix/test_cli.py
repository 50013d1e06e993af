"""``wattmix worker``'s options reach the worker settings: given, from the environment, or not
at all (then the setting's own default applies: one source of each default)."""

from __future__ import annotations

import pytest

from streams.app import MAX_FUTURE_S, WorkerSettings
from wattmix import cli


@pytest.fixture
def captured(monkeypatch):
    """run_worker's keyword arguments, instead of running a worker."""
    import streams.worker

    got: dict = {}

    def fake_run_worker(**kw):
        got.update(kw)
        return 0

    monkeypatch.setattr(streams.worker, "run_worker", fake_run_worker)
    monkeypatch.delenv("WATTMIX_MAX_FUTURE_S", raising=False)
    monkeypatch.delenv("WATTMIX_ARCHIVE_MEMORY_MB", raising=False)
    return got


def test_worker_options_not_given_leave_the_settings_defaults(captured):
    assert cli.main(["worker", "--kafka", "127.0.0.1:1", "--db", "x.duckdb"]) == 0
    assert "max_future_s" not in captured and "archive_memory_mb" not in captured
    assert WorkerSettings().max_future_s == MAX_FUTURE_S and WorkerSettings().archive_memory_mb == 64


def test_worker_options_given_or_from_the_environment(captured, monkeypatch):
    cli.main(["worker", "--archive-memory-mb", "32", "--max-future-s", "off"])
    assert captured["archive_memory_mb"] == 32 and captured["max_future_s"] is None
    captured.clear()
    monkeypatch.setenv("WATTMIX_ARCHIVE_MEMORY_MB", "128")
    cli.main(["worker"])
    assert captured["archive_memory_mb"] == 128


def test_a_bad_memory_limit_is_an_argument_error(captured, monkeypatch, capsys):
    monkeypatch.setenv("WATTMIX_ARCHIVE_MEMORY_MB", "lots")
    with pytest.raises(SystemExit) as exc:
        cli.main(["worker"])
    assert exc.value.code == 2 and "archive-memory-mb" in capsys.readouterr().err
